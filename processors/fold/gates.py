"""A task's gates (issue 16): what an attempt with flow control waits for before dispatch.

A task that names a concurrency key or a rate limit (``TaskState.flow``) does not go
READY when an attempt is due; it goes WAITING and asks, in this order:

1. a slot of its concurrency key: ``SlotRequested`` to ``ckey:<key>``; the key answers
   ``SlotGranted`` (with the fencing token, the key's grant sequence) when fewer than
   ``max_concurrency`` attempts hold it. Held from then until the attempt ends;
2. a token of its rate limit: ``RateRequested`` to ``limit:<name>`` (which forwards it
   to the bucket of the task's ``rate_key``); the bucket answers ``RateGranted``.

Then it is dispatched: READY, at the time of the last grant, with a fresh dispatch id.
The slot comes first so that the token is spent at the moment of dispatch: a token
taken and then held while waiting for a slot would let the dispatches bunch up.

Either may answer ``WaitDeferred`` (its waiting list is full): the task sets its
``WAIT_RETRY_DUE`` timer and asks again then. ``RateRefused`` (no such limit) fails the
attempt for good. An attempt that ends, from WAITING, READY or RUNNING, for any reason
(success, failure, lease expiry, cancellation, expiry) sends ``SlotReleased`` to its key,
which also withdraws a request still waiting; a cancelled or expired attempt waiting
for a token sends ``RateWithdrawn``. A grant that no longer fits the task (a stale
attempt, a task already gone) is answered with a release at once, so no slot is ever
held by a task that does not use it.

Every message is an :class:`~taskstream.processors.fold.effects.Emit` whose event id is
derived from its cause (``<cause>.slot``, ``.rate``, ``.release``, ``.withdraw``). The
receiving limit or key also drops a request it already holds for the same (task,
attempt), so a redo that comes under another id is harmless too (docs/decisions.md, D32).
"""

from __future__ import annotations

from taskstream.processors.fold.copy import copy_state as replace
from taskstream.processors.fold.copy import fast_init
from taskstream.processors.fold.effects import (
    ClearTimer,
    Effect,
    SetTimer,
    dispatch_of,
    emit_envelope,
    make_dispatch_id,
)
from taskstream.schemas.entity_keys import ckey_key, limit_key
from taskstream.schemas.events import (
    Envelope,
    RateGranted,
    RateRequested,
    RateWithdrawn,
    SlotGranted,
    SlotReleased,
    SlotRequested,
    TimerKind,
    WaitDeferred,
)
from taskstream.schemas.state import TERMINAL, TaskState, TaskStatus
from taskstream.schemas.view import iso

GATE_CONCURRENCY = "concurrency"
GATE_RATE = "rate"

new_set_timer = fast_init(SetTimer)
new_clear_timer = fast_init(ClearTimer)

Accepted = tuple[TaskState, list[Effect]]

#: the statuses in which an attempt has asked its gates (and may hold a slot)
GATED = frozenset({TaskStatus.WAITING, TaskStatus.READY, TaskStatus.RUNNING})
#: the statuses an attempt ends in (its slot, if it had one, was released on the way)
ENDED = TERMINAL | {TaskStatus.RETRYING}


def has_gates(state: TaskState) -> bool:
    flow = state.flow
    return flow is not None and (flow.rate_limit is not None or flow.concurrency_key is not None)


def pending_gate(state: TaskState) -> str | None:
    """The gate a WAITING attempt is at: its concurrency key until it holds a slot,
    then its rate limit; None when it has passed them all (or has none)."""
    flow = state.flow
    if flow is None or state.status is not TaskStatus.WAITING:
        return None
    if flow.concurrency_key is not None and state.slot_sequence is None:
        return GATE_CONCURRENCY
    if flow.rate_limit is not None:
        return GATE_RATE
    return None


def waiting_reason(state: TaskState) -> str | None:
    flow = state.flow
    gate = pending_gate(state)
    if flow is None or gate is None:
        return None
    if gate == GATE_CONCURRENCY:
        return (f"waiting for a slot of concurrency key {flow.concurrency_key!r} "
                f"(at most {flow.max_concurrency} at once)")
    keyed = f" (key {flow.rate_key!r})" if flow.rate_key is not None else ""
    return f"waiting for a token of rate limit {flow.rate_limit!r}{keyed}"


