"""Single-object serde: round trips, determinism, and bad bytes of every kind."""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import io
import sys
import time
import types
import typing
from typing import Any

import fastavro
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from taskstream.schemas import events
from taskstream.schemas.catalog import catalog
from taskstream.schemas.errors import DecodeError, EncodeError
from taskstream.schemas.events import (
    BODY_TYPES,
    Backoff,
    CancelRequested,
    DependencyRegistered,
    Dependent,
    Envelope,
    FlowControl,
    GroupCreated,
    LeaseRenewed,
    LimitSet,
    MisfirePolicy,
    ObjectRef,
    ParentFailurePolicy,
    ParentOutcome,
    ParentUpdate,
    PurgeRequested,
    RateGranted,
    RateRefused,
    RateRequested,
    RateWithdrawn,
    RedriveRequested,
    ScheduleCommand,
    ScheduleOp,
    ScheduleSet,
    ScheduleSpec,
    SlotGranted,
    SlotReleased,
    SlotRequested,
    TaskCancelled,
    TaskDeadLettered,
    TaskDispatched,
    TaskFailed,
    TaskProgress,
    TaskStarted,
    TaskSubmitted,
    TaskSucceeded,
    TimerFired,
    TimerKind,
    WaitDeferred,
)
from taskstream.schemas.serde import (
    decode_event,
    decode_state,
    default_codec,
    encode_event,
    encode_state,
)
from taskstream.schemas.state import ErrorInfo, TaskState, TaskStatus

NOW = 1_700_000_000_123
EVENT_ID = "01HZX00000000000000000EVNT"
TASK_ID = "01HZX00000000000000000TASK"
HEADERS = {"z": "last", "a": "first", "trace": "00-abc"}

BODIES: list[Any] = [
    TaskSubmitted(
        name="app.send",
        queue="default",
        priority=2,
        payload=b'{"to":"x"}',
        content_type="application/json",
        eta_ms=NOW + 5000,
        max_attempts=5,
        backoff=Backoff(500, 3.0, 60_000, 0.25),
        timeout_ms=10_000,
        lease_ms=30_000,
        idempotency_key="order-1",
        headers=HEADERS,
        tags=["a", "b"],
        depends_on=["01HZX0000000000000000000AA", "group:g1"],
        on_parent_failure=ParentFailurePolicy.RUN,
        dependency_timeout_ms=60_000,
        dependents=[Dependent("group:g2", 7), Dependent("01HZX0000000000000000000BB")],
    ),
    TaskSubmitted("n", "q", 0, b"", "application/octet-stream", None, 1, Backoff(), None, 1),
    CancelRequested(),
    CancelRequested("user asked"),
    RedriveRequested("again", 4),
    RedriveRequested(),
    TaskStarted("d1", "w1"),
    LeaseRenewed("d1", "w1"),
    TaskSucceeded("d1", "w1", b"\x00\xff", "application/octet-stream"),
    TaskSucceeded("d1", "w1"),
    TaskFailed("d1", "w1", "ValueError", "bad", "Traceback...", False, True, 1500),
    TaskFailed("d1", "w1", "KeyError", "k"),
    *(TimerFired(kind, NOW, "d9") for kind in TimerKind),
    TaskDispatched(
        "d1",
        "app.send",
        "default",
        1,
        b"{}",
        "application/json",
        None,
        30_000,
        3,
        NOW,
        "k",
        HEADERS,
    ),
    TaskDeadLettered("app.send", "default", b"p", "text/plain", "E", "m", "tb", 3),
    TaskCancelled("stop"),
    TaskCancelled(),
    DependencyRegistered("01HZX0000000000000000000BB"),
    ParentUpdate("01HZX0000000000000000000AA", ParentOutcome.FAILED, "DEAD: boom", 3),
    ParentUpdate("group:g1", ParentOutcome.PENDING),
    GroupCreated(10_000),
    ScheduleSet(ScheduleSpec(
        TaskSubmitted("n", "q", 0, b"{}", "application/json", None, 1, Backoff(), None, 1),
        cron="*/5 * * * * 30", timezone="Europe/Berlin", start_at_ms=NOW, end_at_ms=NOW + 1,
        jitter_ms=500, misfire=MisfirePolicy.CATCH_UP, catch_up_max=3)),
    ScheduleSet(ScheduleSpec(
        TaskSubmitted("n", "q", 0, b"", "c", None, 1, Backoff(), None, 1), every_ms=2000)),
    ScheduleCommand(ScheduleOp.PAUSE, "maintenance"),
    ScheduleCommand(ScheduleOp.DELETE),
    # --- flow control (issue 16; schema v2) ---
    TaskSubmitted("n", "q", 0, b"", "c", None, 1, Backoff(), None, 1, expires_at_ms=NOW,
                  flow=FlowControl("emails", "customer-42", "account-7", 3)),
    TaskDispatched("d1", "n", "q", 0, b"", "c", None, 1, 1, NOW, None, {}, [], NOW + 1, "k", 7),
    LimitSet("emails", 100, 1000, 20),
    RateRequested("01HZX00000000000000000TASK", "emails", "customer-42", NOW, 5, 1000, 2),
    RateRequested("01HZX00000000000000000TASK", "emails", None, NOW),
    RateWithdrawn("01HZX00000000000000000TASK", "emails", None),
    RateGranted("emails", "c"),
    RateRefused("emails", "no such limit"),
    SlotRequested("01HZX00000000000000000TASK", "account-7", 1, NOW),
    SlotReleased("01HZX00000000000000000TASK", "account-7", "succeeded"),
    SlotGranted("account-7", 2**40),
    WaitDeferred("rate", NOW + 1000, "full"),
    TaskProgress("d1", "w1", 0.5, "half"),
    # --- storage (issue 22; schema v2): offloaded payloads and results, purge ---
    TaskSubmitted("n", "q", 0, b"", "application/json", None, 1, Backoff(), None, 1,
                  payload_ref=ObjectRef("b", "tasks/t/payload", 300_000, "ab" * 32)),
    TaskSucceeded("d1", "w1", b"", "application/json",
                  ObjectRef("b", "tasks/t/result/1-d1", 10_000_000, "cd" * 32, "kms-1")),
    TaskDispatched("d1", "n", "q", 0, b"", "application/json", None, 1, 1, NOW,
                   payload_ref=ObjectRef("b", "tasks/t/payload", 1, "ef" * 32)),
    TaskDeadLettered("n", "q", b"", "application/json", "E", "m", "", 1,
                     ObjectRef("b", "k", 1, "00" * 32)),
    PurgeRequested("operator"),
    PurgeRequested(),
]


