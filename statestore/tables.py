"""The processor's RocksDB tables, as Faust tables with raw byte keys.

* ``tasks``: task ID -> encoded :class:`~taskstream.schemas.state.TaskState`;
* ``due``: the timer index (:func:`keys.due_key`), one entry per task at most;
* ``listing``: the (queue, state, task ID) index behind listings and counts.

All three are written only inside the fold (Faust's rule), all on the task's own
partition, and all restored from their changelogs. Range scans read a partition's
rocksdict directly: Faust keeps one RocksDB per changelog partition.
"""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Iterator
from typing import Any

import faust

from taskstream.schemas.state import TaskState
from taskstream.settings import Settings
from taskstream.statestore import keys

TABLE_NAMES = ("tasks", "due", "listing")
#: Faust keeps its own keys (``__faust\0offset__``) in every partition's RocksDB
FAUST_KEY_PREFIX = b"__faust"


def processor_app_id(settings: Settings) -> str:
    """The Faust app id: the processors' consumer group and changelog prefix."""
    return f"{settings.topic_prefix}processor"


def changelog_topic(settings: Settings, table: str) -> str:
    return f"{processor_app_id(settings)}-{table}-changelog"


def _raw_table(app: faust.App, name: str, partitions: int) -> Any:
    # bytes in, bytes out: the app's serializers are "raw" (processors/app.py)
    return app.Table(
        name,
        key_type=bytes,
        value_type=bytes,
        partitions=partitions,
        default=None,
    )


class TaskTables:
    def __init__(self, app: faust.App, partitions: int) -> None:
        self.tasks, self.due, self.listing = (
            _raw_table(app, name, partitions) for name in TABLE_NAMES)

    # -- writes (inside the fold only) ---------------------------------------------

    def reindex(
        self,
        before: TaskState | None,
        after: TaskState,
        timer_before: keys.DueEntry | None,
        timer_after: keys.DueEntry | None,
    ) -> None:
        if timer_before != timer_after:
            if timer_before is not None:
                self.due.pop(keys.due_key(timer_before.due_at_ms, timer_before.task_id), None)
            if timer_after is not None:
                self.due[keys.due_key(timer_after.due_at_ms, timer_after.task_id)] = keys.due_value(
                    timer_after.kind, timer_after.attempt, timer_after.dispatch_id)
        if before is None or (before.queue, before.status) != (after.queue, after.status):
            if before is not None:
                old = keys.listing_key(before.queue, before.status, before.task_id)
                self.listing.pop(old, None)
            self.listing[keys.listing_key(after.queue, after.status, after.task_id)] = str(
                after.priority).encode()

    def repair(self, state: TaskState, timer: keys.DueEntry | None) -> None:
        """Write the index entries ``state`` implies (after a crash left them unwritten)."""
        if timer is not None:
            self.due[keys.due_key(timer.due_at_ms, timer.task_id)] = keys.due_value(
                timer.kind, timer.attempt, timer.dispatch_id)
        self.listing[keys.listing_key(state.queue, state.status, state.task_id)] = str(
            state.priority).encode()

    def drop_stale_timer(
        self, task_id: str, due_at_ms: int, current: keys.DueEntry | None
    ) -> None:
        """Remove the due entry a fired timer came from unless it is the task's timer now."""
        if current is None or (current.due_at_ms, current.task_id) != (due_at_ms, task_id):
            self.due.pop(keys.due_key(due_at_ms, task_id), None)

    # -- reads ---------------------------------------------------------------------

    def get_any(self, key: bytes) -> bytes | None:
        """A task's encoded state from whichever local partition holds it."""
        value = self.tasks.get(key)
        return value if isinstance(value, bytes) else None

    @staticmethod
    def _db(table: Any, partition: int) -> Any:
        return table.data._db_for_partition(partition)

    def due_entries(self, partition: int, now_ms: int) -> Iterator[tuple[bytes, keys.DueEntry]]:
        upper = keys.due_upper_bound(now_ms)
        for key, value in self._db(self.due, partition).items():
            if key >= upper:
                return
            yield key, keys.parse_due(key, value)

    def scan_listing(
        self, partition: int, queue: str | None, status: str, after_task_id: str = ""
    ) -> Iterator[str]:
        """Task IDs of (queue or every queue, status) in this partition, in ID order,
        after a cursor."""
        db = self._db(self.listing, partition)
        queues = [queue] if queue is not None else list(self._queues(db))
        runs = [self._scan_run(db, keys.listing_prefix(q, status), after_task_id) for q in queues]
        yield from heapq.merge(*runs)

    @staticmethod
    def _queues(db: Any) -> Iterator[str]:
        """The queues present in one partition's listing index, seeking queue to queue."""
        start = keys.QUEUES_START
        while True:
            first = next(iter(db.keys(from_key=start)), None)
            if first is None or not first.startswith(keys.QUEUES_START):
                return
            queue, _, _ = keys.parse_queue_listing(first)
            yield queue
            start = keys.next_queue_start(queue)

    @staticmethod
    def _scan_run(db: Any, prefix: bytes, after_task_id: str) -> Iterator[str]:
        start = prefix + after_task_id.encode() + (b"\x00" if after_task_id else b"")
        for key in db.keys(from_key=start):
            if not key.startswith(prefix):
                return
            yield key[len(prefix):].decode()

    def scan_tasks(self, partition: int, after_task_id: str = "") -> Iterator[bytes]:
        """Encoded states of one partition in task ID order, after a cursor."""
        start = after_task_id.encode() + b"\x00" if after_task_id else b""
        for key, value in self._db(self.tasks, partition).items(from_key=start):
            if key.startswith(FAUST_KEY_PREFIX):
                continue  # Faust's own bookkeeping (the persisted changelog offset)
            yield value

    def get_in(self, partition: int, task_id: str) -> bytes | None:
        value = self._db(self.tasks, partition).get(task_id.encode())
        return value if isinstance(value, bytes) else None

    def counts(self, partitions: list[int]) -> Counter[tuple[str, str, int]]:
        """Tasks by (queue, status, priority) over the given partitions, from the index."""
        result: Counter[tuple[str, str, int]] = Counter()
        for partition in partitions:
            for key, value in self._db(self.listing, partition).items(from_key=b"q"):
                if not key.startswith(b"q"):
                    break
                queue, status, _ = keys.parse_queue_listing(key)
                result[(queue, status, int(value))] += 1
        return result
