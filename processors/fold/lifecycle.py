"""The task lifecycle: a pure fold of events into task state.

``apply(state, event) -> (state, effects)`` is the heart of the platform. It
does no I/O, reads no clock but the event's own ``occurred_at_ms`` and draws no
random numbers (ids and jitter are hashes), so replaying the events topic from
offset 0 rebuilds the live tables byte for byte (DESIGN.md; docs/lifecycle.md).

How one event is applied, in order:

0. **Idempotency.** An event id already in ``state.recent_event_ids`` changes
   nothing. If it is the *last* applied id, ``apply`` returns the outbound
   effects the current state implies ("redo": READY -> the current dispatch,
   DEAD -> the dlq copy, CANCELLED -> the cancellation), otherwise none. Why:
   the processor writes table state to RocksDB before its producer is flushed
   (the flush happens before the offset commit). After a crash in between, the
   events from the last commit are read again while the store may already hold
   their results; the last of them for each task is the last applied id, and
   re-emitting what its state implies recovers any record that never left.
   With dependencies (D37) it also re-sends a WAITING task's registrations and a
   settled task's notifications; their receivers act on each only once.
   Downstream all three are idempotent: a second ``TaskStarted`` for the same
   dispatch is fenced, dlq and cancellation consumers key by task id.
1. ``TaskSubmitted`` for an unknown task creates it; for a known task it is a
   duplicate (counted; a conflict if name or payload differ), never a transition.
2. Any other event is looked up in :data:`TRANSITIONS` by (status, event key);
   an absent pair is rejected. Otherwise its step
   (:mod:`~taskstream.processors.fold.steps`) applies the fencing checks
   (dispatch id, attempt, timer due time) and computes the new state.
3. Every event that reaches a known task, accepted, duplicate or rejected, is
   recorded: its id appended to ``recent_event_ids`` (the newest
   ``limits.recent_events`` kept) and ``updated_at_ms`` set to its time. A
   rejection also adds one to ``rejected`` and returns ``Rejected(reason)``. An
   event for an unknown task (other than a submission) leaves ``None``.
4. A removal (``PurgeRequested``, ``TimerFired.RETENTION_DUE``; D35,
   :mod:`~taskstream.processors.fold.retention`) of a finished task returns
   ``None`` and :class:`Removed`: the caller deletes the task. For a task already
   gone it returns ``Removed`` again (the tombstone is re-sent, as redo does).
   With ``effects=False`` (replay) the state ``None`` alone says it.
"""

from __future__ import annotations

from collections.abc import Iterable

from taskstream.processors.fold import dependencies
from taskstream.processors.fold.copy import copy_recorded
from taskstream.processors.fold.copy import copy_state as replace
from taskstream.processors.fold.effects import (
    DeadLetter,
    Effect,
    ForgetCancel,
    PublishCancel,
    Rejected,
    Removed,
    cancel_envelope,
    dead_letter_envelope,
    dispatch_of,
)
from taskstream.processors.fold.errors import LifecycleError
from taskstream.processors.fold.gates import (
    ask,
    holds_grant,
    release_stale_slot,
    slot_released_again,
)
from taskstream.processors.fold.retention import (
    REMOVAL_KEYS,
    check_purge,
    check_retention_timer,
    objects_of,
)
from taskstream.processors.fold.rules import (
    TRANSITIONS,
    Limits,
    check_transition,
    event_key,
    timer_kind_for,
)
from taskstream.processors.fold.steps import (
    CANCEL_PUBLISHED,
    Refusal,
    Step,
    cancel,
    cancel_settled,
    failed,
    forget_revoked,
    gate_step,
    holds_a_key,
    lease_ran_out,
    progress,
    redrive,
    refused,
    renewed,
    started,
    submit_again,
    submit_new,
    succeeded,
    timer,
    timer_fence,
    waits_for_parents,
    withdrawal,
)
from taskstream.schemas.events import (
    BODY_TYPES,
    CancelRequested,
    DependencyRegistered,
    Envelope,
    LeaseRenewed,
    ParentUpdate,
    PurgeRequested,
    RateGranted,
    RateRefused,
    RedriveRequested,
    SlotGranted,
    TaskFailed,
    TaskProgress,
    TaskStarted,
    TaskSubmitted,
    TaskSucceeded,
    TimerFired,
    TimerKind,
    WaitDeferred,
)
from taskstream.schemas.state import TERMINAL, TaskState, TaskStatus

