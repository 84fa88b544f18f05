"""The events of a task's life, as plain immutable Python values.

This module is the wire contract in Python form. Each class maps one to one onto
an Avro record in ``schemas/avro/`` (same field names, same order); the serde
module turns an :class:`Envelope` into bytes and back. Times are integer
milliseconds since the Unix epoch (UTC); durations are integer milliseconds.

Who writes what:

* clients (producer SDK, HTTP API, CLI): ``TaskSubmitted``, ``CancelRequested``,
  ``RedriveRequested``;
* workers: ``TaskStarted``, ``LeaseRenewed``, ``TaskSucceeded``, ``TaskFailed``;
* processors: ``TimerFired`` (it carries the wall clock into the log so the fold
  stays pure), and the events one entity sends another (a dependency's
  registration and its answers, a schedule's firings): ENTITIES in
  docs/decisions.md (D19).

``Envelope.task_id`` is the record key of the entity an event is about: a task
ID, or ``<kind>:<id>`` (``schedule:nightly``, ``group:01H...``) for the other
entity kinds; the name stays for wire compatibility.

``TaskDispatched``, ``TaskDeadLettered`` and ``TaskCancelled`` are *derived*: the
processor computes them from the fold and writes them to the ready, dlq and
cancellations topics, never back into the events topic (docs/decisions.md, D3).
They travel in the same envelope, so one decoder reads every topic.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


class TimerKind(enum.StrEnum):
    """Why a timer fired. A timer is a proposal; apply re-checks it."""

    DELAY_DUE = "DELAY_DUE"  # a SCHEDULED task's eta has come
    RETRY_DUE = "RETRY_DUE"  # a RETRYING task's backoff has passed
    LEASE_EXPIRED = "LEASE_EXPIRED"  # a RUNNING attempt stopped renewing its lease
    # --- dependencies and schedules (issue 15) ---
    DEPENDENCY_CHECK = "DEPENDENCY_CHECK"  # a WAITING task asks unanswered parents again
    SCHEDULE_DUE = "SCHEDULE_DUE"  # a schedule's next fire time (plus jitter) has come


class ParentFailurePolicy(enum.StrEnum):
    """What a waiting task does when a parent ends DEAD or CANCELLED."""

    CANCEL = "CANCEL"  # the task is CANCELLED, with the parent's reason
    RUN = "RUN"  # the task runs anyway once every parent has settled


class ParentOutcome(enum.StrEnum):
    """A parent's answer: PENDING (it exists and will tell), or how it settled."""

    PENDING = "PENDING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"  # DEAD (or a group with a member that did not succeed)
    CANCELLED = "CANCELLED"


class MisfirePolicy(enum.StrEnum):
    """What a schedule does with fire times that passed while nobody could fire them."""

    SKIP = "SKIP"  # fire only the latest, and only if it is within misfire_grace_ms
    RUN_ONCE = "RUN_ONCE"  # fire the latest once, skip the others
    CATCH_UP = "CATCH_UP"  # fire each, the latest catch_up_max at most


class ScheduleOp(enum.StrEnum):
    PAUSE = "PAUSE"
    RESUME = "RESUME"
    DELETE = "DELETE"


@dataclass(frozen=True, slots=True)
class Backoff:
    """Retry delay for attempt n: min(initial * multiplier**(n-1), max), +/- jitter."""

    initial_ms: int = 1_000
    multiplier: float = 2.0
    max_ms: int = 300_000
    jitter: float = 0.1  # fraction of the delay, 0..1; derived from (task_id, attempt)


@dataclass(frozen=True, slots=True)
class Dependent:
    """An entity to notify when a task or a group settles (``slot``: a group member's place)."""

    key: str
    slot: int | None = None


# --- client events ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TaskSubmitted:
    name: str
    queue: str
    priority: int
    payload: bytes
    content_type: str
    eta_ms: int | None  # absolute due time; None = run now
    max_attempts: int
    backoff: Backoff
    timeout_ms: int | None  # execution timeout enforced by the worker
    lease_ms: int  # how long a started attempt lives without a LeaseRenewed
    idempotency_key: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    tags: list[str] = field(default_factory=list)
    depends_on: list[str] = field(default_factory=list)  # parents: task IDs or group keys
    on_parent_failure: ParentFailurePolicy = ParentFailurePolicy.CANCEL
    #: how long to wait for a parent nobody has heard of; None (an SDK before v2, which
    #: ignored depends_on): depends_on is recorded and not waited on, as it was then
    dependency_timeout_ms: int | None = None
    #: entities to notify when the task settles, known at submit (a group's members)
    dependents: list[Dependent] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class CancelRequested:
    reason: str = ""


@dataclass(frozen=True, slots=True)
class RedriveRequested:
    reason: str = ""
    max_attempts: int | None = None  # fresh budget; None = the original max_attempts


# --- worker events -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TaskStarted:
    dispatch_id: str
    worker_id: str


