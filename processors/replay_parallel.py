"""Rebuild with one process per group of partitions (the fold is CPU bound: Avro
decoding and ``apply`` hold the GIL, so threads would not help).

Partitions are independent (every event of a task is on its task's partition), so
each worker process folds its own partitions into its own scratch RocksDB, then
writes its states, sorted, into one SST file. The parent ingests the SST files into
the output RocksDB, one after the other. Children are started with ``spawn`` (no
fork of a process that holds librdkafka threads); they report progress through
shared counters and their result through a queue. Every wait is bounded: a child
that dies without a result fails the rebuild with its exit code.
"""

from __future__ import annotations

import multiprocessing
import queue
import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass
from multiprocessing.sharedctypes import Synchronized
from pathlib import Path
from typing import Any

from rocksdict import Options, SstFileWriter

from taskstream.processors.replay_read import (
    Progress,
    ReadPlan,
    ReplayError,
    SkippedRecord,
    make_consumer,
    read_batches,
)
from taskstream.processors.replay_rebuild import (
    FoldStats,
    StateCache,
    fold_messages,
    limits_of,
    open_db,
)
from taskstream.settings import Settings


@dataclass(frozen=True, slots=True)
class GroupResult:
    events: int
    skipped: int
    skipped_details: tuple[SkippedRecord, ...]
    tasks: int
    sst: str | None  # None when the group produced no state


class _Counter:
    """``Progress.advance`` for a child: adds to a counter the parent reads."""

    def __init__(self, value: Synchronized[int]) -> None:
        self._value = value

    def advance(self, n: int) -> None:
        with self._value.get_lock():
            self._value.value += n


def split(read: ReadPlan, groups: int) -> list[list[int]]:
    """Partitions in ``groups`` groups of about the same number of records (greedy)."""
    sizes = sorted(((read.ends[p] - read.starts[p], p) for p in read.ends), reverse=True)
    buckets: list[tuple[int, list[int]]] = [(0, []) for _ in range(groups)]
    for size, p in sizes:
        buckets.sort(key=lambda b: b[0])
        total, members = buckets[0]
        buckets[0] = (total + max(size, 0), [*members, p])
    return [sorted(members) for _, members in buckets if members]


def _write_sst(db: Any, path: Path) -> int:
    options = Options(raw_mode=True)
    writer = SstFileWriter(options=options)
    writer.open(str(path))
    count = 0
    it = db.iter()
    it.seek_to_first()
    while it.valid():
        writer[it.key()] = it.value()
        count += 1
        it.next()
    if count:
        writer.finish()
    return count


def fold_group(
    settings: Settings, read: ReadPlan, scratch: str, cache_size: int,
    counter: Synchronized[int], results: Any,
) -> None:
    """Child process: fold ``read`` and put a :class:`GroupResult` (or an error) on ``results``."""
    try:
        work = Path(scratch)
        consumer = make_consumer(settings)
        db = open_db(work / "db", create=True)
        stats = FoldStats()
        try:
            cache = StateCache(db, capacity=cache_size)
            batches = read_batches(consumer, read, settings.kafka_timeout_s,
                                   _Counter(counter))  # type: ignore[arg-type]
            fold_messages(batches, cache, limits_of(settings), stats)
            cache.flush()
            sst = work / "states.sst"
            tasks = _write_sst(db, sst)
        finally:
            db.close()
            consumer.close()
        results.put(GroupResult(stats.events, stats.skipped, tuple(stats.skipped_details), tasks,
                                str(sst) if tasks else None))
    except Exception as exc:  # reported to the parent, which raises ReplayError
        results.put(f"{type(exc).__name__}: {exc}")


def rebuild_parallel(
    settings: Settings, read: ReadPlan, out_db: Any, scratch: Path, workers: int,
    quiet: bool, cache_size: int,
) -> tuple[FoldStats, int]:
    """Fold ``read`` with ``workers`` processes into ``out_db``; (stats, tasks)."""
    ctx = multiprocessing.get_context("spawn")
    results = ctx.Queue()
    groups = split(read, workers)
    counters = [ctx.Value("q", 0) for _ in groups]
    children = []
    for i, partitions in enumerate(groups):
        part = ReadPlan(read.topic, {p: read.starts[p] for p in partitions},
                        {p: read.ends[p] for p in partitions})
        child = ctx.Process(
            target=fold_group, name=f"replay-fold-{i}", daemon=True,
            args=(settings, part, str(scratch / f"group{i}"), cache_size // len(groups),
                  counters[i], results))
        child.start()
        children.append(child)
    try:
        found = _collect(children, results, counters, read.total, quiet,
                         settings.kafka_timeout_s)
    finally:
        for child in children:
            child.join(timeout=5)
            if child.is_alive():
                child.kill()
    stats = FoldStats()
    tasks = 0
    for group in found:
        stats.events += group.events
        stats.skipped += group.skipped
        stats.skipped_details.extend(group.skipped_details)
        tasks += group.tasks
        if group.sst is not None:
            out_db.ingest_external_file([group.sst])
    shutil.rmtree(scratch, ignore_errors=True)
    return stats, tasks


def _collect(
    children: list[Any], results: Any, counters: list[Synchronized[int]], total: int,
    quiet: bool, silence_s: float,
) -> list[GroupResult]:
    found: list[GroupResult] = []
    last_done, last_change = -1, time.monotonic()
    with Progress(f"rebuild ({len(children)} processes)", total, quiet) as progress:
        while len(found) < len(children):
            try:
                item = results.get(timeout=0.25)
            except queue.Empty:
                item = None
            if isinstance(item, str):
                raise ReplayError(f"a replay worker process failed: {item}")
            if item is not None:
                found.append(item)
            done = sum(c.value for c in counters)
            if done != last_done:
                progress.advance(done - max(last_done, 0))
                last_done, last_change = done, time.monotonic()
            dead = [c for c in children if not c.is_alive() and c.exitcode not in (0, None)]
            if dead and item is None:
                raise ReplayError(f"replay worker {dead[0].name} died (exit code "
                                  f"{dead[0].exitcode}) before reporting; see its output above")
            if time.monotonic() - last_change > 4 * silence_s + 30:
                raise ReplayError("replay worker processes made no progress for "
                                  f"{4 * silence_s + 30:.0f}s; is the broker up?")
    return found


def default_workers(partitions: Mapping[int, int]) -> int:
    import os

    return max(1, min(2, os.cpu_count() or 1, len(partitions)))
