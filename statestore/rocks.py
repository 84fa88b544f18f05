"""RocksDB memory settings: state lives on disk, memory stays bounded.

RocksDB's defaults are sized for one big database: a 64 MiB memtable per
database, flushed only when full. A processor replica opens many small ones (a
task table per partition, active and standby, and two local indexes per active
partition), so with the defaults every write of a long run stayed in memtables:
the resident set grew with the number of tasks (about 15 MiB a minute at 150
tasks/s in the soak benchmark, never flushed), and every deleted index entry
stayed a tombstone that range scans had to step over.

* Faust's task table (``TABLE_OPTIONS``, passed as the table's ``options``):
  8 MiB memtables, at most two per database, a 16 MiB block cache each. Faust
  builds a rocksdict database's options from a fixed list and drops any other
  option it is given, so the info log's cap is set by :class:`TableOptions`,
  which the task table's store uses instead of Faust's own.
* Our indexes (``index_options``): 4 MiB memtables under one write buffer
  manager per process (64 MiB for all of them), one shared 32 MiB block cache,
  and a collector that marks an SST with many deletions for compaction, so the
  tombstones of moved entries go away.

Deletions are compacted away on our side too (:class:`Deletions`, D48): RocksDB
drops a tombstone only when a compaction into the last level meets it. A flush
keeps it, and a flushed file that overlaps nothing below moves down whole, so
under retention (every task's entries deleted a fixed time after they were
written) the soak's listing index held up to 27,000 tombstones per partition,
which every listing stepped over, and the write-ahead logs of memtables that took
9 minutes to fill were most of the data directory. So every store the fold
deletes from counts its deletions and compacts the range they span after as many
as it holds live entries (at least ``COMPACT_AFTER_DELETES``).
"""

from __future__ import annotations

from typing import Any

from faust.stores.rocksdb import RocksDBOptions
from rocksdict import (
    BlockBasedOptions,
    BottommostLevelCompaction,
    Cache,
    CompactOptions,
    Options,
    WriteBufferManager,
)

MIB = 1024 * 1024

#: for ``app.Table(..., options=TABLE_OPTIONS)`` (faust.stores.rocksdb.RocksDBOptions)
TABLE_OPTIONS: dict[str, Any] = {
    "write_buffer_size": 8 * MIB,
    "max_write_buffer_number": 2,
    "block_cache_size": 16 * MIB,
}

INDEX_WRITE_BUFFER = 4 * MIB
INDEX_MEMTABLE_BUDGET = 64 * MIB
INDEX_BLOCK_CACHE = 32 * MIB
#: RocksDB's info log (LOG) gets a few KiB per compaction and stats dump and never
#: rolls by default: each database keeps at most 3 files of this size (D48)
INFO_LOG_BYTES = 256 * 1024
INFO_LOGS_KEPT = 2

_shared: tuple[WriteBufferManager, Cache] | None = None


def _shared_limits() -> tuple[WriteBufferManager, Cache]:
    global _shared
    if _shared is None:
        _shared = (WriteBufferManager(INDEX_MEMTABLE_BUDGET, False), Cache(INDEX_BLOCK_CACHE))
    return _shared


def index_options() -> Options:
    """Options of a local index DB (raw mode: bytes keys and values)."""
    manager, cache = _shared_limits()
    options = Options(raw_mode=True)
    options.create_if_missing(True)
    options.set_write_buffer_size(INDEX_WRITE_BUFFER)
    options.set_max_write_buffer_number(2)
    options.set_write_buffer_manager(manager)
    table = BlockBasedOptions()
    table.set_block_cache(cache)
    options.set_block_based_table_factory(table)
    # an SST where 64 of any 256 consecutive entries are deletions is compacted soon
    options.add_compact_on_deletion_collector_factory(256, 64, 0.0)
    return capped_info_log(options)


def capped_info_log(options: Options) -> Options:
    """``options`` with the info log rolled at ``INFO_LOG_BYTES``, ``INFO_LOGS_KEPT`` old
    files kept."""
    options.set_max_log_file_size(INFO_LOG_BYTES)
    options.set_keep_log_file_num(INFO_LOGS_KEPT)
    return options


class TableOptions(RocksDBOptions):
    """Faust's options for a task table partition, with the info log capped."""

    def as_options(self) -> Any:
        options = super().as_options()
        return capped_info_log(options) if self.use_rocksdict else options


#: a DB is compacted once this many deletions were written to it since its last
#: compaction, or as many as it has live entries if that is more (D48)
COMPACT_AFTER_DELETES = 1024


def compact(db: Any, low: bytes | None = None, high: bytes | None = None) -> None:
    """Flush ``db``'s memtable and compact the files holding keys in ``[low, high]``
    (all by default) into its last level: the tombstones and the entries they hide
    are gone, and so are the write-ahead logs."""
    options = CompactOptions()
    options.set_bottommost_level_compaction(BottommostLevelCompaction.force())
    db.compact_range(low, high, options)


def stored_entries(db: Any) -> int:
    """The entries in ``db``'s SST files less their deletions: after a compaction, its
    live keys exactly. (``rocksdb.estimate-num-keys`` counts every version of a key in
    the memtables: the task table writes a state once per event, so that estimate
    grew faster than the deletions and the task table was never compacted.)"""
    return max(0, sum(int(f["num_entries"]) - int(f["num_deletions"])
                      for f in db.live_files()))


class Deletions:
    """Deletions written to one DB since its last compaction, and the key range they
    span. At ``max(COMPACT_AFTER_DELETES, live entries)`` the range is compacted (D48):
    at most the live entries are rewritten once per as many deletions, so the cost
    per deletion stays O(1) however large the DB, and a scan never steps over more
    tombstones than that. Retention deletes the oldest task IDs, so in a large task
    table the range is the old end of it, not the whole DB.

    The compaction runs on the caller's thread (the fold's), for as long as it takes
    to rewrite the files of that range: milliseconds for the soak's 500 states per
    partition; a partition holding millions of states under retention would pause its
    fold for the seconds its old files take to rewrite."""

    def __init__(self, db: Any) -> None:
        self.db = db
        self.since = 0
        self.compactions = 0
        self._low: bytes | None = None
        self._high: bytes | None = None

    def note(self, key: bytes) -> None:
        """A deletion of ``key`` is staged (:meth:`written` follows its write)."""
        self.since += 1
        if self._low is None or key < self._low:
            self._low = key
        if self._high is None or key > self._high:
            self._high = key

    def written(self) -> None:
        """The deletions noted so far are written: compact their range if it is time."""
        if self.since < COMPACT_AFTER_DELETES:
            return
        if self.since >= stored_entries(self.db):
            compact(self.db, self._low, self._high)
            self.since, self._low, self._high = 0, None, None
            self.compactions += 1
