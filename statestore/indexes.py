"""The due and listing indexes: local RocksDBs derived from the task table.

Both indexes are functions of the task states, so they need no changelog of
their own: a replica keeps them only for its *active* partitions, in RocksDBs
under ``<data_dir>/indexes/p<N>/``, and rebuilds a partition's indexes from that
partition's task table whenever the partition (re)becomes active here. That
halves the records the processor writes per event (docs/decisions.md, D10):
a changelog record per index change was the processor's largest cost.

Rebuilding reads every state of the partition once; it happens on the first use
after a rebalance, never during a recovery (the task table is not complete
then: :class:`IndexNotReady`).

The table holds every entity kind (ENTITIES.md; D37, D32): the due index holds
each entity's one timer, keyed by its entity key, as the kind's ``timer_of``
derives it (the processor passes that function in: the rule is the fold's, and
the store sits below the fold); the listing index holds tasks only.
"""

from __future__ import annotations

import heapq
import shutil
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from rocksdict import Rdict, WriteBatch

from taskstream.schemas.events import TimerKind
from taskstream.schemas.state import EntityState, TaskState, TaskStatus
from taskstream.statestore import keys
from taskstream.statestore.errors import IndexNotReady
from taskstream.statestore.rocks import Deletions, index_options

_TIMED = {
    TaskStatus.SCHEDULED: TimerKind.DELAY_DUE,
    TaskStatus.RETRYING: TimerKind.RETRY_DUE,
    TaskStatus.RUNNING: TimerKind.LEASE_EXPIRED,
}


#: an entity state -> the due entry it implies (the fold's rule, passed in)
TimerOf = Callable[[EntityState | None], keys.DueEntry | None]


def timer_of(state: EntityState | None) -> keys.DueEntry | None:
    """The timer a task's state implies for the three v1 timer kinds, derived from the
    state (D5). The processor passes the fold's rule for every kind instead
    (processors/fold/kinds.py); this one serves tools and tests of the store alone."""
    if not isinstance(state, TaskState) or state.due_at_ms is None:
        return None
    kind = _TIMED.get(state.status)
    if kind is None:
        return None
    return keys.DueEntry(
        state.due_at_ms, state.task_id, kind, state.attempt, state.dispatch_id or ""
    )


def _open(path: Path) -> Any:
    """A raw-mode RocksDB: bytes keys and values (rocksdict's stubs type them loosely)."""
    path.mkdir(parents=True, exist_ok=True)
    return Rdict(str(path), index_options())


