"""A fast path for the one event the producer sends in bulk: a TaskSubmitted of simple fields.

A spec with only simple options (:mod:`taskstream.producer.fastspec`: default
backoff, no headers, tags or dependencies) is written by hand, the fields that
repeat across a batch kept in small memos, from the Avro pieces of the compiled
codec (:mod:`taskstream.schemas.codec.prims`). It is used only after it has
reproduced ``encode_event`` byte for byte on samples that touch every field
(:func:`simple_encoder`); if the schema ever changes shape, the check fails and
the producer falls back to ``encode_event`` with a warning. The tests compare
both on generated fields (hypothesis).

Every other TaskSubmitted goes through :func:`encode_submitted`, ``encode_event``
itself: since the compiled codec (D12) a hand-written encoder of the whole
envelope was no faster (measured for issue 13; figures in the commit that removed it).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any

from taskstream.producer.fastspec import SimpleFields
from taskstream.schemas.codec.prims import NULL, SECOND, SMALL_LONG, pack_double
from taskstream.schemas.codec.prims import write_long as avro_long
from taskstream.schemas.events import Backoff, Envelope, TaskSubmitted
from taskstream.schemas.serde import encode_event

log = logging.getLogger(__name__)

SubmittedEncoder = Callable[[str, str, int, str, TaskSubmitted], bytes]
SimpleEncoder = Callable[[str, str, int, str, SimpleFields], bytes]
HEADER_LEN = 10  # C3 01 + 8-byte fingerprint
_MEMO_MAX = 1024  # entries per memo of the simple encoder (cleared when full)



def avro_str(s: str) -> bytes:
    b = s.encode("utf-8")
    return avro_long(len(b)) + b


def _backoff(b: Backoff) -> bytes:
    return (
        avro_long(b.initial_ms)
        + pack_double(b.multiplier)
        + avro_long(b.max_ms)
        + pack_double(b.jitter)
    )


@functools.lru_cache(maxsize=256)
def _cached_str(s: str) -> bytes:
    """Names, queues, content types: few distinct values, encoded once."""
    return avro_str(s)


def make_simple_encoder(header: bytes) -> SimpleEncoder:
    """An encoder of (event_id, task_id, occurred_at_ms, source, SimpleFields) to envelope bytes.

    The fields around the payload repeat across tasks (a batch shares its
    timestamp, name, queue and options), so their bytes are kept in small
    memos: what is left per task is the two IDs, the payload and its length.
    """
    long_, str_, cached = avro_long, avro_str, _cached_str
    id_len = avro_long(26)
    after_source = NULL + NULL  # attempt 0, union branch 0 (TaskSubmitted)
    default_backoff = _backoff(Backoff())
    # headers {}, tags [], depends_on [], on_parent_failure CANCEL (symbol 0),
    # dependency_timeout_ms null, dependents [], expires_at_ms null, flow null, payload_ref
    # null (v2; the self-check below proves the layout)
    empty_tail = NULL * 9
    one_byte = SMALL_LONG
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
                NULL if eta_ms is None else SECOND + long_(eta_ms),
                long_(attempts),
                default_backoff,
                NULL if timeout_ms is None else SECOND + long_(timeout_ms),
                long_(lease_ms),
                NULL if key is None else SECOND + str_(key),
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
    """The fast SimpleFields encoder if it matches encode_event on samples, else the reference."""
    samples = [
        SimpleFields("a", "default", 0, b"null", "application/json", None, 3, None, 30_000, None),
        SimpleFields(
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
    ids = ("01ARZ3NDEKTSV4RRFFQ69G5FAV", "7ZZZZZZZZZZZZZZZZZZZZZZZZZ")
    header = reference_simple_encoder(*ids, 123, "src", samples[0])[:HEADER_LEN]
    fast = make_simple_encoder(header)
    for f in samples:
        args = (*ids, 123, "src", f)
        if fast(*args) != reference_simple_encoder(*args):
            log.warning("fast simple-task encoder disagrees with encode_event; not using it")
            return reference_simple_encoder
    return fast


def encode_submitted(
    event_id: str, task_id: str, at_ms: int, source: str, body: TaskSubmitted
) -> bytes:
    """A TaskSubmitted envelope's bytes: ``encode_event`` with the simple encoder's signature."""
    return encode_event(Envelope(event_id, task_id, at_ms, source, 0, body))
