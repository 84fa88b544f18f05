"""The rules of a task's life as data: which event may move which status where.

:data:`TRANSITIONS` maps ``(from_status, event_key)`` to the set of statuses the
event may lead to. ``from_status`` is ``None`` for a task not seen yet; the event
key is the body's type name, or ``"TimerFired.<KIND>"`` for timers.
:func:`~taskstream.processors.fold.lifecycle.apply` looks an event up here first (an
absent pair is rejected without looking further), then applies its fencing
checks, and refuses to produce a status the table does not list
(:class:`LifecycleError`: a bug, never a bad event).

Not in the table, because they are not transitions: a second ``TaskSubmitted``
for a known task (a duplicate, counted), and every rejected event (counted,
status unchanged).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from taskstream.processors.fold.errors import LifecycleError
from taskstream.schemas.events import Envelope, TimerFired, TimerKind
from taskstream.schemas.state import TaskStatus

S = TaskStatus


@dataclass(frozen=True, slots=True)
class Limits:
    """Bounds on what one task's state may hold.

    ``max_result_bytes``: longer results are truncated (``result_truncated``).
    ``max_dependencies``: the most dependents one task keeps; a registration
    beyond it is answered FAILED (the SDK bounds a task's parents by the same
    setting).
    ``recent_events``: how many applied event ids the state remembers for
    idempotency; a repeat older than that is treated as a new event (fenced
    events are still rejected, but a stale ``TaskSubmitted`` counts as a
    duplicate and an old ``RedriveRequested`` could redrive again).
    """

    max_result_bytes: int = 262_144
    recent_events: int = 16
    #: the most dependents a task or group keeps (the max_dependencies setting, D19)
    max_dependencies: int = 1000

    def __post_init__(self) -> None:
        if self.max_result_bytes < 0:
            raise LifecycleError(
                f"max_result_bytes must be >= 0, got {self.max_result_bytes}; "
                "use 0 to store no result bytes at all")
        if self.max_dependencies < 1:
            raise LifecycleError(f"max_dependencies must be >= 1, got {self.max_dependencies}")
        if self.recent_events < 1:
            raise LifecycleError(
                f"recent_events must be >= 1, got {self.recent_events}; idempotency and "
                "redo need at least the last applied event id")


#: the statuses a cancel can stop, in lifecycle order (a tuple: iteration order is fixed)
NON_TERMINAL: tuple[TaskStatus, ...] = (S.SCHEDULED, S.WAITING, S.READY, S.RUNNING, S.RETRYING)

_FAILURE = frozenset({S.RETRYING, S.DEAD})

_TABLE: dict[tuple[TaskStatus | None, str], frozenset[TaskStatus]] = {
    # WAITING: it has parents; DEAD: parents no task may have (itself, too many)
    (None, "TaskSubmitted"): frozenset({S.SCHEDULED, S.READY, S.WAITING, S.DEAD}),
    (S.SCHEDULED, "TimerFired.DELAY_DUE"): frozenset({S.READY}),
    (S.RETRYING, "TimerFired.RETRY_DUE"): frozenset({S.READY}),
    (S.RUNNING, "TimerFired.LEASE_EXPIRED"): _FAILURE,
    (S.READY, "TaskStarted"): frozenset({S.RUNNING}),
    # a LeaseRenewed for the current dispatch while READY: its TaskStarted was lost
    (S.READY, "LeaseRenewed"): frozenset({S.RUNNING}),
    (S.RUNNING, "LeaseRenewed"): frozenset({S.RUNNING}),
    # completions are accepted from READY too: the TaskStarted was lost or is late
    (S.READY, "TaskSucceeded"): frozenset({S.SUCCEEDED}),
    (S.RUNNING, "TaskSucceeded"): frozenset({S.SUCCEEDED}),
    (S.READY, "TaskFailed"): _FAILURE,
    (S.RUNNING, "TaskFailed"): _FAILURE,
    (S.DEAD, "RedriveRequested"): frozenset({S.READY}),
    **{(status, "CancelRequested"): frozenset({S.CANCELLED}) for status in NON_TERMINAL},
    # dependencies (processors/fold/dependencies.py, D19)
    (S.WAITING, "ParentUpdate"): frozenset({S.WAITING, S.READY, S.CANCELLED}),
    (S.WAITING, "TimerFired.DEPENDENCY_CHECK"): frozenset({S.WAITING, S.DEAD}),
    # a dependent registers with a task in any status; the status never changes
    **{(status, "DependencyRegistered"): frozenset({status}) for status in S},
}

#: (from-status, event key) -> the statuses that event may lead to
TRANSITIONS: Mapping[tuple[TaskStatus | None, str], frozenset[TaskStatus]] = (
    MappingProxyType(_TABLE)
)

#: the timer each waiting status has (docs/decisions.md, D5)
TIMER_KIND_BY_STATUS: Mapping[TaskStatus, TimerKind] = MappingProxyType({
    S.SCHEDULED: TimerKind.DELAY_DUE,
    S.RETRYING: TimerKind.RETRY_DUE,
    S.RUNNING: TimerKind.LEASE_EXPIRED,
    S.WAITING: TimerKind.DEPENDENCY_CHECK,  # only while a parent has not answered
})


def timer_kind_for(status: TaskStatus) -> TimerKind | None:
    """The kind of timer a task in ``status`` waits for, or None."""
    return TIMER_KIND_BY_STATUS.get(status)


def event_key(event: Envelope) -> str:
    """The event's key in :data:`TRANSITIONS`."""
    body = event.body
    if isinstance(body, TimerFired):
        return f"TimerFired.{TimerKind(body.kind).value}"
    return type(body).__name__


def check_transition(before: TaskStatus | None, key: str, after: TaskStatus) -> None:
    """Raise :class:`LifecycleError` unless ``before --key--> after`` is in the table."""
    allowed = TRANSITIONS.get((before, key), frozenset())
    if after not in allowed:
        raise LifecycleError(
            f"lifecycle bug: {before} --{key}--> {after} is not in TRANSITIONS "
            f"(allowed: {sorted(allowed)}); please report it with the task's events")