@dataclass(frozen=True, slots=True)
class LeaseRenewed:
    dispatch_id: str
    worker_id: str


@dataclass(frozen=True, slots=True)
class TaskSucceeded:
    dispatch_id: str
    worker_id: str
    result: bytes = b""
    result_content_type: str = "application/json"


@dataclass(frozen=True, slots=True)
class TaskFailed:
    dispatch_id: str
    worker_id: str
    error_type: str
    message: str
    traceback: str = ""
    retryable: bool = True
    timed_out: bool = False
    retry_after_ms: int | None = None  # Retry(after=...) from the handler


# --- processor events --------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TimerFired:
    kind: TimerKind
    due_at_ms: int
    dispatch_id: str = ""  # for LEASE_EXPIRED: the lease's dispatch


# --- derived records (ready, dlq and cancellations topics) --------------------


@dataclass(frozen=True, slots=True)
class TaskDispatched:
    """A ready-topic record: everything a worker needs to run one attempt."""

    dispatch_id: str
    name: str
    queue: str
    priority: int
    payload: bytes
    content_type: str
    timeout_ms: int | None
    lease_ms: int
    max_attempts: int
    submitted_at_ms: int
    idempotency_key: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    parents: list[str] = field(default_factory=list)  # whose results the worker may fetch


@dataclass(frozen=True, slots=True)
class TaskDeadLettered:
    """A dlq-topic record: the task and why it died."""

    name: str
    queue: str
    payload: bytes
    content_type: str
    error_type: str
    message: str
    traceback: str
    attempts: int


@dataclass(frozen=True, slots=True)
class TaskCancelled:
    """A cancellations-topic record: every worker stops this task."""

    reason: str = ""


# --- dependencies, groups and schedules (issue 15; D19) --------------------------


@dataclass(frozen=True, slots=True)
class DependencyRegistered:
    """Keyed by the parent: ``dependent`` (an entity key) waits for it to settle."""

    dependent: str


@dataclass(frozen=True, slots=True)
class ParentUpdate:
    """Keyed by the dependent: a parent's answer to a registration, or its outcome."""

    parent: str
    outcome: ParentOutcome
    reason: str = ""
    slot: int | None = None  # a group member's place, for the group's count


@dataclass(frozen=True, slots=True)
class GroupCreated:
    """Keyed by ``group:<id>``: a group of ``size`` members (IDs derived from id and slot)."""

    size: int


@dataclass(frozen=True, slots=True)
class ScheduleSpec:
    """When a schedule fires (``cron`` or ``every_ms``) and the task each firing submits."""

    task: TaskSubmitted
    cron: str | None = None
    every_ms: int | None = None
    timezone: str = "UTC"
    start_at_ms: int | None = None
    end_at_ms: int | None = None
    jitter_ms: int = 0
    misfire: MisfirePolicy = MisfirePolicy.RUN_ONCE
    catch_up_max: int = 10
    misfire_grace_ms: int = 60_000


@dataclass(frozen=True, slots=True)
class ScheduleSet:
    """Keyed by ``schedule:<id>``: create the schedule or replace its spec."""

    spec: ScheduleSpec


@dataclass(frozen=True, slots=True)
class ScheduleCommand:
    """Keyed by ``schedule:<id>``: pause, resume or delete it."""

    op: ScheduleOp
    reason: str = ""


EventBody = (
    TaskSubmitted
    | CancelRequested
    | RedriveRequested
    | TaskStarted
    | LeaseRenewed
    | TaskSucceeded
    | TaskFailed
    | TimerFired
    | TaskDispatched
    | TaskDeadLettered
    | TaskCancelled
    | DependencyRegistered
    | ParentUpdate
    | GroupCreated
    | ScheduleSet
    | ScheduleCommand
)

#: Every body type, in the order of the Avro union (append only: never reorder).
BODY_TYPES: tuple[type, ...] = (
    TaskSubmitted,
    CancelRequested,
    RedriveRequested,
    TaskStarted,
    LeaseRenewed,
    TaskSucceeded,
    TaskFailed,
    TimerFired,
    TaskDispatched,
    TaskDeadLettered,
    TaskCancelled,
    # --- issue 15 (D19) ---
    DependencyRegistered,
    ParentUpdate,
    GroupCreated,
    ScheduleSet,
    ScheduleCommand,
)


@dataclass(frozen=True, slots=True)
class Envelope:
    """One fact about one entity. The Kafka key is ``task_id``: the entity's key (a task
    ID, or ``<kind>:<id>`` for the other kinds)."""

    event_id: str  # ULID; unique per fact, the unit of idempotency
    task_id: str
    occurred_at_ms: int  # the writer's clock; the fold uses only this time
    source: str  # "producer:<host>", "worker:<id>", "processor:<id>", "api", ...
    attempt: int  # the attempt this event is about; 0 where none applies
    body: EventBody

    @property
    def type_name(self) -> str:
        return type(self.body).__name__
