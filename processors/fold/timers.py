"""Every entity's one timer, derived from its state (docs/decisions.md, D5), for every kind.

The due index holds at most one entry per entity: ``(due_at_ms, entity key, kind,
attempt, dispatch_id)``. For a task it is the earlier of its status timer
(SCHEDULED: its eta, RETRYING: its backoff, RUNNING: its lease, WAITING: asking
silent parents again (D37) or asking a full limit or key again (D32)) and, while no
attempt has started (SCHEDULED, WAITING, READY, RETRYING), its expiry (D33). For a
schedule it is its next fire time plus jitter (D37); for a rate-limit bucket, when
the head of its waiting list gets a token (D32). Groups and concurrency keys have
none (notifications and releases drive them).

A timer only proposes: the engine emits ``TimerFired(kind, due_at_ms, dispatch_id)``
keyed by the entity, and that kind's ``apply`` re-checks that it still fits.
"""

from __future__ import annotations

from typing import NamedTuple

from taskstream.processors.fold import limits, schedule
from taskstream.processors.fold.rules import NOT_STARTED, timer_kind_for
from taskstream.schemas.events import TimerKind
from taskstream.schemas.flowstate import ConcurrencyState, LimitState
from taskstream.schemas.state import GroupState, ScheduleState, TaskState


class Timer(NamedTuple):
    """A due index entry (D5): what the timer scan emits as ``TimerFired`` when due."""

    due_at_ms: int
    key: str  # the entity's key: the TimerFired's record key
    kind: TimerKind
    attempt: int = 0
    dispatch_id: str = ""


def task_timer(state: TaskState | None) -> Timer | None:
    """The timer a task's state implies, or None."""
    if state is None:
        return None
    found: Timer | None = None
    kind = timer_kind_for(state.status, waits_for_parents=bool(state.waiting_on))
    if kind is not None and state.due_at_ms is not None:
        found = Timer(state.due_at_ms, state.task_id, kind, state.attempt,
                      state.dispatch_id or "")
    expires = state.expires_at_ms
    if expires is not None and state.status in NOT_STARTED and (
            found is None or expires <= found.due_at_ms):
        found = Timer(expires, state.task_id, TimerKind.EXPIRY_DUE, state.attempt,
                      state.dispatch_id or "")
    return found


def schedule_timer(state: ScheduleState | None) -> Timer | None:
    """A schedule's timer: its next fire time (plus jitter) while ACTIVE."""
    found = schedule.timer_of(state)
    return None if found is None else Timer(*found)


def group_timer(state: GroupState | None) -> Timer | None:
    """Groups have no timer (their dependents time out on their own)."""
    return None


def limit_timer(state: LimitState | None) -> Timer | None:
    """A rate-limit bucket's timer: its next token, while requests wait."""
    due = limits.timer_of(state)
    return None if due is None or state is None else Timer(due[0], state.key, due[1])


def concurrency_timer(state: ConcurrencyState | None) -> Timer | None:
    """Concurrency keys have no timer: releases drive them."""
    return None
