"""Processor + workers end to end: retries, poison to DEAD, a killed worker's lease.

Given a ``taskstream processor`` replica and workers running examples/tasks.py,
when tasks are submitted as TaskSubmitted events, then the task table (read via
its changelog) shows the lifecycle the workers' events drive.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

import examples.tasks as example_tasks
from taskstream.schemas.events import Backoff, TaskSubmitted
from taskstream.schemas.ids import new_task_id
from taskstream.schemas.state import TaskStatus
from taskstream.settings import Settings
from taskstream.topics import ready_topic
from tests.harness import EventWriter, ProcessorProcess, StateReader
from tests.test_worker_faults import GROUP
from tests.test_worker_faults import start_worker as start_armed_worker
from tests.test_worker_shutdown import start_worker
from tests.test_worker_support import Events, committed, running_worker

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


def submitted(name: str, payload: object = None, *, max_attempts: int = 3,
              lease_ms: int = 30_000) -> TaskSubmitted:
    return TaskSubmitted(
        name=name, queue="default", priority=0, payload=json.dumps(payload).encode(),
        content_type="application/json", eta_ms=None, max_attempts=max_attempts,
        backoff=Backoff(initial_ms=100, multiplier=2.0, max_ms=500, jitter=0.0),
        timeout_ms=None, lease_ms=lease_ms,
    )


def test_retry_retries_and_poison_ends_dead(topics: Settings, tmp_path: Path) -> None:
    replica = ProcessorProcess(topics, tmp_path / "replica0").start()
    try:
        writer, states = EventWriter(topics), StateReader(topics)
        flaky, poison = new_task_id(), new_task_id()
        with running_worker(example_tasks.app, topics, concurrency=4):
            writer.send(flaky, submitted("examples.flaky", max_attempts=5))
            writer.send(poison, submitted("examples.poison", max_attempts=2))
            done = states.wait(flaky, lambda s: s.status is TaskStatus.SUCCEEDED,
                               "flaky to succeed", timeout=60)
            dead = states.wait(poison, lambda s: s.status is TaskStatus.DEAD,
                               "poison to die", timeout=60)
        assert done.attempt == 3 and json.loads(done.result or b"") == {"succeeded_on_attempt": 3}
        assert dead.attempt == 2 and dead.last_error is not None
        assert dead.last_error.error_type == "PoisonError"
    finally:
        replica.stop()


def test_killed_worker_lease_expires_and_another_worker_completes(
        topics: Settings, tmp_path: Path) -> None:
    replica = ProcessorProcess(topics, tmp_path / "replica0").start()
    events = Events(topics)
    first = start_worker(topics, tmp_path / "first.log", "--grace", "1")
    try:
        writer, states = EventWriter(topics), StateReader(topics)
        task_id = new_task_id()
        writer.send(task_id, submitted("examples.slow", {"seconds": 3}, max_attempts=3,
                                       lease_ms=1_500))
        started = events.wait_type(task_id, "TaskStarted", timeout=60)
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        with running_worker(example_tasks.app, topics) as second:
            final = states.wait(task_id, lambda s: s.status is TaskStatus.SUCCEEDED,
                                "another worker to complete the task", timeout=90)
        assert final.worker_id == second.worker_id
        assert final.worker_id != started.body.worker_id  # type: ignore[union-attr]
        assert final.attempt >= 2
        events.refresh()
        successes = events.of(task_id, "TaskSucceeded")
        # the processor accepted exactly one: the state holds the result of the live attempt
        assert final.attempt in {e.attempt for e in successes}
        assert json.loads(final.result or b"") == {"slept": 3.0}
    finally:
        first.kill()
        first.wait(10)
        events.close()
        replica.stop()


def test_an_attempt_whose_lease_ran_out_is_not_started_by_the_next_worker(
        topics: Settings, tmp_path: Path) -> None:
    """The first worker dies as it is about to commit the offset of a task it started
    (a fault at ``worker.commit``): the record is read again by the partition's next
    owner. By then the attempt's lease has run out and the task is on its next attempt
    (under a concurrency limit its slot is someone else's): the next worker must skip
    the stale attempt, not run it beside the live one (the limit the chaos run saw
    broken, 3 runs of 2)."""
    replica = ProcessorProcess(topics, tmp_path / "replica0").start()
    events = Events(topics)
    first = start_armed_worker(topics, tmp_path / "first.log", "--grace", "1",
                               faults="worker.commit=kill@1")
    try:
        writer, states = EventWriter(topics), StateReader(topics)
        task_id = new_task_id()
        writer.send(task_id, submitted("examples.slow", {"seconds": 3}, max_attempts=3,
                                       lease_ms=1_500))
        events.wait_type(task_id, "TaskStarted", timeout=60)
        assert first.wait(30) == -signal.SIGKILL, (tmp_path / "first.log").read_text()
        states.wait(task_id, lambda s: s.attempt >= 2, "the lease to run out", timeout=60)
        group = f"{topics.topic_prefix}{GROUP}"
        topic = ready_topic(topics, "default", 0)
        assert not committed(topics, group, topic, topics.ready_partitions), \
            "the killed worker committed its record: it would not be read again"
        with running_worker(example_tasks.app, topics) as second:
            final = states.wait(task_id, lambda s: s.status is TaskStatus.SUCCEEDED,
                                "the next attempt to succeed", timeout=90)
        assert final.worker_id == second.worker_id
        events.refresh()
        stale = [e.attempt for e in events.of(task_id, "TaskStarted")
                 if e.body.worker_id == second.worker_id  # type: ignore[union-attr]
                 and e.attempt < 2]
        assert not stale, f"the next worker started the expired attempt {stale} again"
    finally:
        first.kill()
        first.wait(10)
        events.close()
        replica.stop()
