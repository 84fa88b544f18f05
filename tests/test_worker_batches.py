"""Batch handlers end to end against the real broker (D39).

Given a processor replica and 1,000 tasks of a batch task (batch_size 100) already
dispatched, when a worker starts, then the handler is called at most 12 times, every task
ends SUCCEEDED with exactly one TaskSucceeded in the log, and the one item that failed on
its first attempt is retried alone: every other task was in exactly one handler call.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from taskstream.schemas.events import Backoff, Envelope, TaskSubmitted
from taskstream.schemas.ids import new_event_id, new_task_id
from taskstream.schemas.serde import encode_event
from taskstream.schemas.state import TaskStatus
from taskstream.settings import Settings
from taskstream.topics import events_topic, ready_topic
from taskstream.workers import Retry, TaskApp, TaskContext
from tests.harness import EventWriter, ProcessorProcess, StateReader, wait_for
from tests.test_worker_support import Events, running_worker

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

TASKS = 1_000


def submitted(payload: object) -> TaskSubmitted:
    return TaskSubmitted(
        name="batches.add", queue="default", priority=0, payload=json.dumps(payload).encode(),
        content_type="application/json", eta_ms=None, max_attempts=3,
        backoff=Backoff(initial_ms=100, multiplier=2.0, max_ms=500, jitter=0.0),
        timeout_ms=None, lease_ms=30_000)


def ready_count(settings: Settings) -> int:
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": settings.bootstrap, "group.id": new_event_id()})
    try:
        topic = ready_topic(settings, "default", 0)
        return sum(consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
                   for p in range(settings.ready_partitions))
    finally:
        consumer.close()


def test_thousand_tasks_in_at_most_twelve_calls_and_a_bad_item_retries_alone(
        topics: Settings, tmp_path: Path) -> None:
    calls: list[list[tuple[str, int]]] = []
    lock = threading.Lock()
    app = TaskApp("batches")

    @app.task(name="batches.add", batch_size=100, batch_wait=0.05)
    def add(payloads: list[dict[str, int]], ctxs: list[TaskContext]) -> list[object]:
        with lock:
            calls.append([(c.task_id, c.attempt) for c in ctxs])
        return [Retry("bad item, first try") if p.get("bad") and c.attempt == 1
                else {"sum": p["a"] + p["b"]} for p, c in zip(payloads, ctxs, strict=True)]

    replica = ProcessorProcess(topics, tmp_path / "replica0").start()
    events = Events(topics)
    try:
        writer = EventWriter(topics)
        ids = [new_task_id() for _ in range(TASKS)]
        bad = ids[TASKS // 2]
        for n, task_id in enumerate(ids):
            body = submitted({"a": n, "b": 1, **({"bad": 1} if task_id == bad else {})})
            env = Envelope(event_id=new_event_id(), task_id=task_id,
                           occurred_at_ms=time.time_ns() // 1_000_000,  # D28: this century
                           source="test", attempt=0, body=body)
            writer.producer.produce(events_topic(topics), key=task_id.encode(),
                                    value=encode_event(env))
        assert writer.producer.flush(30) == 0
        wait_for("all 1,000 tasks to be dispatched", lambda: ready_count(topics) >= TASKS,
                 timeout=120, interval=0.5)
        states = StateReader(topics)
        with running_worker(app, topics, concurrency=4):
            wait_for("every task to succeed", lambda: sum(
                1 for s in states.refresh().values()
                if s.status is TaskStatus.SUCCEEDED) >= TASKS, timeout=180, interval=0.5)
        final = states.refresh()
        assert {final[t].status for t in ids} == {TaskStatus.SUCCEEDED}
        assert final[bad].attempt == 2
        assert json.loads(final[bad].result or b"") == {"sum": TASKS // 2 + 1}

        assert len(calls) <= 12, [len(c) for c in calls]
        runs: dict[str, int] = {}
        for call in calls:
            for task_id, _ in call:
                runs[task_id] = runs.get(task_id, 0) + 1
        assert runs[bad] == 2
        assert {t: n for t, n in runs.items() if t != bad} == {t: 1 for t in ids if t != bad}
        retry_call = next(c for c in calls if (bad, 2) in c)
        assert retry_call == [(bad, 2)], "the bad item's retry ran alone"

        events.wait("a TaskSucceeded per task", lambda seen: len(
            {e.task_id for e in seen if e.type_name == "TaskSucceeded"}) >= TASKS, timeout=60)
        succeeded = [e.task_id for e in events.seen if e.type_name == "TaskSucceeded"]
        assert sorted(succeeded) == sorted(ids), "exactly one TaskSucceeded per task"
        failed = [e.task_id for e in events.seen if e.type_name == "TaskFailed"]
        assert failed == [bad]
    finally:
        events.close()
        replica.stop()
