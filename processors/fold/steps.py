"""One function per event type: the fencing checks and the state each event leads to.

Each step takes the task's state (known to exist, and already looked up in
:data:`~taskstream.processors.fold.rules.TRANSITIONS` for its status) and
returns either the new state with its effects, or a :class:`Refusal` saying why
the event does not fit. Bookkeeping shared by every event (recent event ids,
``updated_at_ms``, the rejected counter, the table check) lives in
:mod:`taskstream.processors.fold.lifecycle`.

All times come from the event's ``occurred_at_ms``; ids and jitter from hashes.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from taskstream.processors.fold.backoff import retry_delay_ms
from taskstream.processors.fold.copy import copy_done, copy_lease, fast_init, new_state
from taskstream.processors.fold.copy import copy_state as replace
from taskstream.processors.fold.effects import (
    ClearTimer,
    DeadLetter,
    Duplicate,
    Effect,
    ForgetCancel,
    PublishCancel,
    RetryScheduled,
    SetTimer,
    cancel_envelope,
    dead_letter_envelope,
    dispatch_of,
    make_dispatch_id,
    revoke_envelope,
)
from taskstream.processors.fold.gates import (
    GATE_RATE,
    ask_again,
    deferred,
    enter_gates,
    grant_fits,
    has_gates,
    pending_gate,
    rate_granted,
    release,
    slot_granted,
)
from taskstream.processors.fold.rules import Limits
from taskstream.schemas.events import (
    CancelRequested,
    Envelope,
    LeaseRenewed,
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
from taskstream.schemas.state import ErrorInfo, TaskState, TaskStatus
from taskstream.schemas.view import iso

new_set_timer = fast_init(SetTimer)
new_clear_timer = fast_init(ClearTimer)

#: error_type recorded when a RUNNING attempt's lease runs out
LEASE_EXPIRED_ERROR = "LeaseExpired"
#: error_type recorded when a task names a rate limit nobody set (issue 16)
UNKNOWN_LIMIT_ERROR = "UnknownRateLimit"
#: the longest progress note kept (longer ones are cut)
MAX_PROGRESS_NOTE = 200


@dataclass(frozen=True, slots=True)
class Refusal:
    """The event does not fit the task; ``reason`` says why (becomes ``Rejected``)."""

    reason: str


Accepted = tuple[TaskState, list[Effect]]
Step = Accepted | Refusal


def payload_digest(payload: bytes) -> str:
    return hashlib.sha256(payload).hexdigest()


def submitted_digest(body: TaskSubmitted) -> str:
    """sha256 of the payload, inline or offloaded (the reference carries it: D34), so a
    duplicate is told from a conflict the same way either way."""
    return body.payload_ref.sha256 if body.payload_ref is not None else payload_digest(
        body.payload)


def _clear_timer(state: TaskState) -> list[Effect]:
    return [] if state.due_at_ms is None else [new_clear_timer(state.due_at_ms)]


def dispatch_next(state: TaskState, event: Envelope, effects: bool = True) -> Accepted:
    """Start attempt ``state.attempt + 1``: READY, a fresh dispatch id, a ready record.

    ``effects=False`` (replay, which throws the outbound records away): the same
    state, no effects built (every step below takes the flag).
    """
    if state.flow is not None and has_gates(state):
        return enter_gates(state, event, effects)  # WAITING for its key and limit first
    attempt = state.attempt + 1
    ready = replace(
        state,
        status=TaskStatus.READY,
        attempt=attempt,
        dispatch_id=make_dispatch_id(state.task_id, attempt, event.event_id),
        dispatched_at_ms=event.occurred_at_ms,
        started_at_ms=None,
        worker_id=None,
        due_at_ms=None,
        finished_at_ms=None,
        progress=None,
        progress_note=None,
        progress_at_ms=None,
    )
    if not effects:
        return ready, []
    return ready, [*_clear_timer(state),
                   dispatch_of(ready, event.event_id)]


def fail_attempt(state: TaskState, event: Envelope, error: ErrorInfo, *, retryable: bool,
                 retry_after_ms: int | None, effects: bool = True) -> Accepted:
    """The current attempt failed: retry after a delay, or dead-letter the task.

    DEAD if the failure is not retryable or the budget is spent (attempts since
    the last redrive >= ``max_attempts``); otherwise RETRYING until
    ``occurred_at + delay``, where the delay is the handler's ``retry_after_ms``
    if it gave one, else the task's backoff for this attempt of the budget.
    """
    cleared = replace(state, last_error=error, due_at_ms=None, status_reason=None)
    used = state.attempt - state.attempt_base
    released = (release(state, event.event_id, event.occurred_at_ms, error.error_type)
                if effects and state.flow is not None else [])
    # the ended attempt is withdrawn first, before its slot can be granted again (D49)
    withdrawn = (withdrawal(cleared, event.event_id, event.occurred_at_ms)
                 if effects and (holds_a_key(state) or lease_ran_out(cleared)) else [])
    if not retryable or used >= state.max_attempts:
        dead = replace(cleared, status=TaskStatus.DEAD, finished_at_ms=event.occurred_at_ms)
        if not effects:
            return dead, []
        return dead, [*withdrawn, *_clear_timer(state), *released,
                      DeadLetter(dead_letter_envelope(dead, event.event_id)),
                      *forget_revoked(dead)]
    if retry_after_ms is not None:
        delay = max(0, retry_after_ms)
    else:
        delay = retry_delay_ms(state.backoff, used, state.task_id)
    due = event.occurred_at_ms + delay
    retrying = replace(cleared, status=TaskStatus.RETRYING, retries=state.retries + 1,
                       due_at_ms=due)
    if not effects:
        return retrying, []
    return retrying, [*withdrawn, *_clear_timer(state), *released,
                      new_set_timer(due, TimerKind.RETRY_DUE), RetryScheduled(delay)]


# --- client events -------------------------------------------------------------


def waits_for_parents(body: TaskSubmitted) -> bool:
    """Whether a submission waits for parents (D37): ``depends_on`` with a timeout (an SDK
    before v2 sent no timeout and its ``depends_on`` was only recorded)."""
    return bool(body.depends_on) and body.dependency_timeout_ms is not None


def submit_new(event: Envelope, body: TaskSubmitted, effects: bool = True) -> Accepted:
    """A first ``TaskSubmitted``: SCHEDULED until its eta, or dispatched at once.

    A task that waits for parents (``depends_on`` with a ``dependency_timeout_ms``) is
    built WAITING, undispatched and without effects:
    :func:`~taskstream.processors.fold.dependencies.waiting` completes it.

    Dispatched at once, the state is built READY in one go: the same state as
    building it SCHEDULED and then taking :func:`dispatch_next` (a test checks
    that), one 40-field build instead of two. A task with gates (issue 16) is built
    SCHEDULED and then takes :func:`dispatch_next`, which makes it WAITING.
    """
    at = event.occurred_at_ms
    eta = body.eta_ms
    waits = waits_for_parents(body)
    if waits:
        eta = None
    delayed = waits or (eta is not None and eta > at)
    gated = not waits and body.flow is not None and (
        body.flow.rate_limit is not None or body.flow.concurrency_key is not None)
    ready_now = not (delayed or gated)
    state = new_state(
        task_id=event.task_id,
        name=body.name,
        queue=body.queue,
        priority=body.priority,
        status=(TaskStatus.WAITING if waits
                else TaskStatus.READY if ready_now else TaskStatus.SCHEDULED),
        payload=body.payload,
        content_type=body.content_type,
        payload_digest=submitted_digest(body),
        max_attempts=body.max_attempts,
        backoff=body.backoff,
        timeout_ms=body.timeout_ms,
        lease_ms=body.lease_ms,
        submitted_at_ms=at,
        updated_at_ms=at,
        idempotency_key=body.idempotency_key,
        headers=dict(body.headers),
        tags=list(body.tags),
        depends_on=list(body.depends_on),
        attempt=1 if ready_now else 0,
        dispatch_id=make_dispatch_id(event.task_id, 1, event.event_id) if ready_now else None,
        dispatched_at_ms=at if ready_now else None,
        due_at_ms=eta if delayed else None,
        on_parent_failure=body.on_parent_failure,
        dependents=list(body.dependents),
        expires_at_ms=body.expires_at_ms,
        flow=body.flow,
        payload_ref=body.payload_ref,
    )
    if gated and not delayed:
        return dispatch_next(state, event, effects)
    if not effects or waits:
        return state, []
    if eta is not None and delayed:
        return state, [new_set_timer(eta, TimerKind.DELAY_DUE)]
    return state, [dispatch_of(state, event.event_id)]


def submit_again(state: TaskState, body: TaskSubmitted) -> Accepted:
    """A second ``TaskSubmitted`` for a known task: counted, never acted on."""
    conflict = body.name != state.name or submitted_digest(body) != state.payload_digest
    counted = replace(state, duplicates=state.duplicates + 1,
                      conflicts=state.conflicts + (1 if conflict else 0))
    return counted, [Duplicate(conflict)]


def cancel(state: TaskState, event: Envelope, body: CancelRequested, effects: bool = True) -> Step:
    cancelled = replace(state, status=TaskStatus.CANCELLED, cancel_reason=body.reason,
                        finished_at_ms=event.occurred_at_ms, due_at_ms=None, status_reason=None)
    if not effects:
        return cancelled, []
    return cancelled, [*_clear_timer(state),
                       *release(state, event.event_id, event.occurred_at_ms, "cancelled"),
                       *cancellation_records(cancelled, event.event_id)]


# --- the cancellation record's life (docs/decisions.md, D45; issue 21) -----------------

#: the statuses that published a cancellation record (a cancel, or an expiry from READY)
CANCEL_PUBLISHED = (TaskStatus.CANCELLED, TaskStatus.EXPIRED)


def cancel_settled(state: TaskState) -> bool:
    """Whether a CANCELLED or EXPIRED task's cancellation record has done its work: no
    dispatch of its current attempt was ever sent (``dispatch_id`` None: never
    dispatched, or waiting at its gates), or that attempt has ended (``last_error`` is
    the current attempt's: it failed before the cancel, RETRYING, or its worker reported
    after the cancel, :func:`settle_cancel`). Then no worker can still start or run the
    task and the record may go (a tombstone: the cancellations topic is compacted)."""
    return state.dispatch_id is None or (
        state.last_error is not None and state.last_error.attempt == state.attempt)


def cancellation_records(state: TaskState, cause_event_id: str) -> list[Effect]:
    """What the cancellations topic gets for a CANCELLED or EXPIRED ``state``: the
    cancellation, then its tombstone once it is settled (the tombstone alone on a redo)."""
    if not cancel_settled(state):
        return [PublishCancel(cancel_envelope(state, cause_event_id))]
    return [PublishCancel(cancel_envelope(state, cause_event_id)), ForgetCancel(state.task_id)]


def lease_ran_out(state: TaskState) -> bool:
    """Whether ``state``'s current attempt ended because its lease ran out (its withdrawal,
    :func:`~taskstream.processors.fold.effects.revoke_envelope`, was published)."""
    error = state.last_error
    return (error is not None and error.attempt == state.attempt
            and error.error_type == LEASE_EXPIRED_ERROR)


def holds_a_key(state: TaskState) -> bool:
    """Whether ``state``'s attempts hold a concurrency key's slot while they run: each one
    is withdrawn when it ends (D49), so a copy of its dispatch read again never runs
    beside the key's next holders."""
    flow = state.flow
    return flow is not None and flow.concurrency_key is not None


