"""TaskView: a TaskState as the HTTP API renders it (JSON-facing, pydantic).

Every TaskState field appears under its own name, with two renderings:

* bytes (``payload``, ``result``): when the content type is JSON
  (``application/json`` or ``*+json``) and the bytes parse, the JSON value
  appears under the field's own name; otherwise the bytes appear base64-encoded
  under ``payload_b64`` / ``result_b64`` and the plain field is null;
* times: ``*_at_ms`` stays integer milliseconds, and a sibling without the
  ``_ms`` suffix (``submitted_at``, ...) carries the ISO 8601 UTC string.
"""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from taskstream.schemas.state import ErrorInfo, TaskState


def is_json(content_type: str | None) -> bool:
    if not content_type:
        return False
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or media.endswith("+json")


def render_bytes(data: bytes | None, content_type: str | None) -> tuple[Any, str | None]:
    """(JSON value, None) for JSON content that parses, else (None, base64 or None)."""
    if data is None:
        return None, None
    if is_json(content_type):
        try:
            return json.loads(data), None
        except ValueError:  # truncated result, or a mislabelled payload
            pass
    return None, base64.b64encode(data).decode("ascii")


def iso(ms: int | None) -> str | None:
    if ms is None:
        return None
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")


class BackoffView(BaseModel):
    model_config = ConfigDict(frozen=True)

    initial_ms: int
    multiplier: float
    max_ms: int
    jitter: float


class FlowView(BaseModel):
    """A task's gates: its rate limit (and key) and its concurrency key."""

    model_config = ConfigDict(frozen=True)

    rate_limit: str | None
    rate_key: str | None
    concurrency_key: str | None
    max_concurrency: int


class ErrorView(BaseModel):
    model_config = ConfigDict(frozen=True)

    error_type: str
    message: str
    traceback: str
    attempt: int
    timed_out: bool

    @classmethod
    def from_error(cls, error: ErrorInfo) -> ErrorView:
        return cls(
            error_type=error.error_type,
            message=error.message,
            traceback=error.traceback,
            attempt=error.attempt,
            timed_out=error.timed_out,
        )


#: TaskView fields that are renderings of a TaskState field, not fields of their own.
RENDERED = {
    "payload_b64": "payload",
    "result_b64": "result",
    "submitted_at": "submitted_at_ms",
    "updated_at": "updated_at_ms",
    "dispatched_at": "dispatched_at_ms",
    "started_at": "started_at_ms",
    "due_at": "due_at_ms",
    "finished_at": "finished_at_ms",
    "expires_at": "expires_at_ms",
    "progress_at": "progress_at_ms",
}


class DependentView(BaseModel):
    """An entity told when this task settles (``slot``: its place in a group)."""

    model_config = ConfigDict(frozen=True)

    key: str
    slot: int | None = None


