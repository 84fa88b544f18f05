"""A replica whose fold stalls while it has lag is restarted by its watchdog (issue 21, D43).

The stall is injected: the fold's consumer thread sleeps for an hour at the
``fold.consume`` fault point, the replica's process stays up and its group
membership with it (Faust heartbeats on a thread of its own), so nobody else
takes its partitions. Only the watchdog can tell, and the backlog must still drain.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from taskstream.processors.live.guard import EXIT_STALLED
from taskstream.schemas.ids import new_task_id
from taskstream.settings import Settings
from taskstream.topics import ready_topic
from tests.harness import EventWriter, ProcessorProcess, TopicReader, wait_for
from tests.test_processor_integration import submitted

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

#: the hit of ``fold.consume`` that stalls: the fold waits on its consumer about 20
#: times a second while idle, so this is a second or two after the replica is ready
STALL_HIT = 40


def test_stalled_fold_is_restarted_and_the_backlog_drains(topics: Settings,
                                                          tmp_path: Path) -> None:
    replica = ProcessorProcess(topics, tmp_path / "r0", env={
        "TASKSTREAM_FAULTS": f"fold.consume=sleep:3600@{STALL_HIT}",
        "TASKSTREAM_FOLD_STALL_S": "3",
    })
    writer = EventWriter(topics)
    ready = TopicReader(topics, ready_topic(topics, "default", 0))
    try:
        replica.start(ready_timeout=180)  # a busy machine starts a replica slowly
        wait_for("the fold's consumer to stall",
                 lambda: f"fold.consume hit {STALL_HIT}: sleep" in replica.log(), timeout=60)
        tasks = {new_task_id() for _ in range(20)}
        for task_id in sorted(tasks):
            writer.send(task_id, submitted())
        dispatched: set[str] = set()
        wait_for("every task submitted after the stall to be dispatched", lambda: (
            dispatched.update(env.task_id for env in ready.envelopes(0.2)),
            tasks <= dispatched)[1], timeout=90)
        assert "fold stalled" in replica.log()  # the watchdog said what it did
    finally:
        ready.close()
        replica.stop()


def test_a_blocked_event_loop_ends_the_replica_for_its_supervisor(topics: Settings,
                                                                  tmp_path: Path) -> None:
    """The fold blocks the event loop itself (``sleep`` on the loop's thread): nothing in
    the process can restart it, so the replica exits non-zero; started again (as its
    supervisor would) on the same data, it folds what was left."""
    env = {"TASKSTREAM_FOLD_STALL_S": "3"}
    replica = ProcessorProcess(topics, tmp_path / "r0", env={
        **env, "TASKSTREAM_FAULTS": "fold.after_fold=sleep:3600@1"})
    writer = EventWriter(topics)
    ready = TopicReader(topics, ready_topic(topics, "default", 0))
    again: ProcessorProcess | None = None
    try:
        replica.start(ready_timeout=180)
        task_id = new_task_id()
        writer.send(task_id, submitted())
        wait_for("the fold to block the event loop",
                 lambda: "fold.after_fold hit 1: sleep" in replica.log(), timeout=60)
        assert replica.proc is not None
        code = wait_for("the replica to exit", replica.proc.poll, timeout=60)
        assert code == EXIT_STALLED
        assert "the event loop has not answered" in replica.log()
        again = ProcessorProcess(topics, tmp_path / "r0", env=env)
        again.start(ready_timeout=180)
        wait_for("the task dispatched by the replica started again", lambda: any(
            e.task_id == task_id for e in ready.envelopes(0.2)), timeout=90)
    finally:
        ready.close()
        for process in (replica, again):
            if process is not None:
                process.stop()
