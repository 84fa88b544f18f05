"""One batch of events-topic records folded into per-entity changes, without I/O.

The live processor folds what the consumer has in batches (docs/decisions.md,
D19): the records of one partition are applied in order, each task's state is
read once, carried from event to event in memory, and its *final* state is
written once per batch (one RocksDB write batch per partition, one changelog
record per touched task). This module is that fold; ``engine.py`` does the I/O
around it.

Every task an event reached is written, even when the event changed nothing:
a re-read event whose result is already in the local RocksDB (a crash after the
local write, before its changelog record left) must still reach the changelog,
or the changelog and the standbys keep the older state and the next failover
loses it (issue 14, hole 1). Such repeats only happen after a crash, so the
extra records cost nothing in the steady state.

A record that cannot be decoded, that is a derived record, that
:func:`~taskstream.processors.fold.validate.check_record` refuses (an envelope
naming another entity than its key, out of bounds, an unsigned or wrongly
signed worker or processor event: D26, D28), or whose ``apply`` raised (a bug)
is set aside for the quarantine topic with its reason; the fold goes on with
the next record (D11). The entity's state stays as it was before that record.
Replay runs the same check (processors/replay/folding.py), so the live tables
stay the fold of the log.

Before a record is applied its event time is held to the record's broker timestamp
plus or minus ``Limits.clock_tolerance_ms`` (D44, processors/fold/clock.py), and a
record at or before its entity's position (the offset of the newest record folded
into it) is recognised as read again: before it, skipped (still written, as above);
at it, applied for its redo (D45, processors/fold/position.py). Replay does the same.

Every entity kind folds here (ENTITIES.md; D37, D32): a record's key picks its
kind (:func:`~taskstream.processors.fold.kinds.kind_of`), whose pure ``apply``
folds it; states of every kind are stored in the same partition table under
their keys and decoded by fingerprint (``decode_entity``). A kind's ``Emit``
effects are events for the events topic, sent by the engine with the batch's
other effects.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from taskstream.processors.fold.clock import Clamped, clamp
from taskstream.processors.fold.effects import Dispatch, Effect, Removed
from taskstream.processors.fold.kinds import kind_of
from taskstream.processors.fold.lifecycle import Limits
from taskstream.processors.fold.position import at_position, mark_in_place, position_of
from taskstream.processors.fold.validate import Checks, check_record
from taskstream.schemas.errors import DecodeError
from taskstream.schemas.events import (
    Envelope,
    TaskCancelled,
    TaskDeadLettered,
    TaskDispatched,
    TimerFired,
)
from taskstream.schemas.serde import decode_entity, decode_event
from taskstream.schemas.state import EntityState, TaskState
from taskstream.security.signing import RecordHeaders

log = logging.getLogger("taskstream.processor")

_DERIVED = (TaskDispatched, TaskDeadLettered, TaskCancelled)


class Record(Protocol):
    """What the fold needs of a consumed record (confluent_kafka.Message has it)."""

    def key(self) -> bytes | None: ...
    def value(self) -> bytes | None: ...
    def offset(self) -> int | None: ...
    def headers(self) -> RecordHeaders | None: ...
    def timestamp(self) -> tuple[int, int]: ...


@dataclass(slots=True)
class Change:
    """One entity touched by the batch: its state before the batch and after it
    (``None`` after it: the fold removed it, a tombstone goes to the changelog)."""

    before: EntityState | None
    after: EntityState | None
    #: index entries of fired timers to drop unless they are the task's timer now
    fired_timers: list[int] = field(default_factory=list)


@dataclass(slots=True)
class SetAside:
    """A record the fold could not apply: it goes to the quarantine topic."""

    offset: int
    key: bytes | None
    value: bytes
    reason: str


@dataclass(slots=True)
class Caused:
    """An effect with the event that caused it and the task's queue ("" for the other
    kinds)."""

    effect: Effect
    cause: Envelope
    queue: str
    #: the offset of the record that caused it (a parked dispatch holds the commit there)
    offset: int
    #: the trace context its outbound record carries (set by the engine when tracing is on)
    headers: list[tuple[str, str | bytes | None]] | None = None


@dataclass(slots=True)
class PartitionFold:
    """What a batch of one partition's records comes to."""

    partition: int
    #: entity key -> its change, in the order the entities were first touched
    changes: dict[bytes, Change] = field(default_factory=dict)
    effects: list[Caused] = field(default_factory=list)
    set_aside: list[SetAside] = field(default_factory=list)
    #: events applied, by type name (metrics)
    applied: Counter[str] = field(default_factory=Counter)
    #: the queues the batch dispatches to (their topics must exist first)
    #: (queue, tags) of the batch's dispatches: the ready topics they need (D38)
    dispatch_queues: set[tuple[str, tuple[str, ...]]] = field(default_factory=set)
    #: the offset to commit once everything above is durable (last record + 1)
    next_offset: int = -1
    #: event times held to their records' broker timestamps (D44; the skew metrics)
    clamped: Clamped = field(default_factory=Clamped)
    #: records read again at or before their entity's position: already folded (D45)
    refolded: int = 0


