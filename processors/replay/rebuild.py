"""Rebuild task state by folding the events topic into a fresh RocksDB.

The fold itself is :mod:`taskstream.processors.replay.folding`; this module plans
the read, folds in this process or in several
(:mod:`~taskstream.processors.replay.parallel`), and ingests the parts.

Where to stop (docs/replay.md): ``--until-offsets 0:1200,1:900`` folds records with
offset < N on the named partitions; ``--until TIME`` is turned into such offsets
with the broker's time index: on each partition, fold every record before the first
one whose *Kafka record timestamp* is later than TIME. Both cut each partition at a
prefix of its log, so the result is a state the live processor really passed
through, even when writers' clocks (``occurred_at_ms``) disagree.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rocksdict import IngestExternalFileOptions

from taskstream.processors.replay.errors import ReplayError
from taskstream.processors.replay.folding import fold_to_sst, open_db
from taskstream.processors.replay.parallel import default_workers, rebuild_parallel
from taskstream.processors.replay.read import (
    ProgressFactory,
    SkippedRecord,
    make_consumer,
    no_progress,
    offsets_for_time,
    partition_count,
    plan,
)
from taskstream.settings import Settings
from taskstream.topics import events_topic

#: below this many records a rebuild folds in-process (spawning costs about a second)
PARALLEL_FROM = 200_000


@dataclass(frozen=True, slots=True)
class RebuildResult:
    out: Path
    tasks: int
    events: int
    skipped: int
    skipped_details: tuple[SkippedRecord, ...]
    ends: Mapping[int, int]  # partition -> first offset NOT folded
    seconds: float
    #: per fold process: (wall seconds of its fold, CPU seconds of its fold); a CPU
    #: share well below 1 means it waited for the broker or for a core
    folds: tuple[tuple[float, float], ...] = ()

    @property
    def events_per_s(self) -> float:
        return (self.events + self.skipped) / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> dict[str, Any]:
        return {
            "out": str(self.out),
            "tasks": self.tasks,
            "events": self.events,
            "skipped": self.skipped,
            "ends": {str(p): o for p, o in sorted(self.ends.items())},
            "seconds": round(self.seconds, 3),
            "events_per_s": round(self.events_per_s),
            "folds_wall_cpu_s": [[round(w, 2), round(c, 2)] for w, c in self.folds],
        }


def resolve_ends(
    settings: Settings, until_ms: int | None = None, until_offsets: Mapping[int, int] | None = None
) -> dict[int, int] | None:
    """The per-partition end offsets of a rebuild (None = every high watermark)."""
    if until_ms is not None and until_offsets is not None:
        raise ReplayError("give either --until or --until-offsets, not both")
    if until_ms is None:
        return dict(until_offsets) if until_offsets is not None else None
    consumer = make_consumer(settings)
    try:
        topic = events_topic(settings)
        count = partition_count(consumer, topic, settings.kafka_timeout_s)
        return offsets_for_time(
            consumer, topic, list(range(count)), until_ms + 1, settings.kafka_timeout_s)
    finally:
        consumer.close()


def rebuild(
    settings: Settings,
    out: Path,
    *,
    until_ms: int | None = None,
    until_offsets: Mapping[int, int] | None = None,
    progress: ProgressFactory = no_progress,
    cache_size: int = 200_000,
    workers: int | None = None,
) -> RebuildResult:
    """Fold the events topic (up to the given cut) into a fresh RocksDB at ``out``.

    ``workers``: fold processes (None = one per core, up to 2, for topics of at least
    :data:`PARALLEL_FROM` records; see ``processors/replay/parallel.py``).
    """
    if out.exists() and any(out.iterdir()):
        raise ReplayError(f"{out} exists and is not empty; give a new directory for the rebuild")
    ends = resolve_ends(settings, until_ms, until_offsets)
    started = time.perf_counter()
    consumer = make_consumer(settings)
    try:
        read = plan(consumer, settings, events_topic(settings), ends)
    finally:
        consumer.close()  # before any child process starts
    if workers is None:
        workers = default_workers(read.ends) if read.total >= PARALLEL_FROM else 1
    out.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{out.name}-parts-", dir=out.parent))
    try:
        if workers > 1 and len(read.ends) > 1:
            stats, parts = rebuild_parallel(settings, read, scratch, workers, progress, cache_size)
        else:
            consumer = make_consumer(settings)
            try:
                with progress("rebuild", read.total) as counter:
                    stats, part = fold_to_sst(consumer, settings, read, scratch, cache_size,
                                              counter)
            finally:
                consumer.close()
            parts = [part]
        db = open_db(out, create=True)
        try:
            moving = IngestExternalFileOptions()
            moving.set_move_files(True)  # the scratch files are ours, on the same disk
            for part in parts:
                if part.sst is not None:
                    db.ingest_external_file([part.sst], moving)
        finally:
            db.close()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return RebuildResult(out, sum(p.tasks for p in parts), stats.events, stats.skipped,
                         tuple(stats.skipped_details), dict(read.ends),
                         time.perf_counter() - started, tuple((p.wall_s, p.cpu_s) for p in parts))
