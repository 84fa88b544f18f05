"""Schedules, dependencies, rate limits, concurrency keys and expiry in the live fold.

Real broker, real processor replicas (issues 15 and 16; D37, D32, D33). The workers
are miniatures in the test (start, run, succeed or fail each dispatch as told), so the
processors are what is under test: what they grant and dispatch, read from the log.

Sizes are the issues' where they are cheap; where a full size only costs time it is an
environment variable (the default keeps CI short; the full-size command is in
docs/flow-control.md and docs/schedules-and-dependencies.md):

* ``TASKSTREAM_TEST_RATE_TASKS`` (300 by default, the issue's count);
* ``TASKSTREAM_TEST_MUTEX_TASKS`` (30 by default, the issue's count).
"""

from __future__ import annotations

import itertools
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from taskstream.processors.fold.schedule import FIRE_TIME_HEADER, SCHEDULE_HEADER
from taskstream.processors.replay.verify import verify
from taskstream.schemas.entity_keys import limit_key, schedule_key
from taskstream.schemas.events import (
    Backoff,
    Envelope,
    FlowControl,
    LimitSet,
    MisfirePolicy,
    ParentFailurePolicy,
    ScheduleCommand,
    ScheduleOp,
    ScheduleSet,
    ScheduleSpec,
    TaskDispatched,
    TaskFailed,
    TaskStarted,
    TaskSubmitted,
    TaskSucceeded,
)
from taskstream.schemas.ids import new_event_id, new_task_id
from taskstream.schemas.serde import encode_event
from taskstream.schemas.state import ScheduleState, TaskState, TaskStatus
from taskstream.settings import Settings
from taskstream.topics import ready_topic
from tests.harness import EventWriter, ProcessorProcess, StateReader, TopicReader, wait_for

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

S = TaskStatus
RATE_TASKS = int(os.environ.get("TASKSTREAM_TEST_RATE_TASKS", "300"))
MUTEX_TASKS = int(os.environ.get("TASKSTREAM_TEST_MUTEX_TASKS", "30"))


def body(*, depends_on: list[str] | None = None, flow: FlowControl | None = None,
         expires_at_ms: int | None = None, eta_ms: int | None = None, lease_ms: int = 30_000,
         max_attempts: int = 1, timeout_ms: int = 10_000, name: str = "demo.add",
         policy: ParentFailurePolicy = ParentFailurePolicy.CANCEL) -> TaskSubmitted:
    return TaskSubmitted(
        name=name, queue="default", priority=0, payload=b"{}",
        content_type="application/json", eta_ms=eta_ms, max_attempts=max_attempts,
        backoff=Backoff(initial_ms=200, multiplier=1.0, max_ms=200, jitter=0.0),
        timeout_ms=None, lease_ms=lease_ms, depends_on=depends_on or [],
        on_parent_failure=policy,
        dependency_timeout_ms=timeout_ms if depends_on else None,
        expires_at_ms=expires_at_ms, flow=flow)


class MiniWorkers:
    """Workers in miniature: each dispatch read from the ready topic is started and, after
    ``run_s``, succeeded (or failed for good when its task is in ``fail``), on a pool of
    ``size`` threads, so two dispatches of the processors run at once if they come at once.
    A task in ``crash`` is started and then never heard of again (a SIGKILLed worker)."""

    def __init__(self, settings: Settings, size: int = 3, run_s: float = 0.0) -> None:
        self.writer = EventWriter(settings)
        self.ready = TopicReader(settings, ready_topic(settings, "default", 0))
        self.pool = ThreadPoolExecutor(size)
        self.run_s = run_s
        self.fail: set[str] = set()
        self.crash: set[str] = set()
        self.dispatches: list[tuple[int, str]] = []  # (dispatched at, task id) from the log
        self.started: set[str] = set()
        self._lock = threading.Lock()

    def pump(self) -> None:
        for env in self.ready.envelopes(0.2):
            assert isinstance(env.body, TaskDispatched)
            self.dispatches.append((env.occurred_at_ms, env.task_id))
            key = f"{env.task_id}/{env.body.dispatch_id}"
            with self._lock:
                if key in self.started:
                    continue  # a redone dispatch (same dispatch id): a worker fences it
                self.started.add(key)
            self.pool.submit(self._run, env.task_id, env.attempt, env.body.dispatch_id)

    def _run(self, task_id: str, attempt: int, dispatch_id: str) -> None:
        writer = self.writer  # one producer, shared by the threads (it is thread-safe)
        writer.send(task_id, TaskStarted(dispatch_id, "w"), attempt)
        if task_id in self.crash:
            return
        if self.run_s:
            time.sleep(self.run_s)
        if task_id in self.fail:
            writer.send(task_id, TaskFailed(dispatch_id, "w", "Boom", "failed on purpose",
                                            retryable=False), attempt)
        else:
            writer.send(task_id, TaskSucceeded(dispatch_id, "w", b"1"), attempt)

    def close(self) -> None:
        self.pool.shutdown(wait=True)
        self.ready.close()


