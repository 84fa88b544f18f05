"""The processor's state: the task table (a Faust table) and its local indexes.

* ``tasks``: task ID -> encoded :class:`~taskstream.schemas.state.TaskState`, a
  Faust table in RocksDB (one DB per partition), restored from its changelog;
* the due index and the listing index (statestore/indexes.py): local RocksDBs
  derived from the task table, kept for this replica's active partitions only and
  rebuilt from the task table when a partition becomes active here.

The task table is written only inside the fold (Faust's rule); the indexes are
written beside it, on the same partition.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import faust

from taskstream.schemas.serde import decode_state
from taskstream.schemas.state import TaskState
from taskstream.statestore import keys
from taskstream.statestore.indexes import LocalIndexes, timer_of
from taskstream.statestore.rocks import TABLE_OPTIONS
from taskstream.topics import TASK_TABLE

TABLE_NAMES = (TASK_TABLE,)
#: Faust keeps its own keys (``__faust\0offset__``) in every partition's RocksDB
FAUST_KEY_PREFIX = b"__faust"


class TaskTables:
    def __init__(
        self, app: faust.App, partitions: int, index_dir: Path, can_build: Callable[[], bool]
    ) -> None:
        # an index built before the latest rebalance is rebuilt (statestore/indexes.py)
        def generation() -> int:
            return int(app.consumer_generation_id or 0)

        # bytes in, bytes out: the app's serializers are "raw" (processors/live/app.py)
        self.tasks: Any = app.Table(TASK_TABLE, key_type=bytes, value_type=bytes,
                                    partitions=partitions, default=None,
                                    options=dict(TABLE_OPTIONS))
        self.indexes = LocalIndexes(index_dir, self.states_in, can_build, generation)

    # -- writes (inside the fold only) ---------------------------------------------

    def put(self, partition: int, before: TaskState | None, after: TaskState,
            encoded: bytes) -> None:
        """Store a new state and move its index entries (the fold's one write)."""
        self.tasks[after.task_id.encode()] = encoded
        index = self.indexes.for_partition(partition, restored=True)
        timer_before, timer_after = timer_of(before), timer_of(after)
        if timer_before != timer_after:
            if timer_before is not None:
                index.drop_timer(timer_before.due_at_ms, timer_before.task_id)
            if timer_after is not None:
                index.put_timer(timer_after)
        if before is None or (before.queue, before.status) != (after.queue, after.status):
            if before is not None:
                index.drop_listing(before)
            index.put_listing(after)

    def drop_stale_timer(self, partition: int, task_id: str, due_at_ms: int,
                         current: TaskState | None) -> None:
        """Remove the due entry a fired timer came from unless it is the task's timer now."""
        timer = timer_of(current)
        if timer is None or (timer.due_at_ms, timer.task_id) != (due_at_ms, task_id):
            self.indexes.for_partition(partition, restored=True).drop_timer(due_at_ms, task_id)

    # -- reads ---------------------------------------------------------------------

    def get_any(self, key: bytes) -> bytes | None:
        """A task's encoded state from whichever local partition holds it."""
        value = self.tasks.get(key)
        return value if isinstance(value, bytes) else None

    def _db(self, partition: int) -> Any:
        return self.tasks.data._db_for_partition(partition)

    def states_in(self, partition: int) -> Iterator[TaskState]:
        for value in self.scan_tasks(partition):
            yield decode_state(value)

    def due_entries(self, partition: int, now_ms: int) -> Iterator[tuple[bytes, keys.DueEntry]]:
        return self.indexes.for_partition(partition).due_entries(now_ms)

    def scan_listing(
        self, partition: int, queue: str | None, status: str, after_task_id: str = ""
    ) -> Iterator[str]:
        """Task IDs of (queue or every queue, status) in this partition, in ID order,
        after a cursor."""
        return self.indexes.for_partition(partition).scan_listing(queue, status, after_task_id)

    def scan_tasks(self, partition: int, after_task_id: str = "") -> Iterator[bytes]:
        """Encoded states of one partition in task ID order, after a cursor."""
        start = after_task_id.encode() + b"\x00" if after_task_id else b""
        for key, value in self._db(partition).items(from_key=start):
            if key.startswith(FAUST_KEY_PREFIX):
                continue  # Faust's own bookkeeping (the persisted changelog offset)
            yield value

    def get_in(self, partition: int, task_id: str) -> bytes | None:
        value = self._db(partition).get(task_id.encode())
        return value if isinstance(value, bytes) else None

    def counts(self, partitions: list[int]) -> Counter[tuple[str, str, int]]:
        """Tasks by (queue, status, priority) over the given partitions, from the index."""
        result: Counter[tuple[str, str, int]] = Counter()
        for partition in partitions:
            result.update(self.indexes.for_partition(partition).counts())
        return result