def withdrawal(state: TaskState, cause_event_id: str, at_ms: int) -> list[Effect]:
    """The cancellations record withdrawing ``state``'s current attempt, which has ended
    (its lease ran out, or it finished holding a key's slot; D49)."""
    if lease_ran_out(state):
        why = f"the lease of attempt {state.attempt} ran out; a later attempt takes its place"
    else:
        why = (f"attempt {state.attempt} ended and gave back its slot; a copy of its "
               "dispatch read again must not run")
    return [PublishCancel(revoke_envelope(state, cause_event_id, at_ms, why))]


def forget_revoked(state: TaskState) -> list[Effect]:
    """The tombstone of any attempt withdrawn earlier (D49), once ``state`` is final: an
    attempt of it retried before (``retries``), the last one if it ran out its lease, or
    any attempt of a task that holds a key. A tombstone for a key never written costs a
    record and changes nothing."""
    if state.retries or lease_ran_out(state) or holds_a_key(state):
        return [ForgetCancel(state.task_id)]
    return []


def settle_cancel(state: TaskState, event: Envelope, worker_id: str, error: ErrorInfo | None,
                  effects: bool = True) -> Step:
    """A worker's end of the current attempt, after the task was cancelled (or expired)
    while that attempt was out: the cancellation has been acted on. The status stays;
    ``last_error`` records how the attempt ended (a success's result is not kept), and
    the cancellation record is tombstoned."""
    if cancel_settled(state):
        return Refusal(f"{event.type_name} for a {state.status} task whose cancellation "
                       "is settled")
    ended = error or ErrorInfo(
        error_type="Cancelled", traceback="", attempt=state.attempt,
        message="the attempt succeeded after the task was cancelled; its result is not kept")
    settled = replace(state, last_error=ended,
                      worker_id=state.worker_id or worker_id)
    return settled, [ForgetCancel(state.task_id)] if effects else []