def envelope(body: Any, attempt: int = 1) -> Envelope:
    return Envelope(
        "01HZX00000000000000000EVNT", "01HZX00000000000000000TASK", NOW, "test", attempt, body
    )


def full_state() -> TaskState:
    return TaskState(
        task_id="01HZX00000000000000000TASK",
        name="app.send",
        queue="default",
        priority=1,
        status=TaskStatus.RUNNING,
        payload=b"\x01\x02",
        content_type="application/octet-stream",
        payload_digest="ab" * 32,
        max_attempts=3,
        backoff=Backoff(10, 1.5, 100, 0.0),
        timeout_ms=None,
        lease_ms=30_000,
        submitted_at_ms=NOW,
        updated_at_ms=NOW + 1,
        idempotency_key="k",
        headers=HEADERS,
        tags=["t"],
        depends_on=[],
        attempt=2,
        attempt_base=1,
        dispatch_id="d2",
        dispatched_at_ms=NOW + 2,
        started_at_ms=NOW + 3,
        worker_id="w",
        due_at_ms=NOW + 30_000,
        finished_at_ms=None,
        result=b"[1]",
        result_content_type="application/json",
        result_truncated=True,
        last_error=ErrorInfo("E", "m", "tb", 1, True),
        cancel_reason=None,
        retries=1,
        redrives=1,
        duplicates=2,
        conflicts=1,
        rejected=4,
        recent_event_ids=["e1", "e2"],
        expires_at_ms=NOW + 60_000,
        flow=FlowControl("emails", None, "account-7", 2),
        slot_sequence=12,
        status_reason="waiting",
        progress=0.25,
        progress_note="a quarter",
        progress_at_ms=NOW + 4,
    )


def test_every_body_type_is_covered() -> None:
    assert {type(b) for b in BODIES} == set(BODY_TYPES)


@pytest.mark.parametrize("body", BODIES, ids=lambda b: type(b).__name__)
def test_every_body_round_trips(body: Any) -> None:
    env = envelope(body)
    data = encode_event(env)
    assert data[:2] == b"\xc3\x01"
    assert data[2:10] == catalog().envelope.fingerprint
    back = decode_event(data)
    assert back == env
    assert type(back.body) is type(body)


