"""Identifiers: task IDs and event IDs.

All IDs are 26-character Crockford base32 strings (the ULID text format), so
every ID looks alike, sorts as text and fits in the same columns.

* :func:`new_task_id` and :func:`new_event_id` are ULIDs: 48 bits of Unix time in
  milliseconds then 80 random bits. They sort by creation time (IDs made in the
  same millisecond are in random order among themselves).
* :func:`derived_task_id` is *not* time ordered: it is the first 128 bits of
  ``sha256("taskstream.task-id.v1" | len(name) | ":" | name | key)`` written in
  the same format. The same ``(name, idempotency_key)`` always gives the same ID,
  so duplicate submissions share a Kafka key, hence a partition, hence one fold,
  where the lifecycle records the second one as a duplicate (DESIGN.md, "Dedup
  by construction"). The length prefix keeps ``("a", "bc")`` and ``("ab", "c")``
  apart. Never read a time out of a task ID.

The encoder looks up 10-bit chunks in a table of 1024 two-character strings
(about 2 us per ID against about 5 us for building and rendering a
``ulid.ULID``), because the producer makes one or two IDs per submitted task;
``python-ulid`` parses them (the tests compare both).
"""

from __future__ import annotations

import hashlib
import os
import time

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_PAIRS = tuple(a + b for a in _CROCKFORD for b in _CROCKFORD)  # 10 bits -> 2 characters
_SHIFTS = tuple(range(120, -1, -10))
_DERIVE_DOMAIN = b"taskstream.task-id.v1"

#: Length of every ID.
ID_LENGTH = 26


def encode_128(value: int) -> str:
    """Render a 128-bit integer as 26 Crockford base32 characters (the ULID text form).

    The 26 characters carry 130 bits; the two leading bits are zero, so the
    first character is 0-7.
    """
    if not 0 <= value < 1 << 128:
        raise ValueError(f"an ID holds 128 bits; got {value!r}")
    pairs = _PAIRS
    return "".join([pairs[(value >> shift) & 1023] for shift in _SHIFTS])


def _ulid(ms: int) -> str:
    return encode_128((ms << 80) | int.from_bytes(os.urandom(10), "big"))


def new_task_id() -> str:
    """A fresh task ID: a ULID (time ordered to the millisecond)."""
    return _ulid(time.time_ns() // 1_000_000)


def new_event_id() -> str:
    """A fresh event ID: a ULID, unique per fact; the unit of idempotent apply."""
    return _ulid(time.time_ns() // 1_000_000)


def derived_task_id(name: str, key: str) -> str:
    """The task ID for a submission with an idempotency key: a pure function of
    ``(name, key)``, so every duplicate lands on the same partition."""
    name_bytes = name.encode("utf-8")
    digest = hashlib.sha256(
        b"%s%d:%s%s" % (_DERIVE_DOMAIN, len(name_bytes), name_bytes, key.encode("utf-8"))
    ).digest()
    return encode_128(int.from_bytes(digest[:16], "big"))
