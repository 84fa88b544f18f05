"""Hand-made values the compiled codec must get right before it is used.

``catalog.sample_records`` already covers every union branch and enum symbol;
these add what samples do not: multi-byte varints at the 64-bit limits,
negative numbers, strings and bytes longer than 63 bytes (two-byte lengths),
non-ASCII text, maps with several keys in unsorted order, longer arrays.
"""

from __future__ import annotations

from taskstream.schemas.events import (
    Backoff,
    Envelope,
    FlowControl,
    TaskDispatched,
    TaskFailed,
    TaskProgress,
    TaskSubmitted,
    TimerFired,
    TimerKind,
)
from taskstream.schemas.state import ErrorInfo, TaskState, TaskStatus

_LONG_MAX = 2**63 - 1
_LONG_MIN = -(2**63)
_HEADERS = {"zz": "last", "a": "first", "ü": "ω" * 40, "": ""}
_TEXT = "caná ry ✓ " * 10  # 130+ bytes of UTF-8


def canary_envelopes() -> list[Envelope]:
    submitted = TaskSubmitted(
        name=_TEXT,
        queue="q-1",
        priority=-65,
        payload=bytes(range(256)) * 2,
        content_type="application/octet-stream",
        eta_ms=_LONG_MAX,
        max_attempts=2**31 - 1,
        backoff=Backoff(initial_ms=_LONG_MIN, multiplier=-0.0, max_ms=64, jitter=1e-300),
        timeout_ms=-64,
        lease_ms=63,
        idempotency_key="k\u00e9y",
        headers=_HEADERS,
        tags=["x", "", _TEXT],
        depends_on=["01ARZ3NDEKTSV4RRFFQ69G5FAV"] * 70,
        expires_at_ms=_LONG_MIN,
        flow=FlowControl(_TEXT, "", "k" * 70, -(2**31)),
    )
    dispatched = TaskDispatched(
        "d" * 64, "n", "q", 9, b"", "c", None, 128, 1, _LONG_MIN, None, dict(_HEADERS),
        ["group:" + _TEXT, ""], _LONG_MAX, _TEXT, -(2**40),
    )
    progress = TaskProgress("d", "w" * 64, -0.0, _TEXT)
    failed = TaskFailed("d", "w", "E", "m" * 200, "tb\n" * 50, False, True, -(2**40))
    return [
        Envelope("e" * 26, "t" * 26, _LONG_MAX, "s" * 200, 2**31 - 1, submitted),
        Envelope("", "", _LONG_MIN, "", -(2**31), dispatched),
        Envelope("01ARZ3NDEKTSV4RRFFQ69G5FAV", "t", -1, "w", -1, failed),
        Envelope("e", "t", 8191, "p", 8192, TimerFired(TimerKind.LEASE_EXPIRED, 2**35, "d")),
        Envelope("e", "limit:x:" + _TEXT, 1, "p", 3, progress),
    ]


def canary_states() -> list[TaskState]:
    full = TaskState(
        task_id="01ARZ3NDEKTSV4RRFFQ69G5FAV",
        name=_TEXT,
        queue="default",
        priority=-1,
        status=TaskStatus.CANCELLED,
        payload=b"\x00\xff" * 100,
        content_type="application/json",
        payload_digest="ab" * 32,
        max_attempts=1000,
        backoff=Backoff(1, 1.5, _LONG_MAX, 0.25),
        timeout_ms=_LONG_MIN,
        lease_ms=30_000,
        submitted_at_ms=1_700_000_000_000,
        updated_at_ms=_LONG_MAX,
        idempotency_key=_TEXT,
        headers=_HEADERS,
        tags=["b", "a"],
        depends_on=["x"] * 65,
        attempt=3,
        attempt_base=-3,
        dispatch_id="d" * 100,
        dispatched_at_ms=-(2**62),
        started_at_ms=0,
        worker_id="ω",
        due_at_ms=64,
        finished_at_ms=-65,
        result=b"r" * 64,
        result_content_type="",
        result_truncated=True,
        last_error=ErrorInfo("E" * 70, "m", "", -(2**31), True),
        cancel_reason="stop",
        retries=2**31 - 1,
        redrives=1,
        duplicates=2,
        conflicts=3,
        rejected=4,
        recent_event_ids=[str(i) for i in range(70)],
        expires_at_ms=-(2**33),
        flow=FlowControl(None, _TEXT, None, 2**31 - 1),
        slot_sequence=_LONG_MAX,
        status_reason=_TEXT,
        progress=1e-300,
        progress_note="",
        progress_at_ms=8192,
    )
    minimal = TaskState(
        "t", "n", "q", 0, TaskStatus.SCHEDULED, b"", "c", "d", 1, Backoff(), None, 1, 0, 0
    )
    return [full, minimal]
