"""Rebuild with one process per group of partitions (the fold is CPU bound: Avro
decoding and ``apply`` hold the GIL, so threads would not help).

Partitions are independent (every event of a task is on its task's partition), so
each worker process folds its own partitions (``fold_to_sst``: an LRU over a
scratch RocksDB for evicted states) into one SST file of its states, sorted. The
parent ingests the SST files into the output RocksDB. Children are started with ``spawn`` (no
fork of a process that holds librdkafka threads); they report progress through
shared counters and their result through a queue. Every wait is bounded: a child
that dies without a result fails the rebuild with its exit code.
"""

from __future__ import annotations

import multiprocessing
import queue
import time
from collections.abc import Mapping
from dataclasses import dataclass
from multiprocessing.sharedctypes import Synchronized
from pathlib import Path
from typing import Any

from taskstream.processors.replay.errors import ReplayError
from taskstream.processors.replay.folding import FoldedPart, FoldStats, fold_to_sst
from taskstream.processors.replay.read import (
    ProgressFactory,
    ReadPlan,
    SkippedRecord,
    make_consumer,
)
from taskstream.settings import Settings


@dataclass(frozen=True, slots=True)
class GroupResult:
    events: int
    skipped: int
    skipped_details: tuple[SkippedRecord, ...]
    part: FoldedPart


class _Counter:
    """``advance`` for a child: adds to a counter the parent reads."""

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


def fold_group(
    settings: Settings, read: ReadPlan, scratch: str, cache_size: int,
    counter: Synchronized[int], results: Any,
) -> None:
    """Child process: fold ``read`` and put a :class:`GroupResult` (or an error) on ``results``."""
    try:
        consumer = make_consumer(settings)
        try:
            stats, part = fold_to_sst(consumer, settings, read, Path(scratch), cache_size,
                                      _Counter(counter))
        finally:
            consumer.close()
        results.put(GroupResult(stats.events, stats.skipped, tuple(stats.skipped_details), part))
    except Exception as exc:  # reported to the parent, which raises ReplayError
        results.put(f"{type(exc).__name__}: {exc}")


def rebuild_parallel(
    settings: Settings, read: ReadPlan, scratch: Path, workers: int, progress: ProgressFactory,
    cache_size: int,
) -> tuple[FoldStats, list[FoldedPart]]:
    """Fold ``read`` with ``workers`` processes into SST files under ``scratch``."""
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
        found = _collect(children, results, counters, read.total, progress,
                         settings.kafka_timeout_s)
    finally:
        for child in children:
            child.join(timeout=5)
            if child.is_alive():
                child.kill()
    stats = FoldStats()
    for group in found:
        stats.events += group.events
        stats.skipped += group.skipped
        stats.skipped_details.extend(group.skipped_details)
    return stats, [group.part for group in found]


def _collect(
    children: list[Any], results: Any, counters: list[Synchronized[int]], total: int,
    progress: ProgressFactory, silence_s: float,
) -> list[GroupResult]:
    found: list[GroupResult] = []
    last_done, last_change = -1, time.monotonic()
    with progress(f"rebuild ({len(children)} processes)", total) as counter:
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
                counter.advance(done - max(last_done, 0))
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
