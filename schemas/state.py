"""The state of one task: what the fold of its events produces.

Stored as Avro (``schemas/avro/TaskState.avsc``, same field names and order) in
the processor's RocksDB task table, served by the API and rebuilt by replay.
Encoding is deterministic, so a replayed state compares byte for byte with the
live one.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from taskstream.schemas.events import (
    Backoff,
    Dependent,
    FlowControl,
    ObjectRef,
    ParentFailurePolicy,
    ScheduleSpec,
)
from taskstream.schemas.flowstate import ConcurrencyState, LimitState


class TaskStatus(enum.StrEnum):
    SCHEDULED = "SCHEDULED"  # waiting for its eta or its retry time (see RETRYING)
    WAITING = "WAITING"  # for its parents (depends_on), then at its gates (flow control)
    READY = "READY"  # dispatched to a ready topic, not started
    RUNNING = "RUNNING"  # leased by a worker
    RETRYING = "RETRYING"  # an attempt failed; waiting for the backoff to pass
    SUCCEEDED = "SUCCEEDED"
    DEAD = "DEAD"  # out of attempts, or a non-retryable failure
    CANCELLED = "CANCELLED"
    EXPIRED = "EXPIRED"  # not started by its expires_at_ms; never run (schema v2)

    @property
    def terminal(self) -> bool:
        return self in TERMINAL


#: The statuses a task never leaves (but by a redrive). A StrEnum, so the names as
#: plain strings (a JSON view's ``status``) are members too: ``"DEAD" in TERMINAL``.

#: the first character of an entity's position entry, the first of its
#: ``recent_event_ids`` (docs/decisions.md, D45; processors/fold/position.py)
POSITION_MARK = "@"


def applied_event_ids(ids: list[str]) -> list[str]:
    """``recent_event_ids`` without the position entry (what views show, D45)."""
    return ids[1:] if ids and ids[0][:1] == POSITION_MARK else list(ids)


TERMINAL = frozenset(
    {TaskStatus.SUCCEEDED, TaskStatus.DEAD, TaskStatus.CANCELLED, TaskStatus.EXPIRED}
)


@dataclass(frozen=True, slots=True)
class ErrorInfo:
    error_type: str
    message: str
    traceback: str
    attempt: int
    timed_out: bool = False


@dataclass(frozen=True, slots=True)
class TaskState:
    task_id: str
    name: str
    queue: str
    priority: int
    status: TaskStatus
    payload: bytes
    content_type: str
    payload_digest: str  # sha256 hex of payload, for duplicate/conflict detection
    max_attempts: int
    backoff: Backoff
    timeout_ms: int | None
    lease_ms: int
    submitted_at_ms: int
    updated_at_ms: int
    idempotency_key: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    tags: list[str] = field(default_factory=list)
    depends_on: list[str] = field(default_factory=list)

    attempt: int = 0  # the current attempt; 1 on first dispatch; never goes backwards
    attempt_base: int = 0  # attempts before the last redrive; budget = attempt - attempt_base
    dispatch_id: str | None = None  # the current dispatch; completions must match it
    dispatched_at_ms: int | None = None
    started_at_ms: int | None = None
    worker_id: str | None = None
    due_at_ms: int | None = None  # next timer: eta, retry time or lease expiry
    finished_at_ms: int | None = None

    result: bytes | None = None
    result_content_type: str | None = None
    result_truncated: bool = False
    last_error: ErrorInfo | None = None
    cancel_reason: str | None = None

    retries: int = 0
    redrives: int = 0
    duplicates: int = 0
    conflicts: int = 0
    rejected: int = 0
    # --- dependencies (issue 15, D37) ---
    on_parent_failure: ParentFailurePolicy = ParentFailurePolicy.CANCEL
    waiting_on: list[str] = field(default_factory=list)  # parents not settled yet
    unconfirmed: list[str] = field(default_factory=list)  # parents that never answered
    dependency_deadline_ms: int | None = None  # unconfirmed parents fail the task then
    dependency_checks: int = 0  # registrations sent again so far (the recheck backoff)
    parent_failure: str | None = None  # the first parent that did not succeed, and why
    dependents: list[Dependent] = field(default_factory=list)  # told when this task settles
    recent_event_ids: list[str] = field(default_factory=list)  # newest last, bounded
    # --- flow control (issue 16, D32, D33) ---
    expires_at_ms: int | None = None  # no attempt starts at or after it
    flow: FlowControl | None = None  # the gates every attempt passes before dispatch
    slot_sequence: int | None = None  # the concurrency key's grant held by this attempt
    status_reason: str | None = None  # why it is WAITING, or why it EXPIRED
    progress: float | None = None  # 0..1, the running attempt's last report
    progress_note: str | None = None
    progress_at_ms: int | None = None
    # --- storage (issue 22, D34) ---
    payload_ref: ObjectRef | None = None  # the payload lives in object storage (D34)
    result_ref: ObjectRef | None = None  # the result lives in object storage (D34)


# --- other entity kinds (issue 15, D37): stored under ``<kind>:<id>`` keys -------------


class GroupStatus(enum.StrEnum):
    OPEN = "OPEN"  # not every member has reported
    SUCCEEDED = "SUCCEEDED"  # every member succeeded
    FAILED = "FAILED"  # every member settled, at least one did not succeed


@dataclass(frozen=True, slots=True)
class GroupState:
    """A group entity (``group:<id>``): it counts its members' outcomes, by slot.

    It never holds its members' IDs or results (a member's ID derives from the
    group ID and its slot), so a group of 10,000 is a 1.3 KB bitmap and counters.
    """

    group_id: str
    status: GroupStatus
    size: int | None = None  # None until GroupCreated arrives (a member may come first)
    created_at_ms: int | None = None
    seen: bytes = b""  # bit ``slot`` set: that member reported (the first report counts)
    succeeded: int = 0
    failed: int = 0
    first_failure: str | None = None
    finished_at_ms: int | None = None
    dependents: list[Dependent] = field(default_factory=list)
    rejected: int = 0
    updated_at_ms: int = 0
    recent_event_ids: list[str] = field(default_factory=list)


class ScheduleStatus(enum.StrEnum):
    ACTIVE = "ACTIVE"
    PAUSED = "PAUSED"
    ENDED = "ENDED"  # past its end date, or a cron that never fires again
    DELETED = "DELETED"


@dataclass(frozen=True, slots=True)
class Firing:
    """One firing: the schedule's fire time and the task it submitted."""

    fire_at_ms: int
    task_id: str
    event_id: str = ""  # of the TaskSubmitted it emitted: ``<cause>.fire.<fire_at_ms>``


@dataclass(frozen=True, slots=True)
class ScheduleState:
    """A schedule entity (``schedule:<id>``)."""

    schedule_id: str
    status: ScheduleStatus
    spec: ScheduleSpec
    revision: int
    created_at_ms: int
    updated_at_ms: int
    next_fire_ms: int | None = None  # the schedule's next fire time (before jitter)
    due_at_ms: int | None = None  # its timer: next_fire_ms + the jitter of that time
    fired: int = 0
    skipped: int = 0
    last_firings: list[Firing] = field(default_factory=list)  # newest last, bounded
    reason: str = ""  # why it is paused, ended or deleted
    rejected: int = 0
    recent_event_ids: list[str] = field(default_factory=list)


#: every state record type an entity key may hold (D37, D32)
EntityState = TaskState | GroupState | ScheduleState | LimitState | ConcurrencyState