def test_enums_come_back_as_enums() -> None:
    back = decode_event(encode_event(envelope(TimerFired(TimerKind.LEASE_EXPIRED, NOW))))
    assert isinstance(back.body, TimerFired)
    assert back.body.kind is TimerKind.LEASE_EXPIRED
    state = decode_state(encode_state(full_state()))
    assert state.status is TaskStatus.RUNNING


@pytest.mark.parametrize("body", BODIES, ids=lambda b: type(b).__name__)
def test_fast_writer_matches_plain_fastavro(body: Any) -> None:
    """Our to-dict mapping gives the bytes fastavro writes from a dict we build by hand."""
    env = envelope(body)
    record = {f: getattr(env, f) for f in ("event_id", "task_id", "occurred_at_ms", "source")}
    record["attempt"] = env.attempt
    body_dict = _as_dict(body)
    record["body"] = (f"io.taskstream.{type(body).__name__}", body_dict)
    buffer = io.BytesIO()
    fastavro.schemaless_writer(buffer, catalog().envelope.parsed, record)
    assert encode_event(env)[10:] == buffer.getvalue()


def _as_dict(value: Any) -> Any:
    if hasattr(value, "__dataclass_fields__"):
        return {name: _as_dict(getattr(value, name)) for name in value.__dataclass_fields__}
    if isinstance(value, dict):
        return dict(sorted(value.items()))
    if isinstance(value, list):
        return [_as_dict(v) for v in value]
    return value


def test_state_round_trips_full_and_minimal() -> None:
    state = full_state()
    data = encode_state(state)
    assert data[2:10] == catalog().state.fingerprint
    assert decode_state(data) == state
    minimal = TaskState(
        "t", "n", "q", 0, TaskStatus.SCHEDULED, b"", "c", "d", 1, Backoff(), None, 1, 0, 0
    )
    assert decode_state(encode_state(minimal)) == minimal


def test_encoding_is_deterministic_whatever_the_map_order() -> None:
    state = full_state()
    reordered = TaskState(
        **{**_fields(state), "headers": dict(reversed(list(state.headers.items())))}
    )
    assert encode_state(state) == encode_state(reordered)
    sub = BODIES[0]
    sub2 = TaskSubmitted(**{**_fields(sub), "headers": dict(reversed(list(HEADERS.items())))})
    assert encode_event(envelope(sub)) == encode_event(envelope(sub2))


def _fields(obj: Any) -> dict[str, Any]:
    return {name: getattr(obj, name) for name in obj.__dataclass_fields__}


def test_state_and_event_fingerprints_are_not_confused() -> None:
    with pytest.raises(DecodeError, match="TaskState, not an Envelope"):
        decode_event(encode_state(full_state()))
    with pytest.raises(DecodeError, match="Envelope, not a TaskState"):
        decode_state(encode_event(envelope(CancelRequested())))


def test_a_value_of_the_wrong_type_is_an_encode_error() -> None:
    bad = TaskStarted(dispatch_id=123, worker_id="w")  # type: ignore[arg-type]
    with pytest.raises(EncodeError, match="cannot encode event"):
        encode_event(envelope(bad))


# --- bad bytes -------------------------------------------------------------------

VALID = encode_event(envelope(BODIES[0]))


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "wrong magic"),
        (b"\xc3", "too short|wrong magic"),
        (b"\xc3\x01\x00", "too short"),
        (b"\x00\x00\x00\x00\x01" + VALID[10:], "Confluent"),
        (b"{" + VALID[1:], "wrong magic"),
        (b"\xc3\x01" + b"\x00" * 8 + VALID[10:], "unknown schema fingerprint 0000000000000000"),
        (VALID + b"\x00", "unexpected bytes"),
    ],
)
def test_bad_bytes_raise_decode_error_with_a_clear_message(data: bytes, message: str) -> None:
    with pytest.raises(DecodeError, match=message) as caught:
        decode_event(data)
    assert "got" in str(caught.value)


def test_truncation_at_every_length_is_a_decode_error() -> None:
    for data in (VALID, encode_state(full_state())):
        decode = decode_event if data is VALID else decode_state
        for cut in range(len(data)):
            with pytest.raises(DecodeError):
                decode(data[:cut])


