"""Every entity's one timer, derived from its state (docs/decisions.md, D5), for every kind.

The due index holds at most one entry per entity: ``(due_at_ms, entity key, kind,
attempt, dispatch_id)``. For a task it is the earlier of its status timer (SCHEDULED:
its eta, RETRYING: its backoff, RUNNING: its lease, WAITING: asking a full limit or key
again) and, while no attempt has started (SCHEDULED, WAITING, READY, RETRYING), its
expiry (issue 16). For a rate-limit bucket it is when the head of its waiting list
gets a token. Concurrency keys have none (releases drive them).

A timer only proposes: the engine emits ``TimerFired(kind, due_at_ms, dispatch_id)``
keyed by the entity, and that kind's ``apply`` re-checks that it still fits.
"""

from __future__ import annotations

from typing import NamedTuple

from taskstream.processors.fold import limits
from taskstream.processors.fold.rules import NOT_STARTED, timer_kind_for
from taskstream.schemas.events import TimerKind
from taskstream.schemas.flowstate import ConcurrencyState, LimitState
from taskstream.schemas.state import TaskState


class Timer(NamedTuple):
    due_at_ms: int
    kind: TimerKind
    attempt: int = 0
    dispatch_id: str = ""


def task_timer(state: TaskState | None) -> Timer | None:
    """The timer a task's state implies, or None."""
    if state is None:
        return None
    found: Timer | None = None
    kind = timer_kind_for(state.status)
    if kind is not None and state.due_at_ms is not None:
        found = Timer(state.due_at_ms, kind, state.attempt, state.dispatch_id or "")
    expires = state.expires_at_ms
    if expires is not None and state.status in NOT_STARTED and (
            found is None or expires <= found.due_at_ms):
        found = Timer(expires, TimerKind.EXPIRY_DUE, state.attempt, state.dispatch_id or "")
    return found


def limit_timer(state: LimitState | None) -> Timer | None:
    """A rate-limit bucket's timer: its next token, while requests wait."""
    due = limits.timer_of(state)
    return None if due is None else Timer(due[0], due[1])


def concurrency_timer(state: ConcurrencyState | None) -> Timer | None:
    """Concurrency keys have no timer: releases drive them."""
    return None