def redrive(
    state: TaskState, event: Envelope, body: RedriveRequested, effects: bool = True
) -> Step:
    if body.max_attempts is not None and body.max_attempts < 1:
        return Refusal(f"redrive with max_attempts={body.max_attempts}: must be >= 1 or None")
    budget = body.max_attempts if body.max_attempts is not None else state.max_attempts
    fresh = replace(state, attempt_base=state.attempt, max_attempts=budget,
                    redrives=state.redrives + 1)
    return dispatch_next(fresh, event, effects)


# --- timers ----------------------------------------------------------------------


def timer_fence(state: TaskState, event: Envelope, body: TimerFired) -> Refusal | None:
    """Refuse a timer that is not the task's current one, or that came early."""
    if body.due_at_ms != state.due_at_ms:
        return Refusal(f"stale timer {body.kind}: due {body.due_at_ms}, "
                       f"the task's timer is due {state.due_at_ms}")
    if event.occurred_at_ms < body.due_at_ms:
        return Refusal(f"early timer {body.kind}: fired at {event.occurred_at_ms}, "
                       f"due {body.due_at_ms}")
    return None


def timer(state: TaskState, event: Envelope, body: TimerFired, effects: bool = True) -> Step:
    """A timer only proposes; it acts only if it is still the task's current timer."""
    if body.kind is TimerKind.EXPIRY_DUE:
        return expiry_timer(state, event, body, effects)
    refusal = timer_fence(state, event, body)
    if refusal is not None:
        return refusal
    kind = TimerKind(body.kind)
    if kind is TimerKind.RETRY_DUE and event.attempt != state.attempt:
        return Refusal(f"stale timer {kind}: attempt {event.attempt}, task at {state.attempt}")
    if kind is TimerKind.LEASE_EXPIRED:
        if body.dispatch_id != state.dispatch_id:
            return Refusal(f"stale timer {kind}: dispatch {body.dispatch_id!r}, "
                           f"current {state.dispatch_id!r}")
        error = ErrorInfo(
            error_type=LEASE_EXPIRED_ERROR,
            message=(f"lease of {state.lease_ms} ms ran out at {body.due_at_ms} without a "
                     f"LeaseRenewed from worker {state.worker_id}"),
            traceback="",
            attempt=state.attempt,
            timed_out=True,
        )
        return fail_attempt(state, event, error, retryable=True, retry_after_ms=None,
                            effects=effects)  # it withdraws the attempt first (D49)
    if kind is TimerKind.WAIT_RETRY_DUE:
        if event.attempt != state.attempt:
            return Refusal(f"stale timer {kind}: attempt {event.attempt}, task at {state.attempt}")
        return ask_again(state, event, effects)
    return dispatch_next(state, event, effects)


