"""Sealed payloads, results and errors through the SDK's builder, the worker and the API's
views; dispatch IDs for admins only; the size budget (D27, D26, D28). No broker."""

from __future__ import annotations

import json
from typing import Any

import pytest

from taskstream.api.auth import TokenAuth, token_digest
from taskstream.api.query import list_item, redact, task_view
from taskstream.producer.build import EventBuilder
from taskstream.producer.errors import EventTooLargeError, InvalidTaskError
from taskstream.schemas.events import Backoff, TaskDispatched, TaskSubmitted
from taskstream.schemas.models import SpecLimits
from taskstream.schemas.serde import decode_event
from taskstream.schemas.state import ErrorInfo, TaskState, TaskStatus
from taskstream.schemas.view import open_view
from taskstream.security.errors import SealError
from taskstream.security.keyring import keyring_json, new_secret, parse_keyring
from taskstream.security.sealing import Sealer, is_sealed, is_sealed_text
from taskstream.workers.emitter import result_too_large, sealed_outcome
from taskstream.workers.outcome import Failure, Success, open_payload

KEYS = {"k1": new_secret(), "k2": new_secret()}


def sealer(current: str | None = "k1") -> Sealer:
    return Sealer(parse_keyring(keyring_json(KEYS, current), "payload", "test"))


def builder(**kw: Any) -> EventBuilder:
    return EventBuilder("producer:test", 10_000, limits=SpecLimits(max_payload_bytes=10_000), **kw)


def submitted_of(value: bytes) -> tuple[str, TaskSubmitted]:
    env = decode_event(value)
    assert isinstance(env.body, TaskSubmitted)
    return env.task_id, env.body


# -- the SDK seals -------------------------------------------------------------------------

@pytest.mark.parametrize("how", ["call", "options", "spec", "many"])
def test_every_submit_path_seals_the_payload_for_its_task(how: str) -> None:
    build = builder(sealer=sealer())
    payload = {"card": "4111"}
    if how == "call":
        _, value = build.from_call("n.x", payload, {}, 1_800_000_000_000)
    elif how == "options":
        _, value = build.from_call("n.x", payload, {"queue": "q", "priority": 1},
                                   1_800_000_000_000)
    elif how == "spec":
        _, value = build.submitted(build.spec("n.x", payload, {}), 1_800_000_000_000)
    else:
        _, values = build.many([{"name": "n.x", "payload": payload}], 1_800_000_000_000)
        value = values[0]
    task_id, body = submitted_of(value)
    assert is_sealed(body.payload) and b"4111" not in value
    assert json.loads(sealer().open(body.payload, task_id)) == payload
    assert body.content_type == "application/json"


def test_a_resubmission_with_the_same_key_seals_to_the_same_bytes() -> None:
    build = builder(sealer=sealer())
    first = submitted_of(build.from_call("n.x", {"a": 1}, {"idempotency_key": "o-1"}, 1)[1])
    again = submitted_of(build.from_call("n.x", {"a": 1}, {"idempotency_key": "o-1"}, 2)[1])
    assert first[0] == again[0] and first[1].payload == again[1].payload  # no false conflict


def test_an_event_over_the_size_budget_is_refused_before_it_is_sent() -> None:
    build = builder(max_event_bytes=5_000)
    big = {"blob": "x" * 6_000}
    for attempt in (lambda: build.from_call("n.x", big, {}, 1),
                    lambda: build.many([{"name": "n.x", "payload": big}], 1),
                    lambda: build.submitted(build.spec("n.x", big, {"tags": ["t"]}), 1)):
        with pytest.raises(EventTooLargeError, match="max_event_bytes=5000") as info:
            attempt()
        assert isinstance(info.value, InvalidTaskError) and info.value.fields == ("payload",)
    assert build.from_call("n.x", {"small": 1}, {}, 1)


# -- the worker opens and seals --------------------------------------------------------------

def dispatched(payload: bytes) -> TaskDispatched:
    return TaskDispatched("d1", "n.x", "q", 0, payload, "application/json", None, 30_000, 3, 1)


