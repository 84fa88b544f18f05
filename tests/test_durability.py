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

import os
import time
from pathlib import Path

import pytest

from taskstream.admin import queue_topic_specs, topic_specs
from taskstream.settings import Settings
from taskstream.topics import quarantine_topic, ready_topic, task_changelog_topic
from tests.durability_support import (
    DELIVERY_TIMEOUT_S,
    Poison,
    Rig,
    died_of_fault,
    live_counts,
    missing,
    refusing,
    stop_hard,
)

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


@pytest.mark.timeout(600)
def test_crash_after_the_state_write_restores_the_fold(topics: Settings, tmp_path: Path) -> None:
    """Given a replica that dies right after writing a state to its RocksDB, when it
    restarts on the same data dir, then the changelog holds the fold of the log (before
    any worker runs), every task finishes, and a fresh replica restores all of it."""
    rig = Rig(topics, tmp_path)
    try:
        # the point is hit once per batch the fold makes durable: the third batch dies
        crashing = rig.replica("r0", faults="fold.after_state_write=kill@3")
        ids = rig.submit_until_dead(crashing)
        died_of_fault(crashing, "fold.after_state_write")
        rig.replica("r0")  # the same data dir: its RocksDB is ahead of the changelog
        rig.verify_clean()
        rig.worker()
        rig.wait_succeeded(ids)
        rig.check_fresh_replica(ids)
    finally:
        rig.close()


@pytest.mark.timeout(900)
@pytest.mark.parametrize("point,hits", [
    ("fold.after_state_write", (40, 25)),
    ("fold.after_changelog_send", (40, 25)),
    ("fold.after_effect_send", (40, 25)),
    ("fold.window_open", (40, 25)),
    ("commit.before", (3, 3)),
])
def test_crash_at_each_dangerous_point_restores_the_fold(
        topics: Settings, tmp_path: Path, point: str, hits: tuple[int, int]) -> None:
    """Given tasks flowing, when the replica kills itself at ``point`` (first while only
    submissions arrive, then again while a worker runs them) and restarts each time
    on its own data dir, then the changelog is the fold of the log after each restart,
    every task finishes once, and a fresh replica restores exactly that."""
    rig = Rig(topics, tmp_path)
    try:
        ids = rig.submit_until_dead(rig.replica("r0", faults=f"{point}=kill@{hits[0]}"))
        died_of_fault(rig.replicas[-1], point)
        rig.replica("r0")
        rig.verify_clean()
        rig.replicas[-1].stop()
        rig.worker()
        ids += rig.submit_until_dead(rig.replica("r0", faults=f"{point}=kill@{hits[1]}"))
        died_of_fault(rig.replicas[-1], point)
        rig.replica("r0")
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


@pytest.mark.timeout(600)
def test_dispatches_refused_at_delivery_or_at_send_are_sent_again(
        topics: Settings, tmp_path: Path) -> None:
    """Given a running replica and worker, when the broker refuses the ready topic's writes
    (at delivery time: the records are too large for it) and then the ready topic is gone
    (at send time: no metadata), then after each fault heals every task is dispatched
    again and finishes once, and the changelog is the fold of the log."""
    rig = Rig(topics, tmp_path)
    try:
        rig.replica("r0")
        rig.worker(queues=["default", "sendq"])
        with refusing(topics, ready_topic(topics, "default", 0)):
            ids = rig.submit(100)
            time.sleep(2 * DELIVERY_TIMEOUT_S)  # the dispatches fail meanwhile
        rig.register("sendq")  # after the replica started: it reads the registry for it
        first = rig.submit(1, queue="sendq")
        rig.wait_succeeded(ids + first)
        spec = next(s for s in queue_topic_specs(topics, "sendq")
                    if s.name == ready_topic(topics, "sendq", 0))
        with missing(topics, spec):
            later = rig.submit(50, queue="sendq")
            time.sleep(3 * DELIVERY_TIMEOUT_S)  # sends wait for metadata and fail meanwhile
        rig.wait_succeeded(later)
        rig.check_fresh_replica(ids + first + later)
    finally:
        rig.close()