@pytest.fixture
def replicas(topics: Settings, tmp_path: Path) -> Iterator[Callable[[int], list[ProcessorProcess]]]:
    started: list[ProcessorProcess] = []

    def start(n: int) -> list[ProcessorProcess]:
        procs = [ProcessorProcess(topics, tmp_path / f"r{len(started) + i}") for i in range(n)]
        for proc in procs:
            started.append(proc.start())
        return procs

    yield start
    for proc in started:
        proc.stop()


def settle(workers: MiniWorkers, states: StateReader, task_ids: list[str], what: str,
           done: Callable[[TaskState], bool] = lambda s: s.status.terminal,
           timeout: float = 120.0) -> dict[str, TaskState]:
    def check() -> bool:
        workers.pump()
        now = states.refresh()
        return all(t in now and done(now[t]) for t in task_ids)

    wait_for(what, check, timeout=timeout, interval=0.05)
    return {t: states.states[t] for t in task_ids}


def send_all(settings: Settings, items: list[tuple[str, TaskSubmitted]]) -> None:
    """Submit many tasks at once (one flush at the end)."""
    writer = EventWriter(settings)
    now = int(time.time() * 1000)
    for task_id, submitted in items:
        env = Envelope(new_event_id(), task_id, now, "test", 0, submitted)
        writer.producer.produce(settings.topic("events"), key=task_id.encode(),
                                value=encode_event(env))
    assert writer.producer.flush(30) == 0


def assert_verified(settings: Settings, tmp_path: Path) -> None:
    """The oracle: the live tables are exactly the fold of the log, every kind."""
    report = verify(settings, wait_timeout=60, workdir=tmp_path)
    assert report.mismatches == (), [m.describe() for m in report.mismatches]


# --- dependencies (issue 15) ----------------------------------------------------------


def test_a_diamond_runs_in_order_and_a_failed_parent_cancels_the_rest(
        topics: Settings, tmp_path: Path, replicas: Callable[[int], list[ProcessorProcess]],
) -> None:
    """A→(B, C)→D: D starts only after B and C succeeded. A second diamond whose A ends
    DEAD: B, C and D are CANCELLED with the reason. A child of a finished parent runs
    at once; a child of a parent nobody submitted times out (DependencyTimeout)."""
    replicas(1)
    workers, states, writer = MiniWorkers(topics), StateReader(topics), EventWriter(topics)
    try:
        a, b, c, d = (new_task_id() for _ in range(4))
        fa, fb, fc, fd = (new_task_id() for _ in range(4))
        workers.fail.add(fa)
        for root, x, y, z in ((a, b, c, d), (fa, fb, fc, fd)):
            writer.send(root, body())
            writer.send(x, body(depends_on=[root]))
            writer.send(y, body(depends_on=[root]))
            writer.send(z, body(depends_on=[x, y]))
        ghost_child = new_task_id()
        writer.send(ghost_child, body(depends_on=[new_task_id()], timeout_ms=2_000))
        done = settle(workers, states, [a, b, c, d, fa, fb, fc, fd, ghost_child], "graphs settled")
        assert [done[t].status for t in (a, b, c, d)] == [S.SUCCEEDED] * 4
        assert done[d].started_at_ms is not None
        assert done[d].started_at_ms >= max(done[b].finished_at_ms or 0,
                                            done[c].finished_at_ms or 0)
        assert done[b].started_at_ms is not None and done[b].started_at_ms >= (
            done[a].finished_at_ms or 0)
        assert done[fa].status is S.DEAD
        for t in (fb, fc, fd):
            assert done[t].status is S.CANCELLED, t
            assert "ended DEAD" in (done[t].cancel_reason or ""), done[t].cancel_reason
        assert done[ghost_child].status is S.DEAD
        assert done[ghost_child].last_error is not None
        assert done[ghost_child].last_error.error_type == "DependencyTimeout"
        late = new_task_id()  # its parent finished long ago: it runs at once
        writer.send(late, body(depends_on=[a]))
        assert settle(workers, states, [late], "late child")[late].status is S.SUCCEEDED
        assert_verified(topics, tmp_path)
    finally:
        workers.close()


