"""Key layouts and range scans of the state store, on a real RocksDB (no Kafka)."""

from __future__ import annotations

import dataclasses
import heapq
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from rocksdict import Options, Rdict

from taskstream.schemas.events import Backoff, TimerKind
from taskstream.schemas.ids import new_task_id
from taskstream.schemas.state import TaskState, TaskStatus
from taskstream.statestore import keys
from taskstream.statestore.errors import IndexNotReady
from taskstream.statestore.indexes import (
    LocalIndexes,
    PartitionIndex,
    count_listing,
    queues_in,
    scan_run,
    timer_of,
)


def raw_db(path: Path) -> Rdict:
    return Rdict(str(path), Options(raw_mode=True))


@given(st.integers(0, 2**48), st.integers(0, 2**48))
def test_due_keys_sort_by_time(a: int, b: int) -> None:
    assert (keys.due_key(a, "X") < keys.due_key(b, "X")) == (a < b) or a == b


def test_due_entry_round_trip() -> None:
    key = keys.due_key(1234, "T1")
    entry = keys.parse_due(key, keys.due_value(TimerKind.RETRY_DUE, 3, "d-9"))
    assert entry == keys.DueEntry(1234, "T1", TimerKind.RETRY_DUE, 3, "d-9")
    assert key < keys.due_upper_bound(1234) <= keys.due_key(1235, "")


def test_listing_scans_in_id_order_per_queue_and_across_queues(tmp_path: Path) -> None:
    db = raw_db(tmp_path / "listing")
    ids = {q: sorted(new_task_id() for _ in range(5)) for q in ("alpha", "beta", "b")}
    for queue, task_ids in ids.items():
        for task_id in task_ids:
            db[keys.listing_key(queue, "READY", task_id)] = b"1"
            db[keys.listing_key(queue, "DEAD", task_id + "Z")] = b"0"
    assert list(queues_in(db)) == ["alpha", "b", "beta"]
    run = list(scan_run(db, keys.listing_prefix("b", "READY"), ""))
    assert run == ids["b"]
    after = list(scan_run(db, keys.listing_prefix("b", "READY"), ids["b"][1]))
    assert after == ids["b"][2:]
    every_queue = list(heapq.merge(*(
        scan_run(db, keys.listing_prefix(q, "READY"), "")
        for q in queues_in(db))))
    assert every_queue == sorted(t for v in ids.values() for t in v)
    db.close()


def _state(task_id: str, queue: str, status: TaskStatus, due: int | None) -> TaskState:
    return TaskState(
        task_id=task_id, name="n", queue=queue, priority=1, status=status, payload=b"",
        content_type="application/json", payload_digest="", max_attempts=3,
        backoff=Backoff(), timeout_ms=None, lease_ms=1000, submitted_at_ms=0,
        updated_at_ms=0, attempt=1, dispatch_id="d1", due_at_ms=due)


def test_indexes_are_rebuilt_from_the_task_states_and_only_when_allowed(tmp_path: Path) -> None:
    states = {0: [_state("A", "q", TaskStatus.RUNNING, 50),
                  _state("B", "q", TaskStatus.READY, None),
                  _state("C", "r", TaskStatus.RETRYING, 10)]}
    allowed, generation = [False], [1]
    indexes = LocalIndexes(tmp_path, lambda p: iter(states.get(p, [])), lambda: allowed[0],
                           lambda: generation[0])
    with pytest.raises(IndexNotReady, match="partition 0"):
        indexes.for_partition(0)
    allowed[0] = True
    index = indexes.for_partition(0)
    assert [e.task_id for _, e in index.due_entries(now_ms=100)] == ["C", "A"]
    assert [e.kind for _, e in index.due_entries(now_ms=100)] == [
        TimerKind.RETRY_DUE, TimerKind.LEASE_EXPIRED]
    assert list(index.due_entries(now_ms=20)) == [(keys.due_key(10, "C"), timer_of(states[0][2]))]
    assert list(index.scan_listing(None, "READY", "")) == ["B"]
    assert index.counts() == {("q", "RUNNING", 1): 1, ("q", "READY", 1): 1, ("r", "RETRYING", 1): 1}
    # within one generation the index is kept; a rebalance (new generation) rebuilds it
    # from the task table, which another replica may have changed meanwhile
    states[0] = [_state("A", "q", TaskStatus.SUCCEEDED, None)]
    assert indexes.for_partition(0) is index
    generation[0] = 2
    index = indexes.for_partition(0)
    assert list(index.due_entries(now_ms=10**6)) == []
    assert list(index.scan_listing("q", "SUCCEEDED", "")) == ["A"]
    indexes.close()


