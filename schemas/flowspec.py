"""The public side of flow control (issue 16): limit specs, rates, views, and the switch.

* :class:`LimitSpec` is what ``taskstream limits set``, ``producer.set_limit`` and
  ``PUT /limits/{name}`` take: a name, a rate (``"100/s"``, ``"5/min"``, ``"10/2s"``)
  and a burst (the tokens a full bucket holds; at least 1). It becomes a ``LimitSet``
  event keyed by ``limit:<name>``.
* :class:`LimitView` is what ``GET /limits`` and ``taskstream limits list`` show: the
  definition or one key's bucket, with its fill at the time of the read.

The processors fold limits and keys like tasks (processors/fold/limits.py and
concurrency.py, in the live engine: D32).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime

from pydantic import BaseModel, ConfigDict, Field, field_validator

from taskstream.schemas.entity_keys import LIMIT_NAME_PATTERN
from taskstream.schemas.events import LimitSet

MAX_RATE_COUNT = 1_000_000
MAX_BURST = 1_000_000
MAX_PERIOD_MS = 7 * 24 * 3600 * 1000  # a week
_UNITS_MS = {"ms": 1, "s": 1000, "sec": 1000, "second": 1000, "m": 60_000, "min": 60_000,
             "minute": 60_000, "h": 3_600_000, "hour": 3_600_000, "d": 86_400_000,
             "day": 86_400_000}
_RATE = re.compile(r"^\s*(\d+)\s*/\s*(\d*)\s*([a-z]+)\s*$")


def parse_rate(text: str) -> tuple[int, int]:
    """``"100/s"`` -> (100, 1000): tokens per period in ms. Units: ms, s, m(in), h, d;
    an optional multiple (``"10/5s"``). ValueError with the accepted forms otherwise."""
    match = _RATE.match(text.lower()) if isinstance(text, str) else None
    unit = _unit_ms(match.group(3)) if match else None
    if match is None or unit is None:
        raise ValueError(f"rate {text!r} is not COUNT/PERIOD, for example 100/s, 5/min, 10/2s "
                         "or 1000/h (units: ms, s, min, h, d)")
    count, multiple = int(match.group(1)), int(match.group(2) or 1)
    period_ms = multiple * unit
    if not 1 <= count <= MAX_RATE_COUNT:
        raise ValueError(f"rate {text!r}: the count must be 1 to {MAX_RATE_COUNT}")
    if not 1 <= period_ms <= MAX_PERIOD_MS:
        raise ValueError(f"rate {text!r}: the period must be 1 ms to 7 days")
    return count, period_ms


def _unit_ms(word: str) -> int | None:
    """Milliseconds of a unit word, singular or plural (``s``, ``sec``, ``seconds``, ...)."""
    found = _UNITS_MS.get(word)
    if found is None and word.endswith("s"):
        found = _UNITS_MS.get(word[:-1])
    return found


def format_rate(count: int, period_ms: int) -> str:
    """(100, 1000) -> ``"100/s"``; the inverse of :func:`parse_rate` for its outputs."""
    for unit, ms in (("d", 86_400_000), ("h", 3_600_000), ("min", 60_000), ("s", 1000)):
        if period_ms % ms == 0:
            multiple = period_ms // ms
            return f"{count}/{unit}" if multiple == 1 else f"{count}/{multiple}{unit}"
    return f"{count}/{period_ms}ms"


class LimitSpec(BaseModel):
    """A named rate limit: ``rate`` tokens per period, buckets holding ``burst`` at most."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(pattern=LIMIT_NAME_PATTERN,
                      description="1 to 64 letters, digits, '_', '.' or '-'")
    rate: str = Field(description="COUNT/PERIOD, for example 100/s, 5/min, 10/2s")
    burst: int = Field(default=1, ge=1, le=MAX_BURST,
                       description="tokens a full bucket holds: how many may start at once "
                                   "after a quiet spell (at least 1)")

    @field_validator("rate")
    @classmethod
    def _check_rate(cls, value: str) -> str:
        parse_rate(value)
        return value

    @property
    def count(self) -> int:
        return parse_rate(self.rate)[0]

    @property
    def period_ms(self) -> int:
        return parse_rate(self.rate)[1]

    def to_body(self) -> LimitSet:
        count, period_ms = parse_rate(self.rate)
        return LimitSet(name=self.name, count=count, period_ms=period_ms, burst=self.burst)


def _iso(ms: int | None) -> str | None:
    if ms is None:
        return None
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")


class LimitView(BaseModel):
    """A limit's definition (``key`` null) or one key's bucket, as ``GET /limits`` shows it.

    ``tokens`` is the fill at ``as_of_ms`` (the time of the read): the bucket's stored
    tokens plus what the rate has added since, capped at ``burst``.
    """

    model_config = ConfigDict(frozen=True)

    name: str
    key: str | None
    defined: bool
    rate: str | None
    count: int
    period_ms: int
    burst: int
    tokens: float
    waiting: int
    granted: int
    deferred: int
    rejected: int
    set_at_ms: int | None
    set_at: str | None
    updated_at_ms: int
    as_of_ms: int

    @staticmethod
    def iso(ms: int | None) -> str | None:
        return _iso(ms)
