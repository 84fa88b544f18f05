"""Byte layouts of the RocksDB keys, so range scans come out in the right order.

* task table: ``task_id`` (ULIDs sort by submission time).
* due index: ``be64(due_at_ms) + task_id`` -> ``kind \\0 attempt \\0 dispatch_id``; a scan
  from the start of a partition's index up to ``be64(now)`` yields every due timer.
* listing index, two families, value = the task's priority as ASCII digits:
  ``b"q" queue \\0 status \\0 task_id`` (by queue and state) and
  ``b"s" status \\0 task_id`` (by state, every queue). A scan of one prefix from a
  cursor yields tasks in ID order. The order is by immutable task ID, so pages never
  skip or repeat a task while states change.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from taskstream.schemas.events import TimerKind

_BE64 = struct.Struct(">Q")
SEP = b"\x00"


@dataclass(frozen=True, slots=True)
class DueEntry:
    due_at_ms: int
    task_id: str
    kind: TimerKind
    attempt: int
    dispatch_id: str


def due_key(due_at_ms: int, task_id: str) -> bytes:
    return _BE64.pack(max(due_at_ms, 0)) + task_id.encode()


def due_upper_bound(now_ms: int) -> bytes:
    """Every key of a timer due at or before ``now_ms`` sorts below this one."""
    return _BE64.pack(now_ms + 1)


def due_value(kind: TimerKind, attempt: int, dispatch_id: str) -> bytes:
    return SEP.join((kind.value.encode(), str(attempt).encode(), dispatch_id.encode()))


def parse_due(key: bytes, value: bytes) -> DueEntry:
    (due_at_ms,) = _BE64.unpack_from(key)
    kind, attempt, dispatch_id = value.split(SEP)
    return DueEntry(
        due_at_ms=due_at_ms,
        task_id=key[8:].decode(),
        kind=TimerKind(kind.decode()),
        attempt=int(attempt),
        dispatch_id=dispatch_id.decode(),
    )


def listing_prefix(queue: str | None, status: str) -> bytes:
    """The prefix of one (queue, status) run, or of one status over all queues."""
    if queue is None:
        return b"s" + status.encode() + SEP
    return b"q" + queue.encode() + SEP + status.encode() + SEP


def listing_keys(queue: str, status: str, task_id: str) -> tuple[bytes, bytes]:
    """Both index keys of one task."""
    tid = task_id.encode()
    return listing_prefix(queue, status) + tid, listing_prefix(None, status) + tid


def parse_queue_listing(key: bytes) -> tuple[str, str, str]:
    """(queue, status, task_id) of a by-queue key (``b"q..."``)."""
    queue, status, task_id = key[1:].split(SEP, 2)
    return queue.decode(), status.decode(), task_id.decode()
