"""A fast path for the one event the producer sends in bulk: TaskSubmitted.

The general encoder (:func:`taskstream.schemas.serde.encode_event`, fastavro
with an 11-branch union) costs ~17 us per event, most of the budget of a
50k/s submit. This module writes the same Avro bytes by hand for the
TaskSubmitted envelope (~3 us). It is used only after it has reproduced
``encode_event`` byte for byte on canary envelopes that touch every field
(:func:`submitted_encoder`); if the schema ever changes shape, the check fails
and the producer falls back to ``encode_event`` with a warning. The tests
compare both encoders on generated envelopes (hypothesis).
"""

from __future__ import annotations

import functools
import logging
import struct
from collections.abc import Callable
from typing import Any

from taskstream.producer.fastspec import SimpleFields
from taskstream.schemas.codec.prims import write_long
from taskstream.schemas.events import Backoff, Envelope, TaskSubmitted
from taskstream.schemas.serde import encode_event

log = logging.getLogger(__name__)

SubmittedEncoder = Callable[[str, str, int, str, TaskSubmitted], bytes]
SimpleEncoder = Callable[[str, str, int, str, SimpleFields], bytes]
HEADER_LEN = 10  # C3 01 + 8-byte fingerprint
_MEMO_MAX = 1024  # entries per memo of the simple encoder (cleared when full)

_pack_double = struct.Struct("<d").pack
_ONE_BYTE = tuple(bytes([(n << 1) if n >= 0 else ((-n << 1) - 1)]) for n in range(-64, 64))
#: Avro's zig-zag varint of a 64-bit integer (the compiled codec's)
avro_long = write_long
_NULL = b"\x00"  # union branch 0 (null) and an empty map/array block
_SECOND = b"\x02"  # union branch 1


def avro_str(s: str) -> bytes:
    b = s.encode("utf-8")
    return avro_long(len(b)) + b


def _optional_long(n: int | None) -> bytes:
    return _NULL if n is None else _SECOND + avro_long(n)


def _strings(items: list[str]) -> bytes:
    if not items:
        return _NULL
    return b"".join([avro_long(len(items)), *map(avro_str, items), _NULL])


def _string_map(m: dict[str, str]) -> bytes:
    if not m:
        return _NULL
    parts = [avro_long(len(m))]
    for k in sorted(m):  # deterministic, as encode_event writes maps
        parts.append(avro_str(k))
        parts.append(avro_str(m[k]))
    parts.append(_NULL)
    return b"".join(parts)


def _backoff(b: Backoff) -> bytes:
    return (
        avro_long(b.initial_ms)
        + _pack_double(b.multiplier)
        + avro_long(b.max_ms)
        + _pack_double(b.jitter)
    )


@functools.lru_cache(maxsize=256)
def _cached_str(s: str) -> bytes:
    """Names, queues, content types: few distinct values, encoded once."""
    return avro_str(s)


def make_fast_encoder(header: bytes) -> SubmittedEncoder:
    """An encoder of (event_id, task_id, occurred_at_ms, source, body) to envelope bytes."""
    long_, str_, cached = avro_long, avro_str, _cached_str
    id_len = avro_long(26)  # IDs are 26 ASCII characters
    memo: list[tuple[Backoff, bytes]] = [(Backoff(), _backoff(Backoff()))]

    def backoff(b: Backoff) -> bytes:
        last = memo[0]
        if b is last[0]:  # the common case: every task shares one Backoff object
            return last[1]
        out = _backoff(b)  # not cached by equality: -0.0 == 0.0 but encodes differently
        memo[0] = (b, out)
        return out

    def id_(s: str) -> bytes:
        return id_len + s.encode("ascii") if len(s) == 26 and s.isascii() else str_(s)

    # attempt 0, then union branch 0 of the body (TaskSubmitted)
    after_source = _NULL + _NULL

    def encode(event_id: str, task_id: str, at_ms: int, source: str, b: TaskSubmitted) -> bytes:
        payload = b.payload
        key = b.idempotency_key
        return b"".join(
            (
                header,
                id_(event_id),
                id_(task_id),
                long_(at_ms),
                cached(source),
                after_source,
                cached(b.name),
                cached(b.queue),
                long_(b.priority),
                long_(len(payload)),
                payload,
                cached(b.content_type),
                _optional_long(b.eta_ms),
                long_(b.max_attempts),
                backoff(b.backoff),
                _optional_long(b.timeout_ms),
                long_(b.lease_ms),
                _NULL if key is None else _SECOND + str_(key),
                _string_map(b.headers) if b.headers else _NULL,
                _strings(b.tags) if b.tags else _NULL,
                _strings(b.depends_on) if b.depends_on else _NULL,
            )
        )

    return encode