# --- worker events (fenced by dispatch id and attempt) ------------------------------


def fence(state: TaskState, event: Envelope, dispatch_id: str) -> Refusal | None:
    """Refuse a worker event that is not about the task's current dispatch."""
    if dispatch_id != state.dispatch_id:
        return Refusal(f"{event.type_name} for dispatch {dispatch_id!r}, "
                       f"current is {state.dispatch_id!r}")
    if event.attempt != state.attempt:
        return Refusal(f"{event.type_name} for attempt {event.attempt}, "
                       f"current is {state.attempt}")
    return None


def _lease(state: TaskState, event: Envelope, worker_id: str, effects: bool) -> Accepted:
    """RUNNING with a lease from this event's time (a start, or a renewal that stands in)."""
    due = event.occurred_at_ms + state.lease_ms
    running = copy_lease(state, status=TaskStatus.RUNNING, worker_id=worker_id,
                         started_at_ms=event.occurred_at_ms, due_at_ms=due)
    if not effects:
        return running, []
    return running, [*_clear_timer(state), new_set_timer(due, TimerKind.LEASE_EXPIRED)]


def started(state: TaskState, event: Envelope, body: TaskStarted, effects: bool = True) -> Step:
    if body.dispatch_id == state.dispatch_id and event.attempt == state.attempt:  # fence passes
        if state.expires_at_ms is not None and event.occurred_at_ms >= state.expires_at_ms:
            return expire(state, event, effects)
        return _lease(state, event, body.worker_id, effects)
    return fence(state, event, body.dispatch_id) or _lease(state, event, body.worker_id, effects)


