"""Events and task states to bytes and back.

Default wire format: Avro single-object encoding,
``C3 01 | CRC-64-AVRO fingerprint of the writer schema (8 bytes, little-endian)
| Avro binary body``. A reader looks the fingerprint up among every released
schema version (:mod:`taskstream.schemas.catalog`); data written with an older
version is resolved into the newest. Unknown fingerprint, truncated bytes,
trailing bytes or garbage raise :class:`~taskstream.schemas.errors.DecodeError`
and nothing else.

Encoding is deterministic: the same value always gives the same bytes (maps
are written in key order), so a replayed task state equals the live one byte
for byte.

With a schema registry (``Settings.schema_registry_url``), use
:class:`RegistryCodec` instead: same methods, Confluent wire format.

Per-event cost is measured by ``tests/test_schemas_serde.py::test_report_cost``
and stated in docs/schemas.md.
"""

from __future__ import annotations

import functools
from typing import Any

from taskstream.schemas.catalog import Catalog, SchemaVersion, catalog
from taskstream.schemas.codec.compiled import FastCodec, build_fast_codec
from taskstream.schemas.convert import (
    ENTITY_CODECS,
    envelope_from_record,
    envelope_to_record,
    state_from_record,
    state_to_record,
)
from taskstream.schemas.errors import DecodeError
from taskstream.schemas.events import Envelope
from taskstream.schemas.registry import RegistryCodec
from taskstream.schemas.state import EntityState, TaskState
from taskstream.schemas.wire import (
    SINGLE_OBJECT_HEADER,
    SINGLE_OBJECT_MAGIC,
    as_bytes,
    decode,
    encode,
    head_hex,
)

__all__ = [
    "AvroCodec",
    "RegistryCodec",
    "decode_entity",
    "decode_event",
    "decode_state",
    "default_codec",
    "encode_entity",
    "encode_event",
    "encode_state",
]

