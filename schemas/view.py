"""TaskView: a TaskState as the HTTP API renders it (JSON-facing, pydantic).

Every TaskState field appears under its own name, with two renderings:

* bytes (``payload``, ``result``): when the content type is JSON
  (``application/json`` or ``*+json``) and the bytes parse, the JSON value
  appears under the field's own name; otherwise the bytes appear base64-encoded
  under ``payload_b64`` / ``result_b64`` and the plain field is null;
* times: ``*_at_ms`` stays integer milliseconds, and a sibling without the
  ``_ms`` suffix (``submitted_at``, ...) carries the ISO 8601 UTC string.

Sealed values (D27): a payload, result or error text sealed for the task is
opened when the renderer holds the payload keyring (:class:`Opener`), and then
rendered like any other. Otherwise it stays sealed: the bytes base64-encoded
under ``payload_b64`` / ``result_b64``, the texts as they are, and ``sealed``
names each such field, so a client holding the key opens them itself
(:func:`open_view`). ``dispatch_id`` is shown to admins only (D26): a worker's
outcome must name it, and nobody else needs it.
"""

from __future__ import annotations

import base64
import binascii
import json
from datetime import UTC, datetime
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, Field

from taskstream.schemas.events import ObjectRef
from taskstream.schemas.state import ErrorInfo, TaskState, applied_event_ids
from taskstream.security.errors import SealError
from taskstream.security.sealing import is_sealed, is_sealed_text

#: the TaskView fields that may be sealed (dotted: inside ``last_error``)
SEALABLE = ("payload", "result", "last_error.message", "last_error.traceback")


class Opener(Protocol):
    """What opens sealed values (a :class:`~taskstream.security.sealing.Sealer`)."""

    def open(self, sealed: bytes, owner: str) -> bytes: ...
    def open_text(self, text: str, owner: str) -> str: ...


def is_json(content_type: str | None) -> bool:
    if not content_type:
        return False
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or media.endswith("+json")


def render_bytes(data: bytes | None, content_type: str | None, sealed: bool = False
                 ) -> tuple[Any, str | None]:
    """(JSON value, None) for JSON content that parses, else (None, base64 or None);
    sealed bytes are always base64."""
    if data is None:
        return None, None
    if is_json(content_type) and not sealed:
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
    def from_error(cls, error: ErrorInfo, opener: Opener | None = None, owner: str = ""
                   ) -> ErrorView:
        return cls(
            error_type=error.error_type,
            message=_open_text(error.message, opener, owner),
            traceback=_open_text(error.traceback, opener, owner),
            attempt=error.attempt,
            timed_out=error.timed_out,
        )


class ObjectRefView(BaseModel):
    """Where an offloaded payload or result lives (D34); fetch it with GET .../result."""

    model_config = ConfigDict(frozen=True)

    bucket: str
    key: str
    size: int
    sha256: str
    key_id: str | None

    @classmethod
    def from_ref(cls, ref: ObjectRef | None) -> ObjectRefView | None:
        if ref is None:
            return None
        return cls(bucket=ref.bucket, key=ref.key, size=ref.size, sha256=ref.sha256,
                   key_id=ref.key_id)
def _open_bytes(data: bytes | None, opener: Opener | None, owner: str) -> bytes | None:
    if opener is None or not is_sealed(data):
        return data
    assert data is not None
    try:
        return opener.open(data, owner)
    except SealError:
        return data  # shown sealed; ``sealed`` says so


def _open_text(text: str, opener: Opener | None, owner: str) -> str:
    if opener is None or not is_sealed_text(text):
        return text
    try:
        return opener.open_text(text, owner)
    except SealError:
        return text


def _sealed_fields(payload: bytes, result: bytes | None, error: ErrorView | None) -> list[str]:
    found = []
    if is_sealed(payload):
        found.append("payload")
    if is_sealed(result):
        found.append("result")
    if error is not None:
        found += [f"last_error.{name}" for name in ("message", "traceback")
                  if is_sealed_text(getattr(error, name))]
    return found


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


#: TaskView fields about how the view was rendered, not renderings of a state field
VIEW_ONLY = frozenset({"sealed"})


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
    payload_ref: ObjectRefView | None = None
    result_ref: ObjectRefView | None = None
    sealed: list[str] = []

    @classmethod
    def from_state(cls, s: TaskState, opener: Opener | None = None) -> TaskView:
        """The view of ``s``; sealed values opened with ``opener`` when given."""
        payload_bytes = _open_bytes(s.payload, opener, s.task_id)
        result_bytes = _open_bytes(s.result, opener, s.task_id)
        error = (None if s.last_error is None
                 else ErrorView.from_error(s.last_error, opener, s.task_id))
        sealed = _sealed_fields(payload_bytes or b"", result_bytes, error)
        payload, payload_b64 = render_bytes(payload_bytes, s.content_type, "payload" in sealed)
        result, result_b64 = render_bytes(result_bytes, s.result_content_type,
                                          "result" in sealed)
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
            last_error=error,
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
            recent_event_ids=applied_event_ids(s.recent_event_ids),
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
            payload_ref=ObjectRefView.from_ref(s.payload_ref),
            result_ref=ObjectRefView.from_ref(s.result_ref),
            sealed=sealed,
        )


def open_view(view: dict[str, Any], opener: Opener) -> dict[str, Any]:
    """A TaskView's JSON with the fields ``sealed`` names opened (a client holding the
    payload keyring); a value that does not open raises :class:`SealError`."""
    sealed = view.get("sealed") or []
    if not sealed:
        return view
    out = dict(view)
    owner = str(view.get("task_id"))
    for name, ctype in (("payload", view.get("content_type")),
                        ("result", view.get("result_content_type"))):
        if name in sealed and isinstance(view.get(f"{name}_b64"), str):
            try:
                blob = base64.b64decode(view[f"{name}_b64"])
            except (binascii.Error, ValueError):
                raise SealError(f"{name}_b64 is not base64") from None
            out[name], out[f"{name}_b64"] = render_bytes(opener.open(blob, owner), ctype)
    error = view.get("last_error")
    if isinstance(error, dict):
        out["last_error"] = {
            **error, **{k: opener.open_text(str(error[k]), owner)
                        for k in ("message", "traceback") if f"last_error.{k}" in sealed}}
    out["sealed"] = []
    return out
