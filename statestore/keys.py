"""Byte layouts of the RocksDB keys, so range scans come out in the right order.

* task table: ``task_id`` (ULIDs sort by submission time).
* due index: ``be64(due_at_ms) + task_id`` -> ``kind \\0 attempt \\0 dispatch_id``; a scan
  from the start of a partition's index up to ``be64(now)`` yields every due timer.
* listing index: ``b"q" queue \\0 status \\0 task_id`` -> the task's priority as
  ASCII digits. A scan of one (queue, status) prefix from a cursor yields tasks in
  ID order; "one status over every queue" seeks from queue to queue (there are few
  queues), merging their runs. The order is by immutable task ID, so pages never
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


QUEUES_START = b"q"


def listing_prefix(queue: str, status: str) -> bytes:
    """The prefix of one (queue, status) run."""
    return QUEUES_START + queue.encode() + SEP + status.encode() + SEP


def listing_key(queue: str, status: str, task_id: str) -> bytes:
    return listing_prefix(queue, status) + task_id.encode()


def next_queue_start(queue: str) -> bytes:
    """The first key after every key of ``queue`` (for seeking to the next queue)."""
    return QUEUES_START + queue.encode() + b"\x01"


def parse_queue_listing(key: bytes) -> tuple[str, str, str]:
    """(queue, status, task_id) of a by-queue key (``b"q..."``)."""
    queue, status, task_id = key[1:].split(SEP, 2)
    return queue.decode(), status.decode(), task_id.decode()
