"""``replay verify``: is the live task table exactly the fold of the log?

Steps, in this order (the order is what makes the comparison exact):

1. wait, at most ``wait_timeout`` seconds, until the processors are caught up:
   the offsets their fold committed on the events topic (group
   ``<prefix>processor.fold``, D19) equal the topic's high watermarks, and two samples ``settle``
   seconds apart of (events high watermarks, committed offsets, changelog high
   watermarks) are identical. The processor commits an event's offset only once its
   changelog record is acknowledged (processors/live/engine.py), so at that point the
   changelog holds the result of every committed event. Not caught up in time ->
   :class:`NotCaughtUpError` (exit non-zero), never a guess;
2. rebuild the events topic up to those committed offsets into a scratch RocksDB;
3. read the task changelog up to the sampled high watermarks, latest record per key
   (a tombstone removes the key);
4. :func:`compare` the two, task by task, field by field.

:func:`compare` is pure so tests (and fault-injection tests) can corrupt a copy.
A mismatch is explained where it is found (:func:`explain`): the task's last events,
with what the fold made of each, and both states side by side, so a failed check can
be read without another command.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, KafkaException, TopicPartition

from taskstream.kafka_config import consumer_config
from taskstream.processors.replay.errors import NotCaughtUpError, ReplayError
from taskstream.processors.replay.folding import StateDB, open_db
from taskstream.processors.replay.history import format_entry, task_history
from taskstream.processors.replay.read import (
    ProgressFactory,
    SkippedRecord,
    make_consumer,
    no_progress,
    partition_count,
    plan,
    read_batches,
    watermarks,
)
from taskstream.processors.replay.rebuild import rebuild
from taskstream.schemas.errors import DecodeError
from taskstream.schemas.serde import decode_entity
from taskstream.schemas.state import EntityState
from taskstream.settings import Settings
from taskstream.topics import events_topic, fold_group, task_changelog_topic


@dataclass(frozen=True, slots=True)
class FieldDiff:
    name: str
    expected: Any  # from the replay
    live: Any  # from the changelog


@dataclass(frozen=True, slots=True)
class Mismatch:
    task_id: str
    kind: str  # "differs" | "missing-live" | "missing-replay"
    diffs: tuple[FieldDiff, ...] = ()
    expected: EntityState | None = field(default=None, compare=False, repr=False)
    live: EntityState | None = field(default=None, compare=False, repr=False)

    def describe(self) -> str:
        if self.kind == "missing-live":
            return f"{self.task_id}: in the replay but not in the live table"
        if self.kind == "missing-replay":
            return f"{self.task_id}: in the live table but not in the replay"
        parts = "; ".join(f"{d.name}: replay={d.expected!r} live={d.live!r}" for d in self.diffs)
        return f"{self.task_id}: {parts}"

    def to_json(self) -> dict[str, Any]:
        return {
            "task_id": self.task_id,
            "kind": self.kind,
            "fields": {d.name: {"replay": repr(d.expected), "live": repr(d.live)}
                       for d in self.diffs},
        }


def diff_states(expected: EntityState, live: EntityState) -> tuple[FieldDiff, ...]:
    """Every field whose value differs, in declaration order (states of one kind)."""
    if type(expected) is not type(live):
        return (FieldDiff("kind", type(expected).__name__, type(live).__name__),)
    return tuple(
        FieldDiff(f.name, getattr(expected, f.name), getattr(live, f.name))
        for f in fields(expected)
        if getattr(expected, f.name) != getattr(live, f.name)
    )


def compare(expected: Mapping[str, EntityState], live: Mapping[str, EntityState]
            ) -> list[Mismatch]:
    """Every entity (task, schedule, group) on which the replay (``expected``) and the live
    table disagree, by key."""
    mismatches: list[Mismatch] = []
    for task_id in sorted(set(expected) | set(live)):
        want = expected.get(task_id)
        have = live.get(task_id)
        if have is None:
            mismatches.append(Mismatch(task_id, "missing-live", expected=want))
        elif want is None:
            mismatches.append(Mismatch(task_id, "missing-replay", live=have))
        elif want != have:
            mismatches.append(Mismatch(task_id, "differs", diff_states(want, have), want, have))
    return mismatches


#: characters of a value shown in one column of :func:`side_by_side`
COLUMN = 44


def side_by_side(expected: EntityState | None, live: EntityState | None) -> list[str]:
    """Both states field by field, the replay's on the left; ``*`` marks a difference
    (states of any kind: the fields of whichever side exists)."""

    def cell(state: EntityState | None, name: str) -> str:
        text = "(absent)" if state is None else repr(getattr(state, name))
        return text if len(text) <= COLUMN else text[:COLUMN - 3] + "..."

    either = expected if expected is not None else live
    names = [f.name for f in fields(either)] if either is not None else []
    width = max(map(len, names))
    lines = [f"  {'field':<{width}}   {'replay':<{COLUMN}}  live"]
    for name in names:
        left, right = cell(expected, name), cell(live, name)
        differs = (expected is None) != (live is None) or (
            expected is not None and live is not None
            and getattr(expected, name) != getattr(live, name))
        lines.append(f"{'*' if differs else ' '} {name:<{width}}   {left:<{COLUMN}}  {right}")
    return lines


def explain(settings: Settings, mismatch: Mismatch, last_events: int = 8) -> str:
    """A mismatch with the task's last events (and the fold's verdict on each) and both
    states side by side (reads the task's partition, as ``replay history`` does)."""
    entries = task_history(settings, mismatch.task_id)
    lines = [f"MISMATCH {mismatch.describe()}",
             f"  last {min(last_events, len(entries))} of its {len(entries)} event(s):"]
    lines += ["    " + line for entry in entries[-last_events:]
              for line in format_entry(entry).splitlines()]
    lines.append("  states:")
    lines += ["  " + line for line in side_by_side(mismatch.expected, mismatch.live)]
    return "\n".join(lines)


@dataclass(frozen=True, slots=True)
class VerifyReport:
    tasks: int
    events: int
    ends: Mapping[int, int]
    mismatches: tuple[Mismatch, ...]
    skipped: int
    skipped_details: tuple[SkippedRecord, ...]
    changelog_skipped: tuple[SkippedRecord, ...]
    seconds: float

    @property
    def ok(self) -> bool:
        return not self.mismatches


# -- the live side ----------------------------------------------------------------


def committed_offsets(settings: Settings, partitions: int) -> dict[int, int]:
    """The processors' committed offsets on the events topic (0 where nothing is committed).

    Reads the group's offsets with OffsetFetch only: this consumer never subscribes,
    so it never joins the group nor disturbs its members.
    """
    group = fold_group(settings)
    consumer = Consumer(consumer_config(settings, group))
    topic = events_topic(settings)
    try:
        found = consumer.committed(
            [TopicPartition(topic, p) for p in range(partitions)], timeout=settings.kafka_timeout_s)
    except KafkaException as exc:
        raise ReplayError(f"cannot read the committed offsets of group "
                          f"{group}: {exc}") from exc
    finally:
        consumer.close()
    return {tp.partition: max(tp.offset, 0) for tp in found}


@dataclass(frozen=True, slots=True)
class Positions:
    events_high: dict[int, int]
    committed: dict[int, int]
    changelog_high: dict[int, int]

    @property
    def caught_up(self) -> bool:
        return self.committed == self.events_high


def sample_positions(settings: Settings, consumer: Consumer) -> Positions:
    timeout = settings.kafka_timeout_s
    events = events_topic(settings)
    count = partition_count(consumer, events, timeout)
    changelog = task_changelog_topic(settings)
    events_high = {p: hw for p, (_, hw) in watermarks(consumer, events, range(count),
                                                       timeout).items()}
    committed = committed_offsets(settings, count)
    try:
        changes = partition_count(consumer, changelog, timeout)
    except ReplayError as exc:
        raise ReplayError(f"{exc}. The task changelog appears when a processor first "
                          "starts: has a processor run with these settings?") from exc
    changelog_high = {p: hw for p, (_, hw) in watermarks(consumer, changelog, range(changes),
                                                         timeout).items()}
    return Positions(events_high, committed, changelog_high)


def wait_caught_up(settings: Settings, wait_timeout: float, settle: float = 1.0) -> Positions:
    """Positions once the processors are caught up and quiet; NotCaughtUpError otherwise."""
    consumer = make_consumer(settings)
    deadline = time.monotonic() + wait_timeout
    try:
        previous = sample_positions(settings, consumer)
        while True:
            time.sleep(min(settle, max(0.0, deadline - time.monotonic())) or 0.05)
            current = sample_positions(settings, consumer)
            if current.caught_up and current == previous:
                return current
            if time.monotonic() >= deadline:
                behind = {p: current.events_high[p] - current.committed.get(p, 0)
                          for p in current.events_high
                          if current.events_high[p] != current.committed.get(p, 0)}
                raise NotCaughtUpError(
                    f"the processors are not caught up after {wait_timeout}s (records behind "
                    f"per partition: {behind or 'none, but the changelog is still moving'}); "
                    "make sure a processor runs and the event flow stops, or raise --wait-timeout"
                )
            previous = current
    finally:
        consumer.close()


def read_changelog(
    settings: Settings, ends: Mapping[int, int] | None = None,
    progress: ProgressFactory = no_progress,
) -> tuple[dict[str, EntityState], list[SkippedRecord]]:
    """The latest state per entity in the task changelog, read up to ``ends``."""
    consumer = make_consumer(settings)
    states: dict[str, EntityState] = {}
    raw: dict[bytes, tuple[int, int, bytes | None]] = {}
    skipped: list[SkippedRecord] = []
    try:
        read = plan(consumer, settings, task_changelog_topic(settings), ends)
        with progress("changelog", read.total) as counter:
            for batch in read_batches(consumer, read, settings.kafka_timeout_s, counter):
                for m in batch:
                    if m.key() is not None:
                        raw[m.key()] = (m.partition(), m.offset(), m.value())
    finally:
        consumer.close()
    for key, (partition, offset, value) in raw.items():
        if value is None:
            continue  # tombstone: the task left the table
        try:
            states[key.decode()] = decode_entity(value)
        except DecodeError as exc:
            skipped.append(SkippedRecord(partition, offset, f"changelog value: {exc}"))
    return states, skipped


# -- the whole check ---------------------------------------------------------------


def verify(
    settings: Settings, wait_timeout: float = 30.0, progress: ProgressFactory = no_progress,
    workdir: Path | None = None, workers: int | None = None,
) -> VerifyReport:
    started = time.perf_counter()
    positions = wait_caught_up(settings, wait_timeout)
    live, changelog_skipped = read_changelog(settings, positions.changelog_high, progress)
    with tempfile.TemporaryDirectory(prefix="taskstream-verify-", dir=workdir) as scratch:
        result = rebuild(settings, Path(scratch) / "replay", until_offsets=positions.committed,
                         progress=progress, workers=workers)
        db = open_db(result.out, create=False)
        try:
            mismatches = compare(StateDB(db), live)
        finally:
            db.close()
    return VerifyReport(result.tasks, result.events, dict(result.ends), tuple(mismatches),
                        result.skipped, result.skipped_details, tuple(changelog_skipped),
                        time.perf_counter() - started)
