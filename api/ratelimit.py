"""Per-token request rate of the HTTP API: token buckets, pure (no clock of their own).

``settings.api_rate_limit`` requests per second per caller, with bursts of up to
``settings.api_rate_burst``; unset, there is no limit. The caller is its bearer
token (by digest, never in clear) when it sends one, else its address. Over the
rate the answer is 429 with ``Retry-After``: the whole seconds, rounded up, until
the bucket holds a token again, so a client that waits that long is served.

What is not counted: the probes (``/healthz``, ``/readyz``), the scrape
(``/metrics``), and requests between replicas (``/internal/...`` and proxied
by-ID reads), which the replica that took the client's request has already
counted. Each replica keeps its own buckets: with N replicas behind a load
balancer a caller gets up to N times the rate. The limit protects the API from
a heavy client; keeping strangers out is the tokens' job (api/auth.py).

Memory is bounded: at most ``max_callers`` buckets, the least recently used
dropped first (a dropped bucket was full or close to it; it comes back full).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass

from taskstream.api.auth import OPEN_PATHS, bearer_token, token_digest

#: paths never counted (besides OPEN_PATHS): Prometheus scrapes on its own schedule
UNCOUNTED_PATHS = frozenset({"/metrics"})
INTERNAL_PREFIX = "/internal/"


@dataclass
class TokenBucket:
    """``rate`` tokens per second, at most ``burst`` held; starts full."""

    rate: float
    burst: float
    tokens: float = -1.0
    at: float | None = None

    def __post_init__(self) -> None:
        if self.rate <= 0 or self.burst < 1:
            raise ValueError(f"a token bucket needs rate > 0 and burst >= 1; got rate="
                             f"{self.rate}, burst={self.burst}")
        if self.tokens < 0:
            self.tokens = self.burst

    def take(self, now: float) -> float:
        """Take one token: 0.0 when granted, else the seconds until one is there."""
        if self.at is not None and now > self.at:
            self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        if self.at is None or now > self.at:
            self.at = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate


def retry_after_header(wait_s: float) -> str:
    """``Retry-After`` in whole seconds (HTTP wants an integer), never early, at least 1."""
    return str(max(1, math.ceil(wait_s - 1e-9)))


class RateLimiter:
    """One bucket per caller."""

    def __init__(self, rate: float, burst: int, max_callers: int = 10_000) -> None:
        TokenBucket(rate, burst)  # the same checks, once, at start-up
        self.rate = rate
        self.burst = burst
        self.max_callers = max(1, max_callers)
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()

    def check(self, caller: str, now: float) -> float:
        """0.0 when ``caller`` may go on now, else the seconds to wait."""
        bucket = self._buckets.get(caller)
        if bucket is None:
            bucket = self._buckets[caller] = TokenBucket(self.rate, self.burst)
            while len(self._buckets) > self.max_callers:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(caller)
        return bucket.take(now)

    def __len__(self) -> int:
        return len(self._buckets)


def counted(path: str, proxied: bool) -> bool:
    """Does this request count against its caller's rate?"""
    return not (proxied or path in OPEN_PATHS or path in UNCOUNTED_PATHS
                or path.startswith(INTERNAL_PREFIX))


def caller_of(authorization: str | None, remote: str | None) -> str:
    """Who is asking: ``token:<sha256 prefix>`` for a bearer token, else ``addr:<address>``."""
    token = bearer_token(authorization)
    if token is not None:
        return f"token:{token_digest(token)[:32]}"
    return f"addr:{remote or 'unknown'}"