def test_other_kinds_have_timers_in_the_due_index_and_no_listing(tmp_path: Path) -> None:
    """The processor passes the fold's timer_of for every kind (D37, D32): a schedule's next
    fire time and a WAITING task's expiry are due entries; only tasks are listed."""
    from dataclasses import replace

    from taskstream.processors.live.app import due_entry_of
    from taskstream.schemas.events import ScheduleSpec
    from taskstream.schemas.state import ScheduleState, ScheduleStatus
    from tests.lifecycle_support import submitted

    schedule = ScheduleState("nightly", ScheduleStatus.ACTIVE, ScheduleSpec(submitted(),
                             every_ms=1000), 1, 0, 0, next_fire_ms=30, due_at_ms=30)
    waiting = replace(_state("W", "q", TaskStatus.WAITING, None), expires_at_ms=20)
    indexes = LocalIndexes(tmp_path, lambda p: iter([waiting, schedule]), lambda: True,
                           lambda: 1, due_entry_of)
    index = indexes.for_partition(0)
    due = [(e.task_id, e.kind) for _, e in index.due_entries(now_ms=100)]
    assert due == [("W", TimerKind.EXPIRY_DUE), ("schedule:nightly", TimerKind.SCHEDULE_DUE)]
    assert index.counts() == {("q", "WAITING", 1): 1}
    batch = index.batch()
    batch.move(schedule, replace(schedule, status=ScheduleStatus.PAUSED, due_at_ms=None))
    batch.commit()
    assert [e.task_id for _, e in index.due_entries(now_ms=100)] == ["W"]
    indexes.close()


# the due scan's floor and the running counts, against a plain model ----------------------

_OPS = st.lists(st.one_of(
    st.tuples(st.just("timer"), st.integers(0, 5), st.integers(0, 200)),
    st.tuples(st.just("untimer"), st.integers(0, 5)),
    st.tuples(st.just("list"), st.integers(0, 5), st.sampled_from(["q", "r"]),
              st.sampled_from(["READY", "RUNNING"]), st.integers(0, 2)),
    st.tuples(st.just("unlist"), st.integers(0, 5)),
    st.tuples(st.just("reprioritize"), st.integers(0, 5), st.integers(0, 2)),
    st.tuples(st.just("scan"), st.integers(0, 220)),
), max_size=60)


