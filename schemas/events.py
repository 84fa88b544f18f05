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
  stays pure), and the events one entity sends another: a dependency's
  registration and its answers, a schedule's firings (D37), the flow-control
  requests, grants and releases of rate limits and concurrency keys (D32): a
  cross-partition step is always an event keyed by the entity that acts on it next;
* workers also write ``TaskProgress``; clients ``LimitSet``, ``ScheduleSet``,
  ``ScheduleCommand`` and ``GroupCreated``.

``Envelope.task_id`` is the record key of the entity an event is about: a task
ID, or ``<kind>:<id>`` (``schedule:nightly``, ``group:01H...``, ``limit:emails``,
``ckey:account-7``: schemas/entity_keys.py) for the other entity kinds; the name
stays for wire compatibility.

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
    # --- flow control (issue 16, D32, D33) ---
    EXPIRY_DUE = "EXPIRY_DUE"  # a task not started yet reached its ``expires_at_ms``
    WAIT_RETRY_DUE = "WAIT_RETRY_DUE"  # a WAITING task asks a full limit or key again
    TOKEN_DUE = "TOKEN_DUE"  # a rate-limit bucket with waiting requests has a token again
    # --- storage (issue 22, D35) ---
    RETENTION_DUE = "RETENTION_DUE"  # a finished task's retention has passed (D35)


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


@dataclass(frozen=True, slots=True)
class FlowControl:
    """A task's gates (issue 16, docs/flow-control.md): what each attempt waits for before it
    is dispatched. A concurrency key first (a slot of at most ``max_concurrency``
    holders), then a token of the named rate limit (of the bucket of ``rate_key``)."""

    rate_limit: str | None = None
    rate_key: str | None = None
    concurrency_key: str | None = None
    max_concurrency: int = 1


@dataclass(frozen=True, slots=True)
class ObjectRef:
    """A payload or result kept in S3-compatible storage instead of the record (D34).

    ``sha256`` is the hex digest of the object's bytes, checked on every read;
    ``key_id`` names the encryption key of an encrypted object.
    """

    bucket: str
    key: str
    size: int
    sha256: str
    key_id: str | None = None


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
    expires_at_ms: int | None = None  # no attempt starts at or after this time (EXPIRED)
    flow: FlowControl | None = None  # rate limit and concurrency key, if any
    payload_ref: ObjectRef | None = None  # the payload is this object (payload is b"")


@dataclass(frozen=True, slots=True)
class CancelRequested:
    reason: str = ""


@dataclass(frozen=True, slots=True)
class RedriveRequested:
    reason: str = ""
    max_attempts: int | None = None  # fresh budget; None = the original max_attempts


@dataclass(frozen=True, slots=True)
class PurgeRequested:
    """An operator removes a finished task from the state now (D35)."""

    reason: str = ""


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
    result_ref: ObjectRef | None = None  # the result is this object (result is b"")


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
    expires_at_ms: int | None = None  # a worker does not start the attempt at or after it
    concurrency_key: str | None = None
    fencing_token: int | None = None  # the key's grant sequence: grows with every holder
    payload_ref: ObjectRef | None = None


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
    payload_ref: ObjectRef | None = None


@dataclass(frozen=True, slots=True)
class TaskCancelled:
    """A cancellations-topic record: every worker stops this task."""

    reason: str = ""


# --- dependencies, groups and schedules (issue 15; D37) --------------------------


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


# --- flow control: rate limits, concurrency keys, progress (issue 16; schema v2) ------
#
# ``Envelope.task_id`` is the key of the entity an event is about (a task ID, or
# ``limit:<name>[:<key>]`` / ``ckey:<key>``, schemas/entity_keys.py); ``Envelope.attempt``
# is the attempt of the task a request or a grant is for. Requests and releases are
# emitted by a task's fold, grants and deferrals by the limit's or key's fold; every
# emitted event's id is derived from its cause (docs/flow-control.md).


@dataclass(frozen=True, slots=True)
class LimitSet:
    """client -> ``limit:<name>``: the limit allows ``count`` tokens per ``period_ms``, and a
    bucket holds at most ``burst`` of them (tokens saved while idle)."""

    name: str
    count: int
    period_ms: int
    burst: int