def renewed(state: TaskState, event: Envelope, body: LeaseRenewed, effects: bool = True) -> Step:
    refusal = fence(state, event, body.dispatch_id)
    if refusal is not None:
        return refusal
    if state.status is TaskStatus.READY:  # its TaskStarted was lost: this renewal starts it
        if state.expires_at_ms is not None and event.occurred_at_ms >= state.expires_at_ms:
            return expire(state, event, effects)
        return _lease(state, event, body.worker_id, effects)
    due = max(state.due_at_ms or 0, event.occurred_at_ms + state.lease_ms)
    if due == state.due_at_ms:
        return state, []
    if not effects:
        return replace(state, due_at_ms=due), []
    return replace(state, due_at_ms=due), [*_clear_timer(state),
                                           new_set_timer(due, TimerKind.LEASE_EXPIRED)]


def succeeded(
    state: TaskState, event: Envelope, body: TaskSucceeded, limits: Limits, effects: bool = True
) -> Step:
    if body.dispatch_id != state.dispatch_id or event.attempt != state.attempt:
        refusal = fence(state, event, body.dispatch_id)
        if refusal is not None:
            return refusal
    if state.status in CANCEL_PUBLISHED:
        return settle_cancel(state, event, body.worker_id, None, effects)
    # an offloaded result (D34) is its reference; the bytes stay in object storage
    truncated = len(body.result) > limits.max_result_bytes
    done = copy_done(
        state,
        status=TaskStatus.SUCCEEDED,
        worker_id=state.worker_id or body.worker_id,
        result=body.result[: limits.max_result_bytes],
        result_content_type=body.result_content_type,
        result_truncated=truncated,
        finished_at_ms=event.occurred_at_ms,
        due_at_ms=None,
        result_ref=body.result_ref,
    )
    if not effects:
        return done, []
    if state.flow is None and not state.retries:  # the common case: nothing held or withdrawn
        return done, _clear_timer(state)
    withdrawn = (withdrawal(done, event.event_id, event.occurred_at_ms)
                 if holds_a_key(state) else [])
    return done, [*withdrawn, *_clear_timer(state),
                  *release(state, event.event_id, event.occurred_at_ms, "succeeded"),
                  *forget_revoked(done)]


