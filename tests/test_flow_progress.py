"""Progress end to end (issue 16), against the real broker and the live processor.

Given a processor replica and a worker running examples.progress, when a task reports
its steps with ``ctx.progress``, then the task's state shows each report while it runs
and the last one when it has succeeded, and the worker sent no more progress events
than it had reports (the throttle lets at most one a second through, and 1.0).
"""

from __future__ import annotations

from pathlib import Path

import pytest

import examples.tasks as example_tasks
from taskstream.schemas.ids import new_task_id
from taskstream.schemas.state import TaskStatus
from taskstream.settings import Settings
from tests.harness import EventWriter, ProcessorProcess, StateReader
from tests.test_worker_e2e import submitted
from tests.test_worker_support import Events, running_worker

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


def test_progress_shows_while_running_and_stays_when_done(topics: Settings,
                                                          tmp_path: Path) -> None:
    replica = ProcessorProcess(topics, tmp_path / "replica0").start()
    events = Events(topics)
    try:
        writer, states = EventWriter(topics), StateReader(topics)
        task_id, chatty = new_task_id(), new_task_id()
        with running_worker(example_tasks.app, topics, concurrency=2):
            writer.send(task_id, submitted("examples.progress", {"steps": 3, "pause": 1.2}))
            writer.send(chatty, submitted("examples.progress", {"steps": 50, "pause": 0.01}))
            running = states.wait(
                task_id, lambda s: s.status is TaskStatus.RUNNING and s.progress is not None,
                "a progress report while running", timeout=60)
            done = states.wait(task_id, lambda s: s.status is TaskStatus.SUCCEEDED,
                               "the task to succeed", timeout=60)
            states.wait(chatty, lambda s: s.status is TaskStatus.SUCCEEDED,
                        "the chatty task to succeed", timeout=60)
        assert running.progress is not None and running.progress < 1.0
        assert (running.progress_note or "").startswith("step ")
        assert (done.progress, done.progress_note) == (1.0, "step 3 of 3")
        assert done.progress_at_ms is not None and done.finished_at_ms is not None
        assert done.progress_at_ms <= done.finished_at_ms
        events.refresh()
        assert len(events.of(task_id, "TaskProgress")) == 3
        # 50 reports in about half a second: the first and the last (1.0) leave the worker
        assert len(events.of(chatty, "TaskProgress")) <= 3
    finally:
        events.close()
        replica.stop()