def test_none_and_non_bytes_are_decode_errors() -> None:
    with pytest.raises(DecodeError, match="tombstone"):
        decode_event(None)  # type: ignore[arg-type]
    assert decode_event(bytearray(VALID)) == decode_event(memoryview(VALID))  # type: ignore[arg-type]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300))
def test_random_garbage_is_a_decode_error(garbage: bytes) -> None:
    with pytest.raises(DecodeError):
        decode_event(garbage)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_garbage_after_a_valid_header_decodes_or_raises_decode_error(garbage: bytes) -> None:
    for header in (VALID[:10], encode_state(full_state())[:10]):
        decode = decode_event if header == VALID[:10] else decode_state
        with contextlib.suppress(DecodeError):
            decode(header + garbage)


@settings(max_examples=200, deadline=None)
@given(st.integers(0, len(VALID) - 1), st.integers(1, 255))
def test_a_flipped_byte_decodes_or_raises_decode_error(position: int, xor: int) -> None:
    data = bytearray(VALID)
    data[position] ^= xor
    with contextlib.suppress(DecodeError):
        decode_event(bytes(data))


# --- cost (reported, never asserted: DESIGN.md "Targets") ---------------------


def _per_call_us(fn: Any, arg: Any, n: int = 3000) -> float:
    best = float("inf")
    for _ in range(5):
        start = time.process_time()
        for _ in range(n):
            fn(arg)
        best = min(best, (time.process_time() - start) / n * 1e6)
    return best


def test_report_cost(capsys: pytest.CaptureFixture[str]) -> None:
    env = envelope(BODIES[0])
    data = encode_event(env)
    state = full_state()
    state_bytes = encode_state(state)
    costs = {
        "encode_event(TaskSubmitted)": _per_call_us(encode_event, env),
        "decode_event(TaskSubmitted)": _per_call_us(decode_event, data),
        "encode_state": _per_call_us(encode_state, state),
        "decode_state": _per_call_us(decode_state, state_bytes),
    }
    with capsys.disabled():
        print()
        for name, us in costs.items():
            print(f"  {name}: {us:.1f} us ({len(data) if 'event' in name else len(state_bytes)} B)")
    assert all(us > 0 for us in costs.values())
    assert default_codec() is default_codec()  # parsed once per process


# --- property: any valid value round trips ----------------------------------------

TEXT = st.text(st.characters(codec="utf-8"), max_size=20)
INT32 = st.integers(-(2**31), 2**31 - 1)
INT64 = st.integers(-(2**63), 2**63 - 1)


def _strategy(name: str, tp: Any) -> st.SearchStrategy[Any]:
    origin = typing.get_origin(tp)
    if origin is types.UnionType:
        (inner,) = (a for a in typing.get_args(tp) if a is not type(None))
        return st.none() | _strategy(name, inner)
    if origin is dict:
        return st.dictionaries(TEXT, TEXT, max_size=4)
    if origin is list:
        (item,) = typing.get_args(tp)
        return st.lists(_builds(item) if dataclasses.is_dataclass(item) else TEXT, max_size=4)
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return st.sampled_from(list(tp))
    if dataclasses.is_dataclass(tp):
        return _builds(tp)
    simple: dict[Any, st.SearchStrategy[Any]] = {
        str: TEXT,
        bytes: st.binary(max_size=40),
        bool: st.booleans(),
        float: st.floats(allow_nan=False),
        int: INT64 if name.endswith("_ms") else INT32,
    }
    return simple[tp]


def _builds(cls: Any) -> st.SearchStrategy[Any]:
    hints = typing.get_type_hints(cls, vars(sys.modules[cls.__module__]) | vars(events))
    return st.builds(
        cls, **{f.name: _strategy(f.name, hints[f.name]) for f in dataclasses.fields(cls)}
    )


ENVELOPES = st.builds(
    Envelope,
    event_id=TEXT,
    task_id=TEXT,
    occurred_at_ms=INT64,
    source=TEXT,
    attempt=INT32,
    body=st.one_of([_builds(cls) for cls in BODY_TYPES]),
)


@settings(max_examples=300, deadline=None)
@given(ENVELOPES)
def test_any_envelope_round_trips(env: Envelope) -> None:
    data = encode_event(env)
    assert decode_event(data) == env
    assert encode_event(decode_event(data)) == data


@settings(max_examples=100, deadline=None)
@given(_builds(TaskState))
def test_any_state_round_trips(state: TaskState) -> None:
    data = encode_state(state)
    assert decode_state(data) == state
    assert encode_state(decode_state(data)) == data