def test_a_graph_completes_across_a_replica_kill(
        topics: Settings, tmp_path: Path, replicas: Callable[[int], list[ProcessorProcess]],
) -> None:
    """Two replicas, one SIGKILLed mid-graph: every task succeeds with exactly one
    accepted completion (attempt 1, no duplicates), and replay verify is clean."""
    procs = replicas(2)
    workers, states, writer = MiniWorkers(topics, run_s=0.05), StateReader(topics), \
        EventWriter(topics)
    try:
        roots = [new_task_id() for _ in range(10)]
        mids = [new_task_id() for _ in range(20)]
        sinks = [new_task_id() for _ in range(10)]
        for r in roots:
            writer.send(r, body())
        for i, m in enumerate(mids):
            writer.send(m, body(depends_on=[roots[i % 10], roots[(i + 1) % 10]]))
        for i, s in enumerate(sinks):
            writer.send(s, body(depends_on=[mids[2 * i], mids[2 * i + 1]]))
        wait_for("some roots done", lambda: (workers.pump(), sum(
            st.status is S.SUCCEEDED for st in states.refresh().values()) >= 5)[1], timeout=60)
        procs[1].stop(signal.SIGKILL)
        everything = roots + mids + sinks
        done = settle(workers, states, everything, "the graph after the kill", timeout=180)
        wrong = {t: (s.status.value, s.attempt, s.duplicates) for t, s in done.items()
                 if (s.status, s.attempt, s.duplicates) != (S.SUCCEEDED, 1, 0)}
        assert wrong == {}
        runs = {}
        for key in workers.started:
            runs[key.split("/")[0]] = runs.get(key.split("/")[0], 0) + 1
        extra = {t: n for t, n in runs.items() if n > 1}
        print(f"handler runs: {sum(runs.values())} for {len(everything)} tasks; more than one "
              f"run (each the kill's, a dispatch redone under a new id): {extra}")
        assert_verified(topics, tmp_path)
    finally:
        workers.close()


# --- schedules (issue 15) -------------------------------------------------------------


