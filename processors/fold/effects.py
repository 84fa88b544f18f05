"""What :func:`~taskstream.processors.fold.lifecycle.apply` asks the processor to do.

``apply`` is pure: it never produces, writes or sleeps. It returns the new state
and a list of effects; the processor (``processors/live/app.py``) performs them. Three
effects carry a whole derived record (docs/decisions.md, D3):

* :class:`Dispatch` — a ``TaskDispatched`` record for ``ready.<queue>.p<priority>``
  (``ready.<queue>.t.<tags>.p<priority>`` for a task with tags, D38);
* :class:`DeadLetter` — a ``TaskDeadLettered`` copy for the ``dlq`` topic;
* :class:`PublishCancel` — a ``TaskCancelled`` record for the ``cancellations`` topic.

The others are notes: timers to set or clear (the due index is derived from the
state itself, D5, so these are informative), and outcomes to count
(:class:`Rejected`, :class:`Duplicate`, :class:`RetryScheduled`).

The envelope builders at the bottom are deterministic: the event id is derived
from the id of the event that caused the record, times come from the state
(which took them from that event), so replaying the log rebuilds the very same
records.
"""

from __future__ import annotations

from dataclasses import dataclass

from taskstream.processors.fold.copy import (
    new_cancelled,
    new_dead_lettered,
    new_dispatched,
    new_envelope,
)
from taskstream.schemas.events import (
    Envelope,
    TaskCancelled,
    TaskDeadLettered,
    TaskDispatched,
    TimerKind,
)
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


Effect = (
    Dispatch
    | DeadLetter
    | PublishCancel
    | SetTimer
    | ClearTimer
    | Rejected
    | Duplicate
    | RetryScheduled
)

#: the effects that leave the processor as records (the ones "redo" re-emits)
OUTBOUND: tuple[type, ...] = (Dispatch, DeadLetter, PublishCancel)


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
    )
    return _envelope(state, f"{cause_event_id}.dlq", _finished(state), body)


def cancel_envelope(state: TaskState, cause_event_id: str) -> Envelope:
    """The cancellations record of a CANCELLED task."""
    body = new_cancelled(reason=state.cancel_reason or "")
    return _envelope(state, f"{cause_event_id}.cancel", _finished(state), body)


def _finished(state: TaskState) -> int:
    return state.finished_at_ms if state.finished_at_ms is not None else state.updated_at_ms
