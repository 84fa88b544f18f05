"""The state of one task: what the fold of its events produces.

Stored as Avro (``schemas/avro/TaskState.avsc``, same field names and order) in
the processor's RocksDB task table, served by the API and rebuilt by replay.
Encoding is deterministic, so a replayed state compares byte for byte with the
live one.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from taskstream.schemas.events import Backoff, FlowControl


class TaskStatus(enum.StrEnum):
    SCHEDULED = "SCHEDULED"  # waiting for its eta or its retry time (see RETRYING)
    WAITING = "WAITING"  # waiting for dependencies (reserved; not reached yet)
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
    recent_event_ids: list[str] = field(default_factory=list)  # newest last, bounded

    # --- flow control (issue 16; schema v2) ---
    expires_at_ms: int | None = None  # no attempt starts at or after it
    flow: FlowControl | None = None  # the gates every attempt passes before dispatch
    slot_sequence: int | None = None  # the concurrency key's grant held by this attempt
    status_reason: str | None = None  # why it is WAITING, or why it EXPIRED
    progress: float | None = None  # 0..1, the running attempt's last report
    progress_note: str | None = None
    progress_at_ms: int | None = None

