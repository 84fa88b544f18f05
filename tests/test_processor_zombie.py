"""A replica paused past its session (a zombie) wakes with a batch in hand: the new
owner's state wins and none of the zombie's stale decisions go out (issue 21, D43).

Replica A is SIGSTOPped by the ``fold.after_fold`` fault point: its first batch is
folded in memory, nothing of it written. Its partitions move to B, which folds the
same events and more (the tasks start and succeed). Then A gets SIGCONT, its batch
still in hand and more records in its consumer's buffer.
"""

from __future__ import annotations

import signal
from collections import Counter
from itertools import pairwise
from pathlib import Path

import pytest

from taskstream.processors.replay.verify import verify
from taskstream.schemas.events import TaskDispatched, TaskStarted, TaskSucceeded
from taskstream.schemas.ids import new_task_id
from taskstream.schemas.state import TaskStatus
from taskstream.settings import Settings
from taskstream.topics import ready_topic
from tests.harness import EventWriter, ProcessorProcess, StateReader, TopicReader, wait_for
from tests.test_processor_integration import submitted

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


def test_zombie_replica_is_fenced(topics: Settings, tmp_path: Path) -> None:
    survivor = ProcessorProcess(topics, tmp_path / "b")
    zombie = ProcessorProcess(topics, tmp_path / "a", env={
        "TASKSTREAM_FAULTS": "fold.after_fold=stop@1"})
    writer = EventWriter(topics)
    ready = TopicReader(topics, ready_topic(topics, "default", 0))
    dispatches: Counter[str] = Counter()
    completed: set[str] = set()

    def work() -> None:
        """A worker in miniature: every dispatch counted, each task worked once."""
        for env in ready.envelopes(0.2):
            assert isinstance(env.body, TaskDispatched)
            dispatches[env.task_id] += 1
            if env.task_id in completed:
                continue
            writer.send(env.task_id, TaskStarted(env.body.dispatch_id, "w"), env.attempt)
            writer.send(env.task_id, TaskSucceeded(env.body.dispatch_id, "w", b"1"), env.attempt)
            completed.add(env.task_id)

    try:
        for replica in (survivor, zombie):
            replica.start(ready_timeout=180)  # a busy machine starts a replica slowly
        wait_for("both replicas folding", lambda: all(
            "folding partitions" in r.log() for r in (survivor, zombie)), timeout=60)
        tasks = [new_task_id() for _ in range(40)]
        for task_id in tasks:
            writer.send(task_id, submitted())
        wait_for("the zombie to stop with a batch in hand",
                 lambda: "fold.after_fold hit 1: stop" in zombie.log(), timeout=60)
        states = StateReader(topics)
        wait_for("every task worked and succeeded while the zombie sleeps", lambda: (
            work(), sum(s.status is TaskStatus.SUCCEEDED
                        for s in states.refresh().values()) == len(tasks))[1], timeout=120)
        folded_before = zombie.log().count("folding partitions")
        assert zombie.proc is not None
        zombie.proc.send_signal(signal.SIGCONT)
        wait_for("the zombie to rejoin and fold again", lambda: (
            work(), zombie.log().count("folding partitions") > folded_before)[1], timeout=90)
        wait_for("every task succeeded after the zombie woke", lambda: (
            work(), sum(s.status is TaskStatus.SUCCEEDED
                        for s in states.refresh().values()) == len(tasks))[1], timeout=60)
        work()
        assert "fenced: " in zombie.log()  # the zombie's fence refused its batch
        # the new owner's state wins: no task's changelog goes back after it succeeded
        regressed = {task_id: [s.status.value for s in history]
                     for task_id, history in states.history.items()
                     if any(a.status is TaskStatus.SUCCEEDED and b.status is not
                            TaskStatus.SUCCEEDED for a, b in pairwise(history))}
        assert regressed == {}, f"changelog went back after success: {regressed}"
        # no stale decision went out: each task was dispatched once, by its owner
        twice = {task_id: n for task_id, n in dispatches.items() if n != 1}
        assert twice == {}, f"tasks dispatched more than once: {twice}"
        assert set(dispatches) == set(tasks)
        report = verify(topics, wait_timeout=60, workdir=tmp_path)
        assert report.mismatches == (), [m.describe() for m in report.mismatches]
    finally:
        if zombie.proc is not None and zombie.proc.poll() is None:
            zombie.proc.send_signal(signal.SIGCONT)
        ready.close()
        for replica in (zombie, survivor):
            replica.stop()
