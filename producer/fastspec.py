"""Cheap validation of the common task options, mirroring TaskSpec exactly.

Building a pydantic ``TaskSpec`` and its ``TaskSubmitted`` costs ~20-40 us per
task, more than all the rest of a submit. Most submissions use a handful of
plain options (name, JSON payload, queue, priority, delay, max_attempts,
timeout, lease, idempotency_key) with exact Python types; for those,
:class:`SimpleSpecs` checks the same rules as :class:`TaskSpec` (same
patterns, limits and defaults; payloads through the same ``encode_json``) and
returns the wire fields directly.

Anything else (another option, a lax type such as ``"1"`` for an int, a value
that breaks a rule) returns None, and the caller goes through ``TaskSpec``,
which either accepts it or raises the error that names the field. A
hypothesis test checks that both paths give the same ``TaskSubmitted``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any, NamedTuple

from taskstream.schemas.models import (
    BYTES_CONTENT_TYPE,
    JSON_CONTENT_TYPE,
    MAX_DURATION_S,
    MIN_LEASE_S,
    QUEUE_PATTERN,
    SpecLimits,
    encode_json,
)

#: options the fast path understands; anything else goes through TaskSpec
FAST_KEYS = frozenset(
    {
        "name",
        "payload",
        "queue",
        "priority",
        "delay",
        "max_attempts",
        "timeout",
        "lease",
        "idempotency_key",
    }
)
_MAX_ATTEMPTS = (1, 1000)  # TaskSpec.max_attempts: ge=1, le=1000
_KEY_LEN = (1, 512)  # TaskSpec.idempotency_key: min_length=1, max_length=512
_DEFAULT_LEASE_S = 30.0
_DEFAULT_MAX_ATTEMPTS = 3
_REMEMBER = 4096  # validated names and queues kept, per builder
_DEFAULT_TIMES = (None, None, round(_DEFAULT_LEASE_S * 1000))  # no delay, no timeout
_only_fast_keys = FAST_KEYS.issuperset

class SimpleFields(NamedTuple):
    """A TaskSubmitted whose backoff, headers, tags and depends_on are the defaults.

    The encoders index it (``f[9]``, ``f[:3]``) on the hot path; built with
    ``tuple.__new__`` (:meth:`SimpleSpecs.fields`), ~0.3 us where the class call is ~0.9.
    """

    name: str
    queue: str
    priority: int
    payload: bytes
    content_type: str
    eta_ms: int | None
    max_attempts: int
    timeout_ms: int | None
    lease_ms: int
    idempotency_key: str | None


_new_fields = tuple.__new__


def _ms(seconds: float) -> int:
    return round(seconds * 1000)  # as TaskSpec does


def _seconds(value: Any, *, zero_ok: bool) -> float | None:
    """A finite float of an int/float (not bool) within TaskSpec's bound, or None if
    TaskSpec must judge it."""
    if type(value) is not float and type(value) is not int:
        return None
    seconds = float(value)
    if (
        not math.isfinite(seconds)
        or seconds < 0
        or seconds > MAX_DURATION_S
        or (seconds == 0 and not zero_ok)
    ):
        return None
    return seconds


class SimpleSpecs:
    """The fast path for one set of limits."""

    __slots__ = ("_max_payload", "_name_ok", "_names", "_prio", "_queue_ok", "_queues")

    def __init__(self, limits: SpecLimits) -> None:
        self._name_ok = re.compile(limits.name_pattern).fullmatch
        self._queue_ok = re.compile(QUEUE_PATTERN).fullmatch
        self._max_payload = limits.max_payload_bytes
        self._prio = (limits.priority_min, limits.priority_max)
        self._names: set[str] = set()
        self._queues: set[str] = {"default"}

    def _learn(self, value: Any, seen: set[str], ok: Any) -> bool:
        """Whether ``value`` is a valid name/queue not seen yet (remembered if so)."""
        if type(value) is not str or ok(value) is None:
            return False
        if len(seen) < _REMEMBER:
            seen.add(value)
        return True

    def fields(self, f: Mapping[str, Any], at_ms: int) -> SimpleFields | None:
        """The wire fields of ``f`` if it is simple and valid, else None."""
        if not _only_fast_keys(f):
            return None
        get = f.get
        name = get("name")
        queue = get("queue", "default")
        priority = get("priority", 0)
        attempts = get("max_attempts", _DEFAULT_MAX_ATTEMPTS)
        key = get("idempotency_key")
        if not (
            (
                (type(name) is str
                and name in self._names)
                or self._learn(name, self._names, self._name_ok)
            )
            and (
                (type(queue) is str
                and queue in self._queues)
                or self._learn(queue, self._queues, self._queue_ok)
            )
            and type(priority) is int
            and self._prio[0] <= priority <= self._prio[1]
            and type(attempts) is int
            and _MAX_ATTEMPTS[0] <= attempts <= _MAX_ATTEMPTS[1]
            and (key is None or (type(key) is str and _KEY_LEN[0] <= len(key) <= _KEY_LEN[1]))
        ):
            return None
        if "delay" in f or "timeout" in f or "lease" in f:
            times = _times(get("delay"), get("timeout"), get("lease", _DEFAULT_LEASE_S), at_ms)
            if times is None:
                return None
        else:
            times = _DEFAULT_TIMES
        payload = get("payload")
        if type(payload) is bytes:
            data, content_type = payload, BYTES_CONTENT_TYPE
        else:
            try:
                data, content_type = encode_json(payload), JSON_CONTENT_TYPE
            except (TypeError, ValueError):
                return None
        if len(data) > self._max_payload:
            return None
        eta_ms, timeout_ms, lease_ms = times
        assert isinstance(name, str)  # checked above
        return _new_fields(SimpleFields, (
            name,
            queue,
            priority,
            data,
            content_type,
            eta_ms,
            attempts,
            timeout_ms,
            lease_ms,
            key,
        ))


def _times(
    delay: Any, timeout: Any, lease: Any, at_ms: int
) -> tuple[int | None, int | None, int] | None:
    """(eta_ms, timeout_ms, lease_ms), or None if TaskSpec must judge them."""
    eta_ms = timeout_ms = None
    if delay is not None:
        seconds = _seconds(delay, zero_ok=True)
        if seconds is None:
            return None
        eta_ms = at_ms + _ms(seconds) if seconds else None  # a zero delay is "now"
    if timeout is not None:
        seconds = _seconds(timeout, zero_ok=False)
        if seconds is None:
            return None
        timeout_ms = _ms(seconds)
    lease_s = _seconds(lease, zero_ok=False)
    if lease_s is None or lease_s < MIN_LEASE_S:
        return None
    return eta_ms, timeout_ms, _ms(lease_s)
