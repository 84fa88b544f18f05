"""TaskSpec validation and conversion, TaskView rendering, and models/Avro agreement."""

from __future__ import annotations

import base64
import dataclasses
import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from taskstream.schemas.errors import InvalidSpecError
from taskstream.schemas.events import Backoff, Envelope, TaskSubmitted
from taskstream.schemas.ids import derived_task_id, new_event_id, new_task_id
from taskstream.schemas.models import SpecLimits, TaskSpec, TaskView, encode_json
from taskstream.schemas.serde import decode_event, encode_event
from taskstream.schemas.state import ErrorInfo, TaskState, TaskStatus
from taskstream.schemas.view import RENDERED, VIEW_ONLY

NOW = 1_700_000_000_000


def test_defaults_and_json_payload() -> None:
    spec = TaskSpec(name="app.send", payload={"b": 1, "a": "é"})
    sub = spec.to_submitted(NOW)
    assert sub.payload == '{"a":"é","b":1}'.encode()
    assert sub.content_type == "application/json"
    assert (sub.queue, sub.priority, sub.max_attempts, sub.eta_ms) == ("default", 0, 3, None)
    assert sub.lease_ms == 30_000 and sub.timeout_ms is None
    assert sub.backoff == Backoff(1000, 2.0, 300_000, 0.1)


def test_bytes_payload_keeps_its_content_type() -> None:
    assert TaskSpec(name="n", payload=b"\x00").to_submitted(NOW).content_type == (
        "application/octet-stream"
    )
    sub = TaskSpec(name="n", payload=b"<a/>", content_type="text/xml").to_submitted(NOW)
    assert (sub.payload, sub.content_type) == (b"<a/>", "text/xml")


def test_delay_and_eta_become_absolute_ms() -> None:
    assert TaskSpec(name="n", delay=1.5).to_submitted(NOW).eta_ms == NOW + 1500
    assert TaskSpec(name="n", delay=0).to_submitted(NOW).eta_ms is None
    eta = datetime(2030, 1, 1, 12, tzinfo=timezone(timedelta(hours=2)))
    assert TaskSpec(name="n", eta=eta).to_submitted(NOW).eta_ms == int(eta.timestamp() * 1000)


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"name": "1starts-with-digit"}, "name"),
        ({"name": "n", "queue": "bad queue"}, "queue"),
        ({"name": "n", "priority": 3}, "priority"),
        ({"name": "n", "priority": -1}, "priority"),
        ({"name": "n", "delay": -1}, "delay"),
        ({"name": "n", "eta": datetime(2030, 1, 1)}, "eta"),
        ({"name": "n", "delay": 1, "eta": datetime(2030, 1, 1, tzinfo=UTC)}, "delay or eta"),
        ({"name": "n", "max_attempts": 0}, "max_attempts"),
        ({"name": "n", "backoff": {"jitter": 1.5}}, "backoff.jitter"),
        ({"name": "n", "backoff": {"initial": 10, "max": 1}}, "backoff"),
        ({"name": "n", "timeout": 0}, "timeout"),
        ({"name": "n", "lease": 0}, "lease"),
        ({"name": "n", "depends_on": ["not-an-id"]}, "depends_on"),
        ({"name": "n", "payload": {1, 2}}, "payload"),
        ({"name": "n", "payload": float("nan")}, "payload"),
        ({"name": "n", "payload": "x" * 2_000_000}, "payload"),
        ({"name": "n", "payload": {"a": 1}, "content_type": "text/plain"}, "payload"),
        ({"name": "n", "unknown": 1}, "unknown"),
    ],
)
def test_validation_messages_name_the_field(fields: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidSpecError, match=field) as caught:
        TaskSpec.build(None, **fields)
    assert isinstance(caught.value, ValueError)
    with pytest.raises(ValidationError):
        TaskSpec.model_validate(fields)


def test_limits_are_configurable_both_ways() -> None:
    limits = SpecLimits(max_payload_bytes=10, name_pattern=r"^svc\.[a-z]+$", priority_max=9)
    assert TaskSpec.build(limits, name="svc.mail", priority=9).priority == 9
    with pytest.raises(InvalidSpecError, match="payload is 12 bytes"):
        TaskSpec.build(limits, name="svc.mail", payload=b"x" * 12)
    with pytest.raises(InvalidSpecError, match="name"):
        TaskSpec.build(limits, name="app.mail")
    ok = TaskSpec.model_validate({"name": "svc.x", "priority": 9}, context={"limits": limits})
    assert ok.priority == 9
    with pytest.raises(ValidationError, match="priority"):
        TaskSpec(name="n", priority=9)  # plain construction uses the defaults


