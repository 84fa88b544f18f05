"""Reading ``taskstream replay``'s arguments: times and offset specs (pure, unit-tested).

Bad text is a :class:`ReplayError` naming the item and showing the form expected.
"""

from __future__ import annotations

from datetime import UTC, datetime

from taskstream.processors.replay.errors import ReplayError


def parse_offsets_spec(spec: str) -> dict[int, int]:
    """``"0:1200,1:900"`` -> ``{0: 1200, 1: 900}``: fold records with offset < N.

    A partition the spec does not name is not read at all.
    """
    ends: dict[int, int] = {}
    for part in spec.split(","):
        item = part.strip()
        if not item:
            continue
        partition, sep, offset = item.partition(":")
        if not sep or not partition.strip().isdigit() or not offset.strip().isdigit():
            raise ReplayError(
                f"bad offsets spec item {item!r} in {spec!r}: write PARTITION:OFFSET pairs "
                "separated by commas, e.g. 0:1200,1:900"
            )
        p = int(partition)
        if p in ends:
            raise ReplayError(f"partition {p} appears twice in offsets spec {spec!r}")
        ends[p] = int(offset)
    if not ends:
        raise ReplayError(f"offsets spec {spec!r} names no partition; e.g. 0:1200,1:900")
    return ends


def parse_time(text: str) -> int:
    """Epoch milliseconds from an integer (ms) or ISO 8601 text (no zone = UTC)."""
    value = text.strip()
    if value.lstrip("-").isdigit():
        return int(value)
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ReplayError(
            f"cannot read time {text!r}: give epoch milliseconds or ISO 8601, "
            "e.g. 2026-05-01T12:00:00Z"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)
