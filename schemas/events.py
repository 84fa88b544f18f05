"""The events of a task's life, as plain immutable Python values.

This module is the wire contract in Python form. Each class maps one to one onto
an Avro record in ``schemas/avro/`` (same field names, same order); the serde
module turns an :class:`Envelope` into bytes and back. Times are integer
milliseconds since the Unix epoch (UTC); durations are integer milliseconds.

Who writes what:

* clients (producer SDK, HTTP API, CLI): ``TaskSubmitted``, ``CancelRequested``,
  ``RedriveRequested``;
* workers: ``TaskStarted``, ``LeaseRenewed``, ``TaskSucceeded``, ``TaskFailed``;
* processors: ``TimerFired`` (the only processor event written to the events
  topic: it carries the wall clock into the log so the fold stays pure).

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
    RETENTION_DUE = "RETENTION_DUE"  # a finished task's retention has passed (D35)


@dataclass(frozen=True, slots=True)
class Backoff:
    """Retry delay for attempt n: min(initial * multiplier**(n-1), max), +/- jitter."""

    initial_ms: int = 1_000
    multiplier: float = 2.0
    max_ms: int = 300_000
    jitter: float = 0.1  # fraction of the delay, 0..1; derived from (task_id, attempt)


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
    depends_on: list[str] = field(default_factory=list)  # stored, not yet acted on
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
    PurgeRequested,
)


@dataclass(frozen=True, slots=True)
class Envelope:
    """One fact about one task. The Kafka key is ``task_id``."""

    event_id: str  # ULID; unique per fact, the unit of idempotency
    task_id: str
    occurred_at_ms: int  # the writer's clock; the fold uses only this time
    source: str  # "producer:<host>", "worker:<id>", "processor:<id>", "api", ...
    attempt: int  # the attempt this event is about; 0 where none applies
    body: EventBody

    @property
    def type_name(self) -> str:
        return type(self.body).__name__
