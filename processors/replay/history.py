"""``replay history KEY``: every event of one entity, and what the fold made of it.

``KEY`` is a task ID or another entity's key (``schedule:<id>``, ``group:<id>``: D37);
the fold of its kind explains each event. A task's dependency events (a child's
``DependencyRegistered`` on its parent, a parent's ``ParentUpdate`` on its child)
are on its own key, so they show in its history with what they caused.

Only the task's own partition is read (murmur2 of the key, as every client places
it), from its start to the high watermark fixed when the read begins. The events
are folded with the same pure ``apply`` as the processor, one at a time, so each
line shows the verdict (accepted with the status change, duplicate, conflict,
rejected with the reason) and the decisions the processor derived from it
(dispatch, retry, dead letter, cancellation), which D3 keeps out of the log.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from typing import Any

from taskstream.processors.fold.clock import clamp
from taskstream.processors.fold.effects import (
    ClearTimer,
    DeadLetter,
    Dispatch,
    Duplicate,
    Effect,
    Emit,
    PublishCancel,
    Rejected,
    RetryScheduled,
    SetTimer,
)
from taskstream.processors.fold.kinds import apply_any, status_of
from taskstream.processors.fold.lifecycle import Limits
from taskstream.processors.replay.folding import checks_of, decode_usable, limits_of
from taskstream.processors.replay.read import (
    ProgressFactory,
    make_consumer,
    no_progress,
    partition_count,
    partition_for,
    plan,
    read_batches,
)
from taskstream.schemas.events import (
    DependencyRegistered,
    Envelope,
    ParentUpdate,
    TaskDispatched,
    TaskSubmitted,
)
from taskstream.schemas.state import EntityState
from taskstream.settings import Settings
from taskstream.topics import events_topic

ACCEPTED = "accepted"
UNCHANGED = "unchanged"
DUPLICATE = "duplicate"
CONFLICT = "conflict"
REJECTED = "REJECTED"
SKIPPED = "SKIPPED"  # undecodable or not an events-topic record: the processor quarantines it
OUTCOMES = (ACCEPTED, UNCHANGED, DUPLICATE, CONFLICT, REJECTED, SKIPPED)


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    partition: int
    offset: int
    timestamp_ms: int  # the Kafka record timestamp
    envelope: Envelope | None  # None when the record could not be used
    outcome: str  # ACCEPTED, UNCHANGED, DUPLICATE, CONFLICT, REJECTED or SKIPPED
    reason: str  # why it was rejected or skipped
    status_before: str | None
    status_after: str | None
    decisions: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        env = self.envelope
        return {
            "partition": self.partition,
            "offset": self.offset,
            "timestamp_ms": self.timestamp_ms,
            "occurred_at_ms": env.occurred_at_ms if env else None,
            "event_id": env.event_id if env else None,
            "source": env.source if env else None,
            "attempt": env.attempt if env else None,
            "type": env.type_name if env else None,
            "fields": body_fields(env) if env else {},
            "outcome": self.outcome,
            "reason": self.reason,
            "status_before": self.status_before,
            "status_after": self.status_after,
            "decisions": list(self.decisions),
        }


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def body_fields(env: Envelope) -> dict[str, Any]:
    """The body's fields worth showing: bytes as their size, no tracebacks."""
    shown: dict[str, Any] = {}
    for f in fields(env.body):
        value = getattr(env.body, f.name)
        if f.name == "traceback" or value in (None, "", [], {}):
            continue
        if isinstance(value, bytes):
            value = f"<{len(value)} bytes>"
        elif hasattr(value, "__dataclass_fields__"):
            value = {g.name: getattr(value, g.name) for g in fields(value)}
        elif hasattr(value, "value"):
            value = value.value  # enums
        shown[f.name] = value
    return shown


def decisions_of(effects: Iterable[Effect]) -> tuple[str, ...]:
    out: list[str] = []
    for effect in effects:
        match effect:
            case Dispatch(envelope=env):
                dispatch = env.body.dispatch_id if isinstance(env.body, TaskDispatched) else "?"
                out.append(f"dispatched attempt {env.attempt} ({dispatch})")
            case RetryScheduled(delay_ms=delay):
                out.append(f"retry in {delay} ms")
            case DeadLetter():
                out.append("dead-lettered")
            case PublishCancel():
                out.append("cancelled")
            case SetTimer(due_at_ms=due, kind=kind):
                out.append(f"timer {kind.value} at {iso(due)}")
            case ClearTimer():
                out.append("timer cleared")
            case Emit(envelope=env):
                out.append(_emitted(env))
            case _:
                pass
    return tuple(out)