def _timer_cleared(state: TaskState) -> list[Effect]:
    return [] if state.due_at_ms is None else [new_clear_timer(state.due_at_ms)]


def ask(state: TaskState, cause_event_id: str, at_ms: int) -> list[Effect]:
    """The request of the gate ``state`` waits at, as if ``cause_event_id`` made it."""
    flow = state.flow
    gate = pending_gate(state)
    if flow is None or gate is None:
        return []
    if gate == GATE_CONCURRENCY:
        key = flow.concurrency_key or ""
        body_slot = SlotRequested(task_id=state.task_id, key=key,
                                  max_concurrency=flow.max_concurrency,
                                  submitted_at_ms=state.submitted_at_ms)
        return [emit_envelope(ckey_key(key), f"{cause_event_id}.slot", at_ms, state.attempt,
                              body_slot)]
    name = flow.rate_limit or ""
    body_rate = RateRequested(task_id=state.task_id, limit=name, key=flow.rate_key,
                              submitted_at_ms=state.submitted_at_ms)
    return [emit_envelope(limit_key(name), f"{cause_event_id}.rate", at_ms, state.attempt,
                          body_rate)]


def enter_gates(state: TaskState, event: Envelope, effects: bool = True) -> Accepted:
    """The next attempt of a task with gates: WAITING, asking its first gate."""
    waiting = replace(
        state,
        status=TaskStatus.WAITING,
        attempt=state.attempt + 1,
        dispatch_id=None,
        dispatched_at_ms=None,
        started_at_ms=None,
        worker_id=None,
        due_at_ms=None,
        finished_at_ms=None,
        slot_sequence=None,
        progress=None,
        progress_note=None,
        progress_at_ms=None,
    )
    waiting = replace(waiting, status_reason=waiting_reason(waiting))
    if not effects:
        return waiting, []
    return waiting, [*_timer_cleared(state), *ask(waiting, event.event_id, event.occurred_at_ms)]


def _dispatched(state: TaskState, event: Envelope, effects: bool) -> Accepted:
    """Every gate passed: READY at the grant's time, with a fresh dispatch id."""
    ready = replace(
        state,
        status=TaskStatus.READY,
        dispatch_id=make_dispatch_id(state.task_id, state.attempt, event.event_id),
        dispatched_at_ms=event.occurred_at_ms,
        due_at_ms=None,
        status_reason=None,
    )
    if not effects:
        return ready, []
    return ready, [*_timer_cleared(state), dispatch_of(ready, event.event_id)]


def grant_fits(state: TaskState, event: Envelope) -> str | None:
    """Why a grant does not fit the task's current wait, or None if it does."""
    body = event.body
    flow = state.flow
    gate = pending_gate(state)
    if flow is None:
        return f"{event.type_name} for a task without flow control"
    if event.attempt != state.attempt:
        return f"{event.type_name} for attempt {event.attempt}, the task is at {state.attempt}"
    if isinstance(body, SlotGranted):
        if gate != GATE_CONCURRENCY or body.key != flow.concurrency_key:
            return f"SlotGranted of key {body.key!r} while the task waits at {gate or 'no gate'}"
        return None
    if isinstance(body, RateGranted):
        if gate != GATE_RATE or (body.limit, body.key) != (flow.rate_limit, flow.rate_key):
            return f"RateGranted of {body.limit!r} while the task waits at {gate or 'no gate'}"
        return None
    if isinstance(body, WaitDeferred):
        if gate != body.gate:
            return f"WaitDeferred of the {body.gate} gate while the task waits at {gate}"
        return None
    return f"{event.type_name} is not a grant"


def slot_granted(state: TaskState, event: Envelope, body: SlotGranted,
                 effects: bool = True) -> Accepted:
    """The attempt holds a slot (fencing token ``body.sequence``); then the rate gate."""
    held = replace(state, slot_sequence=body.sequence, due_at_ms=None)
    if pending_gate(held) is None:
        return _dispatched(held, event, effects)
    asking = replace(held, status_reason=waiting_reason(held))
    if not effects:
        return asking, []
    return asking, [*_timer_cleared(state), *ask(asking, event.event_id, event.occurred_at_ms)]


def rate_granted(state: TaskState, event: Envelope, effects: bool = True) -> Accepted:
    return _dispatched(state, event, effects)


