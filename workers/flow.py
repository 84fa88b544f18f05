"""Pure flow control for the ready-topic consumers: what to commit and what to pause.

Commit rule (DESIGN.md, "Workers"): a ready offset is committed only once every
earlier record of its partition has been *started* (its ``TaskStarted``
acknowledged by the broker) or settled without a start (skipped because
cancelled, quarantined). A crash then loses nothing: records not yet started are
read again, started ones are recovered by the processor's lease timer.

Pause rule: higher priority levels first. While any level above L has records
waiting (buffered here, or lag on the broker), L's partitions are paused; when
the queue is paused, everything is paused.

Backpressure rule (:class:`Backpressure`): a full buffer does *not* pause at
once. Pausing a partition makes librdkafka drop what it has fetched ahead for
it, and the resume refetches it, one round trip later: with pause-when-full a
worker that drains a backlog of short tasks spent most of its time waiting for
refetches (a drain of no-op tasks ran at about four times the concurrency per
second). So a full buffer only stops taking records from the client, whose own
queue (``queued.min.messages``) bounds what is fetched ahead; the partitions
are paused only when the buffer stays full for ``stall_s`` (the slots are busy
with long tasks), so that the poll loop can go on serving the group's
callbacks without taking more records. They resume once half the buffer has
started.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

TP = tuple[str, int]  # (topic, partition)


@dataclass
class _PartitionOffsets:
    pending: set[int] = field(default_factory=set)  # delivered, not yet settled
    next_offset: int | None = None  # one past the highest offset delivered
    committed: int | None = None  # last offset committed (or known committed)


class OffsetTracker:
    """Per-partition contiguous settled offsets. Not thread-safe: the caller locks."""

    def __init__(self) -> None:
        self._parts: dict[TP, _PartitionOffsets] = {}

    def delivered(self, tp: TP, offset: int) -> None:
        part = self._parts.setdefault(tp, _PartitionOffsets())
        part.pending.add(offset)
        if part.next_offset is None or offset + 1 > part.next_offset:
            part.next_offset = offset + 1

    def settled(self, tp: TP, offset: int) -> None:
        part = self._parts.get(tp)
        if part is not None:
            part.pending.discard(offset)

    def committable(self, tp: TP) -> int | None:
        """The offset to commit (the next one to read), or None if nothing new."""
        part = self._parts.get(tp)
        if part is None or part.next_offset is None:
            return None
        target = min(part.pending) if part.pending else part.next_offset
        if part.committed is not None and target <= part.committed:
            return None
        return target

    def mark_committed(self, tp: TP, offset: int) -> None:
        part = self._parts.setdefault(tp, _PartitionOffsets())
        part.committed = offset if part.committed is None else max(part.committed, offset)

    def to_commit(self) -> dict[TP, int]:
        out: dict[TP, int] = {}
        for tp in self._parts:
            target = self.committable(tp)
            if target is not None:
                out[tp] = target
        return out

    def forget(self, tps: Iterable[TP]) -> None:
        """Partitions revoked: whatever was not started is re-read by the new owner."""
        for tp in tps:
            self._parts.pop(tp, None)

    def pending(self, tp: TP) -> int:
        part = self._parts.get(tp)
        return len(part.pending) if part else 0


@dataclass
class Backpressure:
    """Whether a full buffer must pause fetching (see the backpressure rule above)."""

    prefetch: int
    stall_s: float
    full_since: float | None = None
    paused: bool = False

    def update(self, buffered: int, now: float) -> bool:
        """The buffer holds ``buffered`` records at ``now``: True while fetching is paused."""
        if buffered >= self.prefetch:
            if self.full_since is None:
                self.full_since = now
            if now - self.full_since >= self.stall_s:
                self.paused = True
        else:
            self.full_since = None
            if self.paused and buffered <= self.prefetch // 2:
                self.paused = False
        return self.paused


def waiting_levels(
    levels: Mapping[TP, int],
    buffered: Mapping[int, int],
    lag: Mapping[TP, int],
) -> set[int]:
    """Priority levels with records waiting: buffered here or lagging on the broker."""
    waiting = {lvl for lvl, n in buffered.items() if n > 0}
    waiting.update(levels[tp] for tp, n in lag.items() if n > 0 and tp in levels)
    return waiting


def desired_paused(
    levels: Mapping[TP, int],
    waiting: set[int],
    *,
    full: bool,
    queue_paused: bool,
) -> set[TP]:
    """The assigned partitions that must be paused now."""
    if full or queue_paused:
        return set(levels)
    if not waiting:
        return set()
    top = max(waiting)
    return {tp for tp, lvl in levels.items() if lvl < top}


def level_of_topic(topic: str) -> int:
    """``<prefix>ready.<queue>.p<level>`` -> level."""
    _, _, suffix = topic.rpartition(".p")
    if not suffix.isdigit():
        raise ValueError(f"{topic!r} is not a ready topic (expected a .p<level> suffix)")
    return int(suffix)
