"""Quarantine: where records that cannot be decoded go, unchanged.

A consumer that meets bytes it cannot decode (a :class:`DecodeError`) does not
stop and does not drop them: it produces the *original key and value bytes,
unchanged*, to the quarantine topic with the headers below, commits past the
record and goes on. An operator reads them back with :class:`QuarantineRecord`
(to see where they came from and why) and can re-produce them once a reader
that understands them is deployed.

Headers (values are UTF-8 text): ``taskstream-quarantine-topic``,
``-partition``, ``-offset`` (decimal), ``-reason`` (at most 1000 characters) and
``-at-ms`` (the quarantining process's clock, decimal milliseconds).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass

from taskstream.schemas.errors import QuarantineHeaderError

PREFIX = "taskstream-quarantine-"
TOPIC = PREFIX + "topic"
PARTITION = PREFIX + "partition"
OFFSET = PREFIX + "offset"
REASON = PREFIX + "reason"
AT_MS = PREFIX + "at-ms"
MAX_REASON = 1000


def quarantine_headers(
    topic: str, partition: int, offset: int, reason: str, *, at_ms: int | None = None
) -> list[tuple[str, bytes]]:
    """Headers for a quarantined copy of the record at ``topic``/``partition``/``offset``."""
    if len(reason) > MAX_REASON:
        reason = reason[: MAX_REASON - 3] + "..."
    stamp = time.time_ns() // 1_000_000 if at_ms is None else at_ms
    return [
        (TOPIC, topic.encode("utf-8")),
        (PARTITION, str(partition).encode("ascii")),
        (OFFSET, str(offset).encode("ascii")),
        (REASON, reason.encode("utf-8")),
        (AT_MS, str(stamp).encode("ascii")),
    ]


@dataclass(frozen=True, slots=True)
class QuarantineRecord:
    """Where a quarantined record came from and why, read back from its headers."""

    topic: str
    partition: int
    offset: int
    reason: str
    at_ms: int | None = None

    @classmethod
    def from_headers(
        cls, headers: Iterable[tuple[str, bytes | str | None]] | None
    ) -> QuarantineRecord:
        """Parse the headers of a record read from the quarantine topic (others are ignored)."""
        found: dict[str, str] = {}
        for key, value in headers or ():
            if key.startswith(PREFIX) and value is not None:
                found[key] = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
        missing = [h for h in (TOPIC, PARTITION, OFFSET, REASON) if h not in found]
        if missing:
            raise QuarantineHeaderError(
                f"not a quarantined record: header(s) {', '.join(missing)} missing; "
                "was it produced with quarantine_headers()?"
            )
        try:
            return cls(
                topic=found[TOPIC],
                partition=int(found[PARTITION]),
                offset=int(found[OFFSET]),
                reason=found[REASON],
                at_ms=int(found[AT_MS]) if AT_MS in found else None,
            )
        except ValueError as exc:
            raise QuarantineHeaderError(f"quarantine header is not a number: {exc}") from exc
