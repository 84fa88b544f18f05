"""Correctness of the fold on the real broker (issue 21): skewed writers' clocks (D44),
records read again after many later events (D45), cancellations tombstoned once
settled. A real processor replica, real records; a writer's skewed clock is injected
in-process (its events carry that clock's time; libfaketime is not installed here).
"""

from __future__ import annotations

import time
from pathlib import Path

from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin._config import AlterConfigOpType, ConfigEntry, ConfigResource
from confluent_kafka.admin._resource import ResourceType

from taskstream.admin import admin_client, end_offsets, ensure_topics
from taskstream.schemas.events import (
    CancelRequested,
    LeaseRenewed,
    RedriveRequested,
    TaskFailed,
    TaskStarted,
)
from taskstream.schemas.ids import new_task_id
from taskstream.schemas.state import TaskStatus
from taskstream.settings import Settings
from taskstream.topics import cancellations_topic, events_topic, fold_group
from tests.harness import EventWriter, ProcessorProcess, StateReader, read_to_end, wait_for
from tests.lifecycle_support import submitted

S = TaskStatus
HOUR = 3_600_000


def _timestamp_type(settings: Settings) -> str:
    admin = admin_client(settings)
    resource = ConfigResource(ResourceType.TOPIC, events_topic(settings))
    entries = next(iter(admin.client.describe_configs([resource]).values())).result(30)
    return str(entries["message.timestamp.type"].value)


def _set_timestamp_type(settings: Settings, value: str) -> None:
    admin = admin_client(settings)
    change = ConfigResource(ResourceType.TOPIC, events_topic(settings), incremental_configs=[
        ConfigEntry("message.timestamp.type", value,
                    incremental_operation=AlterConfigOpType.SET)])
    for future in admin.client.incremental_alter_configs([change]).values():
        future.result(30)


def test_the_events_topic_is_stamped_by_the_broker(topics: Settings) -> None:
    """Made with LogAppendTime; an events topic made before D44 (CreateTime) is switched
    by start-up's ensure_topics."""
    assert _timestamp_type(topics) == "LogAppendTime"
    _set_timestamp_type(topics, "CreateTime")  # a config change takes a moment to show
    wait_for("CreateTime", lambda: _timestamp_type(topics) == "CreateTime")
    ensure_topics(topics)
    wait_for("LogAppendTime again", lambda: _timestamp_type(topics) == "LogAppendTime")


def test_skewed_writers_do_not_skew_leases_or_delays(topics: Settings, tmp_path: Path) -> None:
    writer = EventWriter(topics)
    replica = ProcessorProcess(topics, tmp_path / "replica").start()
    states = StateReader(topics)  # the changelog topic exists once a replica runs
    try:
        now = int(time.time() * 1000)
        # a producer an hour behind asks for a 60 s delay
        delayed = new_task_id()
        behind = now - HOUR
        writer.send(delayed, submitted(eta_ms=behind + 60_000), occurred_at_ms=behind,
                    source="producer:skewed")
        state = states.wait(delayed, lambda s: s.due_at_ms is not None, "scheduled")
        assert state.status is S.SCHEDULED and state.due_at_ms is not None
        assert state.due_at_ms >= now + 60_000 - 5_000 - 1_000

        # a worker an hour behind, and one three hours ahead, start their attempts
        for skew in (-HOUR, 3 * HOUR):
            task = new_task_id()
            writer.send(task, submitted(lease_ms=30_000))
            ready = states.wait(task, lambda s: s.status is S.READY, "ready")
            sent = int(time.time() * 1000)
            writer.send(task, TaskStarted(ready.dispatch_id or "", "w1"), attempt=1,
                        occurred_at_ms=sent + skew, source="worker:skewed")
            running = states.wait(task, lambda s: s.status is S.RUNNING, "running")
            done = int(time.time() * 1000)
            assert running.due_at_ms is not None
            # the lease runs from the broker's time, within the tolerance (5 s)
            assert sent - 5_000 + 30_000 <= running.due_at_ms <= done + 5_000 + 30_000, skew
            time.sleep(0.5)
            assert states.refresh()[task].status is S.RUNNING  # not expired at once
    finally:
        replica.stop()


def _rewind_fold_group(settings: Settings) -> None:
    """Commit offset 0 for every events partition in the fold's group: the next replica
    reads the whole log again (what a crash before many commits would do)."""
    topic = events_topic(settings)
    consumer = Consumer({"bootstrap.servers": settings.bootstrap,
                         "group.id": fold_group(settings), "enable.auto.commit": False})
    try:
        parts = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        consumer.commit(offsets=[TopicPartition(topic, p, 0) for p in parts],
                        asynchronous=False)
    finally:
        consumer.close()


