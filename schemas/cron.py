"""Cron expressions and the instants they name in a time zone, pure (D37).

An expression has five fields, ``minute hour day-of-month month day-of-week``,
and an optional sixth, ``second``, at the end (default 0). Each field takes
``*``, numbers, ranges ``a-b``, steps ``*/n``, ``a-b/n`` and ``a/n``, and lists
of those; months and weekdays also take names (``JAN``, ``MON``; 0 and 7 are
Sunday). ``@yearly``, ``@monthly``, ``@weekly``, ``@daily`` and ``@hourly``
stand for their usual expressions. As in Vixie cron, when both day fields are
restricted a day matches if either matches. A bad expression is refused with a
:class:`CronError` that names the field and points at it.

Why our own parser and not a library: the rules we need are few and exact (the
sixth field at the end, the DST rules below, deterministic in the fold, errors
pointing at the field), and this module is small enough to read and test whole.

Time zones (:mod:`zoneinfo`): fire times are wall-clock times in the schedule's
zone. Where a daylight-saving change skips a local time (02:30 on the day clocks
go from 02:00 to 03:00), it fires at the next valid instant, the end of the gap
(03:00), once however many fire times fall into the gap. Where a change repeats
local times (01:30 twice when clocks go back), it fires once, at the first.
"""

from __future__ import annotations

import bisect
import datetime as dt
import functools
from dataclasses import dataclass
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from taskstream.schemas.errors import CronError
from taskstream.schemas.events import ScheduleSpec

UTC = dt.UTC

