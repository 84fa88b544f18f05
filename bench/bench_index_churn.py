"""The listing index under retention, alone: what a listing scan steps over, and why.

The retention soak (bench_storage.py) showed the listing time and the data
directory drifting up while the state held rate x retention tasks. This drives
one partition's real :class:`~taskstream.statestore.indexes.PartitionIndex`
(its RocksDB options, its batched moves) through the soak's index writes with
no broker: per virtual second ``--rate`` tasks go READY, then RUNNING, then
SUCCEEDED (a lease timer, then a retention timer), and the tasks that finished
``--retention`` s earlier are removed, as the processor's retention sweep does.
After every ``--every`` virtual seconds it reads what the soak's listing reads
(``GET /tasks?state=SUCCEEDED&limit=100``: the queues, then the first 100 IDs)
and reports RocksDB's own counters: the internal keys that scan skipped
(``rocksdb.number.iter.skip``: tombstones and the entries they hide), the
deletions in the memtable and in the SSTs, and the SSTs by level.

    python bench/bench_index_churn.py --rate 42 --retention 30 --minutes 12

Nothing is asserted; figures are printed and written with ``--out``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from taskstream.schemas.events import Backoff, TimerKind
from taskstream.schemas.state import EntityState, TaskState, TaskStatus
from taskstream.statestore import indexes, keys

QUEUE = "default"


def make_timer_of(retention_ms: int) -> indexes.TimerOf:
    """The store's v1 timers plus the retention timer of a finished task (D35)."""
    def timer_of(state: EntityState | None) -> keys.DueEntry | None:
        if isinstance(state, TaskState) and state.status is TaskStatus.SUCCEEDED:
            assert state.finished_at_ms is not None
            return keys.DueEntry(state.finished_at_ms + retention_ms, state.task_id,
                                 TimerKind.RETENTION_DUE, state.attempt, "d")
        return indexes.timer_of(state)
    return timer_of


def task(task_id: str, now_ms: int) -> TaskState:
    return TaskState(task_id=task_id, name="noop", queue=QUEUE, priority=0,
                     status=TaskStatus.READY, payload=b"", content_type="application/json",
                     payload_digest="", max_attempts=3, backoff=Backoff(), timeout_ms=None,
                     lease_ms=30_000, submitted_at_ms=now_ms, updated_at_ms=now_ms,
                     attempt=1, dispatch_id="d")


def churn_second(index: indexes.PartitionIndex, now: int, rate: int, seq: int,
                 finished: list[tuple[int, TaskState]], retention_s: int) -> int:
    """One second of the retention soak's index writes at ``now``: ``rate`` tasks READY,
    RUNNING, SUCCEEDED (a batch each), and the finished ones older than ``retention_s``
    removed; returns the last task sequence number (tests/test_statestore_churn.py
    drives the same writes)."""
    fresh = []
    for _ in range(rate):
        seq += 1
        fresh.append(task(f"{now:013d}{seq:010d}", now))
    batch = index.batch()
    for state in fresh:
        batch.move(None, state)
    batch.commit()
    batch = index.batch()
    running = [dataclasses.replace(s, status=TaskStatus.RUNNING, due_at_ms=now + 30_000)
               for s in fresh]
    for before, after in zip(fresh, running, strict=True):
        batch.move(before, after)
    batch.commit()
    batch = index.batch()
    for before in running:
        after = dataclasses.replace(before, status=TaskStatus.SUCCEEDED, due_at_ms=None,
                                    finished_at_ms=now)
        batch.move(before, after)
        finished.append((now, after))
    while finished and finished[0][0] + retention_s * 1000 <= now:
        batch.remove(finished.pop(0)[1])
    batch.commit()
    return seq


def skipped(options: Any) -> int:
    found = re.search(r"rocksdb\.number\.iter\.skip COUNT : (\d+)", options.get_statistics())
    return int(found.group(1)) if found else 0


def files(db: Any) -> dict[str, Any]:
    live = db.live_files()
    levels: dict[int, int] = {}
    for f in live:
        levels[f["level"]] = levels.get(f["level"], 0) + 1
    return {"ssts_by_level": {str(k): v for k, v in sorted(levels.items())},
            "sst_entries": sum(f["num_entries"] for f in live),
            "sst_deletions": sum(f["num_deletions"] for f in live),
            "mem_deletions": int(db.property_value("rocksdb.num-deletes-active-mem-table")
                                 or 0)
            + int(db.property_value("rocksdb.num-deletes-imm-mem-tables") or 0)}


def run(rate: int, retention_s: int, minutes: float, every: int, path: Path
        ) -> list[dict[str, Any]]:
    options_of: dict[str, Any] = {}
    original = indexes.index_options

    def with_statistics() -> Any:
        options = original()
        options.enable_statistics()
        options_of[str(len(options_of))] = options
        return options

    indexes.index_options = with_statistics  # the trace counts; the options are the real ones
    try:
        index = indexes.PartitionIndex(path, make_timer_of(retention_s * 1000))
    finally:
        indexes.index_options = original
    listing_options = options_of["1"]  # opened second: due, then listing
    finished: list[tuple[int, TaskState]] = []
    rows: list[dict[str, Any]] = []
    seq = 0
    began = time.perf_counter()
    for second in range(int(minutes * 60)):
        now = 1_800_000_000_000 + second * 1000
        seq = churn_second(index, now, rate, seq, finished, retention_s)
        if (second + 1) % every == 0:
            before_skip = skipped(listing_options)
            started = time.perf_counter()
            listed = sum(1 for _ in zip(range(100), index.scan_listing(
                None, TaskStatus.SUCCEEDED.value, ""), strict=False))
            took = (time.perf_counter() - started) * 1000
            row = {"t_s": second + 1, "listed": listed,
                   "scan_skipped_keys": skipped(listing_options) - before_skip,
                   "scan_ms": round(took, 2), **files(index.listing)}
            rows.append(row)
            print(json.dumps(row), flush=True)
    index.close()
    print(f"# {seq} tasks in {time.perf_counter() - began:.1f} s", file=sys.stderr)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--rate", type=int, default=42, help="tasks per virtual second")
    parser.add_argument("--retention", type=int, default=30, help="retention_s")
    parser.add_argument("--minutes", type=float, default=12.0)
    parser.add_argument("--every", type=int, default=30, help="virtual seconds per sample")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="taskstream-churn-") as tmp:
        rows = run(args.rate, args.retention, args.minutes, args.every, Path(tmp))
    if args.out:
        args.out.write_text(json.dumps({"command": " ".join(["python", *sys.argv]),
                                        "samples": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