@given(_OPS)
def test_due_scan_and_counts_match_a_model(tmp_path_factory: pytest.TempPathFactory,
                                           ops: list[tuple]) -> None:
    """Every live timer due by ``now`` is found although scans start at a remembered floor,
    and the running counts equal a fresh count of the listing, whatever the order of
    puts, drops and scans."""
    index = PartitionIndex(tmp_path_factory.mktemp("idx"))
    timers: dict[str, int] = {}  # task -> due
    listed: dict[str, TaskState] = {}
    try:
        index.counts()  # from here on the counts are kept up to date, not re-read
        for op in ops:
            task = f"T{op[1]:02d}" if op[0] != "scan" else ""
            if op[0] == "timer":
                if task in timers:
                    index.drop_timer(timers.pop(task), task)
                timers[task] = op[2]
                index.put_timer(keys.DueEntry(op[2], task, TimerKind.LEASE_EXPIRED, 1, "d"))
            elif op[0] == "untimer" and task in timers:
                index.drop_timer(timers.pop(task), task)
            elif op[0] == "list":
                state = dataclasses.replace(_state(task, op[2], TaskStatus(op[3]), None),
                                            priority=op[4])
                if task in listed:
                    index.drop_listing(listed.pop(task))
                listed[task] = state
                index.put_listing(state)
            elif op[0] == "unlist" and task in listed:
                index.drop_listing(listed.pop(task))
            elif op[0] == "reprioritize" and task in listed:  # same key, a new value
                listed[task] = dataclasses.replace(listed[task], priority=op[2])
                index.put_listing(listed[task])
            elif op[0] == "scan":
                found = [e.task_id for _, e in index.due_entries(op[1])]
                assert found == [t for due, t in sorted((d, t) for t, d in timers.items())
                                 if due <= op[1]]
            counts = index.counts()
            assert counts == count_listing(index.listing)
            assert all(type(status) is str for _, status, _ in counts)  # as read from keys
    finally:
        index.close()


def test_a_timer_put_while_a_scan_is_paused_is_found_next_time(tmp_path: Path) -> None:
    index = PartitionIndex(tmp_path / "idx")
    for due, task in [(50, "B"), (60, "C")]:
        index.put_timer(keys.DueEntry(due, task, TimerKind.LEASE_EXPIRED, 1, "d"))
    index.drop_timer(50, "B")
    scan = index.due_entries(100)
    assert next(scan)[1].task_id == "C"  # the caller awaits here; the fold goes on
    index.put_timer(keys.DueEntry(10, "A", TimerKind.RETRY_DUE, 2, "d"))
    assert list(scan) == []
    assert [e.task_id for _, e in index.due_entries(100)] == ["A", "C"]
    index.close()


# the batched fold's index moves: by states, one write per index per batch -------------------

_STATUSES = [TaskStatus.SCHEDULED, TaskStatus.READY, TaskStatus.RUNNING, TaskStatus.RETRYING,
             TaskStatus.SUCCEEDED]
_MOVES = st.lists(st.lists(st.tuples(
    st.integers(0, 5),                                  # task
    st.one_of(st.none(), st.tuples(st.sampled_from(["q", "r"]), st.sampled_from(_STATUSES),
                                   st.integers(0, 2), st.integers(0, 100))),  # new state or gone
), max_size=6), max_size=12)


@given(_MOVES)
def test_batched_moves_keep_entries_and_counts_equal_to_the_states(
        tmp_path_factory: pytest.TempPathFactory, batches: list[list[tuple]]) -> None:
    """Whatever the states move to, or when they go, the indexes hold exactly the entries
    of the current states and the running counts equal a fresh count."""
    index = PartitionIndex(tmp_path_factory.mktemp("idx"))
    current: dict[str, TaskState] = {}
    try:
        index.counts()
        for moves in batches:
            batch = index.batch()
            for task_number, new in {t: n for t, n in moves}.items():  # one change per task
                task = f"T{task_number:02d}"
                before = current.get(task)
                if new is None:
                    if before is not None:
                        batch.remove(before)
                        del current[task]
                    continue
                queue, status, priority, due = new
                after = dataclasses.replace(_state(task, queue, status, due), priority=priority)
                batch.move(before, after)
                current[task] = after
            batch.commit()
            assert index.counts() == count_listing(index.listing)
            assert dict(index.listing.items()) == {
                keys.listing_key(s.queue, s.status, s.task_id): str(s.priority).encode()
                for s in current.values()}
            timers = sorted((t for s in current.values() if (t := timer_of(s)) is not None),
                            key=lambda t: (t.due_at_ms, t.task_id))
            assert [e for _, e in index.due_entries(1_000)] == timers
    finally:
        index.close()