@dataclass(frozen=True, slots=True)
class RateRequested:
    """task -> ``limit:<name>``: attempt ``Envelope.attempt`` of ``task_id`` asks for a token.
    For a keyed limit the definition forwards it to ``limit:<name>:<key>`` with its rate
    filled in (``count`` > 0); a request from a task carries zeros there."""

    task_id: str
    limit: str
    key: str | None
    submitted_at_ms: int  # the waiting order: submit time, then task ID
    count: int = 0
    period_ms: int = 0
    burst: int = 0


@dataclass(frozen=True, slots=True)
class RateWithdrawn:
    """task -> ``limit:<name>`` (forwarded like a request): the attempt no longer waits."""

    task_id: str
    limit: str
    key: str | None


@dataclass(frozen=True, slots=True)
class RateGranted:
    """bucket -> task: attempt ``Envelope.attempt`` has its token (at the event's time)."""

    limit: str
    key: str | None


@dataclass(frozen=True, slots=True)
class RateRefused:
    """``limit:<name>`` -> task: no such limit is set; the attempt fails for good."""

    limit: str
    reason: str


@dataclass(frozen=True, slots=True)
class SlotRequested:
    """task -> ``ckey:<key>``: attempt ``Envelope.attempt`` of ``task_id`` asks for a slot."""

    task_id: str
    key: str
    max_concurrency: int
    submitted_at_ms: int


@dataclass(frozen=True, slots=True)
class SlotReleased:
    """task -> ``ckey:<key>``: the attempt holds (or waits for) the slot no longer.

    ``sequence`` names the hold released (its fencing token); None releases whatever the
    attempt holds or waits for (it ended before its grant arrived)."""

    task_id: str
    key: str
    reason: str = ""
    sequence: int | None = None


@dataclass(frozen=True, slots=True)
class SlotGranted:
    """``ckey:<key>`` -> task: the attempt holds a slot; ``sequence`` is its fencing token."""

    key: str
    sequence: int


@dataclass(frozen=True, slots=True)
class WaitDeferred:
    """limit or key -> task: its waiting list is full; ask again at ``retry_at_ms``."""

    gate: str  # "rate" or "concurrency"
    retry_at_ms: int
    reason: str = ""


@dataclass(frozen=True, slots=True)
class TaskProgress:
    """worker -> task: how far the running attempt has come (throttled by the worker)."""

    dispatch_id: str
    worker_id: str
    fraction: float  # 0..1
    note: str = ""


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
    | LimitSet
    | RateRequested
    | RateWithdrawn
    | RateGranted
    | RateRefused
    | SlotRequested
    | SlotReleased
    | SlotGranted
    | WaitDeferred
    | TaskProgress
    | PurgeRequested
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
    # --- issue 15 (D37) ---
    DependencyRegistered,
    ParentUpdate,
    GroupCreated,
    ScheduleSet,
    ScheduleCommand,
    # --- flow control (issue 16; schema v2) ---
    LimitSet,
    RateRequested,
    RateWithdrawn,
    RateGranted,
    RateRefused,
    SlotRequested,
    SlotReleased,
    SlotGranted,
    WaitDeferred,
    TaskProgress,
    # --- storage (issue 22, D35) ---
    PurgeRequested,
)

#: the flow-control bodies (issue 16): the events of limits and keys, and progress
FLOW_BODY_TYPES: tuple[type, ...] = BODY_TYPES[
    BODY_TYPES.index(LimitSet):BODY_TYPES.index(TaskProgress) + 1]


@dataclass(frozen=True, slots=True)
class Envelope:
    """One fact about one entity. The Kafka key is ``task_id``.

    ``task_id`` is the key of the entity the event is about: a task ID, or another
    kind's ``<kind>:<id>`` key (schemas/entity_keys.py). The name stays for wire
    compatibility.
    """

    event_id: str  # ULID, or derived from its cause's id; the unit of idempotency
    task_id: str  # the entity key
    occurred_at_ms: int  # the writer's clock; the fold uses only this time
    source: str  # "producer:<host>", "worker:<id>", "processor:<id>", "api", ...
    attempt: int  # the attempt this event is about; 0 where none applies
    body: EventBody

    @property
    def type_name(self) -> str:
        return type(self.body).__name__
