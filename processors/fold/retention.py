"""Retention and purge: when a finished task leaves the state, decided from the log (D35).

A finished task (SUCCEEDED, DEAD, CANCELLED) is removed from the task table and
its indexes in two ways, both events on the events topic so that replay removes
exactly the tasks the live replica removed:

* **retention**: :func:`removal_due_at` says when, from the task's own
  ``finished_at_ms`` (event time) and the policy; the live replica keeps that
  time in its due index like any timer (D5) and, when it comes, writes
  ``TimerFired(RETENTION_DUE, due_at, dispatch_id)``. The policy is *not* read
  by the fold: :func:`check_retention_timer` only checks that the timer belongs
  to the task's current finish (finished, same dispatch, finished no later than
  the timer's due time, fired no earlier). So a replay under other settings
  removes the same tasks, and a changed setting applies to timers set after it.
* **purge**: ``PurgeRequested`` (an operator's ``taskstream purge``) removes a
  finished task at once; a task still in flight is refused (cancel it first).

A removal is the state ``None`` with a :class:`~taskstream.processors.fold.effects.Removed`
effect naming the objects the task referenced (its offloaded payload and result,
D34): the replica writes a tombstone to the changelog and drops the index
entries; the reaper (``taskstream storage reap``) deletes the objects of tasks
that are gone. A removal event for a task that is already gone returns
``Removed`` again with no objects: a replica that crashed between its RocksDB
delete and the changelog flush re-sends the tombstone when it reads the event
again (the rule of D4 for deletes).

After a removal the task ID is free: a late ``TaskSubmitted`` with the same
idempotency key creates a new task. Retention should be far longer than any
producer retry (seconds) for that reason.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from taskstream.processors.fold.errors import LifecycleError
from taskstream.processors.fold.timers import Timer
from taskstream.schemas.events import Envelope, ObjectRef, TimerFired, TimerKind
from taskstream.schemas.state import TERMINAL, TaskState

__all__ = [
    "REMOVAL_KEYS",
    "RetentionPolicy",
    "check_purge",
    "check_retention_timer",
    "objects_of",
    "removal_due_at",
]

#: the event keys (rules.event_key) that remove a task
REMOVAL_KEYS = frozenset({"PurgeRequested", f"TimerFired.{TimerKind.RETENTION_DUE.value}"})


@dataclass(frozen=True, slots=True)
class RetentionPolicy:
    """How long a finished task stays: ``default_ms`` unless its queue has its own.

    ``None`` keeps finished tasks for ever (the default: nothing is removed unless
    an operator asks). ``per_queue`` values are ``None`` too to keep one queue's
    tasks for ever under a default.
    """

    default_ms: int | None = None
    per_queue: Mapping[str, int | None] = field(
        default_factory=lambda: MappingProxyType({}))

    def __post_init__(self) -> None:
        for where, value in (("default", self.default_ms), *self.per_queue.items()):
            if value is not None and value < 0:
                raise LifecycleError(
                    f"retention for {where} is {value} ms; use 0 or more (0 removes a task "
                    "at the next timer round after it finished), or unset it to keep tasks")

    def for_queue(self, queue: str) -> int | None:
        return self.per_queue.get(queue, self.default_ms)

    @classmethod
    def from_seconds(cls, default_s: float | None,
                     per_queue_s: Mapping[str, float | None]) -> RetentionPolicy:
        """From the settings' seconds (``retention_s``, ``retention_by_queue``)."""
        def ms(seconds: float | None) -> int | None:
            return None if seconds is None else int(seconds * 1000)

        return cls(ms(default_s), MappingProxyType({q: ms(s) for q, s in per_queue_s.items()}))

    @property
    def enabled(self) -> bool:
        return self.default_ms is not None or any(
            v is not None for v in self.per_queue.values())


def removal_due_at(state: TaskState, policy: RetentionPolicy) -> int | None:
    """When ``state``'s task leaves the table under ``policy``, or None (never, or not
    finished). Event time only: ``finished_at_ms`` plus the queue's retention."""
    if state.status not in TERMINAL or state.finished_at_ms is None:
        return None
    keep = policy.for_queue(state.queue)
    return None if keep is None else state.finished_at_ms + keep


def removal_timer(state: TaskState, policy: RetentionPolicy) -> Timer | None:
    """The due index entry of a finished task's removal under ``policy`` (D5, D35), or
    None; the replica's timer scan fires it as ``TimerFired(RETENTION_DUE)``."""
    due = removal_due_at(state, policy)
    if due is None:
        return None
    return Timer(due, state.task_id, TimerKind.RETENTION_DUE, state.attempt,
                 state.dispatch_id or "")


def retention_timer(state: TaskState, due_at_ms: int) -> TimerFired:
    """The timer body the replica writes when ``removal_due_at`` comes (fenced by dispatch)."""
    return TimerFired(TimerKind.RETENTION_DUE, due_at_ms, state.dispatch_id or "")


def check_retention_timer(state: TaskState, event: Envelope, body: TimerFired) -> str | None:
    """None if the timer removes the task, else why not (a counted rejection)."""
    if state.status not in TERMINAL or state.finished_at_ms is None:
        return f"retention timer for a {state.status} task: only finished tasks are removed"
    if body.dispatch_id != (state.dispatch_id or ""):
        return (f"stale retention timer: dispatch {body.dispatch_id!r}, the task finished "
                f"under {state.dispatch_id!r}")
    if state.finished_at_ms > body.due_at_ms:
        return (f"stale retention timer: due {body.due_at_ms}, the task finished later, "
                f"at {state.finished_at_ms}")
    if event.occurred_at_ms < body.due_at_ms:
        return f"early retention timer: fired at {event.occurred_at_ms}, due {body.due_at_ms}"
    return None


def check_purge(state: TaskState) -> str | None:
    """None if a ``PurgeRequested`` removes the task, else why not."""
    if state.status not in TERMINAL:
        return (f"purge of a {state.status} task refused: only finished tasks are purged; "
                "cancel it first")
    return None


def objects_of(state: TaskState) -> tuple[ObjectRef, ...]:
    """The stored objects ``state`` references (payload, result), for the reaper."""
    return tuple(ref for ref in (state.payload_ref, state.result_ref) if ref is not None)