def make_simple_encoder(header: bytes) -> SimpleEncoder:
    """Like :func:`make_fast_encoder` for SimpleFields (default backoff, no maps or lists).

    The fields around the payload repeat across tasks (a batch shares its
    timestamp, name, queue and options), so their bytes are kept in small
    memos: what is left per task is the two IDs, the payload and its length.
    """
    long_, str_, cached = avro_long, avro_str, _cached_str
    id_len = avro_long(26)
    after_source = _NULL + _NULL  # attempt 0, union branch 0 (TaskSubmitted)
    default_backoff = _backoff(Backoff())
    empty_tail = _NULL + _NULL + _NULL  # headers {}, tags [], depends_on []
    one_byte = _ONE_BYTE
    # (at_ms, source) -> bytes; (name, queue, priority) -> bytes; options -> bytes
    memo_at: dict[tuple[int, str], bytes] = {}
    memo_head: dict[tuple[Any, ...], bytes] = {}
    memo_tail: dict[tuple[Any, ...], bytes] = {}

    def remember(memo: dict[Any, bytes], key: Any, value: bytes) -> bytes:
        if len(memo) >= _MEMO_MAX:
            memo.clear()
        memo[key] = value
        return value

    def id_(s: str) -> bytes:
        return id_len + s.encode("ascii") if len(s) == 26 and s.isascii() else str_(s)

    def tail_of(f: SimpleFields) -> bytes:
        _n, _q, _p, _d, ctype, eta_ms, attempts, timeout_ms, lease_ms, key = f
        return b"".join(
            (
                cached(ctype),
                _NULL if eta_ms is None else _SECOND + long_(eta_ms),
                long_(attempts),
                default_backoff,
                _NULL if timeout_ms is None else _SECOND + long_(timeout_ms),
                long_(lease_ms),
                _NULL if key is None else _SECOND + str_(key),
                empty_tail,
            )
        )

    def encode(event_id: str, task_id: str, at_ms: int, source: str, f: SimpleFields) -> bytes:
        at = memo_at.get((at_ms, source))
        if at is None:
            at = remember(memo_at, (at_ms, source), long_(at_ms) + cached(source) + after_source)
        head_key = f[:3]
        head = memo_head.get(head_key)
        if head is None:
            name, queue, priority = head_key
            head = remember(memo_head, head_key, cached(name) + cached(queue) + long_(priority))
        if f[9] is None:  # no idempotency key: the options repeat across tasks
            tail_key = f[4:9]
            tail = memo_tail.get(tail_key)
            if tail is None:
                tail = remember(memo_tail, tail_key, tail_of(f))
        else:
            tail = tail_of(f)
        payload = f[3]
        size = len(payload)
        return b"".join(
            (
                header,
                id_(event_id),
                id_(task_id),
                at,
                head,
                one_byte[size + 64] if size < 64 else long_(size),
                payload,
                tail,
            )
        )

    return encode


