"""Retry delays, deterministic to the millisecond.

The delay before retrying after attempt ``n`` failed is
``min(initial_ms * multiplier**(n-1), max_ms)``, moved by up to ``±jitter`` of
itself. The jitter is not random: it is a hash of ``(task_id, attempt)``, so a
replay of the log computes the same due time as the live processor (D7), while
tasks that failed together still spread out.
"""

from __future__ import annotations

import hashlib
import math

from taskstream.schemas.events import Backoff

_TWO_64 = float(1 << 64)


def stable_fraction(*parts: str | int) -> float:
    """A number in [0, 1) that depends only on ``parts`` (same on every machine)."""
    text = "\x1f".join(str(part) for part in parts)
    digest = hashlib.blake2b(text.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / _TWO_64


def base_delay_ms(backoff: Backoff, attempt: int) -> float:
    """The capped exponential delay after ``attempt`` failed, before jitter."""
    cap = max(0.0, float(backoff.max_ms))
    initial = max(0.0, float(backoff.initial_ms))
    # NaN means "no growth"; +inf grows straight to the cap
    multiplier = 1.0 if math.isnan(backoff.multiplier) else max(0.0, backoff.multiplier)
    if initial == 0.0:
        return 0.0
    try:
        raw = initial * multiplier ** (max(1, attempt) - 1)
    except OverflowError:
        return cap
    if not math.isfinite(raw) or raw > cap:
        return cap
    return raw


def retry_delay_ms(backoff: Backoff, attempt: int, task_id: str) -> int:
    """Milliseconds to wait before the attempt after ``attempt``; never negative.

    ``attempt`` counts from 1 (the first failure waits ``initial_ms``). The jitter
    fraction is clamped to [0, 1]; the result lies within
    ``base * (1 ± jitter)`` (rounded), so a jittered delay may exceed ``max_ms``
    by at most ``jitter * max_ms``.
    """
    base = base_delay_ms(backoff, attempt)
    jitter = min(1.0, max(0.0, backoff.jitter)) if math.isfinite(backoff.jitter) else 0.0
    if jitter == 0.0 or base == 0.0:
        return round(base)
    offset = (2.0 * stable_fraction(task_id, attempt) - 1.0) * jitter  # in [-jitter, +jitter)
    return max(0, round(base * (1.0 + offset)))