class TaskView(BaseModel):
    """One task as ``GET /tasks/{id}`` returns it."""

    model_config = ConfigDict(frozen=True)

    task_id: str
    name: str
    queue: str
    priority: int
    status: str
    payload: Any = None
    payload_b64: str | None = None
    content_type: str
    payload_digest: str
    max_attempts: int
    backoff: BackoffView
    timeout_ms: int | None
    lease_ms: int
    submitted_at_ms: int
    submitted_at: str
    updated_at_ms: int
    updated_at: str
    idempotency_key: str | None
    headers: dict[str, str]
    tags: list[str]
    depends_on: list[str]
    attempt: int
    attempt_base: int
    dispatch_id: str | None
    dispatched_at_ms: int | None
    dispatched_at: str | None
    started_at_ms: int | None
    started_at: str | None
    worker_id: str | None
    due_at_ms: int | None
    due_at: str | None
    finished_at_ms: int | None
    finished_at: str | None
    result: Any = None
    result_b64: str | None = None
    result_content_type: str | None
    result_truncated: bool
    last_error: ErrorView | None
    cancel_reason: str | None
    retries: int
    redrives: int
    duplicates: int
    conflicts: int
    rejected: int
    on_parent_failure: str
    waiting_on: list[str] = Field(
        default_factory=list, description="WAITING: the parents that have not settled yet")
    unconfirmed: list[str] = Field(
        default_factory=list, description="parents that have not answered yet (unknown IDs "
        "fail the task at dependency_deadline)")
    dependency_deadline_ms: int | None = None
    dependency_checks: int = 0
    parent_failure: str | None = None
    dependents: list[DependentView] = Field(default_factory=list)
    recent_event_ids: list[str]
    expires_at_ms: int | None = None
    expires_at: str | None = None
    flow: FlowView | None = None
    slot_sequence: int | None = None  # the fencing token of the attempt's concurrency slot
    status_reason: str | None = None  # why WAITING, or why EXPIRED
    progress: float | None = None
    progress_note: str | None = None
    progress_at_ms: int | None = None
    progress_at: str | None = None

    @classmethod
    def from_state(cls, s: TaskState) -> TaskView:
        payload, payload_b64 = render_bytes(s.payload, s.content_type)
        result, result_b64 = render_bytes(s.result, s.result_content_type)
        b = s.backoff
        return cls(
            task_id=s.task_id,
            name=s.name,
            queue=s.queue,
            priority=s.priority,
            status=s.status.value,
            payload=payload,
            payload_b64=payload_b64,
            content_type=s.content_type,
            payload_digest=s.payload_digest,
            max_attempts=s.max_attempts,
            backoff=BackoffView(
                initial_ms=b.initial_ms, multiplier=b.multiplier, max_ms=b.max_ms, jitter=b.jitter
            ),
            timeout_ms=s.timeout_ms,
            lease_ms=s.lease_ms,
            submitted_at_ms=s.submitted_at_ms,
            submitted_at=iso(s.submitted_at_ms) or "",
            updated_at_ms=s.updated_at_ms,
            updated_at=iso(s.updated_at_ms) or "",
            idempotency_key=s.idempotency_key,
            headers=dict(s.headers),
            tags=list(s.tags),
            depends_on=list(s.depends_on),
            attempt=s.attempt,
            attempt_base=s.attempt_base,
            dispatch_id=s.dispatch_id,
            dispatched_at_ms=s.dispatched_at_ms,
            dispatched_at=iso(s.dispatched_at_ms),
            started_at_ms=s.started_at_ms,
            started_at=iso(s.started_at_ms),
            worker_id=s.worker_id,
            due_at_ms=s.due_at_ms,
            due_at=iso(s.due_at_ms),
            finished_at_ms=s.finished_at_ms,
            finished_at=iso(s.finished_at_ms),
            result=result,
            result_b64=result_b64,
            result_content_type=s.result_content_type,
            result_truncated=s.result_truncated,
            last_error=None if s.last_error is None else ErrorView.from_error(s.last_error),
            cancel_reason=s.cancel_reason,
            retries=s.retries,
            redrives=s.redrives,
            duplicates=s.duplicates,
            conflicts=s.conflicts,
            rejected=s.rejected,
            on_parent_failure=s.on_parent_failure.value.lower(),
            waiting_on=list(s.waiting_on),
            unconfirmed=list(s.unconfirmed),
            dependency_deadline_ms=s.dependency_deadline_ms,
            dependency_checks=s.dependency_checks,
            parent_failure=s.parent_failure,
            dependents=[DependentView(key=d.key, slot=d.slot) for d in s.dependents],
            recent_event_ids=list(s.recent_event_ids),
            expires_at_ms=s.expires_at_ms,
            expires_at=iso(s.expires_at_ms),
            flow=None if s.flow is None else FlowView(
                rate_limit=s.flow.rate_limit, rate_key=s.flow.rate_key,
                concurrency_key=s.flow.concurrency_key, max_concurrency=s.flow.max_concurrency),
            slot_sequence=s.slot_sequence,
            status_reason=s.status_reason,
            progress=s.progress,
            progress_note=s.progress_note,
            progress_at_ms=s.progress_at_ms,
            progress_at=iso(s.progress_at_ms),
        )
