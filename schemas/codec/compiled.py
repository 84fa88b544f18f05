"""Compiled Avro readers and writers for the newest schema version (docs/decisions.md, D12).

fastavro is general: every call walks the parsed schema, builds dicts, and
:mod:`taskstream.schemas.convert` then turns them into dataclasses. For the
newest Envelope and TaskState schemas, :func:`build_fast_codec` compiles the
schema once into straight-line Python (:mod:`~taskstream.schemas.codec.read`,
:mod:`~taskstream.schemas.codec.write`) that reads the dataclasses straight
from ``bytes`` and writes them back, several times faster.

It is used only after it has agreed with the fastavro path on canaries that
touch every field, union branch and enum symbol, both ways (values equal
including their types, bytes equal); otherwise it logs a warning and the codec
stays on fastavro, as ``producer/fastwire.py`` does. Data written with an older
schema version always goes through fastavro's schema resolution.

Bad bytes raise :class:`DecodeError` as the fastavro path does. The compiled
reader is stricter on bytes no Avro writer produces: a negative union or enum
index and a varint longer than 10 bytes are DecodeErrors (fastavro reads them
as Python's negative indexing and a wrapped 64-bit value).
"""

from __future__ import annotations

import io
import logging
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import fastavro

from taskstream.schemas.catalog import Catalog, SchemaVersion, sample_records
from taskstream.schemas.codec.canaries import canary_envelopes, canary_states
from taskstream.schemas.codec.prims import Corrupt
from taskstream.schemas.codec.read import Bindings, CompileError, reader_source
from taskstream.schemas.codec.write import writer_source
from taskstream.schemas.convert import (
    envelope_from_record,
    envelope_to_record,
    state_from_record,
    state_to_record,
)
from taskstream.schemas.errors import DecodeError
from taskstream.schemas.events import (
    BODY_TYPES,
    Backoff,
    Dependent,
    Envelope,
    FlowControl,
    MisfirePolicy,
    ObjectRef,
    ParentFailurePolicy,
    ParentOutcome,
    ScheduleOp,
    ScheduleSpec,
    TimerKind,
)
from taskstream.schemas.state import ErrorInfo, TaskState, TaskStatus
from taskstream.schemas.wire import (
    SINGLE_OBJECT_HEADER,
    SINGLE_OBJECT_MAGIC,
    decode,
    encode,
    head_hex,
)

log = logging.getLogger(__name__)

T = TypeVar("T")
Reader = Callable[[bytes, int, int], tuple[Any, int]]

BINDINGS = Bindings(
    records={
        f"io.taskstream.{cls.__name__}": cls
        for cls in (Envelope, *BODY_TYPES, Backoff, TaskState, ErrorInfo, Dependent, ScheduleSpec,
                    FlowControl, ObjectRef)
    },
    enums={
        f"io.taskstream.{cls.__name__}": cls
        for cls in (TimerKind, TaskStatus, ParentFailurePolicy, ParentOutcome, MisfirePolicy,
                    ScheduleOp)
    },
)


@dataclass(frozen=True, slots=True)
class FastCodec:
    """The compiled functions for the newest schema version (headers included)."""

    decode_event: Callable[[bytes], Envelope]
    decode_state: Callable[[bytes], TaskState]
    encode_event: Callable[[Envelope], bytes]
    encode_state: Callable[[TaskState], bytes]


def _exec(source: str, entry: str, namespace: dict[str, Any]) -> Any:
    code = compile(source, f"<taskstream.schemas.codec.compiled {entry}>", "exec")
    exec(code, namespace)  # our own source, generated from our own schema
    return namespace[entry]


def _problem(exc: BaseException) -> str:
    if isinstance(exc, IndexError | struct.error):
        return f"the data ends inside a value ({type(exc).__name__}: {exc})"
    if isinstance(exc, UnicodeDecodeError):
        return f"a string is not valid UTF-8 ({exc})"
    if isinstance(exc, Corrupt):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


def make_decoder(read: Reader, what: str, expected: str) -> Callable[[bytes], Any]:
    """A decoder of whole records (header already checked) around a compiled reader."""

    def decode_compiled(data: bytes) -> Any:
        end = len(data)
        try:
            value, pos = read(data, SINGLE_OBJECT_HEADER, end)
        except Exception as exc:  # IndexError, struct.error, UnicodeDecodeError, Corrupt
            raise DecodeError(
                f"cannot decode {what}: the Avro body is truncated or corrupt ({_problem(exc)}); "
                f"expected {expected}; got {head_hex(data)}"
            ) from exc
        if pos != end:
            raise DecodeError(
                f"cannot decode {what}: {end - pos} unexpected bytes after the Avro body; "
                f"expected {expected}; got {head_hex(data)}"
            )
        return value

    return decode_compiled


