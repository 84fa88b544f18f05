"""The rules of a task's life as data: which event may move which status where.

:data:`TRANSITIONS` maps ``(from_status, event_key)`` to the set of statuses the
event may lead to. ``from_status`` is ``None`` for a task not seen yet; the event
key is the body's type name, or ``"TimerFired.<KIND>"`` for timers.
:func:`~taskstream.processors.fold.lifecycle.apply` looks an event up here first (an
absent pair is rejected without looking further), then applies its fencing
checks, and refuses to produce a status the table does not list
(:class:`LifecycleError`: a bug, never a bad event).

Not in the table, because they are not transitions: a second ``TaskSubmitted``
for a known task (a duplicate, counted), a worker's end (``TaskSucceeded``,
``TaskFailed``) of the current attempt of a task cancelled or expired while that
attempt was out (it settles the cancellation, status unchanged:
:func:`~taskstream.processors.fold.steps.settle_cancel`), and every rejected event
(counted, status unchanged).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING

from taskstream.processors.fold.errors import LifecycleError
from taskstream.schemas.events import BODY_TYPES, Envelope, TimerFired, TimerKind
from taskstream.schemas.state import TaskStatus

if TYPE_CHECKING:
    from taskstream.settings import Settings

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
    #: the most dependents a task or group keeps (the max_dependencies setting, D37)
    max_dependencies: int = 1000
    #: flow control (issue 16): the most requests a limit's bucket or a concurrency key
    #: keeps waiting in its state (a request beyond it is deferred: the task asks again)
    max_waiting: int = 1000
    #: how long a task deferred by a full concurrency key waits before asking again
    defer_ms: int = 1000
    #: how far an event's time may stray from its record's broker timestamp (D44,
    #: processors/fold/clock.py); None: event times are taken as written (pure tests)
    clock_tolerance_ms: int | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> Limits:
        """The limits a processor folds with; replay folds with the same."""
        return cls(max_result_bytes=settings.max_result_bytes,
                   max_dependencies=settings.max_dependencies,
                   clock_tolerance_ms=settings.clock_tolerance_ms)

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
        if self.clock_tolerance_ms is not None and self.clock_tolerance_ms < 0:
            raise LifecycleError(
                f"clock_tolerance_ms must be >= 0, got {self.clock_tolerance_ms}")
        if self.max_waiting < 1 or self.defer_ms < 1:
            raise LifecycleError(
                f"max_waiting ({self.max_waiting}) and defer_ms ({self.defer_ms}) must be >= 1")


#: the statuses a cancel can stop, in lifecycle order (a tuple: iteration order is fixed)
NON_TERMINAL: tuple[TaskStatus, ...] = (S.SCHEDULED, S.WAITING, S.READY, S.RUNNING, S.RETRYING)

#: the statuses in which no attempt has started yet: an expiry ends them (issue 16)
NOT_STARTED: tuple[TaskStatus, ...] = (S.SCHEDULED, S.WAITING, S.READY, S.RETRYING)

_FAILURE = frozenset({S.RETRYING, S.DEAD})
#: a dispatch goes READY, or WAITING first when the task has gates (flow control)
_DISPATCH = frozenset({S.READY, S.WAITING})

_TABLE: dict[tuple[TaskStatus | None, str], frozenset[TaskStatus]] = {
    # WAITING: it has parents, or gates (flow control); DEAD: parents no task may have
    # (itself, too many)
    (None, "TaskSubmitted"): frozenset({S.SCHEDULED, S.READY, S.WAITING, S.DEAD}),
    (S.SCHEDULED, "TimerFired.DELAY_DUE"): _DISPATCH,
    (S.RETRYING, "TimerFired.RETRY_DUE"): _DISPATCH,
    (S.RUNNING, "TimerFired.LEASE_EXPIRED"): _FAILURE,
    # a start at or after the task's expiry ends it instead (its worker is told to stop)
    (S.READY, "TaskStarted"): frozenset({S.RUNNING, S.EXPIRED}),
    # a LeaseRenewed for the current dispatch while READY: its TaskStarted was lost
    (S.READY, "LeaseRenewed"): frozenset({S.RUNNING, S.EXPIRED}),
    (S.RUNNING, "LeaseRenewed"): frozenset({S.RUNNING}),
    # completions are accepted from READY too: the TaskStarted was lost or is late
    (S.READY, "TaskSucceeded"): frozenset({S.SUCCEEDED}),
    (S.RUNNING, "TaskSucceeded"): frozenset({S.SUCCEEDED}),
    (S.READY, "TaskFailed"): _FAILURE,
    (S.RUNNING, "TaskFailed"): _FAILURE,
    (S.DEAD, "RedriveRequested"): _DISPATCH,
    **{(status, "CancelRequested"): frozenset({S.CANCELLED}) for status in NON_TERMINAL},
    # --- dependencies (processors/fold/dependencies.py, D37): the last parent's success
    # dispatches the task (READY, or WAITING at its gates when it has some) ---
    (S.WAITING, "ParentUpdate"): frozenset({S.WAITING, S.READY, S.CANCELLED}),
    (S.WAITING, "TimerFired.DEPENDENCY_CHECK"): frozenset({S.WAITING, S.DEAD}),
    # a dependent registers with a task in any status; the status never changes
    **{(status, "DependencyRegistered"): frozenset({status}) for status in S},
    # --- flow control (issue 16): the gates of a WAITING attempt, expiry, progress ---
    (S.WAITING, "SlotGranted"): frozenset({S.WAITING, S.READY}),  # then the rate gate
    (S.WAITING, "RateGranted"): frozenset({S.READY}),
    (S.WAITING, "WaitDeferred"): frozenset({S.WAITING}),
    (S.WAITING, "TimerFired.WAIT_RETRY_DUE"): frozenset({S.WAITING}),
    (S.WAITING, "RateRefused"): frozenset({S.DEAD}),
    **{(status, "TimerFired.EXPIRY_DUE"): frozenset({S.EXPIRED}) for status in NOT_STARTED},
    (S.RUNNING, "TaskProgress"): frozenset({S.RUNNING}),
}

#: the event keys flow control added (issue 16): gates of a WAITING attempt, expiry, progress
FLOW_EVENT_KEYS = frozenset({
    "SlotGranted", "RateGranted", "WaitDeferred", "RateRefused", "TaskProgress",
    "TimerFired.WAIT_RETRY_DUE", "TimerFired.EXPIRY_DUE",
})

#: (from-status, event key) -> the statuses that event may lead to
TRANSITIONS: Mapping[tuple[TaskStatus | None, str], frozenset[TaskStatus]] = (
    MappingProxyType(_TABLE)
)

#: the timer each waiting status has (docs/decisions.md, D5); WAITING has two, see
#: :func:`timer_kind_for`
TIMER_KIND_BY_STATUS: Mapping[TaskStatus, TimerKind] = MappingProxyType({
    S.SCHEDULED: TimerKind.DELAY_DUE,
    S.RETRYING: TimerKind.RETRY_DUE,
    S.RUNNING: TimerKind.LEASE_EXPIRED,
    S.WAITING: TimerKind.WAIT_RETRY_DUE,  # a full limit or key deferred the request
})


def timer_kind_for(status: TaskStatus, *, waits_for_parents: bool = False) -> TimerKind | None:
    """The kind of timer a task in ``status`` waits for, or None. A WAITING task waits for
    its parents first (``waiting_on`` not empty: DEPENDENCY_CHECK, only while a parent has
    not answered, D37), then at its gates (WAIT_RETRY_DUE, after a deferral, D32)."""
    if waits_for_parents and status is S.WAITING:
        return TimerKind.DEPENDENCY_CHECK
    return TIMER_KIND_BY_STATUS.get(status)


def event_key(event: Envelope) -> str:
    """The event's key in :data:`TRANSITIONS`."""
    body = event.body
    if isinstance(body, TimerFired):
        return f"TimerFired.{TimerKind(body.kind).value}"
    return type(body).__name__


