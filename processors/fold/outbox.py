"""What the limit and concurrency-key folds share: applied-event bookkeeping and what
they send to tasks (issue 16; processors/fold/limits.py, concurrency.py).

Both remember the ids of applied events (the newest ``limits.recent_events``) and
the time of the last one, and keep what the last event sent (``last_out``: grants and
deferrals, :class:`~taskstream.schemas.flowstate.GateOut`) so that a repeat of that
event sends it again under the same ids (redo, docs/decisions.md D4). An emitted
event's id is ``<cause>.<what>.<task>.<attempt>``: unique per grant, the same on every
redo. A slot grant's is ``<key digest>.grant.<task>.<attempt>.<sequence>`` instead,
the same whichever event causes it: a key's redo sends every holder's grant again
(concurrency.redo_effects, issue 21), and a grant sent again must be the same event.
"""

from __future__ import annotations

import bisect
import hashlib
from collections.abc import Callable, Sequence
from typing import TypeVar

from taskstream.processors.fold.effects import Effect, Rejected, emit_envelope
from taskstream.processors.fold.rules import Limits
from taskstream.schemas.events import Envelope, EventBody, WaitDeferred
from taskstream.schemas.flowstate import (
    ConcurrencyState,
    GateOut,
    LimitState,
    LimitWaiter,
    SlotWaiter,
)

S = TypeVar("S", LimitState, ConcurrencyState)
W = TypeVar("W", LimitWaiter, SlotWaiter)


def _line_order(waiter: LimitWaiter | SlotWaiter) -> tuple[int, str, int]:
    return waiter.submitted_at_ms, waiter.task_id, waiter.attempt


def in_line(waiting: Sequence[W], waiter: W) -> list[W]:
    """``waiting`` with ``waiter`` in its place: by the task's submit time, then task ID
    (then attempt); after any equal one."""
    line = list(waiting)
    bisect.insort(line, waiter, key=_line_order)
    return line


def recorded(state: S, copy: Callable[..., S], event: Envelope, limits: Limits,
             out: list[GateOut]) -> S:
    """``state`` with ``event`` remembered as applied and ``out`` as what it sent."""
    recent = [*state.recent_event_ids, event.event_id][-limits.recent_events:]
    return copy(state, recent_event_ids=recent, updated_at_ms=event.occurred_at_ms,
                last_out=out)


def rejected(state: S | None, copy: Callable[..., S], event: Envelope, limits: Limits,
             reason: str) -> tuple[S | None, list[Effect]]:
    """A counted no-op: the event does not fit (nothing is stored for an unknown entity)."""
    if state is None:
        return None, [Rejected(reason)]
    counted = copy(state, rejected=state.rejected + 1)
    return recorded(counted, copy, event, limits, []), [Rejected(reason)]


def _key_tag(key: str) -> str:
    """A short, stable name of an entity key for event ids (a key may be 200 characters;
    an event id at most 128)."""
    return hashlib.blake2b(key.encode(), digest_size=8).hexdigest()


def sent(state: LimitState | ConcurrencyState, out: list[GateOut], gate: str,
         grant: Callable[[GateOut], EventBody]) -> list[Effect]:
    """The events ``out`` stands for, caused by the state's last applied event."""
    cause = state.recent_event_ids[-1]
    made: list[Effect] = []
    for o in out:
        body = grant(o) if o.what == "grant" else WaitDeferred(
            gate=gate, retry_at_ms=o.retry_at_ms or 0, reason=o.reason)
        if o.sequence is None:
            event_id = f"{cause}.{o.what}.{o.task_id}.{o.attempt}"
        else:  # a slot's: its sequence is unique in its key, whatever caused the grant
            event_id = f"{_key_tag(state.key)}.grant.{o.task_id}.{o.attempt}.{o.sequence}"
        made.append(emit_envelope(o.task_id, event_id, o.at_ms, o.attempt, body))
    return made