@pytest.mark.timeout(600)
def test_a_failing_quarantine_send_is_retried(topics: Settings, tmp_path: Path) -> None:
    """Given a running replica, when records that cannot be decoded arrive while the
    quarantine topic refuses writes (at delivery time) and while it is gone (at send
    time), then once it heals the quarantine topic holds every one of them, and the
    tasks submitted around them finish."""
    rig = Rig(topics, tmp_path)
    poison = Poison(topics)
    try:
        rig.replica("r0")
        rig.worker()
        with refusing(topics, quarantine_topic(topics)):
            poison.send(10)
            ids = rig.submit(20)
            time.sleep(2 * DELIVERY_TIMEOUT_S)
        spec = next(s for s in topic_specs(topics) if s.name == quarantine_topic(topics))
        with missing(topics, spec):
            poison.send(10)
            ids += rig.submit(20)
            time.sleep(3 * DELIVERY_TIMEOUT_S)
        rig.wait_succeeded(ids)
        poison.wait_quarantined()
        rig.check_fresh_replica(ids)
    finally:
        rig.close()



@pytest.mark.timeout(600)
def test_a_new_queue_is_looked_up_off_the_fold(topics: Settings, tmp_path: Path) -> None:
    """Given a replica whose read of the queue registry takes 30 s (a fault point sleeps
    there, as a slow broker would), when a task for a queue registered after the replica
    started arrives before tasks for a known queue, then the known queue's tasks finish
    meanwhile, the new queue's task finishes once the registry is read, and the changelog
    is the fold of the log."""
    rig = Rig(topics, tmp_path)
    try:
        rig.replica("r0", faults="queue.look_up=sleep:30")
        rig.worker(queues=["default", "newq"])
        rig.register("newq")
        new = rig.submit(1, queue="newq")
        known = rig.submit(20)
        rig.wait_succeeded(known, timeout=20)  # well inside the 30 s the new queue takes
        rig.wait_succeeded(new, timeout=120)
        rig.check_fresh_replica(known + new)
    finally:
        rig.close()


#: the SIGKILL-under-backlog scenario of issue 14 is 1,000 tasks/s for 8 s, three rounds;
#: CI runs it at BACKLOG_RATE for BACKLOG_SECONDS (same shape: processor and worker are
#: stopped mid-stream, with records unread, folded but not committed, and dispatched but
#: not run), TASKSTREAM_BACKLOG_FULL=1 runs the issue's size
BACKLOG_FULL = os.environ.get("TASKSTREAM_BACKLOG_FULL") == "1"
BACKLOG_RATE = 1_000 if BACKLOG_FULL else 500
BACKLOG_SECONDS = 8 if BACKLOG_FULL else 4
BACKLOG_ROUNDS = 3


@pytest.mark.timeout(1800)
def test_sigkill_under_backlog_leaves_the_fold_of_the_log(
        topics: Settings, tmp_path: Path) -> None:
    """Given a processor and a worker, when tasks arrive faster than the processor folds
    them and both are stopped with SIGTERM, then SIGKILL 1 s later, three rounds on the
    same topics, then a fresh replica on a new data dir, once idle, holds exactly the
    fold of the log (``replay verify`` clean) and shows every task."""
    rig = Rig(topics, tmp_path)
    ids: list[str] = []
    try:
        for n in range(BACKLOG_ROUNDS):
            replica = rig.replica("r0")
            worker = rig.worker()
            started = time.monotonic()
            ids += rig.submit(BACKLOG_RATE * BACKLOG_SECONDS, rate=BACKLOG_RATE)
            took = time.monotonic() - started
            print(f"round {n + 1}: {BACKLOG_RATE * BACKLOG_SECONDS} tasks in {took:.1f}s, "
                  f"replica at {live_counts(replica.url)}")
            stop_hard(replica.proc, worker)
        rig.check_fresh_replica_holds(ids)
    finally:
        rig.close()
