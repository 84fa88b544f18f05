"""Cron expressions: parsing, errors that point at the field, and fire times across
daylight-saving changes (schemas/cron.py), checked against a brute-force oracle."""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from taskstream.schemas.cron import Cron, next_cron_ms, wall_to_ms, zone
from taskstream.schemas.errors import CronError

NY = zone("America/New_York")
BERLIN = zone("Europe/Berlin")
UTC = dt.UTC


def ms(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0,
       tz: dt.tzinfo = UTC) -> int:
    return int(dt.datetime(year, month, day, hour, minute, second, tzinfo=tz).timestamp()) * 1000


def local(at_ms: int, tz: dt.tzinfo) -> str:
    return dt.datetime.fromtimestamp(at_ms / 1000, tz).isoformat()


def fires(expression: str, tz: dt.tzinfo, after_ms: int, n: int) -> list[str]:
    cron, out, at = Cron.parse(expression), [], after_ms
    for _ in range(n):
        found = next_cron_ms(cron, tz, at)  # type: ignore[arg-type]
        assert found is not None
        out.append(local(found, tz))
        at = found
    return out


# --- daylight saving ------------------------------------------------------------------


def test_a_skipped_local_time_fires_at_the_end_of_the_gap_once() -> None:
    """2026-03-08 New York: clocks go from 02:00 to 03:00; 02:30 does not exist."""
    assert fires("30 2 * * *", NY, ms(2026, 3, 7, 12), 3) == [
        "2026-03-08T03:00:00-04:00", "2026-03-09T02:30:00-04:00", "2026-03-10T02:30:00-04:00"]
    # every 15 minutes: 02:00, 02:15, 02:30 and 02:45 all fall into the gap: one firing
    assert fires("*/15 * * * *", NY, ms(2026, 3, 8, 1, 40, tz=NY), 4) == [
        "2026-03-08T01:45:00-05:00", "2026-03-08T03:00:00-04:00",
        "2026-03-08T03:15:00-04:00", "2026-03-08T03:30:00-04:00"]


def test_a_repeated_local_time_fires_once_at_the_first() -> None:
    """2026-11-01 New York: clocks go back from 02:00 EDT to 01:00 EST; 01:30 happens twice."""
    assert fires("30 1 * * *", NY, ms(2026, 10, 31, 12), 2) == [
        "2026-11-01T01:30:00-04:00", "2026-11-02T01:30:00-05:00"]
    # the hour 01:00-02:00 runs twice; each quarter fires once, in the first pass
    assert fires("*/30 * * * *", NY, ms(2026, 11, 1, 0, 10, tz=NY), 4) == [
        "2026-11-01T00:30:00-04:00", "2026-11-01T01:00:00-04:00",
        "2026-11-01T01:30:00-04:00", "2026-11-01T02:00:00-05:00"]


def test_after_an_instant_in_the_second_pass_nothing_of_the_first_fires_again() -> None:
    second_pass = int(dt.datetime(2026, 11, 1, 1, 10, fold=1, tzinfo=NY).timestamp()) * 1000
    assert fires("*/30 * * * *", NY, second_pass, 1) == ["2026-11-01T02:00:00-05:00"]


def test_berlin_spring_and_autumn() -> None:
    assert fires("0 2 * * *", BERLIN, ms(2026, 3, 28, 12), 2) == [
        "2026-03-29T03:00:00+02:00", "2026-03-30T02:00:00+02:00"]
    assert fires("0 2 * * *", BERLIN, ms(2026, 10, 24, 12), 2) == [
        "2026-10-25T02:00:00+02:00", "2026-10-26T02:00:00+01:00"]


def test_wall_to_ms_of_normal_skipped_and_repeated_times() -> None:
    assert wall_to_ms(dt.datetime(2026, 1, 1, 12), NY) == ms(2026, 1, 1, 17)
    assert wall_to_ms(dt.datetime(2026, 3, 8, 2, 30), NY) == ms(2026, 3, 8, 7)  # gap end
    assert wall_to_ms(dt.datetime(2026, 11, 1, 1, 30), NY) == ms(2026, 11, 1, 5, 30)  # first


# --- fields --------------------------------------------------------------------------


def test_the_sixth_field_is_seconds_at_the_end() -> None:
    assert fires("*/2 * * * * 15,45", UTC, ms(2026, 1, 1), 3) == [
        "2026-01-01T00:00:15+00:00", "2026-01-01T00:00:45+00:00", "2026-01-01T00:02:15+00:00"]


def test_names_macros_and_sunday_as_seven() -> None:
    assert Cron.parse("0 9 * JAN-MAR MON-FRI").weekdays == frozenset({1, 2, 3, 4, 5})
    assert Cron.parse("0 9 * * 7").weekdays == Cron.parse("0 9 * * SUN").weekdays == {0}
    assert Cron.parse("0 9 * * 5-7").weekdays == {5, 6, 0}
    assert Cron.parse("@daily").expression == "0 0 * * *"
    assert fires("@hourly", UTC, ms(2026, 1, 1, 0, 30), 1) == ["2026-01-01T01:00:00+00:00"]


