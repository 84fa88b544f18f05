"""API request rate per token (api/ratelimit.py): the pure buckets, then a real replica.

Given a processor replica with ``api_rate_limit=0.5`` and ``api_rate_burst=3``, when a
token sends requests back to back, then the first three are served, the fourth is 429 with
``Retry-After: 2``; after waiting that long the next one is served; another token has its
own bucket; the probes are never limited.
"""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from taskstream.api.auth import token_digest
from taskstream.api.ratelimit import (
    RateLimiter,
    TokenBucket,
    caller_of,
    counted,
    retry_after_header,
)
from taskstream.settings import Settings
from tests.harness import ProcessorProcess

# -- pure --------------------------------------------------------------------------------


def test_a_bucket_serves_its_burst_then_says_how_long_to_wait() -> None:
    bucket = TokenBucket(rate=2.0, burst=3)
    assert [bucket.take(10.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take(10.0) == pytest.approx(0.5)
    assert bucket.take(10.25) == pytest.approx(0.25)
    assert bucket.take(10.5) == 0.0


@given(rate=st.floats(0.01, 1000), burst=st.integers(1, 50),
       gaps=st.lists(st.floats(0, 5), min_size=1, max_size=100))
def test_waiting_the_answer_is_always_enough_and_never_more_than_rate_allows(
        rate: float, burst: int, gaps: list[float]) -> None:
    bucket = TokenBucket(rate=rate, burst=burst)
    now, granted, start = 0.0, 0, 0.0
    for gap in gaps:
        now += gap
        wait = bucket.take(now)
        if wait == 0.0:
            granted += 1
        else:
            assert bucket.take(now + wait + 1e-9) == 0.0  # waiting that long is enough
            now += wait + 1e-9
            granted += 1
    assert granted <= burst + rate * (now - start) + 1e-6


def test_retry_after_is_whole_seconds_rounded_up() -> None:
    assert [retry_after_header(w) for w in (0.001, 0.5, 1.0, 1.01, 2.0)] == \
        ["1", "1", "1", "2", "2"]


def test_callers_are_bounded_and_told_apart() -> None:
    limiter = RateLimiter(rate=1.0, burst=1, max_callers=2)
    assert limiter.check("a", 0.0) == 0.0 and limiter.check("a", 0.0) > 0
    assert limiter.check("b", 0.0) == 0.0
    assert limiter.check("c", 0.0) == 0.0 and len(limiter) == 2
    assert caller_of("Bearer tok", "1.2.3.4") == f"token:{token_digest('tok')[:32]}"
    assert caller_of(None, "1.2.3.4") == "addr:1.2.3.4"
    assert counted("/tasks", False) and not counted("/tasks/x", True)
    assert not any(counted(p, False) for p in ("/healthz", "/readyz", "/metrics",
                                               "/internal/tasks"))


# -- a real replica --------------------------------------------------------------------------


@pytest.mark.slow
def test_over_the_rate_is_429_with_a_correct_retry_after(topics: Settings,
                                                         tmp_path: Path) -> None:
    tokens = {"alice": ["admin"], "bob": ["read"]}
    env = {"TASKSTREAM_API_RATE_LIMIT": "0.5", "TASKSTREAM_API_RATE_BURST": "3",
           "TASKSTREAM_API_TOKENS": "{" + ",".join(
               f'"{token_digest(t)}": ["{s[0]}"]' for t, s in tokens.items()) + "}"}
    replica = ProcessorProcess(topics, tmp_path / "replica0", env=env).start()
    try:
        with httpx.Client(base_url=replica.url, timeout=30) as http:
            alice = {"Authorization": "Bearer alice"}
            first = [http.get("/tasks", params={"limit": 1}, headers=alice).status_code
                     for _ in range(3)]
            assert first == [200, 200, 200]
            over = http.get("/tasks", params={"limit": 1}, headers=alice)
            assert over.status_code == 429
            assert over.json()["error"]["code"] == "rate_limited"
            retry_after = int(over.headers["Retry-After"])
            assert 1 <= retry_after <= 2  # 1 token at 0.5/s, rounded up to whole seconds
            bob = http.get("/tasks", params={"limit": 1}, headers={"Authorization": "Bearer bob"})
            assert bob.status_code == 200, "another token has its own bucket"
            assert http.get("/healthz").status_code == 200
            time.sleep(retry_after)
            again = http.get("/tasks", params={"limit": 1}, headers=alice)
            assert again.status_code == 200, again.text
    finally:
        replica.stop()
