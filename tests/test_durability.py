"""Durability under injected faults (issue 14): whatever breaks, the live state is the
fold of the log, every task finishes and no completion is accepted twice.

Each test runs real processor replicas and workers as processes against the real
broker, breaks them with a fault point (taskstream/faults.py: the process SIGKILLs
itself right after a dangerous step) or makes the broker refuse writes, and then
checks the invariants from the outside: ``replay verify`` (the changelog a fresh
replica restores equals the fold of the events topic), a fresh replica's live API,
and the log's accepted completions.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from taskstream.settings import Settings
from taskstream.topics import task_changelog_topic
from tests.durability_support import DELIVERY_TIMEOUT_S, Rig, died_of_fault, refusing

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


@pytest.mark.timeout(600)
def test_crash_after_the_state_write_restores_the_fold(topics: Settings, tmp_path: Path) -> None:
    """Given a replica that dies right after writing a state to its RocksDB, when it
    restarts on the same data dir, then the changelog holds the fold of the log (before
    any worker runs), every task finishes, and a fresh replica restores all of it."""
    rig = Rig(topics, tmp_path)
    try:
        crashing = rig.replica("r0", faults="fold.after_state_write=kill@60")
        ids = rig.submit(150)
        died_of_fault(crashing, "fold.after_state_write")
        rig.replica("r0")  # the same data dir: its RocksDB is ahead of the changelog
        rig.verify_clean()
        rig.worker()
        rig.wait_succeeded(ids)
        rig.check_fresh_replica(ids)
    finally:
        rig.close()


@pytest.mark.timeout(600)
def test_commit_never_passes_an_unacknowledged_changelog_record(
        topics: Settings, tmp_path: Path) -> None:
    """Given a replica whose changelog topic refuses every write, when tasks are submitted
    and the replica is killed before the refusal ends, then a fresh replica on a new data
    dir restores every task: the events whose states never reached the changelog were not
    committed, so they are folded again."""
    rig = Rig(topics, tmp_path)
    try:
        replica = rig.replica("r0")
        with refusing(topics, task_changelog_topic(topics)):
            ids = rig.submit(300)
            # long enough for sends to expire and for several commit intervals to pass
            time.sleep(3 * DELIVERY_TIMEOUT_S)
            replica.kill()
        rig.worker()
        rig.check_fresh_replica(ids)
    finally:
        rig.close()
