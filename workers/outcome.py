"""How an attempt ended, as plain data, and the conversions around a handler call.

These functions are pure and run in the worker process or in a process-pool
child alike (every value here pickles).
"""

from __future__ import annotations

import json
import traceback as tb
from dataclasses import dataclass, replace
from typing import Any

from taskstream.schemas.events import ObjectRef, TaskDispatched
from taskstream.security.errors import SealError
from taskstream.security.sealing import Sealer, is_sealed, sealed_key_id
from taskstream.workers.errors import NonRetryableError, Retry

JSON = "application/json"
OCTETS = "application/octet-stream"
MAX_TRACEBACK_CHARS = 16_000


@dataclass(frozen=True, slots=True)
class Success:
    result: bytes
    content_type: str = JSON
    result_ref: ObjectRef | None = None  # the result is in object storage (D34)


@dataclass(frozen=True, slots=True)
class Failure:
    error_type: str
    message: str
    traceback: str = ""
    retryable: bool = True
    timed_out: bool = False
    retry_after_ms: int | None = None


Outcome = Success | Failure


def decode_payload(payload: bytes | bytearray, content_type: str) -> Any:
    """JSON payloads become Python values; anything else stays bytes.

    Raises ValueError when a JSON payload is not JSON.
    """
    if content_type.split(";", 1)[0].strip().lower() == JSON:
        if not payload:
            return None
        try:  # UTF-8 (what the SDK writes) without json.loads' encoding detection
            return json.loads(payload.decode("utf-8"))
        except ValueError:  # UTF-16/32, a BOM, or not JSON: the general path decides
            return json.loads(payload)
    return payload


#: ``json.dumps(value, separators=(",", ":"))`` without building an encoder per call
_RESULT_JSON = json.JSONEncoder(separators=(",", ":"))
_NONE = Success(b"null", JSON)


def open_payload(dispatched: TaskDispatched, task_id: str, sealer: Sealer | None
                 ) -> TaskDispatched | Failure:
    """The ready record with its payload opened when it is sealed (D27), or the failure
    that says why it cannot be (not retryable: another attempt would not open it either;
    fix the keyring and redrive)."""
    if not is_sealed(dispatched.payload):
        return dispatched
    opened = open_sealed(dispatched.payload, task_id, sealer)
    if isinstance(opened, Failure):
        return opened
    return replace(dispatched, payload=bytes(opened))  # bytes already: no copy


def open_sealed(payload: bytes | bytearray, task_id: str, sealer: Sealer | None
                ) -> bytes | bytearray | Failure:
    """``payload`` opened when it is sealed (an inline payload, or one fetched from object
    storage, D34), or the non-retryable failure that says why it cannot be."""
    if not is_sealed(bytes(payload[:4])):
        return payload
    if sealer is None:
        return Failure("PayloadSealed",
                       f"the payload is sealed with key {sealed_key_id(bytes(payload[:64]))!r} "
                       "and this worker has no payload keyring (TASKSTREAM_PAYLOAD_KEYS or "
                       "TASKSTREAM_PAYLOAD_KEYRING_FILE); configure it and redrive the task",
                       retryable=False)
    try:
        return sealer.open(payload if isinstance(payload, bytes) else bytes(payload), task_id)
    except SealError as exc:
        return Failure("PayloadSealError", str(exc), retryable=False)


def encode_result(value: Any) -> Outcome:
    """Bytes go out as-is (octet-stream); anything else as JSON."""
    if value is None:  # most handlers return nothing
        return _NONE
    if isinstance(value, bytes | bytearray | memoryview):
        return Success(bytes(value), OCTETS)
    try:
        return Success(_RESULT_JSON.encode(value).encode(), JSON)
    except (TypeError, ValueError) as exc:
        return Failure(
            "ResultEncodeError",
            f"the handler returned a {type(value).__name__}, which is not JSON: {exc}; "
            "return JSON-able values or bytes",
            retryable=False,
        )


def _traceback_of(exc: BaseException) -> str:
    text = "".join(tb.format_exception(exc))
    return text if len(text) <= MAX_TRACEBACK_CHARS else "...\n" + text[-MAX_TRACEBACK_CHARS:]


def failure_from_exception(exc: BaseException) -> Failure:
    """Retry -> retryable with retry_after; NonRetryableError -> not retryable; else retryable."""
    message = str(exc) or type(exc).__name__
    if isinstance(exc, Retry):
        return Failure("Retry", message, _traceback_of(exc), retryable=True,
                       retry_after_ms=exc.retry_after_ms)
    retryable = not isinstance(exc, NonRetryableError)
    return Failure(type(exc).__name__, message, _traceback_of(exc), retryable=retryable)


def timeout_failure(timeout_s: float) -> Failure:
    return Failure("TaskTimeout", f"the handler ran longer than its timeout of {timeout_s:g} s",
                   retryable=True, timed_out=True)


def cancelled_failure() -> Failure:
    return Failure("Cancelled", "the task was cancelled while running", retryable=False)


def unknown_task_failure(name: str, known: list[str]) -> Failure:
    shown = ", ".join(known[:20]) + (" ..." if len(known) > 20 else "")
    return Failure(
        "UnknownTask",
        f"no handler is registered for task {name!r} on this worker "
        f"(registered: {shown or 'none'}); "
        "deploy a worker that registers it, then redrive the task",
        retryable=False,
    )
