"""The listing index under retention churn stays small to scan (issue 22, D48).

Retention removes the oldest finished tasks; every task leaves three listing
tombstones behind (READY, RUNNING, SUCCEEDED) and a listing scan from a run's
start steps over every tombstone below the first live entry, and over the entry
each one hides, until a compaction drops them. Measured by RocksDB itself
(``rocksdb.number.iter.skip``), never by time.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import faust
import pytest
from rocksdict import Options, Rdict

from bench.bench_index_churn import churn_second, task
from taskstream.schemas.events import TimerKind
from taskstream.schemas.state import EntityState, TaskState, TaskStatus
from taskstream.statestore import indexes, keys, rocks
from taskstream.statestore.rocks import Deletions
from taskstream.statestore.tables import PartitionWriter, TaskTables

RATE, RETENTION_S, SECONDS = 20, 30, 300  # 6,000 tasks, 5,400 removed
#: the compaction rule's floor (rocks.COMPACT_AFTER_DELETES; the live entries here are
#: fewer): an index holds at most the deletions since its last compaction, plus one
#: batch's. A listing scan seeks twice (the first queue, then its run), each stepping
#: over two internal keys per tombstone below the first live entry at most (the
#: tombstone and the entry it hides).
DELETES_BOUND = 1024
BATCH_DELETES = 3 * RATE


def _timer_of(state: EntityState | None) -> keys.DueEntry | None:
    if isinstance(state, TaskState) and state.status is TaskStatus.SUCCEEDED:
        assert state.finished_at_ms is not None
        return keys.DueEntry(state.finished_at_ms + RETENTION_S * 1000, state.task_id,
                             TimerKind.RETENTION_DUE, state.attempt, "d")
    return indexes.timer_of(state)


def _skipped(options: Any) -> int:
    found = re.search(r"rocksdb\.number\.iter\.skip COUNT : (\d+)", options.get_statistics())
    assert found is not None
    return int(found.group(1))


def _tombstones(db: Any) -> int:
    memtables = sum(int(db.property_value(f"rocksdb.num-deletes-{which}-mem-table{s}") or 0)
                    for which, s in (("active", ""), ("imm", "s")))
    return memtables + int(sum(f["num_deletions"] for f in db.live_files()))


@pytest.fixture(scope="module")
def churned(tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[tuple[indexes.PartitionIndex, Any]]:
    """A partition index after the soak's writes: READY, RUNNING, SUCCEEDED per task,
    removed ``RETENTION_S`` later; with RocksDB's statistics on its listing DB."""
    opened: list[Any] = []

    def counted() -> Any:
        options = real()
        options.enable_statistics()
        opened.append(options)
        return options

    real = indexes.index_options
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(indexes, "index_options", counted)
        index = indexes.PartitionIndex(tmp_path_factory.mktemp("churn"), _timer_of)
    finished: list[tuple[int, TaskState]] = []
    seq = 0
    for second in range(SECONDS):
        seq = churn_second(index, 1_800_000_000_000 + second * 1000, RATE, seq, finished,
                           RETENTION_S)
    yield index, opened[1]  # opened in order: due, listing
    index.close()


def test_a_listing_scan_steps_over_a_bounded_number_of_removed_entries(
        churned: tuple[indexes.PartitionIndex, Any]) -> None:
    index, listing_options = churned
    before = _skipped(listing_options)
    listed = list(zip(range(100), index.scan_listing(None, TaskStatus.SUCCEEDED.value, ""),
                      strict=False))
    skipped = _skipped(listing_options) - before
    assert len(listed) == 100
    assert skipped <= 4 * (DELETES_BOUND + BATCH_DELETES), (
        f"the listing scan stepped over {skipped} removed entries")


def test_the_index_holds_a_bounded_number_of_tombstones(
        churned: tuple[indexes.PartitionIndex, Any]) -> None:
    index, _ = churned
    held = _tombstones(index.listing)
    assert held <= DELETES_BOUND + BATCH_DELETES, f"the listing index holds {held} tombstones"
    assert _tombstones(index.due) <= DELETES_BOUND + BATCH_DELETES
    # the index still says exactly what the states say
    assert sum(index.counts().values()) == RATE * RETENTION_S