__all__ = [
    "TRANSITIONS",
    "LifecycleError",
    "Limits",
    "apply",
    "event_key",
    "fold",
    "redo_effects",
    "timer_kind_for",
]

_DEFAULT_LIMITS = Limits()
#: TRANSITIONS as a plain dict (a lookup per event; the mapping proxy adds a call)
_TABLE = dict(TRANSITIONS)
_SUBMIT_TO = TRANSITIONS[(None, "TaskSubmitted")]
#: event_key of every body type whose key is its type name (all but TimerFired)
_PLAIN_KEYS = {cls: cls.__name__ for cls in BODY_TYPES if cls is not TimerFired}
#: complete a state built during the current apply (see _record)
_set_recent = TaskState.__dict__["recent_event_ids"].__set__
_set_updated = TaskState.__dict__["updated_at_ms"].__set__


def apply(
    state: TaskState | None, event: Envelope, limits: Limits = _DEFAULT_LIMITS,
    *, effects: bool = True,
) -> tuple[TaskState | None, list[Effect]]:
    """Fold one event into one task's state; see the module docstring for the rules.

    ``effects=False`` is for replay, which throws the outbound records away: the
    returned state is the same (a test checks that), the effects list is empty
    except for ``Rejected`` / ``Duplicate`` (cheap, kept as they are).
    """
    body = event.body
    key = _PLAIN_KEYS.get(body.__class__) or event_key(event)
    if state is None:
        return _unknown(event, key, limits, effects)
    if state.task_id != event.task_id:
        raise LifecycleError(
            f"event {event.event_id} is for task {event.task_id} but was applied to the "
            f"state of task {state.task_id}; look states up by the event's task_id")
    if event.event_id in state.recent_event_ids:
        last = state.recent_event_ids[-1] == event.event_id
        if not (last and effects):
            return state, []
        if body.__class__ is SlotGranted and not holds_grant(state, event):
            return state, release_stale_slot(state, event)  # it was refused: hand back again
        return state, redo_effects(state, event.event_id)
    if isinstance(body, TaskSubmitted):
        counted, made = submit_again(state, body)
        return _record(counted, event, limits, fresh=counted is not state), made
    if key in REMOVAL_KEYS:
        return _remove(state, event, limits, key, effects)
    allowed = _TABLE.get((state.status, key))
    if allowed is None:
        return _not_in_table(state, event, limits, key, effects)
    step = _step(state, event, limits, effects)
    if step.__class__ is Refusal:
        return _reject(state, event, limits, step.reason)
    after, made = step  # type: ignore[misc]
    if after.status not in allowed:
        check_transition(state.status, key, after.status)  # raises: a bug
    if after.dependents and effects and after.status in TERMINAL and (
            state.status not in TERMINAL):  # settled now: tell the dependents (D37)
        made = [*made, *dependencies.notifications(after, event.event_id, event.occurred_at_ms)]
    return _record(after, event, limits, fresh=after is not state), made


def _unknown(event: Envelope, key: str, limits: Limits,
             effects: bool) -> tuple[TaskState | None, list[Effect]]:
    """An event for a task this partition does not hold: a submission creates it, a
    removal of a task already gone is sent again (D35), anything else is rejected."""
    body = event.body
    if isinstance(body, TaskSubmitted):
        return _create(event, body, limits, effects)
    if key in REMOVAL_KEYS:
        return None, [Removed(f"{key} for a task already removed")] if effects else []
    return None, [Rejected(f"{key} for unknown task {event.task_id}")]