class AvroCodec:
    """Single-object encoding over a :class:`Catalog` (parsed once, reused).

    With ``compiled`` (the default), records of the newest schema version go
    through code compiled from that schema (:mod:`taskstream.schemas.codec.compiled`,
    several times faster than fastavro, same bytes and values); older versions,
    values the compiled writer does not take, and a compiled codec that failed
    its self-check go through fastavro.
    """

    def __init__(self, schemas: Catalog, *, compiled: bool = True) -> None:
        self._catalog = schemas
        self._event_header = SINGLE_OBJECT_MAGIC + schemas.envelope.fingerprint
        self._state_header = SINGLE_OBJECT_MAGIC + schemas.state.fingerprint
        self._event_schema = schemas.envelope.parsed
        self._state_schema = schemas.state.parsed
        # fingerprint -> (writer schema, reader schema or None when no resolution is needed)
        self._events = self._readers(schemas.envelopes)
        self._states = self._readers(schemas.states)
        self._expected_events = self._describe(schemas.envelopes)
        self._expected_states = self._describe(schemas.states)
        # the other kinds' states (convert.ENTITY_CODECS): fastavro only (rarer than tasks,
        # written once per batch; D37, D32)
        self._entity_writers = {
            cls: (SINGLE_OBJECT_MAGIC + versions[-1].fingerprint, versions[-1].parsed, to)
            for name, (cls, to, _) in ENTITY_CODECS.items()
            if (versions := schemas.entity_versions(name))}
        self._entity_readers = {
            v.fingerprint: (v.parsed, None if v is vs[-1] else vs[-1].parsed, back)
            for name, (_, _, back) in ENTITY_CODECS.items()
            for vs in [schemas.entity_versions(name)] for v in vs}
        self._fast: FastCodec | None = (
            build_fast_codec(schemas, self._expected_events, self._expected_states)
            if compiled
            else None
        )

    @staticmethod
    def _readers(versions: tuple[SchemaVersion, ...]) -> dict[bytes, tuple[Any, Any]]:
        newest = versions[-1]
        return {v.fingerprint: (v.parsed, None if v is newest else newest.parsed) for v in versions}

    @staticmethod
    def _describe(versions: tuple[SchemaVersion, ...]) -> str:
        known = ", ".join(f"v{v.version}={v.fingerprint.hex()}" for v in versions)
        return f"c3 01 + the fingerprint of a known {versions[0].name} schema ({known}) + body"

    @property
    def catalog(self) -> Catalog:
        return self._catalog

    @property
    def compiled(self) -> bool:
        """Whether the compiled codec is in use (False: fastavro only)."""
        return self._fast is not None

    def encode_event(self, env: Envelope) -> bytes:
        if self._fast is not None:
            try:
                return self._fast.encode_event(env)
            except Exception:  # a value the compiled writer leaves to fastavro
                return self._encode_event_fastavro(env)
        return self._encode_event_fastavro(env)

    def _encode_event_fastavro(self, env: Envelope) -> bytes:
        return encode(self._event_header, self._event_schema, envelope_to_record(env), "event")

    def decode_event(self, data: bytes) -> Envelope:
        if data.__class__ is not bytes:
            data = as_bytes(data, "event")
        if self._fast is not None and data.startswith(self._event_header):
            return self._fast.decode_event(data)
        writer, reader = self._lookup(data, self._events, self._expected_events, "event")
        record = decode(data, SINGLE_OBJECT_HEADER, writer, reader, "event", self._expected_events)
        try:
            return envelope_from_record(record)
        except (KeyError, TypeError, ValueError) as exc:
            raise DecodeError(f"event body does not map onto Envelope: {exc}") from exc

    def encode_state(self, s: TaskState) -> bytes:
        if self._fast is not None:
            try:
                return self._fast.encode_state(s)
            except Exception:  # a value the compiled writer leaves to fastavro
                return self._encode_state_fastavro(s)
        return self._encode_state_fastavro(s)

    def _encode_state_fastavro(self, s: TaskState) -> bytes:
        return encode(self._state_header, self._state_schema, state_to_record(s), "task state")

    def decode_state(self, data: bytes) -> TaskState:
        if data.__class__ is not bytes:
            data = as_bytes(data, "task state")
        if self._fast is not None and data.startswith(self._state_header):
            return self._fast.decode_state(data)
        writer, reader = self._lookup(data, self._states, self._expected_states, "task state")
        record = decode(
            data, SINGLE_OBJECT_HEADER, writer, reader, "task state", self._expected_states
        )
        try:
            return state_from_record(record)
        except (KeyError, TypeError, ValueError) as exc:
            raise DecodeError(f"task state does not map onto TaskState: {exc}") from exc

    def encode_entity(self, state: EntityState) -> bytes:
        """Any entity kind's state (a task's through :meth:`encode_state`)."""
        if isinstance(state, TaskState):
            return self.encode_state(state)
        found = self._entity_writers.get(type(state))
        if found is None:
            raise TypeError(f"no schema for {type(state).__name__} in this catalog")
        header, schema, to = found
        return encode(header, schema, to(state), type(state).__name__)

    def decode_entity(self, data: bytes) -> EntityState:
        """The state of any entity kind, told apart by its fingerprint."""
        if data.__class__ is not bytes:
            data = as_bytes(data, "entity state")
        found = self._entity_readers.get(data[2:SINGLE_OBJECT_HEADER])
        if found is None or data[:2] != SINGLE_OBJECT_MAGIC:
            return self.decode_state(data)  # a task's, or the DecodeError naming the problem
        writer, reader, back = found
        record = decode(data, SINGLE_OBJECT_HEADER, writer, reader, "entity state", "")
        try:
            return back(record)
        except (KeyError, TypeError, ValueError) as exc:
            raise DecodeError(f"entity state does not map onto its type: {exc}") from exc

    def _lookup(
        self, data: bytes, readers: dict[bytes, tuple[Any, Any]], expected: str, what: str
    ) -> tuple[Any, Any]:
        if len(data) < SINGLE_OBJECT_HEADER or data[:2] != SINGLE_OBJECT_MAGIC:
            problem = (
                "too short for the header"
                if data[:2] == SINGLE_OBJECT_MAGIC
                else (
                    "wrong magic bytes (Confluent wire format? then use RegistryCodec)"
                    if data[:1] == b"\x00"
                    else "wrong magic bytes"
                )
            )
            raise DecodeError(
                f"cannot decode {what}: {problem}; expected {expected}; got {head_hex(data)}"
            )
        found = readers.get(data[2:SINGLE_OBJECT_HEADER])
        if found is None:
            other = self._other_kind(data[2:SINGLE_OBJECT_HEADER])
            raise DecodeError(
                f"cannot decode {what}: unknown schema fingerprint "
                f"{data[2:SINGLE_OBJECT_HEADER].hex()}{other}; expected {expected}; got "
                f"{head_hex(data)}. If a newer taskstream wrote it, upgrade this reader"
            )
        return found

    def _other_kind(self, fp: bytes) -> str:
        if fp in self._states:
            return " (that is a TaskState, not an Envelope)"
        if fp in self._events:
            return " (that is an Envelope, not a TaskState)"
        if fp in self._entity_readers:
            return " (that is the state of a rate limit or concurrency key: decode_entity)"
        return ""


@functools.cache
def default_codec() -> AvroCodec:
    """The codec over the schemas shipped with this package (built once per process)."""
    return AvroCodec(catalog())


def encode_event(env: Envelope) -> bytes:
    """An envelope as single-object-encoded Avro bytes (deterministic)."""
    return default_codec().encode_event(env)


def decode_event(data: bytes) -> Envelope:
    """Bytes from :func:`encode_event` (any released version) back to an Envelope.

    Raises :class:`DecodeError` for anything else.
    """
    return default_codec().decode_event(data)


def encode_state(s: TaskState) -> bytes:
    """A task state as single-object-encoded Avro bytes (deterministic)."""
    return default_codec().encode_state(s)


def decode_state(data: bytes) -> TaskState:
    """Bytes from :func:`encode_state` (any released version) back to a TaskState."""
    return default_codec().decode_state(data)


def encode_entity(state: EntityState) -> bytes:
    """The state of any entity kind (task, schedule, group, limit, key) as bytes
    (deterministic)."""
    return default_codec().encode_entity(state)


def decode_entity(data: bytes) -> EntityState:
    """Bytes from :func:`encode_entity` back to the state of its kind."""
    return default_codec().decode_entity(data)
