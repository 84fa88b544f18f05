"""The pure parts of issue 16's worker side, without a broker: tag topics (D38), batches
(D39), the auto-concurrency controller and resizable slots (D40)."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from taskstream.api.bulk import BulkCancelBody, bulk_query
from taskstream.api.errors import ApiError
from taskstream.api.query import ListQuery
from taskstream.api.views import validated
from taskstream.cli.admin_cmds import unserved_notes
from taskstream.processors.fold.effects import Dispatch, Effect
from taskstream.processors.fold.lifecycle import redo_effects
from taskstream.schemas.events import (
    FlowControl,
    RateGranted,
    SlotGranted,
    TaskDispatched,
    TimerKind,
)
from taskstream.schemas.state import TaskStatus
from taskstream.settings import Settings
from taskstream.topics import (
    MAX_TOPIC_NAME,
    ReadyTopic,
    canonical_tags,
    dispatch_topic,
    parse_ready_topic,
    parse_route,
    ready_subscription,
    ready_topic,
    ready_topics,
    route_key,
    route_tags,
)
from taskstream.workers import NonRetryableError, Retry, TaskApp, TaskContext
from taskstream.workers.autoscale import AutoConcurrency, Bounds, Sample, parse_concurrency
from taskstream.workers.batch import Batcher, batch_outcomes
from taskstream.workers.errors import RegistrationError, WorkerError
from taskstream.workers.flow import level_of_topic
from taskstream.workers.lag import partition_lag, queue_lag
from taskstream.workers.outcome import Failure, Success
from taskstream.workers.runtime import Pool, execute_batch
from taskstream.workers.slots import Slots
from tests.lifecycle_support import T0, Story, submitted

SETTINGS = Settings(topic_prefix="ts.x-1.")
TAGS = st.lists(st.from_regex(r"[A-Za-z0-9_-]{1,8}", fullmatch=True), max_size=4)


# -- tags and topic names -------------------------------------------------------------


def test_untagged_ready_topics_keep_their_names() -> None:
    assert ready_topic(SETTINGS, "q", 2) == "ts.x-1.ready.q.p2"
    assert ready_topics(SETTINGS, "q") == ["ts.x-1.ready.q.p2", "ts.x-1.ready.q.p1",
                                           "ts.x-1.ready.q.p0"]
    assert ready_subscription(SETTINGS, "q") == ready_topics(SETTINGS, "q")


def test_a_tag_set_is_sorted_without_repeats() -> None:
    assert ready_topic(SETTINGS, "q", 0, ["ssd", "gpu", "ssd"]) == "ts.x-1.ready.q.t.gpu.ssd.p0"
    assert canonical_tags(["b", "a", "b"]) == ("a", "b")


@pytest.mark.parametrize("tags", [["g.pu"], [""], ["a b"], ["x" * 33], list("abcde")])
def test_bad_tags_are_refused(tags: list[str]) -> None:
    with pytest.raises(ValueError, match="tag"):
        canonical_tags(tags)


def test_dispatches_are_routed_by_their_tags_and_never_crash_the_fold() -> None:
    assert dispatch_topic(SETTINGS, "q", 1, ["b", "a"]) == "ts.x-1.ready.q.t.a.b.p1"
    assert dispatch_topic(SETTINGS, "q", 1) == ready_topic(SETTINGS, "q", 1)
    assert route_key(SETTINGS, "q") == "q"
    assert route_key(SETTINGS, "q", ["b", "a"]) == "q.t.a.b"
    assert parse_route("q.t.a.b") == ("q", ("a", "b")) and parse_route("q") == ("q", ())
    for bad in (["g.pu"], [""], ["x" * 40] * 2, [f"t{i}" for i in range(20)]):
        (placeholder,) = route_tags(SETTINGS, "q", bad)
        assert placeholder.startswith("unroutable-") and len(placeholder) == 43
        assert route_tags(SETTINGS, "q", [placeholder]) == (placeholder,)
        name = dispatch_topic(SETTINGS, "q", 0, bad)
        assert parse_ready_topic(SETTINGS, name) == ReadyTopic("q", (placeholder,), 0)
        with pytest.raises(ValueError):
            canonical_tags([placeholder], most=16)  # no worker can be started with it


def test_a_topic_name_over_kafkas_limit_is_refused() -> None:
    long = Settings(topic_prefix="p" * 100 + ".")
    with pytest.raises(ValueError, match=str(MAX_TOPIC_NAME)):
        ready_topic(long, "q" * 64, 0, ["a" * 32, "b" * 32, "c" * 32])


@given(queue=st.from_regex(r"[A-Za-z0-9_-]{1,12}", fullmatch=True), tags=TAGS,
       level=st.integers(0, 2))
def test_ready_topic_names_read_back(queue: str, tags: list[str], level: int) -> None:
    name = ready_topic(SETTINGS, queue, level, tags)
    assert parse_ready_topic(SETTINGS, name) == ReadyTopic(queue, canonical_tags(tags), level)
    assert level_of_topic(name) == level


@pytest.mark.parametrize("name", ["ts.x-1.events", "ts.x-1.ready.q", "ts.x-1.ready.q.t.p0",
                                  "ts.x-1.ready.q.t.b.a.p0", "other.ready.q.p0",
                                  "ts.x-1.ready.q.gpu.p0"])
def test_other_names_are_not_ready_topics(name: str) -> None:
    assert parse_ready_topic(SETTINGS, name) is None


@given(worker=TAGS, task=TAGS)
def test_a_worker_subscribes_to_exactly_the_subsets_of_its_tags(worker: list[str],
                                                                task: list[str]) -> None:
    """librdkafka's pattern syntax here is the POSIX subset Python's re also reads."""
    subscription = ready_subscription(SETTINGS, "q", worker)
    if not worker:
        assert subscription == ready_topics(SETTINGS, "q")
        return
    (pattern,) = subscription
    assert pattern.startswith("^")
    name = ready_topic(SETTINGS, "q", 1, task)
    assert bool(re.match(pattern, name)) == (set(task) <= set(worker))
    assert not re.match(pattern, ready_topic(SETTINGS, "q2", 1, task))
    assert not re.match(pattern, name + "x")


def test_every_subset_matches_and_nothing_else() -> None:
    (pattern,) = ready_subscription(SETTINGS, "q", ["gpu", "ssd", "arm"])
    for size in range(4):
        for subset in itertools.combinations(["arm", "gpu", "ssd"], size):
            assert re.match(pattern, ready_topic(SETTINGS, "q", 0, subset))
    assert not re.match(pattern, ready_topic(SETTINGS, "q", 0, ["gpu", "x86"]))
    assert not re.match(pattern, "ts.x-1.ready.q.t.ssd.gpu.p0")  # not canonical: never made


# -- batches ----------------------------------------------------------------------------


def test_a_batch_is_due_when_full_or_when_its_wait_has_passed() -> None:
    batcher: Batcher[int] = Batcher()
    for i in range(3):
        batcher.add("a", i, now=10.0, size=3, wait_s=0.5)
    batcher.add("b", 100, now=10.0, size=5, wait_s=0.5)
    assert batcher.pop_due(10.0) == ("a", [0, 1, 2])
    assert batcher.pop_due(10.1) is None
    assert batcher.seconds_to_due(10.1) == pytest.approx(0.4)
    assert batcher.pop_due(10.5) == ("b", [100])
    assert batcher.seconds_to_due(10.5) is None and len(batcher) == 0


def test_an_overfull_batch_leaves_the_rest_for_the_next() -> None:
    batcher: Batcher[int] = Batcher()
    for i in range(5):
        batcher.add("a", i, now=0.0, size=2, wait_s=1.0)
    assert batcher.pop_due(0.0) == ("a", [0, 1])
    assert batcher.pop_due(0.0) == ("a", [2, 3])
    assert batcher.pop_due(0.0) is None
    assert batcher.drain() == [4]


@given(st.lists(st.tuples(st.sampled_from("abc"), st.floats(0, 10)), max_size=60),
       st.integers(1, 7))
def test_the_batcher_loses_and_repeats_nothing(adds: list[tuple[str, float]], size: int
                                               ) -> None:
    batcher: Batcher[int] = Batcher()
    out: list[int] = []
    now = 0.0
    for n, (key, step) in enumerate(adds):
        now += step
        batcher.add(key, n, now, size=size, wait_s=1.0)
        while (due := batcher.pop_due(now)) is not None:
            assert 1 <= len(due[1]) <= size
            out.extend(due[1])
    out.extend(batcher.drain())
    assert sorted(out) == list(range(len(adds)))


def test_batch_outcomes_one_per_task() -> None:
    outcomes = batch_outcomes([{"x": 1}, Retry("later", after=2), NonRetryableError("no"),
                               b"raw"], 4)
    assert outcomes[0] == Success(b'{"x":1}')
    assert isinstance(outcomes[1], Failure) and outcomes[1].retryable
    assert outcomes[1].retry_after_ms == 2000
    assert isinstance(outcomes[2], Failure) and not outcomes[2].retryable
    assert outcomes[3] == Success(b"raw", "application/octet-stream")


@pytest.mark.parametrize("value", [None, [1], (1, 2, 3), {"a": 1}])
def test_a_wrong_batch_result_fails_every_task_for_good(value: object) -> None:
    outcomes = batch_outcomes(value, 2)
    assert len(outcomes) == 2
    assert all(isinstance(o, Failure) and o.error_type == "BatchResultError"
               and not o.retryable for o in outcomes)


def _dispatched(payload: bytes, timeout_ms: int | None = None) -> TaskDispatched:
    return TaskDispatched(dispatch_id="d", name="b", queue="default", priority=0,
                          payload=payload, content_type="application/json",
                          timeout_ms=timeout_ms, lease_ms=30_000, max_attempts=3,
                          submitted_at_ms=0)


def _ctxs(n: int) -> list[TaskContext]:
    return [TaskContext(task_id=f"T{i}", attempt=1) for i in range(n)]


def test_execute_batch_leaves_an_undecodable_payload_out_of_the_call() -> None:
    app = TaskApp()
    seen: list[list[int]] = []

    @app.task(name="b", batch_size=10)
    def double(payloads: list[int], ctxs: list[TaskContext]) -> list[int]:
        seen.append(payloads)
        assert [c.task_id for c in ctxs] == ["T0", "T2"]
        return [p * 2 for p in payloads]

    task = app.get("b")
    assert task is not None and task.is_batch and task.takes_context
    records = [_dispatched(b"1"), _dispatched(b"{nope"), _dispatched(b"3")]
    ctxs = _ctxs(3)
    outcomes = asyncio.run(execute_batch(task, records, ctxs, Pool.THREAD))
    assert seen == [[1, 3]]
    assert outcomes[0] == Success(b"2") and outcomes[2] == Success(b"6")
    assert isinstance(outcomes[1], Failure) and outcomes[1].error_type == "PayloadDecodeError"


def test_a_raising_or_slow_batch_fails_every_task() -> None:
    app = TaskApp()

    @app.task(name="boom", batch_size=10)
    async def boom(payloads: list[int]) -> list[int]:
        raise ValueError("all of them")

    @app.task(name="slow", batch_size=10)
    async def slow(payloads: list[int]) -> list[int]:
        await asyncio.sleep(30)
        return payloads

    boom_def, slow_def = app.get("boom"), app.get("slow")
    assert boom_def is not None and slow_def is not None
    raised = asyncio.run(execute_batch(boom_def, [_dispatched(b"1")] * 2, _ctxs(2)))
    assert [o.error_type for o in raised if isinstance(o, Failure)] == ["ValueError"] * 2
    timed = asyncio.run(execute_batch(slow_def, [_dispatched(b"1", 50), _dispatched(b"1")],
                                      _ctxs(2)))
    assert all(isinstance(o, Failure) and o.timed_out for o in timed)


def test_batch_registration_is_checked() -> None:
    app = TaskApp()
    with pytest.raises(RegistrationError, match="batch_size"):
        app.add(lambda p: p, name="a", batch_size=0)
    with pytest.raises(RegistrationError, match="batch_wait"):
        app.add(lambda p: p, name="b", batch_size=2, batch_wait=-1)


# -- auto concurrency ---------------------------------------------------------------------


def test_it_grows_while_tasks_wait_and_the_machine_has_room() -> None:
    auto = AutoConcurrency(Bounds(2, 20))
    limits = [auto.step(Sample(waiting=100, in_use=auto.limit, cpu_busy=0.2,
                               mem_available=0.8)) for _ in range(10)]
    assert limits[:4] == [3, 4, 6, 9] and limits[-1] == 20


def test_it_does_not_grow_into_a_full_cpu_and_backs_off() -> None:
    auto = AutoConcurrency(Bounds(2, 20), start=16)
    assert auto.step(Sample(waiting=100, in_use=16, cpu_busy=0.97, mem_available=0.8)) == 14
    auto = AutoConcurrency(Bounds(2, 20), start=16)
    assert auto.step(Sample(waiting=100, in_use=16, cpu_busy=0.2, mem_available=0.05)) == 14


def test_it_shrinks_only_after_idle_ticks() -> None:
    auto = AutoConcurrency(Bounds(2, 64), start=40, idle_ticks=3)
    idle = Sample(waiting=0, in_use=1, cpu_busy=0.1, mem_available=0.9)
    assert [auto.step(idle) for _ in range(6)] == [40, 40, 30, 30, 30, 23]


@given(st.lists(st.tuples(st.integers(0, 500), st.integers(0, 100), st.floats(0, 1),
                          st.floats(0, 1)), max_size=80),
       st.integers(1, 10), st.integers(0, 50))
def test_the_limit_always_stays_within_bounds(ticks: list[tuple[int, int, float, float]],
                                              low: int, extra: int) -> None:
    auto = AutoConcurrency(Bounds(low, low + extra))
    for waiting, in_use, cpu, mem in ticks:
        before = auto.limit
        limit = auto.step(Sample(waiting, in_use, cpu, mem))
        assert low <= limit <= low + extra
        if limit > before:  # growth needs a backlog, busy slots and room
            assert waiting > 0 and in_use >= before and cpu < 0.85 and mem > 0.10


def test_concurrency_option_and_bounds_are_checked() -> None:
    assert parse_concurrency("auto") is None and parse_concurrency("8") == 8
    for bad in ("0", "\u00b2", "x"):
        with pytest.raises(WorkerError):
            parse_concurrency(bad)
    with pytest.raises(WorkerError):
        Bounds(5, 2)


def test_slots_follow_a_new_limit() -> None:
    async def scenario() -> list[str]:
        slots, log = Slots(2), []
        await slots.acquire()
        await slots.acquire()
        waiter = asyncio.create_task(slots.acquire())
        await asyncio.sleep(0.01)
        log.append(f"blocked={not waiter.done()}")
        slots.set_limit(3)
        await asyncio.wait_for(waiter, 5)
        log.append(f"in_use={slots.in_use}")
        slots.set_limit(1)
        slots.release()
        blocked = asyncio.create_task(slots.acquire())
        await asyncio.sleep(0.01)
        log.append(f"over_limit_blocked={not blocked.done()}")
        slots.release()
        slots.release()
        await asyncio.wait_for(blocked, 5)
        log.append(f"in_use={slots.in_use}")
        return log

    assert asyncio.run(scenario()) == ["blocked=True", "in_use=3", "over_limit_blocked=True",
                                       "in_use=1"]




# -- lag and bulk filters --------------------------------------------------------------------


def test_partition_lag_counts_from_the_commit_or_the_start() -> None:
    assert partition_lag(end=10, start=0, committed=None) == 10
    assert partition_lag(end=10, start=4, committed=None) == 6
    assert partition_lag(end=10, start=4, committed=7) == 3
    assert partition_lag(end=10, start=8, committed=2) == 2  # records before start are gone


def test_queue_lag_names_the_tag_sets_no_worker_holds() -> None:
    plain, gpu = ready_topic(SETTINGS, "q", 0), ready_topic(SETTINGS, "q", 0, ["gpu"])
    topics = {plain: ReadyTopic("q", (), 0), gpu: ReadyTopic("q", ("gpu",), 0)}
    lag = queue_lag("q", "g", topics, {plain: 2, gpu: 2},
                    ends={(plain, 0): 5, (plain, 1): 1, (gpu, 0): 4, (gpu, 1): 3},
                    starts={}, committed={(plain, 0): 5, (gpu, 0): 1},
                    assigned=[(plain, 0), (plain, 1)], members=1)
    assert lag.lag == 1 + 3 + 3 and lag.unserved == {("gpu",): 6}
    assert lag.body()["unserved"] == [{"tags": ["gpu"], "lag": 6}]


def _bulk(data: dict[str, object]) -> tuple[ListQuery, BulkCancelBody]:
    body = validated(BulkCancelBody, data)  # as the view reads a body
    return bulk_query(body), body


def test_bulk_cancel_needs_a_filter_and_a_cancellable_state() -> None:
    query, body = _bulk({"queue": "q", "state": "ready",
                         "submitted_before": "2026-01-01T00:00:00Z", "dry_run": True})
    assert query.queue == "q" and query.state is TaskStatus.READY and body.dry_run
    assert query.before_ms == 1767225600000
    for bad in ({}, {"dry_run": True}, {"state": "SUCCEEDED"}, {"queue": "q", "x": 1},
                {"submitted_before": "yesterday"}):
        with pytest.raises(ApiError) as info:
            _bulk(bad)
        assert info.value.status == 400


def test_the_queues_table_says_which_tags_wait() -> None:
    queues = [{"name": "q", "lag": {"unserved": [{"tags": ["gpu"], "lag": 4}]}},
              {"name": "r", "lag": None}]
    assert unserved_notes(queues) == [
        "queue q: 4 task(s) tagged gpu waiting: no live worker has tags gpu"]


def _routed(effects: list[Effect]) -> list[tuple[str, ...]]:
    return [e.tags for e in effects if isinstance(e, Dispatch)]


def test_every_way_to_ready_routes_by_the_tasks_tags() -> None:
    """A tagged task's dispatch carries its tags however it becomes READY: at once, after
    its delay, after a retry, after its slot and token (D32), so the engine never sends it
    to the untagged topic (D38); the redo of a READY task's dispatch too (D4)."""
    s = Story()
    assert _routed(s.submit()) == [("t",)]  # lifecycle_support's submission is tagged "t"
    s.start()
    s.fail()
    assert _routed(s.fire(TimerKind.RETRY_DUE)) == [("t",)]
    assert _routed(redo_effects(s.s, "again")) == [("t",)]

    s = Story()
    s.submit(eta_ms=T0 + 60_000)
    assert _routed(s.fire(TimerKind.DELAY_DUE)) == [("t",)]

    s = Story()
    gated = dataclasses.replace(submitted(), flow=FlowControl(
        rate_limit="emails", concurrency_key="acct-7", max_concurrency=2))
    assert _routed(s.send(gated)) == []
    assert _routed(s.send(SlotGranted("acct-7", 1), attempt=s.s.attempt)) == []
    assert _routed(s.send(RateGranted("emails", None), attempt=s.s.attempt)) == [("t",)]
