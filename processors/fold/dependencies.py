"""A task's dependencies, both ways: waiting for parents, and telling dependents (D37).

No processor reads another partition's state, so parents and children talk in
events, each keyed by the entity that must act on it next:

1. A task submitted with ``depends_on`` is WAITING. It emits
   ``DependencyRegistered(dependent=child)`` keyed by each parent.
2. A parent adds the child to its ``dependents`` (at most
   ``limits.max_dependencies``) and answers ``ParentUpdate(PENDING)``, keyed by the
   child. A parent that has already settled answers with its outcome at once
   (and keeps no record of the child).
3. When a task settles (SUCCEEDED, DEAD, CANCELLED or EXPIRED, which tells CANCELLED) it emits
   ``ParentUpdate(outcome)`` to each dependent; a group member's carries its slot.
4. The child takes each answer: PENDING confirms the parent exists; SUCCEEDED
   removes it from ``waiting_on``; DEAD or CANCELLED cancels the child with the
   reason (``on_parent_failure=CANCEL``) or is noted (``RUN``). When
   ``waiting_on`` is empty the child is dispatched (READY, attempt 1).

A registration that reaches a parent before the parent's own ``TaskSubmitted``
(another partition, another order) finds no state and is dropped; so the child
asks again, on its ``DEPENDENCY_CHECK`` timer, every parent that has not
answered (after 1 s, 2 s, 4 s ... at most a minute apart), until
``dependency_deadline_ms`` (its submission time plus the ``dependency_timeout_ms``
the submission carries). A parent still silent then is unknown: the child is
DEAD with ``DependencyTimeout`` naming it.

Every message is idempotent by content, not only by event id: a parent
registers a child once, a child takes a parent's outcome once, a group counts a
slot once. So a redo after a crash (D4), which re-sends what the state implies
under the redone event's id, only repeats answers nobody acts on twice.

Parents' results are not carried: the dispatch record lists the parents
(``TaskDispatched.parents``) and the worker fetches their results from the API
when the handler reads ``ctx.parent_results``: a large result is never copied
into children's states or into notifications.
"""

from __future__ import annotations

from taskstream.processors.fold.copy import copy_state as replace
from taskstream.processors.fold.effects import (
    ClearTimer,
    DeadLetter,
    Effect,
    PublishCancel,
    SetTimer,
    cancel_envelope,
    dead_letter_envelope,
    emit_envelope,
)
from taskstream.processors.fold.rules import Limits
from taskstream.processors.fold.steps import Refusal, Step, dispatch_next
from taskstream.schemas.events import (
    DependencyRegistered,
    Dependent,
    Envelope,
    ParentFailurePolicy,
    ParentOutcome,
    ParentUpdate,
    TimerFired,
    TimerKind,
)
from taskstream.schemas.state import ErrorInfo, TaskState, TaskStatus

#: the first re-registration comes this long after the submission, then twice as long
RECHECK_FIRST_MS = 1_000
RECHECK_MAX_MS = 60_000
DEPENDENCY_TIMEOUT_ERROR = "DependencyTimeout"
INVALID_DEPENDENCIES_ERROR = "InvalidDependencies"

_OUTCOME_OF = {
    TaskStatus.SUCCEEDED: ParentOutcome.SUCCEEDED,
    TaskStatus.DEAD: ParentOutcome.FAILED,
    TaskStatus.CANCELLED: ParentOutcome.CANCELLED,
    TaskStatus.EXPIRED: ParentOutcome.CANCELLED,  # never ran (D33): like a cancellation
}

Accepted = tuple[TaskState, list[Effect]]


def recheck_delay_ms(checks: int) -> int:
    """How long after the ``checks``-th re-registration the next one comes."""
    return min(RECHECK_MAX_MS, RECHECK_FIRST_MS << min(checks, 16))


def unique(parents: list[str]) -> list[str]:
    return list(dict.fromkeys(parents))


def invalid_parents(task_id: str, parents: list[str], limits: Limits) -> str | None:
    """Why a task may not wait for ``parents`` (None: it may). The SDK refuses these at
    submit; the fold must not trust that every writer did."""
    if task_id in parents:
        return f"task {task_id} depends on itself"
    if len(parents) > limits.max_dependencies:
        return (f"{len(parents)} parents; at most {limits.max_dependencies} "
                "(max_dependencies): depend on a group instead")
    return None


