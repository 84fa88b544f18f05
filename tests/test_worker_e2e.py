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
from tests.harness import EventWriter, ProcessorProcess, StateReader
from tests.test_worker_shutdown import start_worker
from tests.test_worker_support import Events, running_worker

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