def _emitted(env: Envelope) -> str:
    """An event this one made the fold send to another entity (D37), in words."""
    body = env.body
    if isinstance(body, DependencyRegistered):
        return f"registered with {env.task_id}"
    if isinstance(body, ParentUpdate):
        slot = f" (slot {body.slot})" if body.slot is not None else ""
        return f"told {env.task_id}{slot}: {body.outcome.value}"
    if isinstance(body, TaskSubmitted):
        return f"fired task {env.task_id}"
    return f"{env.type_name} to {env.task_id}"


def judge(
    before: EntityState | None, after: EntityState | None, effects: list[Effect]
) -> tuple[str, str]:
    """(outcome, reason) of one applied event."""
    for effect in effects:
        if isinstance(effect, Rejected):
            return REJECTED, effect.reason
        if isinstance(effect, Duplicate):
            return (CONFLICT if effect.conflict else DUPLICATE), ""
    if after is None or after == before:
        return UNCHANGED, "" if after is not None else "no state for this task"
    return ACCEPTED, ""


def explain(envelopes: Iterable[tuple[int, int, int, Envelope | str]],
            limits: Limits) -> list[HistoryEntry]:
    """Fold one task's records in order: (partition, offset, timestamp, envelope or reason)."""
    entries: list[HistoryEntry] = []
    state: EntityState | None = None
    for partition, offset, ts, item in envelopes:
        status = status_of(state)
        if isinstance(item, str):
            entries.append(HistoryEntry(partition, offset, ts, None, SKIPPED, item, status,
                                        status, ()))
            continue
        item = clamp(item, ts, limits.clock_tolerance_ms)  # as the fold holds it (D44)
        after, effects = apply_any(state, item, limits)
        outcome, reason = judge(state, after, effects)
        if after is not None:
            state = after
        entries.append(HistoryEntry(
            partition, offset, ts, item, outcome, reason, status,
            status_of(state), decisions_of(effects)))
    return entries


def task_history(settings: Settings, task_id: str, progress: ProgressFactory = no_progress
                 ) -> list[HistoryEntry]:
    """Read the task's partition to its high watermark and explain its events."""
    key = task_id.encode()
    topic = events_topic(settings)
    consumer = make_consumer(settings)
    records: list[tuple[int, int, int, Envelope | str]] = []
    checks = checks_of(settings)
    try:
        partition = partition_for(key, partition_count(consumer, topic, settings.kafka_timeout_s))
        read = plan(consumer, settings, topic, {partition: 2**62})
        with progress(f"partition {partition}", read.total) as counter:
            for batch in read_batches(consumer, read, settings.kafka_timeout_s, counter):
                for m in batch:
                    if m.key() == key:
                        records.append((m.partition(), m.offset(), m.timestamp()[1],
                                        decode_usable(m.value(), m.key(), m.headers(),
                                                      checks)))
    finally:
        consumer.close()
    return explain(records, limits_of(settings))


def format_entry(entry: HistoryEntry) -> str:
    """One human line per event."""
    where = f"p{entry.partition}@{entry.offset}"
    env = entry.envelope
    if env is None:
        return f"{iso(entry.timestamp_ms)}  {where:<10} {SKIPPED}: {entry.reason}"
    details = " ".join(f"{k}={v}" for k, v in body_fields(env).items())
    if entry.outcome == ACCEPTED:
        verdict = f"{entry.status_before or '-'} -> {entry.status_after}"
    elif entry.outcome == REJECTED:
        verdict = f"REJECTED ({entry.reason})"
    elif entry.outcome == UNCHANGED and entry.reason:
        verdict = f"unchanged ({entry.reason})"
    else:
        verdict = entry.outcome
    decided = f"; {', '.join(entry.decisions)}" if entry.decisions else ""
    return (f"{iso(env.occurred_at_ms)}  {where:<10} {env.source:<24} a{env.attempt:<3} "
            f"{env.type_name:<16} {details}\n{'':>36}=> {verdict}{decided}")


def to_json_lines(entries: Iterable[HistoryEntry]) -> Iterable[str]:
    for entry in entries:
        yield json.dumps(entry.to_json(), default=str, sort_keys=True)