def registrations(state: TaskState, parents: list[str], cause_event_id: str,
                  at_ms: int) -> list[Effect]:
    """``DependencyRegistered`` to each of ``parents``, keyed by the parent."""
    body = DependencyRegistered(dependent=state.task_id)
    return [emit_envelope(parent, f"{cause_event_id}.register.{parent}", at_ms, 0, body)
            for parent in parents]


def waiting(state: TaskState, event: Envelope, timeout_ms: int, limits: Limits,
            effects: bool) -> Accepted:
    """A fresh submission with parents: WAITING, registered with each parent (or DEAD
    when the parents are invalid)."""
    parents = unique(state.depends_on)
    at = event.occurred_at_ms
    problem = invalid_parents(state.task_id, parents, limits)
    if problem is not None:
        error = ErrorInfo(INVALID_DEPENDENCIES_ERROR, problem, "", 0)
        dead = replace(state, status=TaskStatus.DEAD, last_error=error, finished_at_ms=at)
        if not effects:
            return dead, []
        return dead, [DeadLetter(dead_letter_envelope(dead, event.event_id)),
                      *notifications(dead, event.event_id, at)]
    deadline = at + max(0, timeout_ms)
    due = min(at + recheck_delay_ms(0), deadline)
    state = replace(state, status=TaskStatus.WAITING, waiting_on=parents,
                    unconfirmed=list(parents), dependency_deadline_ms=deadline, due_at_ms=due)
    if not effects:
        return state, []
    return state, [*registrations(state, parents, event.event_id, at),
                   SetTimer(due, TimerKind.DEPENDENCY_CHECK)]


# --- the parent's side -----------------------------------------------------------------


def outcome_of(state: TaskState) -> tuple[ParentOutcome, str]:
    """What a settled task tells its dependents: its outcome and why."""
    outcome = _OUTCOME_OF.get(state.status, ParentOutcome.PENDING)
    if state.status is TaskStatus.DEAD:
        error = state.last_error
        why = f"{error.error_type}: {error.message}" if error else "DEAD"
        return outcome, f"parent {state.task_id} ended DEAD ({why})"
    if state.status is TaskStatus.CANCELLED:
        return outcome, f"parent {state.task_id} was cancelled ({state.cancel_reason or ''})"
    if state.status is TaskStatus.EXPIRED:
        return outcome, f"parent {state.task_id} expired ({state.status_reason or ''})"
    return outcome, ""


def notifications(state: TaskState, cause_event_id: str, at_ms: int) -> list[Effect]:
    """A settled task's outcome to each of its dependents, keyed by the dependent."""
    outcome, reason = outcome_of(state)
    return [emit_envelope(d.key, f"{cause_event_id}.notify.{d.key}", at_ms, 0,
                          ParentUpdate(state.task_id, outcome, reason, d.slot))
            for d in state.dependents]


def registered(state: TaskState, event: Envelope, body: DependencyRegistered, limits: Limits,
               effects: bool) -> Accepted:
    """A dependent registers: remember it (unless settled) and answer."""
    dependent = body.dependent
    outcome, reason = outcome_of(state)
    if outcome is ParentOutcome.PENDING and all(d.key != dependent for d in state.dependents):
        if len(state.dependents) >= limits.max_dependencies:
            outcome, reason = ParentOutcome.FAILED, (
                f"parent {state.task_id} already has {len(state.dependents)} dependents, the "
                f"most it keeps (max_dependencies); depend on a group for a larger fan-out")
        else:
            state = replace(state, dependents=[*state.dependents, Dependent(dependent)])
    if not effects:
        return state, []
    answer = ParentUpdate(state.task_id, outcome, reason)
    return state, [emit_envelope(dependent, f"{event.event_id}.answer", event.occurred_at_ms, 0,
                                 answer)]


# --- the child's side --------------------------------------------------------------------


