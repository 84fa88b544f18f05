"""The worker's pure parts, without Kafka: registry, outcomes, runtime, flow control."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

import examples.tasks as example_tasks
from taskstream.schemas.events import TaskDispatched
from taskstream.settings import load_settings
from taskstream.workers import NonRetryableError, Retry, TaskContext, TaskRegistry, fail
from taskstream.workers.attempts import AttemptMemory
from taskstream.workers.emitter import emitter_config
from taskstream.workers.errors import RegistrationError, TaskLoadError
from taskstream.workers.flow import (
    Backpressure,
    OffsetTracker,
    desired_paused,
    level_of_topic,
    waiting_levels,
)
from taskstream.workers.loader import load_registry
from taskstream.workers.outcome import Failure, Success, decode_payload, encode_result
from taskstream.workers.queuectl import encode_command, parse_command
from taskstream.workers.runtime import Pool, execute, timeout_seconds


def dispatched(payload: Any = None, *, name: str = "t", timeout_ms: int | None = None,
               content_type: str = "application/json") -> TaskDispatched:
    raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return TaskDispatched(dispatch_id="d1", name=name, queue="default", priority=0, payload=raw,
                          content_type=content_type, timeout_ms=timeout_ms, lease_ms=30_000,
                          max_attempts=3, submitted_at_ms=0)


def ctx(attempt: int = 1) -> TaskContext:
    return TaskContext(task_id="T1", attempt=attempt, idempotency_key="k")


def run(registry: TaskRegistry, name: str, d: TaskDispatched, pool: Pool = Pool.THREAD,
        attempt: int = 1) -> Success | Failure:
    task = registry.get(name)
    assert task is not None
    return asyncio.run(execute(task, d, ctx(attempt), pool))


# -- registry ------------------------------------------------------------------


def test_registry_reads_signatures_once() -> None:
    app = TaskRegistry()

    @app.task
    async def one(payload: Any) -> None: ...

    @app.task(name="two", queue="emails", timeout=2.5, max_attempts=4)
    def two(payload: Any, ctx: TaskContext) -> None: ...

    first, second = app.get(f"{__name__}.test_registry_reads_signatures_once.<locals>.one"), \
        app.get("two")
    assert first is not None and first.is_coroutine and not first.takes_context
    assert second is not None and not second.is_coroutine and second.takes_context
    assert second.queue == "emails" and second.timeout_ms == 2500 and second.max_attempts == 4
    assert app.queues() == ["default", "emails"]
    assert two(1, ctx()) is None  # the decorator returns the function itself


def test_registry_rejects_bad_registrations() -> None:
    app = TaskRegistry()
    with pytest.raises(RegistrationError, match="queue"):
        app.add(lambda p: p, name="x", queue="bad queue!")
    with pytest.raises(RegistrationError, match="no positional"):
        app.add(lambda: None, name="y")
    app.add(lambda p: p, name="z")
    with pytest.raises(RegistrationError, match="already registered"):
        app.add(lambda p: p, name="z")


def test_loader_finds_the_registry_and_explains_failures() -> None:
    assert load_registry("examples.tasks") is example_tasks.app
    assert load_registry("examples.tasks:app") is example_tasks.app
    with pytest.raises(TaskLoadError, match="no module named"):
        load_registry("examples.nope")
    with pytest.raises(TaskLoadError, match="no attribute"):
        load_registry("examples.tasks:nope")
    with pytest.raises(TaskLoadError, match="not a TaskRegistry"):
        load_registry("examples.tasks:noop")


# -- outcomes ------------------------------------------------------------------


def test_payload_and_result_encoding() -> None:
    assert decode_payload(b'{"a": 1}', "application/json; charset=utf-8") == {"a": 1}
    assert decode_payload(b"\x00raw", "application/octet-stream") == b"\x00raw"
    assert encode_result({"x": [1]}) == Success(b'{"x":[1]}', "application/json")
    assert encode_result(b"\x01") == Success(b"\x01", "application/octet-stream")
    bad = encode_result(object())
    assert isinstance(bad, Failure) and bad.error_type == "ResultEncodeError"
    assert not bad.retryable
    assert encode_result(None) == Success(b"null", "application/json")


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12)


@given(_JSON, st.sampled_from(["utf-8", "utf-8-sig", "utf-16", "utf-16-le", "utf-32"]))
def test_payloads_decode_as_json_loads_decides(value: Any, encoding: str) -> None:
    """The UTF-8 fast path gives what ``json.loads(bytes)`` gives, in every encoding
    json.loads detects."""
    raw = json.dumps(value, ensure_ascii=False).encode(encoding)
    assert decode_payload(raw, "application/json") == json.loads(raw)


@given(_JSON)
def test_results_encode_as_json_dumps_did(value: Any) -> None:
    assert encode_result(value) == Success(json.dumps(value, separators=(",", ":")).encode())


def test_the_emitter_lingers_its_own_setting_not_the_sdks() -> None:
    settings = load_settings(bootstrap="127.0.0.1:1", linger_ms=1, worker_linger_ms=7.5)
    config = emitter_config(settings)
    assert config["linger.ms"] == 7.5
    assert config["acks"] == "all" and config["enable.idempotence"] is True


# -- runtime -------------------------------------------------------------------


def test_success_failure_retry_and_nonretryable() -> None:
    app = TaskRegistry()

    @app.task(name="ok")
    async def ok(payload: Any, c: TaskContext) -> dict[str, Any]:
        return {"got": payload, "attempt": c.attempt, "key": c.idempotency_key}

    @app.task(name="boom")
    def boom(payload: Any) -> None:
        raise ValueError("bad value")

    @app.task(name="retry")
    async def retry(payload: Any) -> None:
        raise Retry("later", after=1.5)

    @app.task(name="dead")
    def dead(payload: Any) -> None:
        fail("never")

    assert run(app, "ok", dispatched({"n": 1}), attempt=2) == Success(
        b'{"got":{"n":1},"attempt":2,"key":"k"}')
    failure = run(app, "boom", dispatched(None))
    assert isinstance(failure, Failure)
    assert (failure.error_type, failure.message, failure.retryable) == (
        "ValueError", "bad value", True)
    assert "Traceback" in failure.traceback and "bad value" in failure.traceback
    retried = run(app, "retry", dispatched(None))
    assert isinstance(retried, Failure) and retried.retryable and retried.retry_after_ms == 1500
    died = run(app, "dead", dispatched(None))
    assert isinstance(died, Failure) and not died.retryable
    assert died.error_type == NonRetryableError.__name__


def test_undecodable_json_payload_is_not_retried() -> None:
    out = run(example_tasks.app, "examples.noop", dispatched(b"{not json"))
    assert isinstance(out, Failure) and out.error_type == "PayloadDecodeError"
    assert not out.retryable


def test_record_timeout_beats_task_default() -> None:
    task = example_tasks.app.get("examples.sleepy")
    assert task is not None
    assert timeout_seconds(task, dispatched(None)) == 1.0
    assert timeout_seconds(task, dispatched(None, timeout_ms=200)) == 0.2


def test_coroutine_timeout_cancels_the_handler() -> None:
    app = TaskRegistry()
    seen: list[str] = []

    @app.task(name="hang", timeout=0.1)
    async def hang(payload: Any) -> None:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            seen.append("cancelled")
            raise

    out = run(app, "hang", dispatched(None))
    assert isinstance(out, Failure)
    assert (out.error_type, out.timed_out, out.retryable) == ("TaskTimeout", True, True)
    assert seen == ["cancelled"]


def test_handler_own_timeout_error_is_not_a_task_timeout() -> None:
    app = TaskRegistry()

    @app.task(name="own", timeout=5)
    async def own(payload: Any) -> None:
        raise TimeoutError("the remote service timed out")

    out = run(app, "own", dispatched(None))
    assert isinstance(out, Failure) and out.error_type == "TimeoutError" and not out.timed_out


def test_thread_timeout_is_reported_and_the_thread_abandoned() -> None:
    app = TaskRegistry()
    release = threading.Event()
    finished = threading.Event()

    @app.task(name="block")
    def block(payload: Any) -> str:
        release.wait(5)
        finished.set()
        return "late"

    started = time.monotonic()
    out = run(app, "block", dispatched(None, timeout_ms=100))
    assert time.monotonic() - started < 2
    assert isinstance(out, Failure) and out.timed_out and out.error_type == "TaskTimeout"
    assert not finished.is_set()  # still running: threads cannot be killed
    release.set()
    assert finished.wait(5)


def test_plain_function_runs_in_a_thread_not_on_the_loop() -> None:
    app = TaskRegistry()
    main = threading.get_ident()

    @app.task(name="where")
    def where(payload: Any) -> bool:
        return threading.get_ident() != main

    assert run(app, "where", dispatched(None)) == Success(b"true")


@pytest.mark.slow
def test_process_pool_runs_and_kills_on_timeout() -> None:
    out = run(example_tasks.app, "examples.hash_file", dispatched({"text": "ab", "repeat": 2}),
              Pool.PROCESS)
    assert isinstance(out, Success) and json.loads(out.result)["bytes"] == 4
    started = time.monotonic()
    out = run(example_tasks.app, "examples.sleepy", dispatched({"seconds": 30}, timeout_ms=300),
              Pool.PROCESS)
    assert isinstance(out, Failure) and out.timed_out
    assert time.monotonic() - started < 10
    failed = run(example_tasks.app, "examples.poison", dispatched(None), Pool.PROCESS)
    assert isinstance(failed, Failure) and failed.error_type == "PoisonError"


def test_cancelling_execute_interrupts_a_coroutine() -> None:
    app = TaskRegistry()
    seen: list[str] = []

    @app.task(name="wait")
    async def wait(payload: Any) -> None:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            seen.append("cancelled")
            raise

    async def scenario() -> bool:
        task = app.get("wait")
        assert task is not None
        running = asyncio.create_task(execute(task, dispatched(None), ctx()))
        await asyncio.sleep(0.05)
        running.cancel()
        await asyncio.wait({running})
        return running.cancelled()

    assert asyncio.run(scenario())
    assert seen == ["cancelled"]


def test_context_pickles_without_its_heartbeat() -> None:
    import pickle

    beats: list[int] = []
    c = TaskContext(task_id="T", attempt=3, headers={"a": "b"}, heartbeat=lambda: beats.append(1))
    c.heartbeat()
    copy = pickle.loads(pickle.dumps(c))
    copy.heartbeat()
    assert beats == [1] and copy.attempt == 3 and copy.headers == {"a": "b"}


# -- flow control ----------------------------------------------------------------


def test_commit_waits_for_every_earlier_record() -> None:
    tracker, tp = OffsetTracker(), ("ready.default.p0", 0)
    for offset in (5, 6, 7):
        tracker.delivered(tp, offset)
    assert tracker.committable(tp) == 5
    tracker.settled(tp, 6)
    assert tracker.committable(tp) == 5  # 5 has not started yet
    tracker.settled(tp, 5)
    assert tracker.committable(tp) == 7
    tracker.settled(tp, 7)
    assert tracker.to_commit() == {tp: 8}
    tracker.mark_committed(tp, 8)
    assert tracker.to_commit() == {}


@given(st.permutations(list(range(20))), st.integers(0, 20))
def test_commit_is_never_past_an_unstarted_record(order: list[int], how_many: int) -> None:
    tracker, tp = OffsetTracker(), ("t", 0)
    for offset in range(20):
        tracker.delivered(tp, offset)
    started = set(order[:how_many])
    for offset in order[:how_many]:
        tracker.settled(tp, offset)
    target = tracker.committable(tp)
    assert target is not None
    assert all(o in started for o in range(target))  # everything below is started
    assert target == 20 or target not in started  # and it is as far as it can go


def test_higher_levels_pause_lower_ones() -> None:
    levels = {("p2", 0): 2, ("p1", 0): 1, ("p0", 0): 0, ("p0", 1): 0}
    waiting = waiting_levels(levels, {0: 3}, {("p2", 0): 4})
    assert waiting == {0, 2}
    assert desired_paused(levels, waiting, full=False, queue_paused=False) == {
        ("p1", 0), ("p0", 0), ("p0", 1)}
    assert desired_paused(levels, {0}, full=False, queue_paused=False) == set()
    assert desired_paused(levels, set(), full=True, queue_paused=False) == set(levels)
    assert desired_paused(levels, set(), full=False, queue_paused=True) == set(levels)
    assert level_of_topic("x.ready.q-1.p7") == 7


def test_a_full_buffer_pauses_only_when_it_stays_full() -> None:
    """Pausing drops what librdkafka fetched ahead: a buffer that is full for a moment
    (the dispatcher is taking records) must not pause, one that stays full must."""
    gate = Backpressure(prefetch=10, stall_s=1.0)
    assert not gate.update(10, now=0.0)
    assert not gate.update(9, now=0.5)  # a slot freed: the clock starts again
    assert not gate.update(10, now=0.6)
    assert not gate.update(12, now=1.5)
    assert gate.update(10, now=1.6)  # full for a whole stall_s
    assert gate.update(6, now=1.7)  # paused until half of the buffer has started
    assert not gate.update(5, now=1.8)
    assert not gate.update(10, now=1.9)


@given(st.lists(st.tuples(st.integers(0, 20), st.floats(0, 0.5)), max_size=60))
def test_backpressure_never_pauses_a_buffer_with_room(steps: list[tuple[int, float]]) -> None:
    gate, now, full_since = Backpressure(prefetch=10, stall_s=1.0), 0.0, None
    for buffered, dt in steps:
        now += dt
        was_paused = gate.paused
        paused = gate.update(buffered, now)
        full_since = (full_since if full_since is not None else now) if buffered >= 10 else None
        if paused and not was_paused:  # pauses only after stall_s of a full buffer
            assert full_since is not None and now - full_since >= 1.0
        if buffered <= 5:
            assert not paused


def test_queue_commands_round_trip() -> None:
    cmd = parse_command(b"emails", encode_command(True, 123))
    assert cmd is not None and cmd.paused and cmd.updated_at_ms == 123 and cmd.queue == "emails"
    tombstone = parse_command(b"emails", None)
    assert tombstone is not None and not tombstone.paused
    assert parse_command(b"emails", b"not json") is None
    assert parse_command(None, encode_command(True, 1)) is None


def test_attempt_memory_keeps_the_newest_and_tells_attempts_apart() -> None:
    """A worker skips a record read again whose attempt settled here, or was withdrawn
    (issue 21, D49); the memory is bounded, oldest forgotten first, and a later attempt
    is a new one."""
    from tests.test_worker_support import ready_envelope
    memory = AttemptMemory(capacity=2)
    a, b, c = (ready_envelope("examples.noop") for _ in range(3))
    memory.add(a.task_id, a.attempt)
    assert a in memory and b not in memory
    assert ready_envelope("examples.noop", task_id=a.task_id, attempt=2) not in memory
    memory.add(b.task_id, b.attempt)
    memory.add(c.task_id, c.attempt)
    assert a not in memory and b in memory and c in memory
    # an attempt settled twice (two of its events acknowledged) is one entry, and
    # keeps its place: the next new one forgets b, the oldest, not c
    memory.add(c.task_id, c.attempt)
    memory.add(a.task_id, a.attempt)
    assert b not in memory and c in memory and a in memory


def test_attempt_memory_forgets_in_order_far_past_its_bound() -> None:
    """Many times its capacity: exactly the newest ``capacity`` attempts are kept."""
    from tests.test_worker_support import ready_envelope
    memory = AttemptMemory(capacity=100)
    attempts = [ready_envelope("examples.noop") for _ in range(2_500)]
    for envelope in attempts:
        memory.add(envelope.task_id, envelope.attempt)
    assert [i for i, envelope in enumerate(attempts) if envelope in memory] == list(
        range(2_400, 2_500))