#: (name, lowest, highest) of each field, in order
FIELDS = (
    ("minute", 0, 59),
    ("hour", 0, 23),
    ("day-of-month", 1, 31),
    ("month", 1, 12),
    ("day-of-week", 0, 6),
    ("second", 0, 59),
)
MACROS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
_MONTHS = {m: i + 1 for i, m in enumerate(
    ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"))}
_DAYS = {d: i for i, d in enumerate(("SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"))}
#: how far ahead a next fire time is looked for: 8 years covers every leap day but 2100's
SEARCH_YEARS = 8
#: bound on candidates tried for one next fire time (a per-second cron across a repeated
#: hour tries 3,600)
MAX_CANDIDATES = 100_000


class _FieldError(Exception):
    def __init__(self, problem: str) -> None:
        super().__init__(problem)
        self.problem = problem


def _value(text: str, index: int) -> int:
    _, low, high = FIELDS[index]
    upper = text.upper()
    if index == 3 and upper in _MONTHS:
        return _MONTHS[upper]
    if index == 4 and upper in _DAYS:
        return _DAYS[upper]
    if not text.isdigit():
        hint = " (or JAN-DEC)" if index == 3 else " (or SUN-SAT)" if index == 4 else ""
        raise _FieldError(f"{text!r} is not a number{hint}")
    value = int(text)
    if index == 4 and value == 7:
        return 0  # Sunday, both ways
    if not low <= value <= high:
        top = 7 if index == 4 else high
        raise _FieldError(f"{value} is out of range {low}-{top}")
    return value


def _part(text: str, index: int) -> set[int]:
    _, low, high = FIELDS[index]
    base, slash, step_text = text.partition("/")
    step = 1
    if slash:
        if not step_text.isdigit() or int(step_text) == 0:
            raise _FieldError(f"step {step_text!r} must be a whole number of at least 1")
        step = int(step_text)
    if base == "*":
        start, end = low, high
    elif "-" in base:
        first, _, last = base.partition("-")
        start, end = _value(first, index), _value(last, index)
        if index == 4 and last == "7":
            end = 7  # MON-7 means Monday to Sunday
        if end < start:
            raise _FieldError(f"range {base!r} runs backwards")
    else:
        start = _value(base, index)
        end = high if slash else start
    return {v % 7 if index == 4 else v for v in range(start, end + 1, step)}


def _field(text: str, index: int) -> frozenset[int]:
    if not text:
        raise _FieldError("empty")
    values: set[int] = set()
    for part in text.split(","):
        if not part:
            raise _FieldError(f"{text!r} has an empty list item")
        values |= _part(part, index)
    return frozenset(values)


def _pointer(expression: str, tokens: list[str], index: int) -> str:
    """Two lines: the expression, and carets under field ``index``."""
    column = 0
    for i, token in enumerate(tokens):
        column = expression.index(token, column)
        if i == index:
            break
        column += len(token)
    return f"\n    {expression}\n    {' ' * column}{'^' * max(1, len(tokens[index]))}"


@dataclass(frozen=True, slots=True)
class Cron:
    """A parsed cron expression: the values each field allows."""

    expression: str
    minutes: tuple[int, ...]
    hours: tuple[int, ...]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]  # 0 = Sunday
    seconds: tuple[int, ...]
    any_day: bool  # day-of-month is '*'
    any_weekday: bool  # day-of-week is '*'

    @classmethod
    def parse(cls, expression: str) -> Cron:
        return _parse(expression)

    def day_matches(self, day: dt.date) -> bool:
        if day.month not in self.months:
            return False
        in_days = day.day in self.days
        in_weekdays = (day.isoweekday() % 7) in self.weekdays
        if self.any_day or self.any_weekday:
            return in_days and in_weekdays
        return in_days or in_weekdays  # both restricted: either (Vixie cron)

    def next_wall(self, after: dt.datetime) -> dt.datetime | None:
        """The first naive wall-clock time strictly after ``after`` that matches, or None
        if none does within :data:`SEARCH_YEARS`."""
        t = after.replace(microsecond=0) + dt.timedelta(seconds=1)
        last_year = t.year + SEARCH_YEARS
        while t.year <= last_year:
            if not self.day_matches(t.date()):
                t = dt.datetime.combine(t.date() + dt.timedelta(days=1), dt.time())
                continue
            hour = _at_least(self.hours, t.hour)
            if hour is None:
                t = dt.datetime.combine(t.date() + dt.timedelta(days=1), dt.time())
                continue
            if hour != t.hour:
                t = t.replace(hour=hour, minute=0, second=0)
            minute = _at_least(self.minutes, t.minute)
            if minute is None:
                t = t.replace(minute=0, second=0) + dt.timedelta(hours=1)
                continue
            if minute != t.minute:
                t = t.replace(minute=minute, second=0)
            second = _at_least(self.seconds, t.second)
            if second is None:
                t = t.replace(second=0) + dt.timedelta(minutes=1)
                continue
            return t.replace(second=second)
        return None


def _at_least(values: tuple[int, ...], value: int) -> int | None:
    i = bisect.bisect_left(values, value)
    return values[i] if i < len(values) else None


@functools.lru_cache(maxsize=256)
def _parse(expression: str) -> Cron:
    if not isinstance(expression, str):
        raise CronError(f"a cron expression is a string, not {type(expression).__name__}")
    text = MACROS.get(expression.strip().lower(), expression)
    tokens = text.split()
    if len(tokens) not in (5, 6):
        raise CronError(
            f"bad cron expression {expression!r}: it has {len(tokens)} field(s); give 5 "
            "(minute hour day-of-month month day-of-week) and optionally a 6th, second, "
            "at the end")
    parsed: list[frozenset[int]] = []
    for index, token in enumerate([*tokens, "0"][:6]):
        try:
            parsed.append(_field(token, index))
        except _FieldError as exc:
            name = FIELDS[index][0]
            raise CronError(
                f"bad cron expression {expression!r}: field {index + 1} ({name}) "
                f"{token!r}: {exc.problem}{_pointer(text, tokens, index)}") from None
    minutes, hours, days, months, weekdays, seconds = parsed
    cron = Cron(text, tuple(sorted(minutes)), tuple(sorted(hours)), days, months, weekdays,
                tuple(sorted(seconds)), tokens[2].startswith("*"), tokens[4].startswith("*"))
    if cron.next_wall(dt.datetime(2000, 1, 1)) is None:
        raise CronError(f"bad cron expression {expression!r}: it never fires (no day "
                        f"matches both day-of-month {tokens[2]!r} and month {tokens[3]!r})"
                        f"{_pointer(text, tokens, 2)}")
    return cron


@functools.lru_cache(maxsize=256)
def zone(name: str) -> ZoneInfo:
    """The time zone ``name`` (an IANA name such as ``Europe/Berlin``), or CronError."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise CronError(f"unknown time zone {name!r} ({type(exc).__name__}); use an IANA "
                        "name such as 'UTC' or 'Europe/Berlin'") from None


def _ms(instant: dt.datetime) -> int:
    return int(instant.timestamp()) * 1000


def wall_to_ms(wall: dt.datetime, tz: ZoneInfo) -> int:
    """The instant (ms) of a naive wall-clock time: the first one of a repeated time, the
    end of the gap for a skipped one."""
    first = wall.replace(tzinfo=tz, fold=0).astimezone(UTC)
    second = wall.replace(tzinfo=tz, fold=1).astimezone(UTC)
    if first == second:
        return _ms(first)
    low, high = min(first, second), max(first, second)
    if low.astimezone(tz).replace(tzinfo=None) == wall:  # repeated: fire at the first
        return _ms(low)
    # skipped: the transition lies in (low, high]; find its second
    offset_after = high.astimezone(tz).utcoffset()
    lo, hi = int(low.timestamp()), int(high.timestamp())
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if dt.datetime.fromtimestamp(mid, UTC).astimezone(tz).utcoffset() == offset_after:
            hi = mid
        else:
            lo = mid
    return hi * 1000


def next_cron_ms(cron: Cron, tz: ZoneInfo, after_ms: int) -> int | None:
    """The first instant (ms, whole seconds) strictly after ``after_ms`` that ``cron``
    names in ``tz``, or None if there is none within :data:`SEARCH_YEARS`."""
    instant = dt.datetime.fromtimestamp(after_ms // 1000, UTC)
    wall = instant.astimezone(tz).replace(tzinfo=None)
    for _ in range(MAX_CANDIDATES):
        candidate = cron.next_wall(wall)
        if candidate is None:
            return None
        at = wall_to_ms(candidate, tz)
        if at > after_ms:
            return at
        wall = candidate
    return None


def check_spec(spec: ScheduleSpec) -> None:
    """Raise CronError/ValueError unless ``spec`` can fire (the SDK, the API and the fold
    all ask: the fold must not trust that every writer did)."""
    if (spec.cron is None) == (spec.every_ms is None):
        raise ValueError("give cron or every, exactly one")
    if spec.every_ms is not None and spec.every_ms < 1:
        raise ValueError(f"every must be positive, got {spec.every_ms} ms")
    if spec.cron is not None:
        Cron.parse(spec.cron)
    zone(spec.timezone)
    if spec.start_at_ms is not None and spec.end_at_ms is not None and (
            spec.end_at_ms < spec.start_at_ms):
        raise ValueError("end_at is before start_at")
    if spec.jitter_ms < 0 or spec.catch_up_max < 1 or spec.misfire_grace_ms < 0:
        raise ValueError("jitter and misfire_grace must be >= 0, catch_up_max >= 1")
