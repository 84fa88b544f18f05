"""The processor against the real broker: events in, state, dispatches and DLQ copies out.

Given a running ``taskstream processor`` replica, when events are written to the
events topic the way clients and workers write them, then the task table (read
through its changelog), the ready topics and the dlq topic show the lifecycle.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from confluent_kafka import Message

from taskstream.cli.main import main
from taskstream.dev.procs import settings_env
from taskstream.schemas.events import (
    Backoff,
    CancelRequested,
    Envelope,
    TaskDeadLettered,
    TaskDispatched,
    TaskFailed,
    TaskStarted,
    TaskSubmitted,
    TaskSucceeded,
)
from taskstream.schemas.ids import new_task_id
from taskstream.schemas.quarantine import QuarantineRecord
from taskstream.schemas.state import TaskStatus
from taskstream.settings import Settings
from taskstream.topics import events_topic, fold_group, ready_topic
from tests.harness import EventWriter, ProcessorProcess, StateReader, TopicReader, wait_for
from tests.test_worker_support import committed

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


def submitted(payload: bytes = b'{"n": 1}', *, max_attempts: int = 3, eta_ms: int | None = None,
              lease_ms: int = 30_000, priority: int = 0) -> TaskSubmitted:
    return TaskSubmitted(
        name="demo.add", queue="default", priority=priority, payload=payload,
        content_type="application/json", eta_ms=eta_ms, max_attempts=max_attempts,
        backoff=Backoff(initial_ms=200, multiplier=2.0, max_ms=1_000, jitter=0.0),
        timeout_ms=None, lease_ms=lease_ms,
    )


class Rig:
    def __init__(self, settings: Settings, base: Path) -> None:
        self.settings = settings
        self.base = base
        self.replicas: list[ProcessorProcess] = []
        self.writer = EventWriter(settings)
        self._states: StateReader | None = None
        self.ready = TopicReader(settings, ready_topic(settings, "default", 0))
        self.dispatches: list[Envelope] = []

    def start_replica(self, name: str = "replica0",
                      env: dict[str, str] | None = None) -> ProcessorProcess:
        replica = ProcessorProcess(self.settings, self.base / name, env=env).start()
        self.replicas.append(replica)
        return replica

    @property
    def states(self) -> StateReader:
        if self._states is None:
            self._states = StateReader(self.settings)
        return self._states

    def dispatch_of(self, task_id: str, attempt: int, timeout: float = 30.0) -> Envelope:
        def check() -> Envelope | None:
            self.dispatches.extend(self.ready.envelopes(0.2))
            for env in self.dispatches:
                if env.task_id == task_id and env.attempt == attempt:
                    return env
            return None

        return wait_for(f"dispatch of {task_id} attempt {attempt}", check, timeout=timeout)

    def start_and_finish(self, dispatch: Envelope, ok: bool = True,
                         retryable: bool = True) -> None:
        body = dispatch.body
        assert isinstance(body, TaskDispatched)
        self.writer.send(dispatch.task_id, TaskStarted(body.dispatch_id, "w1"), dispatch.attempt)
        if ok:
            self.writer.send(dispatch.task_id, TaskSucceeded(body.dispatch_id, "w1", b"3"),
                             dispatch.attempt)
        else:
            self.writer.send(dispatch.task_id, TaskFailed(
                body.dispatch_id, "w1", "ValueError", "boom", retryable=retryable),
                dispatch.attempt)

    def close(self) -> None:
        for replica in self.replicas:
            replica.stop()


@pytest.fixture
def rig(topics: Settings, tmp_path: Path) -> Iterator[Rig]:
    rig = Rig(topics, tmp_path)
    rig.start_replica()
    try:
        yield rig
    finally:
        rig.close()


def test_submit_dispatch_success(rig: Rig) -> None:
    task_id = new_task_id()
    rig.writer.send(task_id, submitted())
    dispatch = rig.dispatch_of(task_id, attempt=1)
    rig.start_and_finish(dispatch)
    state = rig.states.wait(task_id, lambda s: s.status is TaskStatus.SUCCEEDED, "success")
    assert state.result == b"3"
    assert state.attempt == 1


def test_failures_retry_with_backoff_then_dead_letter(rig: Rig) -> None:
    task_id = new_task_id()
    rig.writer.send(task_id, submitted(max_attempts=3))
    started = []
    for attempt in (1, 2, 3):
        dispatch = rig.dispatch_of(task_id, attempt)
        started.append(time.monotonic())
        rig.start_and_finish(dispatch, ok=False)
    state = rig.states.wait(task_id, lambda s: s.status is TaskStatus.DEAD, "dead")
    assert state.last_error is not None and state.last_error.message == "boom"
    assert state.retries == 2
    # backoff 200 ms then 400 ms: the third dispatch comes later than the second
    assert started[2] - started[1] >= 0.35
    dlq = TopicReader(rig.settings, rig.settings.topic("dlq"))
    copies = wait_for("dlq copy", lambda: [e for e in dlq.envelopes() if e.task_id == task_id])
    assert isinstance(copies[0].body, TaskDeadLettered)
    assert copies[0].body.error_type == "ValueError"


def test_non_retryable_failure_goes_straight_to_dead(rig: Rig) -> None:
    task_id = new_task_id()
    rig.writer.send(task_id, submitted(max_attempts=5))
    rig.start_and_finish(rig.dispatch_of(task_id, 1), ok=False, retryable=False)
    state = rig.states.wait(task_id, lambda s: s.status is TaskStatus.DEAD, "dead")
    assert state.attempt == 1


def test_delay_is_honoured(rig: Rig) -> None:
    task_id = new_task_id()
    eta = int(time.time() * 1000) + 1_500
    rig.writer.send(task_id, submitted(eta_ms=eta))
    scheduled = rig.states.wait_passed(task_id, lambda s: s.status is TaskStatus.SCHEDULED,
                                       "scheduled")
    assert scheduled.due_at_ms == eta
    dispatch = rig.dispatch_of(task_id, 1, timeout=20)
    assert dispatch.occurred_at_ms >= eta  # dispatched by a timer event at or after its due time


def test_lease_expiry_redispatches(rig: Rig) -> None:
    task_id = new_task_id()
    rig.writer.send(task_id, submitted(lease_ms=1_000))  # the least lease the fold takes (D28)
    first = rig.dispatch_of(task_id, 1)
    assert isinstance(first.body, TaskDispatched)
    rig.writer.send(task_id, TaskStarted(first.body.dispatch_id, "dead-worker"), 1)
    second = rig.dispatch_of(task_id, 2, timeout=20)
    state = rig.states.wait(task_id, lambda s: s.attempt == 2, "second attempt")
    assert state.last_error is not None and state.last_error.timed_out
    rig.start_and_finish(second)
    rig.states.wait(task_id, lambda s: s.status is TaskStatus.SUCCEEDED, "success")


def test_duplicate_and_conflicting_submit(rig: Rig) -> None:
    task_id = new_task_id()
    rig.writer.send(task_id, submitted(b'{"n": 1}'))
    rig.writer.send(task_id, submitted(b'{"n": 1}'))
    rig.writer.send(task_id, submitted(b'{"n": 2}'))
    state = rig.states.wait(task_id, lambda s: s.duplicates == 2, "two duplicates")
    assert state.conflicts == 1
    rig.dispatch_of(task_id, 1)
    time.sleep(0.5)
    assert [e.attempt for e in rig.dispatches if e.task_id == task_id] == [1]


def test_stale_completion_is_rejected(rig: Rig) -> None:
    task_id = new_task_id()
    rig.writer.send(task_id, submitted(lease_ms=1_000))  # the least lease the fold takes (D28)
    first = rig.dispatch_of(task_id, 1)
    assert isinstance(first.body, TaskDispatched)
    rig.writer.send(task_id, TaskStarted(first.body.dispatch_id, "slow"), 1)
    second = rig.dispatch_of(task_id, 2, timeout=20)  # lease lapsed
    rig.start_and_finish(second)
    rig.states.wait(task_id, lambda s: s.status is TaskStatus.SUCCEEDED, "success")
    # the slow worker of attempt 1 reports late: fenced
    rig.writer.send(task_id, TaskSucceeded(first.body.dispatch_id, "slow", b"late"), 1)
    state = rig.states.wait(task_id, lambda s: s.rejected >= 1, "rejection counted")
    assert state.result == b"3" and state.attempt == 2


def test_cancel_before_start_and_while_running(rig: Rig) -> None:
    waiting, running = new_task_id(), new_task_id()
    rig.writer.send(waiting, submitted(eta_ms=int(time.time() * 1000) + 60_000))
    rig.writer.send(running, submitted())
    dispatch = rig.dispatch_of(running, 1)
    assert isinstance(dispatch.body, TaskDispatched)
    rig.writer.send(running, TaskStarted(dispatch.body.dispatch_id, "w1"), 1)
    rig.states.wait(running, lambda s: s.status is TaskStatus.RUNNING, "running")
    for task_id in (waiting, running):
        rig.writer.send(task_id, CancelRequested("test"))
    cancellations = TopicReader(rig.settings, rig.settings.topic("cancellations"))
    wait_for("both cancellations published", lambda: {e.task_id for e in cancellations.envelopes()}
             >= {waiting, running} or None)
    # a cancelled task never later succeeds: its attempt's late end only settles the
    # cancellation (its record is tombstoned, issue 21); a second end is rejected
    rig.writer.send(running, TaskSucceeded(dispatch.body.dispatch_id, "w1", b"1"), 1)
    state = rig.states.wait(running, lambda s: s.last_error is not None, "settled")
    assert state.status is TaskStatus.CANCELLED and state.result is None
    rig.writer.send(running, TaskSucceeded(dispatch.body.dispatch_id, "w1", b"1"), 1)
    state = rig.states.wait(running, lambda s: s.rejected >= 1, "late success rejected")
    assert state.status is TaskStatus.CANCELLED
    assert rig.states.refresh()[waiting].status is TaskStatus.CANCELLED


def test_restart_keeps_state(rig: Rig) -> None:
    task_id = new_task_id()
    rig.writer.send(task_id, submitted())
    dispatch = rig.dispatch_of(task_id, 1)
    rig.replicas[0].stop()
    rig.replicas.clear()
    rig.start_replica("replica0")  # same data dir: restores from local RocksDB + changelog
    rig.start_and_finish(dispatch)
    state = rig.states.wait(task_id, lambda s: s.status is TaskStatus.SUCCEEDED, "success")
    assert state.duplicates == 0 and state.attempt == 1
    time.sleep(0.5)
    dispatches = rig.dispatches + rig.ready.envelopes()
    assert [e.attempt for e in dispatches if e.task_id == task_id] == [1]


def test_a_stop_sends_and_commits_the_open_window_first(topics: Settings,
                                                        tmp_path: Path) -> None:
    """SIGTERM while the changelog window is open: the fold sends it and commits past
    it before Faust closes the tables' stores, so the next start folds nothing again.
    (Faust's worker stopped the app first, closing RocksDB under the fold's last
    window: the commit was skipped and the restart redid the dispatch, D4.)"""
    rig = Rig(topics, tmp_path)
    try:
        # a window far longer than the test: open when the stop comes (D50)
        replica = rig.start_replica(env={"TASKSTREAM_CHANGELOG_WINDOW_MS": "10000"})
        task_id = new_task_id()
        rig.writer.send(task_id, submitted())
        rig.dispatch_of(task_id, 1)
        replica.stop()
        assert replica.proc is not None and replica.proc.returncode == 0, replica.log()
        assert "could not be made durable" not in replica.log()
        offsets = committed(topics, fold_group(topics), events_topic(topics), topics.partitions)
        assert sum(offsets.values()) == 1, offsets  # past the one record written
    finally:
        rig.close()


def test_undecodable_record_is_quarantined_and_the_fold_goes_on(rig: Rig) -> None:
    events = rig.settings.topic("events")
    rig.writer.producer.produce(events, key=b"junk", value=b"\xc3\x01garbage")
    rig.writer.producer.produce(events, key=b"junk2", value=b"not avro")
    assert rig.writer.producer.flush(10) == 0
    quarantine = TopicReader(rig.settings, rig.settings.topic("quarantine"))
    got: list[Message] = []

    def two_records() -> bool:
        got.extend(quarantine.messages(0.2))
        return len(got) >= 2

    wait_for("two quarantined records", two_records)
    assert {m.value() for m in got} == {b"\xc3\x01garbage", b"not avro"}
    origins = [QuarantineRecord.from_headers(m.headers()) for m in got]
    assert {o.topic for o in origins} == {events}
    assert all(o.reason and o.offset >= 0 for o in origins)
    # the operator's view of the same records
    listed = CliRunner().invoke(
        main, ["quarantine", "list", "--json"], env=settings_env(rig.settings)
    )
    assert listed.exit_code == 0, listed.output
    items = json.loads(listed.stdout)["items"]
    assert sorted((i["origin"]["offset"], i["key"]) for i in items) == sorted(
        (o.offset, m.key().decode()) for o, m in zip(origins, got, strict=True)
    )
    assert all(i["event"] == "(undecodable)" and i["reason"] for i in items)
    task_id = new_task_id()
    rig.writer.send(task_id, submitted())
    rig.dispatch_of(task_id, 1)  # the fold went on