def simple_to_submitted(f: SimpleFields) -> TaskSubmitted:
    """The TaskSubmitted that SimpleFields stand for."""
    name, queue, priority, payload, ctype, eta_ms, attempts, timeout_ms, lease_ms, key = f
    return TaskSubmitted(
        name=name,
        queue=queue,
        priority=priority,
        payload=payload,
        content_type=ctype,
        eta_ms=eta_ms,
        max_attempts=attempts,
        backoff=Backoff(),
        timeout_ms=timeout_ms,
        lease_ms=lease_ms,
        idempotency_key=key,
    )


def reference_simple_encoder(
    event_id: str, task_id: str, at_ms: int, source: str, f: SimpleFields
) -> bytes:
    body = simple_to_submitted(f)
    return encode_event(Envelope(event_id, task_id, at_ms, source, 0, body))


def simple_encoder() -> SimpleEncoder:
    """The fast SimpleFields encoder if it matches encode_event on canaries, else the reference."""
    header = encode_event(canaries()[0])[:HEADER_LEN]
    fast = make_simple_encoder(header)
    samples: list[SimpleFields] = [
        ("a", "default", 0, b"null", "application/json", None, 3, None, 30_000, None),
        (
            "n.x",
            "q-1",
            2,
            b"\x00" * 300,
            "application/octet-stream",
            2**45,
            1000,
            7,
            2**33,
            "k\u00e9",
        ),
    ]
    for f in samples:
        args = ("01ARZ3NDEKTSV4RRFFQ69G5FAV", "7ZZZZZZZZZZZZZZZZZZZZZZZZZ", 123, "src", f)
        if fast(*args) != reference_simple_encoder(*args):
            log.warning("fast simple-task encoder disagrees with encode_event; not using it")
            return reference_simple_encoder
    return fast


def reference_encoder(
    event_id: str, task_id: str, at_ms: int, source: str, body: TaskSubmitted
) -> bytes:
    """The general encoder with the fast encoder's signature."""
    return encode_event(Envelope(event_id, task_id, at_ms, source, 0, body))


def canaries() -> list[Envelope]:
    """Envelopes that exercise every field and both branches of every union."""
    plain = TaskSubmitted(
        name="canary",
        queue="default",
        priority=0,
        payload=b"",
        content_type="application/json",
        eta_ms=None,
        max_attempts=1,
        backoff=Backoff(),
        timeout_ms=None,
        lease_ms=30_000,
    )
    full = TaskSubmitted(
        name="caná ry ✓",
        queue="q-1",
        priority=9,
        payload=bytes(range(256)) * 3,
        content_type="application/octet-stream",
        eta_ms=1_900_000_000_000,
        max_attempts=1_000_000,
        backoff=Backoff(initial_ms=7, multiplier=1.5, max_ms=2**40, jitter=0.0),
        timeout_ms=-1,
        lease_ms=2**35,
        idempotency_key="k\u00e9y",
        headers={"b": "2", "a": "1", "ü": "ω"},
        tags=["x", "yy", ""],
        depends_on=["01ARZ3NDEKTSV4RRFFQ69G5FAV"],
    )
    return [
        Envelope("01ARZ3NDEKTSV4RRFFQ69G5FAV", "7ZZZZZZZZZZZZZZZZZZZZZZZZZ", 0, "p", 0, plain),
        Envelope(
            "01ARZ3NDEKTSV4RRFFQ69G5FAW", "00000000000000000000000000", 2**47, "s" * 200, 0, full
        ),
    ]


def submitted_encoder() -> SubmittedEncoder:
    """The fast encoder if it matches encode_event on every canary, else the reference."""
    first = canaries()[0]
    header = encode_event(first)[:HEADER_LEN]
    fast = make_fast_encoder(header)
    for env in canaries():
        assert isinstance(env.body, TaskSubmitted)
        args = (env.event_id, env.task_id, env.occurred_at_ms, env.source, env.body)
        if fast(*args) != encode_event(env):
            log.warning(
                "fast TaskSubmitted encoder disagrees with encode_event (schema changed?); "
                "using the general encoder, submits will be slower"
            )
            return reference_encoder
    return fast