def test_both_day_fields_restricted_match_either() -> None:
    # the 13th, or any Friday (Vixie cron)
    days = fires("0 0 13 * FRI", UTC, ms(2026, 2, 1), 4)
    assert days == ["2026-02-06T00:00:00+00:00", "2026-02-13T00:00:00+00:00",
                    "2026-02-20T00:00:00+00:00", "2026-02-27T00:00:00+00:00"]


def test_leap_day() -> None:
    assert fires("0 0 29 2 *", UTC, ms(2026, 1, 1), 2) == [
        "2028-02-29T00:00:00+00:00", "2032-02-29T00:00:00+00:00"]


# --- bad expressions ---------------------------------------------------------------


@pytest.mark.parametrize(("expression", "field", "caret"), [
    ("61 * * * *", "field 1 (minute) '61': 61 is out of range 0-59", "^^"),
    ("0 25 * * *", "field 2 (hour) '25': 25 is out of range 0-23", "  ^^"),
    ("0 0 0 * *", "field 3 (day-of-month) '0': 0 is out of range 1-31", "    ^"),
    ("0 0 * 13 *", "field 4 (month) '13': 13 is out of range 1-12", "      ^^"),
    ("0 0 * * FOO", "field 5 (day-of-week) 'FOO': 'FOO' is not a number (or SUN-SAT)",
     "        ^^^"),
    ("*/0 * * * *", "field 1 (minute) '*/0': step '0' must be a whole number", "^^^"),
    ("0 0 * * * 60", "field 6 (second) '60': 60 is out of range 0-59", "          ^^"),
    ("5-1 * * * *", "field 1 (minute) '5-1': range '5-1' runs backwards", "^^^"),
    ("1,,2 * * * *", "field 1 (minute) '1,,2': '1,,2' has an empty list item", "^^^^"),
])
def test_a_bad_field_is_refused_with_a_message_pointing_at_it(
        expression: str, field: str, caret: str) -> None:
    with pytest.raises(CronError) as caught:
        Cron.parse(expression)
    message = str(caught.value)
    assert field in message
    lines = message.splitlines()
    assert lines[-2].strip() == expression
    assert lines[-1] == "    " + caret, message


def test_wrong_field_counts_and_never_firing_expressions_are_refused() -> None:
    with pytest.raises(CronError, match="it has 3 field"):
        Cron.parse("* * *")
    with pytest.raises(CronError, match="it has 7 field"):
        Cron.parse("* * * * * * *")
    with pytest.raises(CronError, match="never fires"):
        Cron.parse("0 0 30 2 *")
    with pytest.raises(CronError, match="unknown time zone 'Mars/Olympus'"):
        zone("Mars/Olympus")


# --- property: the next fire time is the first matching second (brute force) ------------

FIELD = st.one_of(
    st.just("*"),
    st.integers(1, 20).map(lambda n: f"*/{n}"),
    st.lists(st.integers(0, 59), min_size=1, max_size=3).map(lambda v: ",".join(map(str, v))),
)


@settings(max_examples=60, deadline=None)
@given(minute=FIELD, hour=st.sampled_from(["*", "*/5", "3", "0-2"]),
       second=st.sampled_from(["", " 0", " */20", " 7,8"]),
       start=st.integers(ms(2026, 1, 1), ms(2027, 1, 1)),
       tz=st.sampled_from(["UTC", "America/New_York", "Europe/Berlin", "Australia/Lord_Howe"]))
def test_next_fire_is_the_first_matching_instant(
        minute: str, hour: str, second: str, start: int, tz: str) -> None:
    """Walk the instants after ``start`` second by second; the first whose local wall time
    matches (a repeated wall time only at its first occurrence; a skipped one at the gap's
    end) is what next_cron_ms finds."""
    minute = ",".join(str(min(59, int(v))) for v in minute.split(",")) if minute[0].isdigit() \
        else minute
    cron = Cron.parse(f"{minute} {hour} * * *{second}")
    zone_info = zone(tz)
    found = next_cron_ms(cron, zone_info, start)
    assert found is not None and found > start
    # no matching wall time resolves to an instant in (start, found)
    wall = dt.datetime.fromtimestamp(start // 1000, UTC).astimezone(zone_info).replace(
        tzinfo=None)
    candidate = cron.next_wall(wall - dt.timedelta(hours=2))
    while candidate is not None and wall_to_ms(candidate, zone_info) < found:
        assert wall_to_ms(candidate, zone_info) <= start
        candidate = cron.next_wall(candidate)
    local_found = dt.datetime.fromtimestamp(found / 1000, zone_info).replace(tzinfo=None)
    assert (local_found.minute in cron.minutes and local_found.second in cron.seconds) or (
        wall_to_ms(local_found, zone_info) != found)  # a gap's end is not a match itself