def test_limits_follow_settings() -> None:
    from taskstream.settings import load_settings

    limits = SpecLimits.from_settings(load_settings(priority_levels=5, max_payload_bytes=100))
    assert (limits.priority_max, limits.max_payload_bytes) == (4, 100)


# --- models and Avro in step ---------------------------------------------------------

SPEC_TO_SUBMITTED = {
    "name": "name",
    "payload": "payload",
    "content_type": "content_type",
    "queue": "queue",
    "priority": "priority",
    "delay": "eta_ms",
    "eta": "eta_ms",
    "max_attempts": "max_attempts",
    "backoff": "backoff",
    "timeout": "timeout_ms",
    "lease": "lease_ms",
    "idempotency_key": "idempotency_key",
    "headers": "headers",
    "tags": "tags",
    "depends_on": "depends_on",
    "on_parent_failure": "on_parent_failure",
    "dependency_timeout": "dependency_timeout_ms",
    "member_of": "dependents",
    "expires": "expires_at_ms",
    "rate_limit": "flow",
    "rate_key": "flow",
    "concurrency_key": "flow",
    "max_concurrency": "flow",
}


def test_every_spec_field_maps_to_a_submitted_field() -> None:
    submitted = {f.name for f in dataclasses.fields(TaskSubmitted)}
    assert set(TaskSpec.model_fields) == set(SPEC_TO_SUBMITTED)
    # payload_ref is the SDK's, not the caller's: it offloads a large payload (D34)
    assert set(SPEC_TO_SUBMITTED.values()) == submitted - {"payload_ref"}


def test_every_view_field_renders_a_state_field_and_vice_versa() -> None:
    state_fields = {f.name for f in dataclasses.fields(TaskState)}
    view_fields = set(TaskView.model_fields) - VIEW_ONLY
    assert {RENDERED.get(f, f) for f in view_fields} == state_fields


# --- property: spec -> submitted -> envelope -> bytes -> envelope -------------------

TEXT = st.text(st.characters(codec="utf-8"), max_size=12)
JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(10**12), 10**12) | st.floats(allow_nan=False,
    allow_infinity=False) | TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
    max_leaves=8,
)  # fmt: skip
SPECS = st.fixed_dictionaries(
    {
        "name": st.from_regex(r"\A[A-Za-z_][A-Za-z0-9_.:-]{0,30}\Z"),
        "payload": JSON | st.binary(max_size=64),
        "queue": st.from_regex(r"\A[A-Za-z0-9_-]{1,20}\Z"),
        "priority": st.integers(0, 2),
        "max_attempts": st.integers(1, 20),
        "backoff": st.fixed_dictionaries(
            {"initial": st.floats(0, 10), "multiplier": st.floats(1, 5), "jitter": st.floats(0, 1)}
        ).map(lambda b: {**b, "max": b["initial"] + 100}),
        "lease": st.floats(1, 3600),
        "headers": st.dictionaries(TEXT.filter(bool), TEXT, max_size=3),
        "tags": st.lists(st.from_regex(r"\A[A-Za-z0-9_-]{1,32}\Z"), max_size=3),  # D38
    },
    optional={
        "delay": st.floats(0, 10**6),
        "timeout": st.floats(0.001, 3600),
        "idempotency_key": TEXT.filter(bool),
        "depends_on": st.lists(st.builds(lambda: new_task_id()), max_size=2),
        "on_parent_failure": st.sampled_from(["cancel", "run"]),
        "dependency_timeout": st.floats(0.001, 3600),
    },
).filter(lambda f: not (f.get("depends_on") and "delay" in f))  # refused together


