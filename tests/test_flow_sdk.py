"""Flow control at the edges, without a broker: specs, the refusal switch, the SDK's
event builder, the API's limit views, the worker's progress, fencing token and expiry."""

from __future__ import annotations

import pickle
from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError

from taskstream.api.limits import limit_states, limit_view, merge_limits
from taskstream.cli.limits_cmd import limit_rows
from taskstream.producer.build import EventBuilder
from taskstream.producer.errors import InvalidTaskError
from taskstream.schemas.entity_keys import (
    ckey_key,
    limit_key,
    parse_ckey_key,
    parse_limit_key,
)
from taskstream.schemas.events import FlowControl, LimitSet, TaskDispatched
from taskstream.schemas.flowspec import (
    LimitSpec,
    format_rate,
    parse_rate,
)
from taskstream.schemas.flowstate import ConcurrencyState, LimitState
from taskstream.schemas.models import TaskSpec
from taskstream.schemas.serde import decode_event, encode_entity, encode_state
from taskstream.schemas.view import TaskView
from taskstream.workers.context import FencingToken, TaskContext
from taskstream.workers.progress import ProgressThrottle, expired, fencing_token
from tests.lifecycle_support import T0, Story

# --- keys and rates ------------------------------------------------------------------------


def test_entity_keys_never_look_like_task_ids_and_sort_after_them() -> None:
    assert limit_key("emails") == "limit:emails"
    assert limit_key("emails", "customer:42") == "limit:emails:customer:42"
    assert parse_limit_key("limit:emails:customer:42") == ("emails", "customer:42")
    assert parse_limit_key("limit:emails") == ("emails", None)
    assert parse_ckey_key(ckey_key("a:b")) == "a:b"
    with pytest.raises(ValueError, match="limit key"):
        parse_limit_key("ckey:x")
    assert max("01ARZ3NDEKTSV4RRFFQ69G5FAV", "ZZZZZZZZZZZZZZZZZZZZZZZZZZ") < ckey_key("") < "limit:"


@pytest.mark.parametrize(("text", "parsed"), [
    ("100/s", (100, 1000)), ("5/min", (5, 60_000)), ("10/2s", (10, 2000)),
    ("1000/h", (1000, 3_600_000)), ("3 / day", (3, 86_400_000)), ("7/250ms", (7, 250)),
    ("2/minutes", (2, 60_000)), ("1/S", (1, 1000)),
])
def test_rates_parse_and_format_back(text: str, parsed: tuple[int, int]) -> None:
    assert parse_rate(text) == parsed
    assert parse_rate(format_rate(*parsed)) == parsed


@pytest.mark.parametrize("text", ["", "100", "fast", "0/s", "1/0s", "1/8d", "1/lightyear",
                                  "-1/s", "1.5/s", "10000000/s"])
def test_bad_rates_say_what_a_rate_looks_like(text: str) -> None:
    with pytest.raises(ValueError, match="rate"):
        parse_rate(text)


def test_a_limit_spec_becomes_a_limit_set() -> None:
    spec = LimitSpec(name="emails", rate="100/s", burst=20)
    assert spec.to_body() == LimitSet("emails", 100, 1000, 20)
    with pytest.raises(ValidationError):
        LimitSpec(name="no:colons", rate="1/s")
    with pytest.raises(ValidationError):
        LimitSpec(name="emails", rate="1/s", burst=0)


# --- what a task with flow control sends -----------------------------------------------


def test_plain_tasks_carry_no_flow_control() -> None:
    spec = TaskSpec(name="t")
    body = spec.to_submitted(T0)
    assert body.flow is None and body.expires_at_ms is None


def test_flow_options_once_enforced() -> None:
    spec = TaskSpec(name="t", rate_limit="emails", rate_key="c-1", concurrency_key="acct",
                    expires=30)
    body = spec.to_submitted(T0)
    assert body.flow == FlowControl("emails", "c-1", "acct", 1)
    assert body.expires_at_ms == T0 + 30_000
    at = datetime.now(UTC) + timedelta(minutes=5)
    assert TaskSpec(name="t", expires=at).to_submitted(T0).expires_at_ms == int(
        at.timestamp() * 1000)
    for bad, field in [({"rate_key": "k"}, "rate_limit"),
                       ({"max_concurrency": 2}, "concurrency_key"),
                       ({"expires": 10, "delay": 20}, "expires"),
                       ({"expires": datetime(2020, 1, 1, tzinfo=UTC)}, "expires"),
                       ({"expires": datetime(2030, 1, 1)}, "timezone"),
                       ({"concurrency_key": "a\nb"}, "printable"),
                       ({"rate_limit": "has space"}, "pattern")]:
        with pytest.raises(ValidationError, match=field):
            TaskSpec.model_validate({"name": "t", **bad})


def test_the_builder_writes_a_limit_set_keyed_by_the_limit() -> None:
    key, data = EventBuilder("test", 1024).limit_set("emails", "5/min", 3, T0)
    env = decode_event(data)
    assert key == env.task_id == "limit:emails"
    assert env.body == LimitSet("emails", 5, 60_000, 3) and env.occurred_at_ms == T0
    with pytest.raises(InvalidTaskError, match="rate"):
        EventBuilder("test", 1024).limit_set("emails", "lots", 1, T0)


