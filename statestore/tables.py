"""The processor's state: the task table (a Faust table) and its local indexes.

* ``tasks``: task ID -> encoded :class:`~taskstream.schemas.state.TaskState`, a
  Faust table in RocksDB (one DB per partition), restored from its changelog; the
  other entity kinds' states live in the same table under their ``<kind>:<id>``
  keys, which sort after every task ID (ENTITIES.md; D37, D32): task scans stop
  at the first key ``>= b"a"``;
* the due index and the listing index (statestore/indexes.py): local RocksDBs
  derived from the task table, kept for this replica's active partitions only and
  rebuilt from the task table when a partition becomes active here.

Only the fold writes: the batched fold writes a partition's RocksDB directly, one
write batch per batch, and sends the changelog records itself (D19); the index
entries move beside the states, on the same partition. A partition's DB is
compacted after as many deletions (retention, purge) as it has live states, so
removed states do not pile up as tombstones (D48).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import faust
from rocksdict import WriteBatch

from taskstream.schemas.entity_keys import FIRST_ENTITY_KEY
from taskstream.schemas.serde import decode_entity
from taskstream.schemas.state import EntityState
from taskstream.statestore import keys
from taskstream.statestore.indexes import LocalIndexes, PartitionIndex, TimerOf, timer_of
from taskstream.statestore.rocks import TABLE_OPTIONS, Deletions, TableOptions
from taskstream.topics import TASK_TABLE

TABLE_NAMES = (TASK_TABLE,)
#: Faust keeps its own keys (``__faust\0offset__``) in every partition's RocksDB
FAUST_KEY_PREFIX = b"__faust"


class PartitionWriter:
    """One batch's writes to one partition: the task states in one RocksDB write
    batch, their index entries moved in one write per index.

    The batched fold (processors/live/engine.py) writes the partition's RocksDB
    directly instead of through the Faust table's ``__setitem__``, which needs a
    current stream event and queues a changelog record per write (D19); the engine
    sends the changelog records itself. The index entries are written first, the
    states last; the indexes are rebuilt from the states after any restart or
    rebalance (D10), so a crash in between leaves nothing behind.
    """

    def __init__(self, db: Any, index: PartitionIndex, deletions: Deletions) -> None:
        self._db = db
        self._deletions = deletions
        self._timer_of = index.timer_of
        self._index = index.batch()
        self._batch = WriteBatch(raw_mode=True)

    def put(self, key: bytes, encoded: bytes, before: EntityState | None, after: EntityState,
            fired_timers: Iterable[int] = ()) -> None:
        """Stage an entity's new state; ``fired_timers``: due times of timers that fired
        for it, whose entries go unless they are its timer now."""
        self._batch.put(key, encoded)
        self._index.move(before, after)
        timer = self._timer_of(after)
        for due_at_ms in fired_timers:
            if timer is None or timer.due_at_ms != due_at_ms:
                self._index.drop_timer(due_at_ms, key.decode())

    def delete(self, key: bytes, before: EntityState | None) -> None:
        """Stage an entity's removal: its state and every index entry of it go."""
        self._batch.delete(key)
        self._deletions.note(key)
        if before is not None:
            self._index.remove(before)

    def commit(self) -> None:
        self._index.commit()
        self._db.write(self._batch)
        self._deletions.written()  # compacts the partition's DB now and then (D48)


class TaskTables:
    def __init__(
        self, app: faust.App, partitions: int, index_dir: Path, can_build: Callable[[], bool],
        timer_of: TimerOf = timer_of,
    ) -> None:
        # an index built before the latest rebalance is rebuilt (statestore/indexes.py)
        def generation() -> int:
            return int(app.consumer_generation_id or 0)

        # bytes in, bytes out: the app's serializers are "raw" (processors/live/app.py)
        self.tasks: Any = app.Table(TASK_TABLE, key_type=bytes, value_type=bytes,
                                    partitions=partitions, default=None,
                                    options=dict(TABLE_OPTIONS))
        store: Any = self.tasks.data
        # Faust's rocksdict options drop the info log cap (statestore/rocks.py)
        store.rocksdb_options = TableOptions(**TABLE_OPTIONS,
                                             use_rocksdict=store.rocksdb_options.use_rocksdict)
        self.indexes = LocalIndexes(index_dir, self.states_in, can_build, generation, timer_of)
        self._deletions: dict[int, Deletions] = {}

    # -- writes (the batched fold only) -------------------------------------------

    def writer(self, partition: int) -> PartitionWriter:
        """The batched fold's writes to one partition (see :class:`PartitionWriter`)."""
        db = self.partition_db(partition)
        deletions = self._deletions.get(partition)
        if deletions is None or deletions.db is not db:  # reopened after a rebalance
            deletions = self._deletions[partition] = Deletions(db)
        return PartitionWriter(db, self.indexes.for_partition(partition, restored=True),
                               deletions)

    # -- reads ---------------------------------------------------------------------

    def get_any(self, key: bytes) -> bytes | None:
        """A task's encoded state from whichever local partition holds it."""
        value = self.tasks.get(key)
        return value if isinstance(value, bytes) else None

    def partition_db(self, partition: int) -> Any:
        return self.tasks.data._db_for_partition(partition)

    def states_in(self, partition: int) -> Iterator[EntityState]:
        """Every state of one partition, of every kind (the indexes are built from them)."""
        for _, value in self._scan(partition, b""):
            yield decode_entity(value)

    def due_entries(self, partition: int, now_ms: int) -> Iterator[tuple[bytes, keys.DueEntry]]:
        return self.indexes.for_partition(partition).due_entries(now_ms)

    def scan_listing(
        self, partition: int, queue: str | None, status: str, after_task_id: str = ""
    ) -> Iterator[str]:
        """Task IDs of (queue or every queue, status) in this partition, in ID order,
        after a cursor."""
        return self.indexes.for_partition(partition).scan_listing(queue, status, after_task_id)

    def scan_tasks(self, partition: int, after_task_id: str = "") -> Iterator[bytes]:
        """Encoded task states of one partition in task ID order, after a cursor (the
        other kinds' keys sort after every task ID: the scan stops at the first)."""
        start = after_task_id.encode() + b"\x00" if after_task_id else b""
        for key, value in self._scan(partition, start):
            if key >= FIRST_ENTITY_KEY:
                return
            yield value

    def scan_entities(self, partition: int, prefix: str) -> Iterator[tuple[str, bytes]]:
        """(key, encoded state) of one partition's entities whose key starts with
        ``prefix`` (``schedule:``, ``limit:``, ...), in key order."""
        start = prefix.encode()
        for key, value in self._scan(partition, start):
            if not key.startswith(start):
                return
            yield key.decode(), value

    def _scan(self, partition: int, start: bytes) -> Iterator[tuple[bytes, bytes]]:
        for key, value in self.partition_db(partition).items(from_key=start):
            if key.startswith(FAUST_KEY_PREFIX):
                continue  # Faust's own bookkeeping (the persisted changelog offset)
            yield key, value

    def get_in(self, partition: int, task_id: str) -> bytes | None:
        value = self.partition_db(partition).get(task_id.encode())
        return value if isinstance(value, bytes) else None

    def counts(self, partitions: list[int]) -> Counter[tuple[str, str, int]]:
        """Tasks by (queue, status, priority) over the given partitions, from the index."""
        result: Counter[tuple[str, str, int]] = Counter()
        for partition in partitions:
            result.update(self.indexes.for_partition(partition).counts())
        return result