@settings(max_examples=200, deadline=None)
@given(SPECS, st.integers(0, 2**42))
def test_any_valid_spec_survives_the_wire(fields: dict[str, Any], now_ms: int) -> None:
    spec = TaskSpec.build(None, **fields)
    body = spec.to_submitted(now_ms)
    task_id = (
        derived_task_id(spec.name, spec.idempotency_key) if spec.idempotency_key else new_task_id()
    )
    env = Envelope(new_event_id(), task_id, now_ms, "test", 0, body)
    assert decode_event(encode_event(env)) == env
    if isinstance(spec.payload, bytes):
        assert body.payload == spec.payload
    else:
        assert json.loads(body.payload) == spec.payload


# --- TaskView --------------------------------------------------------------------------


def _state(**changes: Any) -> TaskState:
    base = TaskState(
        "01HZX00000000000000000TASK", "n", "q", 1, TaskStatus.SUCCEEDED, b'{"x":1}',
        "application/json", "d", 3, Backoff(), None, 1000, NOW, NOW + 1,
    )  # fmt: skip
    return dataclasses.replace(base, **changes)


def test_view_renders_json_bytes_as_json_and_others_as_base64() -> None:
    view = TaskView.from_state(
        _state(result=b"\xff\x00", result_content_type="application/octet-stream")
    )
    assert view.payload == {"x": 1} and view.payload_b64 is None
    assert view.result is None and view.result_b64 == base64.b64encode(b"\xff\x00").decode()
    truncated = TaskView.from_state(
        _state(result=b'{"a":', result_content_type="application/json; charset=utf-8")
    )
    assert truncated.result is None and truncated.result_b64 == base64.b64encode(b'{"a":').decode()


def test_view_renders_times_both_ways_and_every_field() -> None:
    state = _state(
        finished_at_ms=NOW + 5, last_error=ErrorInfo("E", "m", "tb", 2), headers={"h": "v"}
    )
    data = json.loads(TaskView.from_state(state).model_dump_json())
    assert data["submitted_at_ms"] == NOW
    assert data["submitted_at"] == "2023-11-14T22:13:20.000+00:00"
    assert data["finished_at"] == "2023-11-14T22:13:20.005+00:00"
    assert data["started_at"] is None and data["status"] == "SUCCEEDED"
    assert data["last_error"]["attempt"] == 2 and data["headers"] == {"h": "v"}
    assert data["backoff"] == {
        "initial_ms": 1000,
        "multiplier": 2.0,
        "max_ms": 300000,
        "jitter": 0.1,
    }


@pytest.mark.parametrize("field", ["delay", "timeout", "lease"])
def test_durations_beyond_ten_years_name_the_field(field: str) -> None:
    with pytest.raises(ValidationError, match=field):
        TaskSpec(name="a", **{field: 1e308})


# --- encode_json: orjson where it agrees with the standard library's contract ------


def _stdlib(value: Any) -> bytes:
    return json.dumps(
        value, separators=(",", ":"), sort_keys=True, ensure_ascii=False, allow_nan=False
    ).encode()


@given(JSON)
def test_encode_json_is_compact_sorted_and_round_trips(value: Any) -> None:
    data = encode_json(value)
    assert json.loads(data) == value
    assert data == encode_json(value)  # one value, one encoding
    assert json.loads(data, object_pairs_hook=lambda pairs: [k for k, _ in pairs]) == (
        json.loads(_stdlib(value), object_pairs_hook=lambda pairs: [k for k, _ in pairs])
    )  # same key order as the standard library (sorted), at every level


@pytest.mark.parametrize(
    "bad", [float("nan"), float("inf"), [1.0, -float("inf")], {"x": [float("nan")]}]
)
def test_encode_json_refuses_nan_and_infinity(bad: Any) -> None:
    """orjson would write null for these; the payload must never change silently."""
    with pytest.raises(ValueError, match="JSON compliant"):
        encode_json(bad)


@pytest.mark.parametrize(
    "value",
    [2**70, {1: "a", 2: "b"}, {"n": None, "f": 1e16}, [True, None]],
)
def test_encode_json_leaves_what_orjson_refuses_to_the_standard_library(value: Any) -> None:
    assert encode_json(value) == _stdlib(value)


@pytest.mark.parametrize("value", [datetime(2026, 1, 1, tzinfo=UTC), {1, 2}, object(), b"x"])
def test_encode_json_refuses_what_is_not_json(value: Any) -> None:
    with pytest.raises(TypeError, match="not JSON serializable"):
        encode_json(value)