def test_a_schedule_fires_once_per_tick_across_a_replica_kill(
        topics: Settings, tmp_path: Path, replicas: Callable[[int], list[ProcessorProcess]],
) -> None:
    """Every 2 s, misfire RUN_ONCE, two replicas, the one firing it SIGKILLed: each fire
    time submits at most one task (its ID derives from the fire time), the ticks missed
    during the failover are skipped but for the latest; pausing stops the firings and
    resuming fires the latest missed tick once and skips the others (RUN_ONCE)."""
    procs = replicas(2)
    writer, states = EventWriter(topics), StateReader(topics)
    key = schedule_key("tick")
    spec = ScheduleSpec(task=body(name="demo.tick"), every_ms=2_000,
                        misfire=MisfirePolicy.RUN_ONCE)
    writer.send(key, ScheduleSet(spec))

    def firings() -> dict[int, TaskState]:
        return {int(s.headers[FIRE_TIME_HEADER]): s for s in states.refresh().values()
                if s.headers.get(SCHEDULE_HEADER) == "tick"}

    wait_for("three firings", lambda: len(firings()) >= 3, timeout=60)

    def owns_it(proc: ProcessorProcess) -> bool:
        items = httpx.get(f"{proc.url}/internal/schedules", timeout=10).json()["items"]
        return any(item["schedule_id"] == "tick" for item in items)

    (owner,) = [p for p in procs if owns_it(p)]
    owner.stop(signal.SIGKILL)  # the replica that fires it
    before = len(firings())
    wait_for("three firings after the kill", lambda: len(firings()) >= before + 3, timeout=90)
    writer.send(key, ScheduleCommand(ScheduleOp.PAUSE, "test over"))

    def status() -> str | None:
        state = states.refresh_entities().get(key)
        return state.status.value if isinstance(state, ScheduleState) else None

    wait_for("paused", lambda: status() == "PAUSED", timeout=30)
    fired = firings()
    time.sleep(4.5)  # two ticks: a paused schedule fires nothing
    assert len(firings()) == len(fired)
    skipped_before = states.refresh_entities()[key]
    assert isinstance(skipped_before, ScheduleState)
    writer.send(key, ScheduleCommand(ScheduleOp.RESUME))
    # RUN_ONCE: the ticks missed while paused fire once (the latest), the others are skipped
    wait_for("a firing after the resume", lambda: len(firings()) > len(fired), timeout=30)
    writer.send(key, ScheduleCommand(ScheduleOp.PAUSE, "test over"))
    resumed = states.refresh_entities()[key]
    assert isinstance(resumed, ScheduleState) and resumed.skipped > skipped_before.skipped
    wait_for("paused again", lambda: status() == "PAUSED", timeout=30)
    fired = firings()
    times = sorted(fired)
    assert all((t - times[0]) % 2_000 == 0 for t in times)  # schedule times, not clocks
    assert all(s.duplicates == 0 for s in fired.values())
    schedule = states.entities[key]
    assert isinstance(schedule, ScheduleState)
    ticks = (times[-1] - times[0]) // 2_000 + 1
    assert schedule.fired == len(times)
    assert len(times) + schedule.skipped >= ticks, (times, schedule.skipped)
    print(f"schedule: {len(times)} firings, {schedule.skipped} ticks skipped over {ticks}")
    assert_verified(topics, tmp_path)


# --- rate limits (issue 16) -----------------------------------------------------------


def _granted_windows(dispatches: list[tuple[int, str]]) -> int:
    """The most first dispatches of distinct tasks in any 1-second window."""
    first: dict[str, int] = {}
    for at, task_id in dispatches:
        first.setdefault(task_id, at)
    times = sorted(first.values())
    most, j = 0, 0
    for i, t in enumerate(times):
        while times[j] <= t - 1_000:
            j += 1
        most = max(most, i - j + 1)
    return most


