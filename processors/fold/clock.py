"""Event times held to the broker's clock (docs/decisions.md, D44).

The fold reads no clock but the event's own ``occurred_at_ms`` (DESIGN.md), and that
time is the *writer's*: a worker whose clock is an hour behind starts its lease an
hour in the past (every attempt dies of lease expiry at once); one hours ahead holds
a dead task's lease for hours; a producer an hour behind asks for a delay that has
already passed. So before a record is applied, its event time is held to the
record's broker timestamp plus or minus ``Limits.clock_tolerance_ms``.

The events topic uses ``message.timestamp.type=LogAppendTime`` (taskstream/admin.py),
so that timestamp is the broker's clock at append, not the client's: under Kafka's
default CreateTime it would be the skewed client's own clock again. The timestamp is
part of the record, so replay reads the same one and clamps the same way: live and
``replay verify`` agree (both call :func:`clamp` with the same tolerance, from the
same setting).

A writer's other absolute times move with its clock: a submission's ``eta_ms`` and
``expires_at_ms`` are read as times on the writer's clock, shifted by the same
correction as its ``occurred_at_ms`` (a producer an hour behind that asks for "in
60 s" still gets 60 s). Nothing else in an event is a writer's absolute time (timer
due times and ``submitted_at_ms`` of requests come from states the fold computed).

Within the tolerance an event keeps its own time (a correct writer's is a few ms
before its append), so the fold's times stay the writers' where they can be trusted.
"""

from __future__ import annotations

from dataclasses import replace

from taskstream.schemas.events import Envelope, TaskSubmitted

__all__ = ["Clamped", "clamp"]


class Clamped:
    """How far one batch's event times were moved (for the skew metrics)."""

    __slots__ = ("by_writer", "count", "largest_ms")

    def __init__(self) -> None:
        self.count = 0
        #: the largest absolute skew seen (ms), clamped or not
        self.largest_ms = 0
        #: writer kind (the part of ``source`` before ':') -> events clamped
        self.by_writer: dict[str, int] = {}

    def note(self, envelope: Envelope, skew_ms: int, clamped: bool) -> None:
        if abs(skew_ms) > self.largest_ms:
            self.largest_ms = abs(skew_ms)
        if clamped:
            self.count += 1
            writer = envelope.source.partition(":")[0] or "unknown"
            self.by_writer[writer] = self.by_writer.get(writer, 0) + 1


def clamp(envelope: Envelope, record_ms: int | None, tolerance_ms: int | None,
          seen: Clamped | None = None) -> Envelope:
    """``envelope`` with its times held to ``record_ms`` +/- ``tolerance_ms``.

    The same envelope when it is within the tolerance, when there is no tolerance (pure
    tests) or no record timestamp (``record_ms`` None or negative: a client that gives
    none; Kafka then reports -1).
    """
    if tolerance_ms is None or record_ms is None or record_ms < 0:
        return envelope
    at = envelope.occurred_at_ms
    skew = at - record_ms
    if -tolerance_ms <= skew <= tolerance_ms:
        if seen is not None and skew:
            seen.note(envelope, skew, False)
        return envelope
    held = record_ms + tolerance_ms if skew > 0 else record_ms - tolerance_ms
    if seen is not None:
        seen.note(envelope, skew, True)
    shift = held - at
    body = envelope.body
    if isinstance(body, TaskSubmitted) and (
            body.eta_ms is not None or body.expires_at_ms is not None):
        body = replace(
            body,
            eta_ms=None if body.eta_ms is None else body.eta_ms + shift,
            expires_at_ms=None if body.expires_at_ms is None else body.expires_at_ms + shift)
    return Envelope(envelope.event_id, envelope.task_id, held, envelope.source,
                    envelope.attempt, body)