def _create(event: Envelope, body: TaskSubmitted, limits: Limits,
            effects: bool) -> tuple[TaskState, list[Effect]]:
    """A task's first submission: its state, WAITING if it has parents (D37)."""
    created, made = submit_new(event, body, effects)
    if waits_for_parents(body):
        created, made = dependencies.waiting(
            created, event, body.dependency_timeout_ms or 0, limits, effects)
    if created.status not in _SUBMIT_TO:
        check_transition(None, "TaskSubmitted", created.status)  # raises: a bug
    return _record(created, event, limits, fresh=True), made


def _step(state: TaskState, event: Envelope, limits: Limits, effects: bool) -> Step:
    body = event.body
    match body:  # the bench's (and most logs') commonest bodies first
        case TaskStarted():
            return started(state, event, body, effects)
        case TaskSucceeded():
            return succeeded(state, event, body, limits, effects)
        case TimerFired() if body.kind is TimerKind.DEPENDENCY_CHECK:
            return timer_fence(state, event, body) or dependencies.check(
                state, event, body, effects)
        case TimerFired():
            return timer(state, event, body, effects)
        case LeaseRenewed():
            return renewed(state, event, body, effects)
        case TaskFailed():
            return failed(state, event, body, effects)
        case CancelRequested():
            return cancel(state, event, body, effects)
        case RedriveRequested():
            return redrive(state, event, body, effects)
        case _:
            return _message_step(state, event, limits, effects)


def _message_step(state: TaskState, event: Envelope, limits: Limits, effects: bool) -> Step:
    """The messages of other entities (parents, dependents, limits, keys) and progress."""
    body = event.body
    match body:
        case ParentUpdate():
            return dependencies.parent_update(state, event, body, effects)
        case DependencyRegistered():
            return dependencies.registered(state, event, body, limits, effects)
        case SlotGranted() | RateGranted() | WaitDeferred():
            return gate_step(state, event, effects)
        case TaskProgress():
            return progress(state, event, body, effects)
        case RateRefused():
            return refused(state, event, body, effects)
        case _:  # derived records never reach here: TRANSITIONS has no key for them
            return Refusal(f"{event.type_name} is not an events-topic record")


#: a worker's end of an attempt: after a cancel it settles the cancellation
_ENDS = frozenset({"TaskSucceeded", "TaskFailed"})


def _not_in_table(state: TaskState, event: Envelope, limits: Limits, key: str,
                  effects: bool) -> tuple[TaskState, list[Effect]]:
    """Rejected, but for a worker's end of an attempt after a cancel (not a transition)."""
    if key in _ENDS and state.status in CANCEL_PUBLISHED:
        return _settle(state, event, limits, effects)
    return _reject(state, event, limits, f"{key} does not apply to a {state.status} task")


def _settle(state: TaskState, event: Envelope, limits: Limits,
            effects: bool) -> tuple[TaskState, list[Effect]]:
    """A worker's end of the current attempt of a task cancelled (or expired) while the
    attempt was out: the cancellation is settled, its record tombstoned (issue 21)."""
    step = _step(state, event, limits, effects)  # their steps fence, then settle_cancel
    if step.__class__ is Refusal:
        return _reject(state, event, limits, step.reason)
    after, made = step  # type: ignore[misc]
    if after.status is not state.status:
        check_transition(state.status, event_key(event), after.status)  # raises: a bug
    return _record(after, event, limits, fresh=after is not state), made