def _rate_run(topics: Settings, workers: MiniWorkers, states: StateReader, limit: str,
              n: int, kill: Callable[[], None] | None = None) -> tuple[float, int]:
    writer = EventWriter(topics)
    writer.send(limit_key(limit), LimitSet(limit, 50, 1_000, 10))
    ids = [new_task_id() for _ in range(n)]
    begun = time.monotonic()
    send_all(topics, [(t, body(flow=FlowControl(rate_limit=limit))) for t in ids])
    if kill is not None:
        wait_for("a third granted", lambda: (workers.pump(), len(
            {t for _, t in workers.dispatches if t in set(ids)}) >= n // 3)[1], timeout=60)
        kill()
    settle(workers, states, ids, f"{n} rate-limited tasks", timeout=180)
    took = time.monotonic() - begun
    mine = [(at, t) for at, t in workers.dispatches if t in set(ids)]
    span = (max(at for at, _ in mine) - min(at for at, _ in mine)) / 1000
    print(f"rate {limit}: dispatch times span {span:.1f}s")
    return took, _granted_windows(mine)


def test_a_rate_limit_holds_in_every_window_and_across_a_replica_kill(
        topics: Settings, tmp_path: Path, replicas: Callable[[int], list[ProcessorProcess]],
) -> None:
    """300 tasks under 50/s with a burst of 10: at most 60 dispatches in any 1-second
    window of the log's dispatch times, and the run takes at least (300 - 10) / 50 s.
    Then again with two replicas, one SIGKILLed mid-run: the limit still holds."""
    procs = replicas(2)
    workers, states = MiniWorkers(topics, size=8), StateReader(topics)
    try:
        took, most = _rate_run(topics, workers, states, "emails", RATE_TASKS)
        print(f"rate: {RATE_TASKS} tasks in {took:.1f}s, at most {most} granted in a second")
        assert most <= 50 + 10
        assert took >= (RATE_TASKS - 10) / 50 - 0.5  # the submit loop is timed by the test
        took, most = _rate_run(topics, workers, states, "sms", RATE_TASKS,
                               kill=lambda: procs[1].stop(signal.SIGKILL))
        print(f"rate with a kill: {took:.1f}s, at most {most} granted in a second")
        assert most <= 50 + 10
        assert_verified(topics, tmp_path)
    finally:
        workers.close()


# --- concurrency keys and expiry (issue 16) ---------------------------------------------


def test_a_mutex_never_overlaps_and_a_dead_holder_releases_after_its_lease(
        topics: Settings, tmp_path: Path, replicas: Callable[[int], list[ProcessorProcess]],
) -> None:
    """30 tasks with one key, max_concurrency 1, 100 ms each on 3 workers: no two
    [started, finished] intervals overlap (from the task states). The first holder's
    worker dies (it is never heard of again): the key is released when its lease lapses
    and the rest finish. A task whose expiry passes while it waits for the key ends
    EXPIRED and is never dispatched."""
    replicas(1)
    workers, states, writer = MiniWorkers(topics, size=3, run_s=0.1), StateReader(topics), \
        EventWriter(topics)
    try:
        mutex = FlowControl(concurrency_key="account-7", max_concurrency=1)
        holder = new_task_id()
        workers.crash.add(holder)
        writer.send(holder, body(flow=mutex, lease_ms=2_000))
        wait_for("the holder started", lambda: (workers.pump(), any(
            k.startswith(holder) for k in workers.started))[1], timeout=60)
        ids = [new_task_id() for _ in range(MUTEX_TASKS)]
        for task_id in ids:
            writer.send(task_id, body(flow=mutex))
        late = new_task_id()  # expires long before the line reaches it
        writer.send(late, body(flow=mutex, expires_at_ms=int(time.time() * 1000) + 1_000))
        done = settle(workers, states, [holder, late, *ids], "the key's line", timeout=180)
        assert done[holder].status is S.DEAD  # its lease lapsed (max_attempts 1)
        assert done[late].status is S.EXPIRED
        assert not [t for _, t in workers.dispatches if t == late]
        assert all(done[t].status is S.SUCCEEDED for t in ids)
        spans = sorted((done[t].started_at_ms or 0, done[t].finished_at_ms or 0) for t in ids)
        overlaps = [(x, y) for x, y in itertools.pairwise(spans) if y[0] < x[1]]
        assert overlaps == []
        first_start = spans[0][0]
        assert first_start >= (done[holder].started_at_ms or 0) + 2_000  # after the lease
        assert_verified(topics, tmp_path)
    finally:
        workers.close()


def test_an_expired_task_is_never_dispatched(
        topics: Settings, tmp_path: Path, replicas: Callable[[int], list[ProcessorProcess]],
) -> None:
    """A task delayed past its expiry ends EXPIRED with the reason, never dispatched;
    a child of it is cancelled, saying its parent expired."""
    replicas(1)
    workers, states, writer = MiniWorkers(topics), StateReader(topics), EventWriter(topics)
    try:
        now = int(time.time() * 1000)
        task, child = new_task_id(), new_task_id()
        writer.send(task, body(eta_ms=now + 5_000, expires_at_ms=now + 1_500))
        writer.send(child, body(depends_on=[task]))
        done = settle(workers, states, [task, child], "expiry", timeout=60)
        assert done[task].status is S.EXPIRED and done[task].status_reason
        assert done[child].status is S.CANCELLED
        assert "expired" in (done[child].cancel_reason or "")
        assert not [t for _, t in workers.dispatches if t in (task, child)]
    finally:
        workers.close()