def parent_update(state: TaskState, event: Envelope, body: ParentUpdate,
                  effects: bool) -> Step:
    """A parent's answer or outcome reaches a WAITING task."""
    parent = body.parent
    if parent not in state.depends_on:
        return Refusal(f"{parent} is not a parent of task {state.task_id}")
    outcome = ParentOutcome(body.outcome)
    unconfirmed = [p for p in state.unconfirmed if p != parent]
    if outcome is ParentOutcome.PENDING or parent not in state.waiting_on:
        if unconfirmed == state.unconfirmed:
            return state, []  # an answer heard before
        return _confirmed(state, unconfirmed, effects)
    waiting_on = [p for p in state.waiting_on if p != parent]
    state = replace(state, waiting_on=waiting_on, unconfirmed=unconfirmed)
    if outcome is not ParentOutcome.SUCCEEDED:
        reason = body.reason or f"parent {parent} ended {outcome.value}"
        if state.on_parent_failure is ParentFailurePolicy.CANCEL:
            return _cancel(state, event, reason, effects)
        if state.parent_failure is None:
            state = replace(state, parent_failure=reason)
    if waiting_on:
        return _confirmed(state, unconfirmed, effects)
    return dispatch_next(replace(state, unconfirmed=[]), event, effects)


def _confirmed(state: TaskState, unconfirmed: list[str], effects: bool) -> Accepted:
    """``state`` with fewer unanswered parents: no timer once every parent has answered."""
    if unconfirmed:
        return replace(state, unconfirmed=unconfirmed), []
    quiet = replace(state, unconfirmed=[], due_at_ms=None)
    if not effects or state.due_at_ms is None:
        return quiet, []
    return quiet, [ClearTimer(state.due_at_ms)]


def _cancel(state: TaskState, event: Envelope, reason: str, effects: bool) -> Accepted:
    cancelled = replace(state, status=TaskStatus.CANCELLED, cancel_reason=reason,
                        finished_at_ms=event.occurred_at_ms, due_at_ms=None)
    if not effects:
        return cancelled, []
    cleared: list[Effect] = [] if state.due_at_ms is None else [ClearTimer(state.due_at_ms)]
    return cancelled, [*cleared, PublishCancel(cancel_envelope(cancelled, event.event_id))]


def check(state: TaskState, event: Envelope, body: TimerFired, effects: bool) -> Step:
    """The DEPENDENCY_CHECK timer: ask silent parents again, or fail at the deadline."""
    if not state.unconfirmed:
        return Refusal(f"stale timer {body.kind}: every parent has answered")
    at = event.occurred_at_ms
    deadline = state.dependency_deadline_ms if state.dependency_deadline_ms is not None else at
    if at >= deadline:
        silent = state.unconfirmed
        shown = ", ".join(silent[:5]) + (f" and {len(silent) - 5} more" if len(silent) > 5 else "")
        error = ErrorInfo(DEPENDENCY_TIMEOUT_ERROR, (
            f"parent(s) {shown} never answered within {deadline - state.submitted_at_ms} ms "
            "(dependency_timeout): no such task was submitted?"), "", 0)
        dead = replace(state, status=TaskStatus.DEAD, last_error=error, finished_at_ms=at,
                       due_at_ms=None)
        if not effects:
            return dead, []
        return dead, [DeadLetter(dead_letter_envelope(dead, event.event_id))]
    checks = state.dependency_checks + 1
    due = min(at + recheck_delay_ms(checks), deadline)
    again = replace(state, dependency_checks=checks, due_at_ms=due)
    if not effects:
        return again, []
    return again, [*registrations(again, again.unconfirmed, event.event_id, at),
                   ClearTimer(body.due_at_ms), SetTimer(due, TimerKind.DEPENDENCY_CHECK)]


def redo(state: TaskState, cause_event_id: str) -> list[Effect]:
    """What a task's dependencies imply after ``cause_event_id`` (D4): a WAITING task's
    registrations with its silent parents; a settled task's notifications."""
    at = state.updated_at_ms
    if state.status is TaskStatus.WAITING:
        return registrations(state, state.unconfirmed, cause_event_id, at)
    if state.status in _OUTCOME_OF:
        return notifications(state, cause_event_id, at)
    return []

