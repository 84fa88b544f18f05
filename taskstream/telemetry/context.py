"""A task's trace context: W3C ``traceparent`` in Kafka headers, and ids derived from the task.

One task is one trace, and its trace id is the task ID's own 128 bits (a task ID
is 26 Crockford base32 characters, the ULID text form: exactly a W3C trace id).
The spans every process can name without being told are derived from the task ID
too: the submit span (the root), each dispatch (by its dispatch id) and each
retry (by the attempt that failed). So a processor that fires a retry timer, a
worker that reads a ready record without headers, or a log line written with
tracing off all know the task's trace id and the span to hang under, with no
state kept anywhere and nothing added to the Avro contract (docs/decisions.md, D22).

The ``traceparent`` header still travels on every record (submit -> events,
dispatch -> ready, worker outcome -> events): it carries the spans whose ids are
random (a worker's run span, under which the processor hangs a retry) and the
sampling decision, and a third-party consumer with ordinary OpenTelemetry Kafka
instrumentation can read it. A header whose trace is not the task's (a client
that traced the submit inside its own trace) becomes a link, never a parent:
one task, one trace.

Pure functions only: no OpenTelemetry SDK here (tracing.py uses these).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
#: a Crockford base32 character -> the character int(x, 32) reads as the same digit;
#: anything else -> a character int() refuses
_TO_BASE32 = {code: "!" for code in range(128)} | {
    ord(c): "0123456789abcdefghijklmnopqrstuv"[i] for i, c in enumerate(_CROCKFORD)} | {
    ord(c.lower()): "0123456789abcdefghijklmnopqrstuv"[i] for i, c in enumerate(_CROCKFORD)}
_MASK64 = (1 << 64) - 1
_HEX = frozenset("0123456789abcdef")

#: Header = (name, value) as confluent-kafka and aiokafka hand them over
Header = tuple[str, "bytes | str | None"]


@dataclass(frozen=True, slots=True)
class TraceContext:
    """A span's place in a trace: what ``traceparent`` carries."""

    trace_id: int
    span_id: int
    sampled: bool = True

    @property
    def trace_hex(self) -> str:
        return f"{self.trace_id:032x}"

    @property
    def span_hex(self) -> str:
        return f"{self.span_id:016x}"

    def traceparent(self) -> str:
        return f"00-{self.trace_id:032x}-{self.span_id:016x}-{'01' if self.sampled else '00'}"

    def header(self) -> tuple[str, bytes]:
        """The Kafka header that carries this context."""
        return (TRACEPARENT, self.traceparent().encode("ascii"))


def _hex_field(text: str, length: int) -> int | None:
    if len(text) != length or not set(text) <= _HEX:
        return None
    value = int(text, 16)
    return value or None  # all zeros is invalid (W3C)


def parse_traceparent(value: bytes | str | None) -> TraceContext | None:
    """A ``traceparent`` value, or None when it is missing or not valid W3C.

    Version 00 must be exactly 55 characters; a later version is read by its
    first four fields (the spec's rule for unknown versions); ``ff`` is invalid.
    """
    if value is None:
        return None
    if isinstance(value, bytes):
        try:
            value = value.decode("ascii")
        except UnicodeDecodeError:
            return None
    value = value.strip()
    parts = value.split("-")
    if len(parts) < 4 or len(parts[0]) != 2 or not set(parts[0]) <= _HEX or parts[0] == "ff":
        return None
    if parts[0] == "00" and len(parts) != 4:
        return None
    trace_id, span_id = _hex_field(parts[1], 32), _hex_field(parts[2], 16)
    if trace_id is None or span_id is None or len(parts[3]) != 2 or not set(parts[3]) <= _HEX:
        return None
    return TraceContext(trace_id, span_id, bool(int(parts[3], 16) & 1))


def from_headers(headers: Iterable[Header] | Mapping[str, bytes | str | None] | None
                 ) -> TraceContext | None:
    """The context in a record's ``traceparent`` header (the last one wins), or None."""
    if not headers:
        return None
    if isinstance(headers, Mapping):
        return parse_traceparent(headers.get(TRACEPARENT))
    found: bytes | str | None = None
    for name, value in headers:
        if name == TRACEPARENT:
            found = value
    return parse_traceparent(found)


def task_trace_id(task_id: str) -> int:
    """The trace id of a task: its ID's 128 bits (any other key: 128 bits of its sha256)."""
    if len(task_id) == 26:
        try:  # Crockford digits -> int()'s base-32 digits, then one C call
            value = int(task_id.translate(_TO_BASE32), 32)
        except ValueError:
            value = 0
        if 0 < value < 1 << 128:
            return value
    digest = hashlib.sha256(b"taskstream.trace.v1|" + task_id.encode("utf-8")).digest()
    return int.from_bytes(digest[:16], "big") or 1


def task_trace_hex(task_id: str) -> str:
    """The trace id of a task as 32 hex digits (what logs and trace UIs show)."""
    return f"{task_trace_id(task_id):032x}"


def derived_span_id(task_id: str, *parts: str | int) -> int:
    """A span id that is a pure function of the task and what the span is about."""
    text = "|".join([task_id, *map(str, parts)])
    digest = hashlib.sha256(b"taskstream.span.v1|" + text.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") or 1


def sampled_by_ratio(trace_id: int, ratio: float) -> bool:
    """The same decision as OpenTelemetry's ``TraceIdRatioBased``: the low 64 bits of the
    trace id against the ratio (task IDs end in 80 random bits; derived IDs are hashes)."""
    if ratio >= 1.0:
        return True
    return (trace_id & _MASK64) < round(ratio * (_MASK64 + 1))


def submit_context(task_id: str, ratio: float = 1.0) -> TraceContext:
    """The root span of a task's trace: the submit."""
    trace_id = task_trace_id(task_id)
    return TraceContext(trace_id, derived_span_id(task_id, "submit"),
                        sampled_by_ratio(trace_id, ratio))


def dispatch_context(task_id: str, dispatch_id: str, ratio: float = 1.0) -> TraceContext:
    """The span of one dispatch of the task (one attempt written to a ready topic)."""
    trace_id = task_trace_id(task_id)
    return TraceContext(trace_id, derived_span_id(task_id, "dispatch", dispatch_id),
                        sampled_by_ratio(trace_id, ratio))


def retry_context(task_id: str, failed_attempt: int, ratio: float = 1.0) -> TraceContext:
    """The span of the retry that follows the failure of ``failed_attempt``."""
    trace_id = task_trace_id(task_id)
    return TraceContext(trace_id, derived_span_id(task_id, "retry", failed_attempt),
                        sampled_by_ratio(trace_id, ratio))


def parent_in_task(task_id: str, carried: TraceContext | None, fallback: TraceContext
                   ) -> tuple[TraceContext, TraceContext | None]:
    """(parent, link): the carried context when it is in the task's trace, else the
    fallback with the carried context as a link (a foreign trace never adopts the task)."""
    if carried is not None and carried.trace_id == task_trace_id(task_id):
        return carried, None
    return fallback, carried