def test_the_worker_opens_a_sealed_payload_and_says_why_when_it_cannot() -> None:
    sealed = sealer().seal(b'{"a": 1}', "T1")
    opened = open_payload(dispatched(sealed), "T1", sealer())
    assert isinstance(opened, TaskDispatched) and opened.payload == b'{"a": 1}'
    assert open_payload(dispatched(b'{"a": 1}'), "T1", None).payload == b'{"a": 1}'  # type: ignore[union-attr]
    without = open_payload(dispatched(sealed), "T1", None)
    assert isinstance(without, Failure) and without.error_type == "PayloadSealed"
    assert "'k1'" in without.message and not without.retryable
    moved = open_payload(dispatched(sealed), "T2", sealer())
    assert isinstance(moved, Failure) and "another task" in moved.message


def test_results_and_error_texts_are_sealed_for_the_task() -> None:
    ok = sealed_outcome(Success(b'{"r": 1}'), "T1", sealer())
    assert isinstance(ok, Success) and sealer().open(ok.result, "T1") == b'{"r": 1}'
    bad = sealed_outcome(Failure("E", "card 4111", "Traceback ... 4111"), "T1", sealer())
    assert isinstance(bad, Failure) and bad.error_type == "E"
    assert is_sealed_text(bad.message) and is_sealed_text(bad.traceback)
    assert sealer().open_text(bad.message, "T1") == "card 4111"
    plain = sealed_outcome(Failure("E", "m" * 20_000), "T1", None)
    assert isinstance(plain, Failure) and len(plain.message) == 8_000  # cut below the bound


def test_an_oversize_result_fails_with_a_clear_reason() -> None:
    failure = result_too_large(2_000_000, 1_000_000, "an event (max_event_bytes)")
    assert failure.error_type == "ResultTooLarge" and not failure.retryable
    assert "2000000" in failure.message and "reference" in failure.message


# -- the API's views --------------------------------------------------------------------------

def state(**changes: Any) -> TaskState:
    s = sealer()
    base = dict(
        task_id="T1", name="n.x", queue="q", priority=0, status=TaskStatus.DEAD,
        payload=s.seal(b'{"card": "4111"}', "T1"), content_type="application/json",
        payload_digest="d", max_attempts=3, backoff=Backoff(), timeout_ms=None, lease_ms=30_000,
        submitted_at_ms=1, updated_at_ms=2, attempt=1, dispatch_id="D1",
        result=s.seal(b'{"r": 2}', "T1"), result_content_type="application/json",
        last_error=ErrorInfo("E", s.seal_text("declined 4111", "T1"),
                             s.seal_text("tb 4111", "T1"), 1))
    base.update(changes)
    return TaskState(**base)  # type: ignore[arg-type]


def test_without_the_key_the_view_shows_sealed_values_and_names_them() -> None:
    view = task_view(state())
    assert "4111" not in json.dumps(view)
    assert view["sealed"] == ["payload", "result", "last_error.message", "last_error.traceback"]
    assert view["payload"] is None and view["payload_b64"]
    opened = open_view(view, sealer(current=None))  # a client holding the key opens them
    assert opened["payload"] == {"card": "4111"} and opened["result"] == {"r": 2}
    assert opened["last_error"]["message"] == "declined 4111" and opened["sealed"] == []


def test_with_the_key_the_api_shows_plaintext() -> None:
    view = task_view(state(), sealer())
    assert view["payload"] == {"card": "4111"} and view["sealed"] == []
    assert view["last_error"]["traceback"] == "tb 4111"


def test_a_view_that_does_not_open_says_why() -> None:
    view = task_view(state())
    other = Sealer(parse_keyring(keyring_json({"k9": new_secret()}, "k9"), "payload", "t"))
    with pytest.raises(SealError, match="'k1'"):
        open_view(view, other)


def test_dispatch_ids_are_shown_to_admins_only() -> None:
    view, item = task_view(state()), list_item(state())
    assert view["dispatch_id"] == "D1"
    assert redact(view, admin=False)["dispatch_id"] is None
    assert redact({"items": [item], "next_cursor": None}, admin=False)["items"][0][
        "dispatch_id"] is None
    assert redact(view, admin=True)["dispatch_id"] == "D1"
    auth = TokenAuth.from_settings({token_digest("r"): ["read"], token_digest("a"): ["admin"]})
    assert not auth.is_admin("Bearer r") and auth.is_admin("Bearer a")
    assert not auth.is_admin(None) and not auth.is_admin("Bearer nope")
    assert TokenAuth.from_settings({}).is_admin(None)  # no tokens: the API is open to all