def deferred(state: TaskState, event: Envelope, body: WaitDeferred,
             effects: bool = True) -> Accepted:
    """The gate's waiting list is full: ask again at ``retry_at_ms`` (a WAIT_RETRY_DUE timer)."""
    due = max(body.retry_at_ms, event.occurred_at_ms)
    reason = f"{body.reason or 'the ' + body.gate + ' gate is full'}; asking again at {iso(due)}"
    later = replace(state, due_at_ms=due, status_reason=reason)
    if not effects:
        return later, []
    return later, [*_timer_cleared(state), new_set_timer(due, TimerKind.WAIT_RETRY_DUE)]


def ask_again(state: TaskState, event: Envelope, effects: bool = True) -> Accepted:
    """The WAIT_RETRY_DUE timer of a deferred request fired (checked by the caller)."""
    again = replace(state, due_at_ms=None)
    again = replace(again, status_reason=waiting_reason(again))
    if not effects:
        return again, []
    return again, [*_timer_cleared(state), *ask(again, event.event_id, event.occurred_at_ms)]


def release(before: TaskState, cause_event_id: str, at_ms: int, reason: str,
            attempt: int | None = None) -> list[Effect]:
    """What an attempt that leaves its gates tells them: its key gets ``SlotReleased``
    (a slot held, or a request still waiting), and a request waiting for a token is
    withdrawn. ``before`` is the state the attempt ends from; nothing for a task that
    had not asked (SCHEDULED, RETRYING) or has no gates."""
    flow = before.flow
    if flow is None or before.status not in GATED:
        return []
    n = before.attempt if attempt is None else attempt
    out: list[Effect] = []
    if flow.concurrency_key is not None:
        key = flow.concurrency_key
        out.append(emit_envelope(ckey_key(key), f"{cause_event_id}.release", at_ms, n,
                                 SlotReleased(task_id=before.task_id, key=key, reason=reason,
                                              sequence=before.slot_sequence)))
    if pending_gate(before) == GATE_RATE and flow.rate_limit is not None:
        out.append(emit_envelope(
            limit_key(flow.rate_limit), f"{cause_event_id}.withdraw", at_ms, n,
            RateWithdrawn(task_id=before.task_id, limit=flow.rate_limit, key=flow.rate_key)))
    return out


def release_stale_slot(state: TaskState, event: Envelope) -> list[Effect]:
    """A ``SlotGranted`` the task does not take: hand that hold straight back (the key
    keeps it until it hears so). Not the grant the task holds, read again: that one is
    released when its attempt ends."""
    body = event.body
    if not isinstance(body, SlotGranted) or holds_grant(state, event):
        return []
    return [emit_envelope(ckey_key(body.key), f"{event.event_id}.release",
                          event.occurred_at_ms, event.attempt,
                          SlotReleased(task_id=state.task_id, key=body.key,
                                       reason="granted to an attempt that no longer waits",
                                       sequence=body.sequence))]


def holds_grant(state: TaskState, event: Envelope) -> bool:
    """Whether ``event`` (a repeat) is the SlotGranted the task took (not a stale one)."""
    body = event.body
    return (isinstance(body, SlotGranted) and event.attempt == state.attempt
            and state.slot_sequence == body.sequence)


def slot_released_again(state: TaskState, cause_event_id: str) -> list[Effect]:
    """Redo of the release an ended attempt sent (same event id as the first time)."""
    flow = state.flow
    if flow is None or flow.concurrency_key is None or state.status not in ENDED:
        return []
    key = flow.concurrency_key
    return [emit_envelope(ckey_key(key), f"{cause_event_id}.release", state.updated_at_ms,
                          state.attempt, SlotReleased(task_id=state.task_id, key=key,
                                                      reason=end_reason(state),
                                                      sequence=state.slot_sequence))]


def end_reason(state: TaskState) -> str:
    """Why the attempt ended, as its release says it (rebuilt the same on redo)."""
    if state.status in (TaskStatus.RETRYING, TaskStatus.DEAD) and state.last_error is not None:
        return state.last_error.error_type
    return {TaskStatus.SUCCEEDED: "succeeded", TaskStatus.CANCELLED: "cancelled",
            TaskStatus.EXPIRED: "expired"}.get(state.status, state.status.value.lower())