#: every body type by its name (an event key's part before the dot)
_BODY_TYPE_BY_NAME: Mapping[str, type] = MappingProxyType({t.__name__: t for t in BODY_TYPES})


def body_types(keys: Iterable[str]) -> frozenset[type]:
    """The body types of the event keys ``keys`` (a type name, or ``<type>.<detail>`` such
    as ``TimerFired.RETRY_DUE``): what a kind whose table lists those keys takes. Each
    kind states its set this way from the table its ``apply`` dispatches on, so the
    record check (processors/fold/validate.py, via ``EntityKind.events``) and ``apply``
    read one statement (D37)."""
    found: set[type] = set()
    for key in keys:
        name = key.partition(".")[0]
        body_type = _BODY_TYPE_BY_NAME.get(name)
        if body_type is None:
            raise LifecycleError(f"event key {key!r} names no body type (schemas/events.py)")
        found.add(body_type)
    return frozenset(found)


def check_transition(before: TaskStatus | None, key: str, after: TaskStatus) -> None:
    """Raise :class:`LifecycleError` unless ``before --key--> after`` is in the table."""
    allowed = TRANSITIONS.get((before, key), frozenset())
    if after not in allowed:
        raise LifecycleError(
            f"lifecycle bug: {before} --{key}--> {after} is not in TRANSITIONS "
            f"(allowed: {sorted(allowed)}); please report it with the task's events")