def compile_version(version: SchemaVersion, what: str, expected: str) -> tuple[Any, Any]:
    """(decoder, encoder) compiled from one top-level schema version."""
    header = SINGLE_OBJECT_MAGIC + version.fingerprint
    read = _exec(*reader_source(version.schema, BINDINGS))
    write = _exec(*writer_source(version.schema, BINDINGS, header))
    return make_decoder(read, what, expected), write


def event_reader(schemas: Catalog) -> tuple[bytes, Reader]:
    """(header, reader) of the newest envelope version, for loops that read millions of
    events (replay): ``reader(data, len(header), len(data))`` gives ``(envelope, end)``.

    The same code the codec compiles. Use it only when the codec's compiled path is
    on (``EventCodec.compiled``, i.e. it agreed with fastavro), only on data that
    starts with ``header``, and only if ``end == len(data)``; on anything else
    (including an exception) fall back to ``decode_event``, which gives the
    DecodeError.
    """
    version = schemas.envelope
    read: Reader = _exec(*reader_source(version.schema, BINDINGS))
    return SINGLE_OBJECT_MAGIC + version.fingerprint, read


@dataclass(frozen=True, slots=True)
class Reference:
    """The fastavro path for one top-level schema (what the compiled code must equal)."""

    version: SchemaVersion
    to_record: Callable[[Any], dict[str, Any]]
    from_record: Callable[[dict[str, Any]], Any]
    what: str

    @property
    def header(self) -> bytes:
        return SINGLE_OBJECT_MAGIC + self.version.fingerprint

    def encode(self, value: Any) -> bytes:
        return encode(self.header, self.version.parsed, self.to_record(value), self.what)

    def decode(self, data: bytes) -> Any:
        parsed = self.version.parsed
        record = decode(data, SINGLE_OBJECT_HEADER, parsed, None, self.what, "")
        return self.from_record(record)

    def write_record(self, record: dict[str, Any]) -> bytes:
        buffer = io.BytesIO()
        buffer.write(self.header)
        fastavro.schemaless_writer(buffer, self.version.parsed, record)
        return buffer.getvalue()


def references(schemas: Catalog) -> tuple[Reference, Reference]:
    return (
        Reference(schemas.envelope, envelope_to_record, envelope_from_record, "event"),
        Reference(schemas.state, state_to_record, state_from_record, "task state"),
    )


def same(a: object, b: object) -> bool:
    """Equal, and of the same types all the way down (an enum member is not its str)."""
    return a == b and repr(a) == repr(b)


def disagreement(
    ref: Reference,
    decoder: Callable[[bytes], Any],
    encoder: Callable[[Any], bytes],
    values: list[Any],
) -> str | None:
    """What the compiled pair gets wrong against ``ref`` on canaries, or None."""
    blobs = [ref.write_record(r) for r in sample_records(ref.version.schema)]
    blobs += [ref.encode(v) for v in values]
    for data in blobs:
        expected = ref.decode(data)
        got = decoder(data)
        if not same(got, expected):
            return f"decoding {head_hex(data)} gave {got!r}, fastavro {expected!r}"
        if encoder(expected) != ref.encode(expected):
            return f"encoding {expected!r} differs from fastavro"
    return None


def build_fast_codec(
    schemas: Catalog, expected_event: str, expected_state: str
) -> FastCodec | None:
    """The compiled codec for the newest versions, or None (with a warning) if it disagrees.

    ``expected_*`` describe the accepted input in DecodeError messages.
    """
    event_ref, state_ref = references(schemas)
    try:
        decode_event, encode_event = compile_version(schemas.envelope, "event", expected_event)
        decode_state, encode_state = compile_version(schemas.state, "task state", expected_state)
        problem = disagreement(
            event_ref, decode_event, encode_event, canary_envelopes()
        ) or disagreement(state_ref, decode_state, encode_state, canary_states())
    except (CompileError, Exception) as exc:  # any failure means: stay on fastavro
        problem = f"{type(exc).__name__}: {exc}"
    if problem is not None:
        log.warning(
            "compiled Avro codec disagrees with fastavro (%s); using fastavro, decoding and "
            "encoding will be slower",
            problem,
        )
        return None
    return FastCodec(decode_event, decode_state, encode_event, encode_state)