def _fold_caught_up(settings: Settings) -> bool:
    topic = events_topic(settings)
    consumer = Consumer({"bootstrap.servers": settings.bootstrap,
                         "group.id": fold_group(settings), "enable.auto.commit": False})
    try:
        parts = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        committed = consumer.committed([TopicPartition(topic, p) for p in parts], 10)
    finally:
        consumer.close()
    ends = end_offsets(settings, admin_client(settings).client, [(topic, p) for p in parts])
    # a partition nothing was written to has no committed offset
    return all(tp.offset >= ends[(topic, tp.partition)] or ends[(topic, tp.partition)] == 0
               for tp in committed)


def test_an_old_record_read_again_after_many_events_changes_nothing(
        topics: Settings, tmp_path: Path) -> None:
    """A cancel refused while the task was DEAD, read again after the redrive and more
    than 16 later events, used to cancel the redriven task."""
    writer = EventWriter(topics)
    task = new_task_id()
    replica = ProcessorProcess(topics, tmp_path / "replica").start()
    states = StateReader(topics)  # the changelog topic exists once a replica runs
    try:
        writer.send(task, submitted(max_attempts=1, lease_ms=600_000))
        ready = states.wait(task, lambda s: s.status is S.READY, "ready")
        writer.send(task, TaskStarted(ready.dispatch_id or "", "w1"), attempt=1)
        writer.send(task, TaskFailed(ready.dispatch_id or "", "w1", "E", "boom"), attempt=1)
        states.wait(task, lambda s: s.status is S.DEAD, "dead")
        writer.send(task, CancelRequested("too late"))  # refused: DEAD
        writer.send(task, RedriveRequested("again"))
        again = states.wait(task, lambda s: s.status is S.READY and s.attempt == 2, "redriven")
        writer.send(task, TaskStarted(again.dispatch_id or "", "w1"), attempt=2)
        for _ in range(20):
            writer.send(task, LeaseRenewed(again.dispatch_id or "", "w1"), attempt=2)
        before = states.wait(task, lambda s: s.status is S.RUNNING and s.rejected == 1,
                             "running")
        wait_for("the fold to commit the log's end", lambda: _fold_caught_up(topics))
    finally:
        replica.stop()
    _rewind_fold_group(topics)
    replica = ProcessorProcess(topics, tmp_path / "replica").start()
    try:
        wait_for("the fold to read the log again", lambda: _fold_caught_up(topics), 60)
        time.sleep(1.0)  # the changelog records of the re-read batch
        after = states.refresh()[task]
        assert after.status is S.RUNNING, after.status
        assert (after.rejected, after.duplicates, after.attempt) == (
            before.rejected, before.duplicates, before.attempt)
    finally:
        replica.stop()


def _latest(settings: Settings, task: str) -> tuple[bool, bytes | None]:
    """(seen, value) of the task's newest record in the cancellations topic."""
    seen, value = False, None
    for msg in read_to_end(settings, cancellations_topic(settings)):
        if msg.key() == task.encode():
            seen, value = True, msg.value()
    return seen, value


def test_settled_cancellations_are_tombstoned(topics: Settings, tmp_path: Path) -> None:
    writer = EventWriter(topics)
    replica = ProcessorProcess(topics, tmp_path / "replica").start()
    states = StateReader(topics)  # the changelog topic exists once a replica runs
    try:
        # cancelled before any dispatch: settled at once
        delayed = new_task_id()
        writer.send(delayed, submitted(eta_ms=int(time.time() * 1000) + HOUR))
        states.wait(delayed, lambda s: s.status is S.SCHEDULED, "scheduled")
        writer.send(delayed, CancelRequested("not needed"))
        states.wait(delayed, lambda s: s.status is S.CANCELLED, "cancelled")
        wait_for("the delayed task's tombstone", lambda: _latest(topics, delayed) == (True, None))

        # cancelled while running: kept until its worker reports the attempt's end
        task = new_task_id()
        writer.send(task, submitted())
        ready = states.wait(task, lambda s: s.status is S.READY, "ready")
        writer.send(task, TaskStarted(ready.dispatch_id or "", "w1"), attempt=1)
        states.wait(task, lambda s: s.status is S.RUNNING, "running")
        writer.send(task, CancelRequested("stop"))
        states.wait(task, lambda s: s.status is S.CANCELLED, "cancelled")
        _seen, value = wait_for("the cancellation record", lambda: (
            found if (found := _latest(topics, task))[0] else None))
        assert value is not None  # the worker still has to stop
        writer.send(task, TaskFailed(ready.dispatch_id or "", "w1", "Cancelled", "stopped",
                                     retryable=False), attempt=1)
        wait_for("the running task's tombstone", lambda: _latest(topics, task) == (True, None))
        assert states.wait(task, lambda s: s.last_error is not None, "settled").status is (
            S.CANCELLED)
    finally:
        replica.stop()
