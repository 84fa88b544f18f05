"""Retry delays: exponential, capped, jittered within bounds, the same on every replay."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from taskstream.processors.fold.backoff import base_delay_ms, retry_delay_ms, stable_fraction
from taskstream.schemas.events import Backoff


def test_grows_exponentially_without_jitter() -> None:
    b = Backoff(initial_ms=100, multiplier=3.0, max_ms=10_000, jitter=0.0)
    assert [retry_delay_ms(b, n, "t") for n in (1, 2, 3, 4, 5, 6)] == [
        100, 300, 900, 2_700, 8_100, 10_000]


def test_caps_at_max_even_for_huge_attempts() -> None:
    b = Backoff(initial_ms=1_000, multiplier=10.0, max_ms=60_000, jitter=0.0)
    assert retry_delay_ms(b, 10_000, "t") == 60_000
    assert base_delay_ms(b, 2**40) == 60_000


def test_odd_settings_never_give_a_negative_or_broken_delay() -> None:
    assert retry_delay_ms(Backoff(initial_ms=-5, jitter=0.5), 3, "t") == 0
    assert retry_delay_ms(Backoff(multiplier=float("nan"), jitter=0.0), 3, "t") == 1_000
    assert retry_delay_ms(Backoff(multiplier=float("inf"), max_ms=7, jitter=0.0), 3, "t") == 7
    assert retry_delay_ms(Backoff(max_ms=-1), 1, "t") == 0
    assert retry_delay_ms(Backoff(initial_ms=500, jitter=0.0), 0, "t") == 500  # attempt < 1


def test_jitter_is_deterministic_and_spreads_tasks() -> None:
    b = Backoff(initial_ms=10_000, multiplier=1.0, max_ms=10_000, jitter=0.5)
    delays = [retry_delay_ms(b, 1, f"task-{i}") for i in range(200)]
    assert delays == [retry_delay_ms(b, 1, f"task-{i}") for i in range(200)]
    assert len(set(delays)) > 150
    assert min(delays) < 6_500 and max(delays) > 13_500  # both halves of the band are used


def test_stable_fraction_is_in_unit_interval_and_fixed() -> None:
    # pinned: replay on another machine or Python must compute the same jitter
    assert stable_fraction("task", 1) == stable_fraction("task", 1)
    assert stable_fraction("task", 1) != stable_fraction("task", 2)
    assert retry_delay_ms(Backoff(initial_ms=1_000, jitter=0.1), 1, "01HTASK") == (
        retry_delay_ms(Backoff(initial_ms=1_000, jitter=0.1), 1, "01HTASK"))


@given(
    initial=st.integers(0, 10**7),
    multiplier=st.floats(0.0, 50.0),
    cap=st.integers(0, 10**8),
    jitter=st.floats(-1.0, 2.0),
    attempt=st.integers(-3, 10**6),
    task_id=st.text(max_size=30),
)
def test_delay_is_within_the_jitter_band_of_the_capped_base(
    initial: int, multiplier: float, cap: int, jitter: float, attempt: int, task_id: str
) -> None:
    b = Backoff(initial_ms=initial, multiplier=multiplier, max_ms=cap, jitter=jitter)
    base = base_delay_ms(b, attempt)
    assert 0 <= base <= cap
    j = min(1.0, max(0.0, jitter))
    delay = retry_delay_ms(b, attempt, task_id)
    assert delay >= 0
    assert base * (1 - j) - 1 <= delay <= base * (1 + j) + 1
    assert delay == retry_delay_ms(b, attempt, task_id)
