"""A replica whose fold stalls while it has lag is restarted by its watchdog (issue 21, D43).

The stall is injected: the fold's consumer thread sleeps for an hour at the
``fold.consume`` fault point, the replica's process stays up and its group
membership with it (Faust heartbeats on a thread of its own), so nobody else
takes its partitions. Only the watchdog can tell, and the backlog must still drain.
"""

from __future__ import annotations

from pathlib import Path

import pytest

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
    }).start()
    writer = EventWriter(topics)
    ready = TopicReader(topics, ready_topic(topics, "default", 0))
    try:
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