def test_the_task_table_holds_a_bounded_number_of_tombstones(tmp_path: Path) -> None:
    """The fold's writes to a partition's task table under retention: each removal is a
    tombstone; the partition's DB is compacted after enough of them (D48)."""
    db = Rdict(str(tmp_path / "tasks"), Options(raw_mode=True))
    index = indexes.PartitionIndex(tmp_path / "idx", _timer_of)
    deletions = Deletions(db)
    finished: list[tuple[int, TaskState]] = []
    seq = 0
    for second in range(SECONDS):
        now = 1_800_000_000_000 + second * 1000
        writer = PartitionWriter(db, index, deletions)
        for _ in range(RATE):
            seq += 1
            ready = task(f"{now:013d}{seq:010d}", now)
            running = dataclasses.replace(ready, status=TaskStatus.RUNNING, due_at_ms=now + 30_000)
            done = dataclasses.replace(running, status=TaskStatus.SUCCEEDED, due_at_ms=None,
                                       finished_at_ms=now)
            # a state is written once per event: three versions of each key
            for before, after in ((None, ready), (ready, running), (running, done)):
                writer.put(after.task_id.encode(), b"x" * 300, before, after)
            finished.append((now, done))
        while finished and finished[0][0] + RETENTION_S * 1000 <= now:
            gone = finished.pop(0)[1]
            writer.delete(gone.task_id.encode(), gone)
        writer.commit()
    held = _tombstones(db)
    assert held <= DELETES_BOUND + RATE, f"the task table holds {held} tombstones"
    assert deletions.compactions >= (SECONDS - RETENTION_S) * RATE // (2 * DELETES_BOUND)
    assert sum(1 for _ in db.items()) == RATE * RETENTION_S
    index.close()
    db.close()


def _compact_often(db: Rdict) -> None:
    for round_ in range(300):
        db[b"k%d" % round_] = b"v"
        del db[b"k%d" % round_]
        rocks.compact(db)
    db.close()


def _info_log_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.glob("LOG*"))


def test_an_index_info_log_stays_bounded_however_many_compactions(tmp_path: Path) -> None:
    """Each compaction adds a few KiB to RocksDB's info log (``LOG``), which by default
    never rolls: an index's is capped (D48)."""
    _compact_often(Rdict(str(tmp_path / "idx"), rocks.index_options()))
    logs = _info_log_bytes(tmp_path / "idx")
    assert logs <= 3 * rocks.INFO_LOG_BYTES, f"the info logs hold {logs} bytes"


def test_a_task_table_info_log_stays_bounded_however_many_compactions(
        tmp_path: Path) -> None:
    """The task table's partitions are opened by Faust, whose rocksdict options drop
    any option outside its list: the table's store uses :class:`rocks.TableOptions`,
    which caps the info log as an index's is."""
    _compact_often(rocks.TableOptions(**rocks.TABLE_OPTIONS, use_rocksdict=True)
                   .open(tmp_path / "table"))
    logs = _info_log_bytes(tmp_path / "table")
    assert logs <= 3 * rocks.INFO_LOG_BYTES, f"the info logs hold {logs} bytes"


def test_the_task_table_opens_its_partitions_with_the_capped_info_log(
        tmp_path: Path) -> None:
    """The cap reaches the partitions Faust opens for the processor's table."""
    app = faust.App("churn-test", broker="kafka://127.0.0.1:1", store="rocksdb://",
                    datadir=str(tmp_path), autodiscover=False)
    tables = TaskTables(app, 2, tmp_path / "idx", lambda: True)
    tables.partition_db(0)
    options = next(tmp_path.rglob("tasks*-0.db/OPTIONS-*")).read_text()
    assert f"max_log_file_size={rocks.INFO_LOG_BYTES}" in options
    assert f"keep_log_file_num={rocks.INFO_LOGS_KEPT}" in options