def _usable(record: Record, offset: int, checks: Checks) -> Envelope | SetAside:
    """The record's envelope when the fold may apply it, else the record set aside with
    why: not decodable, a derived record, or refused by :func:`check_record`."""
    value = record.value() or b""
    try:
        envelope = decode_event(value)
    except DecodeError as exc:
        return SetAside(offset, record.key(), value, str(exc))
    if isinstance(envelope.body, _DERIVED):
        return SetAside(offset, record.key(), value,
                        f"{envelope.type_name} is not an events-topic record")
    problem = check_record(checks, record.key(), value, record.headers(), envelope)
    if problem is not None:
        return SetAside(offset, record.key(), value, problem)
    return envelope


def fold_partition(
    partition: int,
    records: Sequence[Record],
    read_state: Callable[[bytes], bytes | None],
    limits: Limits,
    checks: Checks,
) -> PartitionFold:
    """Check and apply one partition's records in order; ``read_state`` reads an
    entity's stored state."""
    out = PartitionFold(partition)
    changes = out.changes
    current: dict[bytes, EntityState | None] = {}
    #: entity key -> its position (the offset of the newest record folded into it, D45)
    positions: dict[bytes, int | None] = {}
    tolerance, clamped = limits.clock_tolerance_ms, out.clamped
    for record in records:
        offset = record.offset()
        assert offset is not None  # consumed records always have one
        out.next_offset = offset + 1
        envelope = _usable(record, offset, checks)
        if isinstance(envelope, SetAside):
            out.set_aside.append(envelope)
            continue
        if tolerance is not None:  # event times held to the record's timestamp (D44)
            envelope = clamp(envelope, record.timestamp()[1], tolerance, clamped)
        key = envelope.task_id.encode()
        if key in current:
            state = current[key]
        else:
            raw = read_state(key)
            state = current[key] = decode_entity(raw) if raw is not None else None
            positions[key] = position_of(state) if state is not None else None
        position = positions[key]
        if position is not None and offset < position:
            # already in the state, however many events came after it (D45); still
            # written to the changelog, as a repeat is (issue 14, hole 1)
            out.refolded += 1
            _note(changes, key, state, state, None)
            continue
        try:
            after, effects = kind_of(envelope.task_id).apply(state, envelope, limits)
        except Exception as exc:  # a bug must not skip the record silently (D11)
            log.exception("fold of partition %d offset %d raised", partition, offset)
            out.set_aside.append(SetAside(offset, record.key(), record.value() or b"",
                                          f"fold failed: {type(exc).__name__}: {exc}"))
            continue
        out.applied[envelope.type_name] += 1
        effects = _unless_a_copy(effects, state, envelope.event_id, offset, position)
        if after is not None or state is not None:
            current[key] = after
            positions[key] = offset if after is not None else None
            _note(changes, key, state, after, envelope.body)
        elif effects and effects[0].__class__ is Removed:
            # a removal read again after the task is gone: its tombstone goes again (the
            # first one may never have left before a crash; D35, the rule of D4)
            changes.setdefault(key, Change(None, None))
        if effects:
            known = after or state
            queue = known.queue if isinstance(known, TaskState) else ""
            for effect in effects:
                out.effects.append(Caused(effect, envelope, queue, offset))
                if effect.__class__ is Dispatch:
                    out.dispatch_queues.add((queue, effect.tags))
    _positioned(changes, positions)
    return out


def _positioned(changes: dict[bytes, Change], positions: dict[bytes, int | None]) -> None:
    """Each state of the batch leaves with its position (D45).

    A state the batch's folds built is this batch's alone (states are decoded per batch,
    and effects copy fields, never hold a state), so its position is set in place: a
    copy of a ~60-field state per touched key was as costly as decoding the batch's
    records (profile of a 20,000-task burst, issue 12). A state left as it was read
    (``after is before``) is copied, so the stored state stays the one read."""
    for key, change in changes.items():
        position = positions.get(key)
        after = change.after
        if after is None or position is None:
            continue
        if after is change.before:
            change.after = at_position(after, position)
        else:
            mark_in_place(after, position)


def _note(changes: dict[bytes, Change], key: bytes, state: EntityState | None,
          after: EntityState | None, body: object) -> None:
    """Record that the batch moved an entity from ``state`` to ``after``."""
    change = changes.get(key)
    if change is None:
        change = changes[key] = Change(state, after)
    else:
        change.after = after
    if isinstance(body, TimerFired):
        change.fired_timers.append(body.due_at_ms)


def _unless_a_copy(effects: list[Effect], state: EntityState | None, event_id: str,
                   offset: int, position: int | None) -> list[Effect]:
    """``effects``, or none for a copy of the state's last event at a new offset (a client
    that sent the same submission again after a timeout): that event's record was read
    once and its effects went with it; only the record *at* the position is the re-read
    that D4 redoes (D45). Replay keeps no effects, so it needs no such rule."""
    if not effects or position is None or offset <= position or state is None:
        return effects
    ids = state.recent_event_ids
    return [] if ids and ids[-1] == event_id else effects