class PartitionIndex:
    """Both indexes of one partition.

    Two things are kept beside the DBs, in memory, because this replica is the only
    writer of its partitions' indexes (every change goes through these methods):

    * ``_due_floor``: no live due entry sorts below it. The timer scan runs ten
      times a second and starts there instead of at the first key, so it does not
      step again and again over the tombstones of timers that were dropped (one
      per finished task: the scan cost grew with every task ever run).
    * ``_counts``: tasks by (queue, status, priority), counted once on first use and
      then moved with every listing change, so ``/queues`` and the metrics do not
      read the whole listing index each time.
    """

    def __init__(self, path: Path, timer_of: TimerOf = timer_of) -> None:
        self.path = path
        self.timer_of = timer_of
        self.due = _open(path / "due")
        self.listing = _open(path / "listing")
        self._due_floor = b""
        self._counts: Counter[tuple[str, str, int]] | None = None
        self.due_deletions = Deletions(self.due)
        self.listing_deletions = Deletions(self.listing)

    def close(self) -> None:
        self.due.close()
        self.listing.close()

    # -- writes --------------------------------------------------------------------

    def put_timer(self, timer: keys.DueEntry) -> None:
        key = keys.due_key(timer.due_at_ms, timer.task_id)
        self.due[key] = keys.due_value(timer.kind, timer.attempt, timer.dispatch_id)
        if key < self._due_floor:
            self._due_floor = key

    def drop_timer(self, due_at_ms: int, task_id: str) -> None:
        key = keys.due_key(due_at_ms, task_id)
        del self.due[key]
        self.due_deletions.note(key)
        self.due_deletions.written()

    def put_listing(self, state: TaskState) -> None:
        key = keys.listing_key(state.queue, state.status, state.task_id)
        value = str(state.priority).encode()
        if self._counts is not None:
            self._count(state.queue, state.status.value, self.listing.get(key), -1)
            self._count(state.queue, state.status.value, value, 1)
        self.listing[key] = value

    def drop_listing(self, state: TaskState) -> None:
        key = keys.listing_key(state.queue, state.status, state.task_id)
        if self._counts is not None:
            self._count(state.queue, state.status.value, self.listing.get(key), -1)
        del self.listing[key]
        self.listing_deletions.note(key)
        self.listing_deletions.written()

    def _count(self, queue: str, status: str, priority: bytes | None, delta: int) -> None:
        if priority is None or self._counts is None:
            return
        group = (queue, status, int(priority))
        self._counts[group] += delta
        if self._counts[group] <= 0:
            del self._counts[group]

    def batch(self) -> IndexBatch:
        """Moves to write together (the batched fold: one write per index per batch)."""
        return IndexBatch(self)

    def _moved(self, counts: Counter[tuple[str, str, int]], due_floor: bytes | None) -> None:
        """A batch was written: its count changes and lowest new timer apply now, and its
        deletions count towards the next compaction (D48)."""
        self.due_deletions.written()
        self.listing_deletions.written()
        if self._counts is not None:
            self._counts.update(counts)
            for group in [g for g, n in self._counts.items() if n <= 0]:
                del self._counts[group]
        if due_floor is not None and due_floor < self._due_floor:
            self._due_floor = due_floor

    def fill(self, states: Iterable[EntityState]) -> int:
        """Write the entries of ``states`` in batches (the DBs are empty)."""
        due, listing, n = WriteBatch(raw_mode=True), WriteBatch(raw_mode=True), 0
        for state in states:
            timer = self.timer_of(state)
            if timer is not None:
                due.put(keys.due_key(timer.due_at_ms, timer.task_id),
                        keys.due_value(timer.kind, timer.attempt, timer.dispatch_id))
            if not isinstance(state, TaskState):
                continue  # the other kinds are not listed
            listing.put(keys.listing_key(state.queue, state.status, state.task_id),
                        str(state.priority).encode())
            n += 1
        self.due.write(due)
        self.listing.write(listing)
        return n

    # -- reads ---------------------------------------------------------------------

    def due_entries(self, now_ms: int) -> Iterator[tuple[bytes, keys.DueEntry]]:
        upper = keys.due_upper_bound(now_ms)
        first = True
        for key, value in self.due.items(from_key=self._due_floor):
            if first:
                # the lowest live entry: nothing live sorts below it. Set before the
                # first yield, so a put_timer while the caller awaits can lower it again
                self._due_floor, first = key, False
            if key >= upper:
                return
            yield key, keys.parse_due(key, value)
        if first:
            self._due_floor = upper  # no live entry at all: any put_timer lowers it

    def scan_listing(self, queue: str | None, status: str, after_task_id: str) -> Iterator[str]:
        queues = [queue] if queue is not None else list(queues_in(self.listing))
        yield from heapq.merge(*(
            scan_run(self.listing, keys.listing_prefix(q, status), after_task_id)
            for q in queues))

    def counts(self) -> Counter[tuple[str, str, int]]:
        """Tasks by (queue, status, priority): a copy of the running count."""
        if self._counts is None:
            self._counts = count_listing(self.listing)
        return Counter(self._counts)