def _remove(
    state: TaskState, event: Envelope, limits: Limits, key: str, effects: bool
) -> tuple[TaskState | None, list[Effect]]:
    body = event.body
    refusal = (check_retention_timer(state, event, body) if isinstance(body, TimerFired)
               else check_purge(state))
    if refusal is not None:
        return _reject(state, event, limits, refusal)
    if not effects:
        return None, []
    reason = body.reason if isinstance(body, PurgeRequested) and body.reason else key
    if state.status in CANCEL_PUBLISHED:  # its cancellation record goes with it
        return None, [Removed(reason, objects_of(state)), ForgetCancel(state.task_id)]
    return None, [Removed(reason, objects_of(state))]


def _record(
    state: TaskState, event: Envelope, limits: Limits, *, fresh: bool = False
) -> TaskState:
    """``state`` with ``event`` remembered as applied.

    ``fresh`` says ``state`` was built during this ``apply`` call and nobody else
    holds it yet; then it is completed in place instead of copied once more
    (one copy of a 40-field state per event instead of two).
    """
    recent = [*state.recent_event_ids, event.event_id][-limits.recent_events:]
    if fresh:
        _set_recent(state, recent)
        _set_updated(state, event.occurred_at_ms)
        return state
    return copy_recorded(state, recent_event_ids=recent, updated_at_ms=event.occurred_at_ms)


def _reject(
    state: TaskState, event: Envelope, limits: Limits, reason: str
) -> tuple[TaskState, list[Effect]]:
    counted = replace(state, rejected=state.rejected + 1)
    made: list[Effect] = [Rejected(reason)]
    if event.body.__class__ is SlotGranted:  # a slot the task will not use: hand it back
        made += release_stale_slot(state, event)
    return _record(counted, event, limits, fresh=True), made


def redo_effects(state: TaskState, cause_event_id: str) -> list[Effect]:
    """The outbound records ``state`` implies, as if ``cause_event_id`` had just caused them.

    Re-applying the cause of those records rebuilds them exactly (same event id,
    time, attempt and body); re-applying a later event gives the same records
    under that event's derived id (same dispatch id, so workers fence a repeat).
    """
    linked = dependencies.redo(state, cause_event_id) if (
        state.dependents or state.status is TaskStatus.WAITING) else []
    # a key's slot: released again by every state that ended an attempt (a release of a
    # slot no longer held is a no-op at the key; the first one had the same event id)
    released = slot_released_again(state, cause_event_id)
    match state.status:
        case TaskStatus.READY:
            return [dispatch_of(state, cause_event_id)]
        case TaskStatus.DEAD:
            return [*released, DeadLetter(dead_letter_envelope(state, cause_event_id)),
                    *forget_revoked(state), *linked]
        case TaskStatus.RETRYING if lease_ran_out(state) or holds_a_key(state):
            # its ended attempt's withdrawal again (D49), before the slot's release
            return [*withdrawal(state, cause_event_id, state.updated_at_ms), *released,
                    *linked]
        case TaskStatus.SUCCEEDED:
            return [*released, *forget_revoked(state), *linked]
        case TaskStatus.CANCELLED | TaskStatus.EXPIRED if cancel_settled(state):
            return [*released, ForgetCancel(state.task_id), *linked]  # the tombstone again
        case TaskStatus.CANCELLED | TaskStatus.EXPIRED:
            return [*released, PublishCancel(cancel_envelope(state, cause_event_id)), *linked]
        case TaskStatus.WAITING if state.due_at_ms is None:  # its request, unless deferred
            return [*linked, *ask(state, cause_event_id, state.updated_at_ms)]
        case _:
            return [*released, *linked]


def fold(events: Iterable[Envelope], limits: Limits = _DEFAULT_LIMITS) -> dict[str, TaskState]:
    """Apply ``events`` in order, keeping one state per task id (replay and tests)."""
    states: dict[str, TaskState] = {}
    for event in events:
        after, made = apply(states.get(event.task_id), event, limits)
        if after is not None:
            states[event.task_id] = after
        elif made and made[0].__class__ is Removed:
            states.pop(event.task_id, None)
    return states