def failed(state: TaskState, event: Envelope, body: TaskFailed, effects: bool = True) -> Step:
    refusal = fence(state, event, body.dispatch_id)
    if refusal is not None:
        return refusal
    error = ErrorInfo(error_type=body.error_type, message=body.message,
                      traceback=body.traceback, attempt=state.attempt, timed_out=body.timed_out)
    if state.status in CANCEL_PUBLISHED:
        return settle_cancel(state, event, body.worker_id, error, effects)
    if state.worker_id is None:
        state = replace(state, worker_id=body.worker_id)
    return fail_attempt(state, event, error, retryable=body.retryable,
                        retry_after_ms=body.retry_after_ms, effects=effects)


# --- flow control (issue 16): expiry, refusal, progress --------------------------------


def expire(state: TaskState, event: Envelope, effects: bool = True) -> Accepted:
    """No attempt starts at or after ``expires_at_ms``: the task ends EXPIRED, never run.

    From READY the dispatch may already sit in a worker's buffer: the cancellation
    record tells the worker to drop it (or to stop it, if a late start got through);
    a key's slot or a waiting request is released.
    """
    was = state.status_reason or state.status.value
    expired = replace(
        state, status=TaskStatus.EXPIRED, finished_at_ms=event.occurred_at_ms, due_at_ms=None,
        status_reason=(f"not started by its expiry at {iso(state.expires_at_ms)} "
                       f"(it was {was})"))
    if not effects:
        return expired, []
    out = [*_clear_timer(state), *release(state, event.event_id, event.occurred_at_ms, "expired")]
    if state.status is TaskStatus.READY:
        out += cancellation_records(expired, event.event_id)
    else:
        out += forget_revoked(expired)
    return expired, out


def expiry_timer(state: TaskState, event: Envelope, body: TimerFired,
                 effects: bool = True) -> Step:
    if state.expires_at_ms is None or body.due_at_ms != state.expires_at_ms:
        return Refusal(f"stale timer {body.kind}: due {body.due_at_ms}, "
                       f"the task expires at {state.expires_at_ms}")
    if event.occurred_at_ms < body.due_at_ms:
        return Refusal(f"early timer {body.kind}: fired at {event.occurred_at_ms}, "
                       f"due {body.due_at_ms}")
    return expire(state, event, effects)


def refused(state: TaskState, event: Envelope, body: RateRefused, effects: bool = True) -> Step:
    """No such rate limit: the attempt fails for good (DEAD; set the limit and redrive)."""
    if pending_gate(state) != GATE_RATE or event.attempt != state.attempt:
        return Refusal(f"RateRefused for attempt {event.attempt} while the task waits at "
                       f"{pending_gate(state) or 'no gate'} of attempt {state.attempt}")
    error = ErrorInfo(error_type=UNKNOWN_LIMIT_ERROR, message=body.reason, traceback="",
                      attempt=state.attempt)
    return fail_attempt(state, event, error, retryable=False, retry_after_ms=None,
                        effects=effects)


def gate_step(state: TaskState, event: Envelope, effects: bool = True) -> Step:
    """A grant or deferral from a limit or key (the table allowed it for WAITING)."""
    problem = grant_fits(state, event)
    if problem is not None:
        return Refusal(problem)
    body = event.body
    if isinstance(body, SlotGranted):
        return slot_granted(state, event, body, effects)
    if isinstance(body, WaitDeferred):
        return deferred(state, event, body, effects)
    return rate_granted(state, event, effects)


def progress(state: TaskState, event: Envelope, body: TaskProgress, effects: bool = True) -> Step:
    """The running attempt's progress: recorded, never a transition (throttled by the worker)."""
    refusal = fence(state, event, body.dispatch_id)
    if refusal is not None:
        return refusal
    if not 0.0 <= body.fraction <= 1.0:  # NaN fails both
        return Refusal(f"progress {body.fraction!r} is not a fraction in 0..1")
    if state.progress_at_ms is not None and event.occurred_at_ms < state.progress_at_ms:
        return Refusal("progress older than the one recorded")
    return replace(state, progress=body.fraction, progress_note=body.note[:MAX_PROGRESS_NOTE],
                   progress_at_ms=event.occurred_at_ms), []