class IndexBatch:
    """One batch's index moves: one RocksDB write per index at :meth:`commit`.

    A task's entries move from its state before the batch to its state after it. The
    counts move by those two states, not by reading the old entry: the index holds
    exactly the entries of the states (it is rebuilt from them whenever in doubt, D10),
    so the state before the batch says which entry is there.
    """

    def __init__(self, index: PartitionIndex) -> None:
        self._index = index
        self._timer_of = index.timer_of
        self._due = WriteBatch(raw_mode=True)
        self._listing = WriteBatch(raw_mode=True)
        self._counts: Counter[tuple[str, str, int]] = Counter()
        self._due_floor: bytes | None = None

    def move(self, before: EntityState | None, after: EntityState) -> None:
        timer_before, timer_after = self._timer_of(before), self._timer_of(after)
        if timer_before != timer_after:
            if timer_before is not None:
                self.drop_timer(timer_before.due_at_ms, timer_before.task_id)
            if timer_after is not None:
                key = keys.due_key(timer_after.due_at_ms, timer_after.task_id)
                self._due.put(key, keys.due_value(timer_after.kind, timer_after.attempt,
                                                  timer_after.dispatch_id))
                if self._due_floor is None or key < self._due_floor:
                    self._due_floor = key
        if not isinstance(after, TaskState) or not isinstance(before, TaskState | None):
            return  # only tasks are listed
        if before is not None and (before.queue, before.status, before.priority) == (
                after.queue, after.status, after.priority):
            return
        if before is not None:
            self._drop_listing(before)
        self._listing.put(keys.listing_key(after.queue, after.status, after.task_id),
                          str(after.priority).encode())
        self._counts[(after.queue, after.status.value, after.priority)] += 1

    def remove(self, before: EntityState) -> None:
        """An entity left the table: its timer and listing entries go."""
        timer = self._timer_of(before)
        if timer is not None:
            self.drop_timer(timer.due_at_ms, timer.task_id)
        if not isinstance(before, TaskState):
            return
        self._drop_listing(before)

    def _drop_listing(self, before: TaskState) -> None:
        key = keys.listing_key(before.queue, before.status, before.task_id)
        self._listing.delete(key)
        self._index.listing_deletions.note(key)
        self._counts[(before.queue, before.status.value, before.priority)] -= 1

    def drop_timer(self, due_at_ms: int, task_id: str) -> None:
        key = keys.due_key(due_at_ms, task_id)
        self._due.delete(key)
        self._index.due_deletions.note(key)

    def commit(self) -> None:
        self._index.due.write(self._due)
        self._index.listing.write(self._listing)
        self._index._moved(self._counts, self._due_floor)


def count_listing(db: Any) -> Counter[tuple[str, str, int]]:
    """Tasks by (queue, status, priority), read from a whole listing index."""
    result: Counter[tuple[str, str, int]] = Counter()
    for key, value in db.items():
        queue, status, _ = keys.parse_queue_listing(key)
        result[(queue, status, int(value))] += 1
    return result


def queues_in(db: Any) -> Iterator[str]:
    """The queues present in a listing index, seeking from queue to queue."""
    start = keys.QUEUES_START
    while True:
        first = next(iter(db.keys(from_key=start)), None)
        if first is None or not first.startswith(keys.QUEUES_START):
            return
        queue, _, _ = keys.parse_queue_listing(first)
        yield queue
        start = keys.next_queue_start(queue)


def scan_run(db: Any, prefix: bytes, after_task_id: str) -> Iterator[str]:
    """Task IDs under one listing prefix, in ID order, after a cursor."""
    start = prefix + after_task_id.encode() + (b"\x00" if after_task_id else b"")
    for key in db.keys(from_key=start):
        if not key.startswith(prefix):
            return
        yield key[len(prefix):].decode()


class LocalIndexes:
    """The indexes of the partitions this replica serves, built on first use.

    ``states_of(partition)`` yields a partition's states, of every kind (the task
    table); ``timer_of`` derives an entity's due entry from its state;
    ``can_build()`` says whether the task table is complete (not recovering);
    ``generation()`` is the consumer group generation: an index built in an earlier
    generation is rebuilt, because in between the partition may have been another
    replica's.
    """

    def __init__(
        self,
        root: Path,
        states_of: Callable[[int], Iterator[EntityState]],
        can_build: Callable[[], bool],
        generation: Callable[[], int],
        timer_of: TimerOf = timer_of,
    ) -> None:
        self.root = root
        self._timer_of = timer_of
        self._states_of = states_of
        self._can_build = can_build
        self._generation = generation
        self._built: dict[int, tuple[int, PartitionIndex]] = {}

    def invalidate(self) -> None:
        """Forget every built index."""
        for _, index in self._built.values():
            index.close()
        self._built.clear()

    def for_partition(self, partition: int, *, restored: bool = False) -> PartitionIndex:
        """The partition's indexes, built first if need be. ``restored``: the caller
        knows the task table is complete (the fold only runs on restored partitions)."""
        generation = self._generation()
        built = self._built.get(partition)
        if built is not None and built[0] == generation:
            return built[1]
        if not restored and not self._can_build():
            raise IndexNotReady(
                f"the indexes of partition {partition} are rebuilt once its task table "
                "is restored; retry in a moment")
        if built is not None:
            built[1].close()
        index = self._rebuild(partition)
        self._built[partition] = (generation, index)
        return index

    def _rebuild(self, partition: int) -> PartitionIndex:
        path = self.root / f"p{partition}"
        shutil.rmtree(path, ignore_errors=True)
        index = PartitionIndex(path, self._timer_of)
        index.fill(self._states_of(partition))
        return index

    def close(self) -> None:
        self.invalidate()
