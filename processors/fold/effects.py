"""What :func:`~taskstream.processors.fold.lifecycle.apply` asks the processor to do.

``apply`` is pure: it never produces, writes or sleeps. It returns the new state
and a list of effects; the processor (``processors/live/app.py``) performs them. Three
effects carry a whole derived record (docs/decisions.md, D3):

* :class:`Dispatch` — a ``TaskDispatched`` record for ``ready.<queue>.p<priority>``
  (``ready.<queue>.t.<tags>.p<priority>`` for a task with tags, D38);
* :class:`DeadLetter` — a ``TaskDeadLettered`` copy for the ``dlq`` topic;
* :class:`PublishCancel` — a ``TaskCancelled`` record for the ``cancellations`` topic.
* :class:`ForgetCancel` — its tombstone, once the cancellation is settled.

One more carries an event for the **events topic** (docs/decisions.md, D37, D32):

* :class:`Emit` — an event about another entity, keyed by ``envelope.task_id``
  (that entity's key): a dependent's registration with its parent, a parent's
  answer or outcome, a schedule's firing (a ``TaskSubmitted``), a flow-control
  request, grant or release (rate limits, concurrency keys). Its event id is
  derived from the cause (``<cause>.<what>``), so a redo emits the same id and the
  receiver's idempotency drops the repeat; replay folds emitted events from the
  log like any other and never emits (``effects=False``).

The others are notes: timers to set or clear (the due index is derived from the
state itself, D5, so these are informative), and outcomes to count
(:class:`Rejected`, :class:`Duplicate`, :class:`RetryScheduled`).

The envelope builders at the bottom are deterministic: the event id is derived
from the id of the event that caused the record, times come from the state
(which took them from that event), so replaying the log rebuilds the very same
records.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from taskstream.processors.fold.copy import (
    new_cancelled,
    new_dead_lettered,
    new_dispatched,
    new_envelope,
)
from taskstream.schemas.events import (
    Envelope,
    EventBody,
    ObjectRef,
    TaskCancelled,
    TaskDeadLettered,
    TaskDispatched,
    TimerKind,
)
from taskstream.schemas.ids import WITHDRAWAL_SUFFIX
from taskstream.schemas.state import TaskState

#: ``source`` of every record the lifecycle derives
PROCESSOR_SOURCE = "processor"


@dataclass(frozen=True, slots=True)
class Dispatch:
    """Send ``envelope`` (body ``TaskDispatched``) to the task's ready topic: the one of
    its queue, priority and ``tags`` (the task's routing tags, D38; the engine routes
    them with ``taskstream.topics.dispatch_topic``)."""

    envelope: Envelope
    tags: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """Send ``envelope`` (body ``TaskDeadLettered``) to the dlq topic."""

    envelope: Envelope


@dataclass(frozen=True, slots=True)
class PublishCancel:
    """Send ``envelope`` (body ``TaskCancelled``) to the cancellations topic."""

    envelope: Envelope


@dataclass(frozen=True, slots=True)
class ForgetCancel:
    """Send a tombstone for ``task_id`` to the cancellations topic: its cancellation is
    settled (nothing of the task can still run or start), so compaction may drop it."""

    task_id: str


@dataclass(frozen=True, slots=True)
class Emit:
    """Send ``envelope`` to the events topic, keyed by ``envelope.task_id`` (D37)."""
    """Send ``envelope`` to the **events topic**, keyed by ``envelope.task_id`` (the key of
    the entity that acts on it next: a task, a group, a schedule, a limit or a key).

    How one entity reaches another on another partition (a dependency's registration
    and answers, a schedule's firing, a flow-control request, grant or release). The
    envelope's ``event_id`` is derived from the cause (``<cause>.<what>``), so a redo
    after a crash emits the same id and the receiver drops the repeat. The emitted
    event is in the log, so replay folds it like any other and never emits it again
    (``effects=False``).
    """

    envelope: Envelope


@dataclass(frozen=True, slots=True)
class SetTimer:
    """The task now has a timer of ``kind`` due at ``due_at_ms``."""

    due_at_ms: int
    kind: TimerKind


@dataclass(frozen=True, slots=True)
class ClearTimer:
    """The task's timer due at ``due_at_ms`` no longer applies."""

    due_at_ms: int


@dataclass(frozen=True, slots=True)
class Rejected:
    """The event was valid on the wire but does not fit the task (fenced, stale, late)."""

    reason: str


@dataclass(frozen=True, slots=True)
class Duplicate:
    """A second ``TaskSubmitted`` for a live task; ``conflict`` if name or payload differ."""

    conflict: bool


@dataclass(frozen=True, slots=True)
class RetryScheduled:
    """An attempt failed and the next one is due in ``delay_ms``."""

    delay_ms: int


@dataclass(frozen=True, slots=True)
class Removed:
    """The task leaves the state (retention or purge, D35): delete its key (a changelog
    tombstone) and its index entries. ``objects`` are what it referenced, for the reaper;
    empty when the task was already gone (the tombstone is sent again)."""

    reason: str
    objects: tuple[ObjectRef, ...] = ()


Effect = (
    Dispatch
    | DeadLetter
    | PublishCancel
    | ForgetCancel
    | Emit
    | SetTimer
    | ClearTimer
    | Rejected
    | Duplicate
    | RetryScheduled
    | Removed
)

#: the effects that leave the processor as records (the ones "redo" re-emits)
OUTBOUND: tuple[type, ...] = (Dispatch, DeadLetter, PublishCancel, ForgetCancel, Emit)


def _envelope(state: TaskState, event_id: str, occurred_at_ms: int,
              body: TaskDispatched | TaskDeadLettered | TaskCancelled) -> Envelope:
    return new_envelope(
        event_id=event_id,
        task_id=state.task_id,
        occurred_at_ms=occurred_at_ms,
        source=PROCESSOR_SOURCE,
        attempt=state.attempt,
        body=body,
    )


def make_dispatch_id(task_id: str, attempt: int, event_id: str) -> str:
    """A short id for one dispatch, a hash of what caused it (same on replay)."""
    text = f"{task_id}\x1f{attempt}\x1f{event_id}"
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


def dispatch_of(state: TaskState, cause_event_id: str) -> Dispatch:
    """The Dispatch of a READY state: its record, routed by the task's tags (D38). Every
    dispatch is made here, so no path to READY can send a tagged task to the untagged
    topic."""
    return Dispatch(dispatch_envelope(state, cause_event_id), tuple(state.tags))


def dispatch_envelope(state: TaskState, cause_event_id: str) -> Envelope:
    """The ready record of the state's current dispatch.

    ``max_attempts`` in the record is the highest attempt number the current
    budget allows (``attempt_base + max_attempts``), so a worker can tell the last
    attempt by ``attempt >= max_attempts`` even after a redrive.
    """
    if state.dispatch_id is None or state.dispatched_at_ms is None:
        raise ValueError(f"task {state.task_id} has no dispatch to publish")
    body = new_dispatched(
        dispatch_id=state.dispatch_id,
        name=state.name,
        queue=state.queue,
        priority=state.priority,
        payload=state.payload,
        content_type=state.content_type,
        timeout_ms=state.timeout_ms,
        lease_ms=state.lease_ms,
        max_attempts=state.attempt_base + state.max_attempts,
        submitted_at_ms=state.submitted_at_ms,
        idempotency_key=state.idempotency_key,
        headers=dict(state.headers),
        parents=list(state.depends_on) if state.dependency_deadline_ms is not None else [],
        expires_at_ms=state.expires_at_ms,
        concurrency_key=None if state.flow is None else state.flow.concurrency_key,
        fencing_token=state.slot_sequence,
        payload_ref=state.payload_ref,
    )
    return _envelope(state, f"{cause_event_id}.dispatch", state.dispatched_at_ms, body)


def dead_letter_envelope(state: TaskState, cause_event_id: str) -> Envelope:
    """The dlq copy of a DEAD task: the task and its last error."""
    error = state.last_error
    body = new_dead_lettered(
        name=state.name,
        queue=state.queue,
        payload=state.payload,
        content_type=state.content_type,
        error_type=error.error_type if error else "",
        message=error.message if error else "",
        traceback=error.traceback if error else "",
        attempts=state.attempt,
        payload_ref=state.payload_ref,
    )
    return _envelope(state, f"{cause_event_id}.dlq", _finished(state), body)


def cancel_envelope(state: TaskState, cause_event_id: str) -> Envelope:
    """The cancellations record of a CANCELLED task."""
    body = new_cancelled(reason=state.cancel_reason or state.status_reason or "")
    return _envelope(state, f"{cause_event_id}.cancel", _finished(state), body)


def revoke_envelope(state: TaskState, cause_event_id: str, occurred_at_ms: int,
                    reason: str) -> Envelope:
    """The cancellations record that withdraws ``state``'s current attempt, which has
    ended (D49): workers skip its dispatch if they read it again, and stop it if it still
    runs. Its ``attempt`` is the ended one, so the next attempt is not touched."""
    return _envelope(state, f"{cause_event_id}{WITHDRAWAL_SUFFIX}", occurred_at_ms,
                     new_cancelled(reason=reason))


def _finished(state: TaskState) -> int:
    return state.finished_at_ms if state.finished_at_ms is not None else state.updated_at_ms


def emit_envelope(target_key: str, event_id: str, occurred_at_ms: int, attempt: int,
                  body: EventBody) -> Emit:
    """An :class:`Emit` of ``body`` to the entity ``target_key`` (ids and times from the cause)."""
    return Emit(new_envelope(event_id=event_id, task_id=target_key, occurred_at_ms=occurred_at_ms,
                             source=PROCESSOR_SOURCE, attempt=attempt, body=body))