def test_the_task_view_shows_the_gates_the_reason_and_the_progress() -> None:
    s = Story()
    from tests.flow_support import flow_submitted

    s.send(flow_submitted(flow=FlowControl("emails", None, "acct", 2), expires_at_ms=T0 + 5))
    view = TaskView.from_state(s.s)
    assert view.status == "WAITING" and view.flow is not None and view.flow.max_concurrency == 2
    assert view.status_reason and "acct" in view.status_reason
    assert view.expires_at and view.expires_at.startswith("2023-11-14T22:13:20.005")
    assert encode_state(s.s)


# --- /limits ------------------------------------------------------------------------------


def _bucket(name: str, key: str | None, tokens: int) -> LimitState:
    return LimitState(key=limit_key(name, key), name=name, bucket_key=key, defined=True,
                      count=10, period_ms=1000, burst=5, tokens=tokens, refilled_at_ms=T0,
                      updated_at_ms=T0)


def test_limit_states_keep_the_limits_of_a_prefix_scan() -> None:
    """The scan reads the ``limit:`` prefix (tables.scan_entities); anything else in it
    (a bug, a newer version) is skipped, not taken for a limit."""
    values = [encode_entity(_bucket("a", None, 1000)), encode_entity(_bucket("a", "k", 0)),
              encode_entity(ConcurrencyState(key="ckey:x", name="x")), b"garbage",
              encode_entity(_bucket("b", None, 0))]
    assert [s.key for s in limit_states(values)] == ["limit:a", "limit:a:k", "limit:b"]


def test_a_limit_view_shows_the_fill_now_and_listings_merge_by_name() -> None:
    view = limit_view(_bucket("emails", "k", 2000), T0 + 150)
    assert view["tokens"] == 3.5 and view["rate"] == "10/s" and view["key"] == "k"
    rows = merge_limits([[limit_view(_bucket("b", None, 0), T0)],
                         [view, limit_view(_bucket("emails", None, 0), T0)]])
    assert [(r["name"], r["key"]) for r in rows] == [("b", None), ("emails", None),
                                                     ("emails", "k")]
    table = limit_rows(rows)
    assert "10/s" in table and "3.5" in table


# --- the worker's side ----------------------------------------------------------------------


def test_progress_is_throttled_to_one_report_a_second_but_done_always_goes() -> None:
    sent: list[tuple[float, str]] = []
    now = [0.0]
    throttle = ProgressThrottle(lambda f, n: sent.append((f, n)), 1.0, clock=lambda: now[0])
    assert throttle.report(0.1, "a")
    assert not throttle.report(0.2, "b")
    now[0] = 0.99
    assert not throttle.report(0.3, "c")
    now[0] = 1.0
    assert throttle.report(0.4, "d" * 500)
    assert throttle.report(1.0, "done")
    assert [f for f, _ in sent] == [0.1, 0.4, 1.0] and len(sent[1][1]) == 200
    assert (throttle.sent, throttle.dropped) == (3, 2)
    for bad in (-0.1, 1.01, float("nan")):
        with pytest.raises(ValueError, match=r"0\.\.1"):
            throttle.report(bad)
    with pytest.raises(TypeError):
        throttle.report("half")  # type: ignore[arg-type]


def test_the_context_reports_progress_and_carries_its_fencing_token() -> None:
    reports: list[tuple[float, str]] = []
    token = FencingToken(12, 3, "d-3", "acct")
    ctx = TaskContext(task_id="T", attempt=3, dispatch_id="d-3", fencing_token=token,
                      progress=lambda f, n: reports.append((f, n)))
    ctx.progress(0.5, "half")
    assert reports == [(0.5, "half")] and ctx.fencing_token == token
    with pytest.raises(ValueError):
        ctx.progress(2)
    child = pickle.loads(pickle.dumps(ctx))  # a process-pool child: no producer
    child.progress(0.7)
    assert child.fencing_token == token and reports == [(0.5, "half")]
    plain = TaskContext(task_id="T", attempt=2, dispatch_id="d")
    assert plain.fencing_token == FencingToken(0, 2, "d", None)
    assert FencingToken(13, 1, "x") > token, "tokens order by the key's sequence first"


def _dispatch(**kw: object) -> TaskDispatched:
    return TaskDispatched("d-1", "n", "q", 0, b"", "c", None, 1000, 3, T0, **kw)  # type: ignore[arg-type]


def test_fencing_tokens_and_expiry_come_from_the_dispatch_record() -> None:
    keyed = _dispatch(concurrency_key="acct", fencing_token=7, expires_at_ms=T0 + 10)
    assert fencing_token(2, keyed) == FencingToken(7, 2, "d-1", "acct")
    assert fencing_token(1, _dispatch()) == FencingToken(0, 1, "d-1", None)
    assert not expired(keyed, T0 + 9) and expired(keyed, T0 + 10)
    assert not expired(_dispatch(), T0 + 10**9)
