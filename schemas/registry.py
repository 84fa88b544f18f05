"""The schema-registry option: Confluent wire format through a schema registry.

``RegistryCodec(url)`` has the methods of the default codec (``encode_event``,
``decode_event``, ``encode_state``, ``decode_state``) but writes
``00 | schema ID (4 bytes, big-endian) | Avro binary body``, the format of
Confluent's serializers, so tools that speak a registry can read our topics.

* Subjects follow the record-name strategy: events register under
  ``io.taskstream.Envelope``, states under ``io.taskstream.TaskState``
  (one subject serves every topic, because every topic carries the envelope).
  Set the subject's compatibility to FULL in the registry; our own tests hold
  every version to FULL (:func:`taskstream.schemas.catalog.check_full_compatible`).
* The newest schema is registered (or found, if already there) on first use and
  its ID cached. A reader fetches an unknown ID once (``GET /schemas/ids/{id}``),
  caches it and resolves the writer schema into the newest one it knows.
* A registry that cannot be reached raises :class:`RegistryError` (retriable:
  retry, do not quarantine); an ID the registry does not know, or bytes that are
  not this format, raise :class:`DecodeError` (quarantine).

The client is ``confluent_kafka.schema_registry.SchemaRegistryClient`` (needs
``httpx2``, ``authlib``, ``attrs`` and ``cachetools``, declared in pyproject).
No registry server runs in this project's test environment: the tests drive this
class against a small fake of the REST subset the client uses (POST
``/subjects/{subject}/versions``, GET ``/schemas/ids/{id}``), so the HTTP
exchange is real but the registry's own compatibility checks are not exercised.
"""

from __future__ import annotations

import json
from typing import Any

from fastavro.schema import parse_schema, to_parsing_canonical_form

from taskstream.schemas.catalog import Catalog, SchemaVersion, catalog
from taskstream.schemas.convert import (
    envelope_from_record,
    envelope_to_record,
    state_from_record,
    state_to_record,
)
from taskstream.schemas.errors import DecodeError, RegistryError
from taskstream.schemas.events import Envelope
from taskstream.schemas.state import TaskState
from taskstream.schemas.wire import (
    CONFLUENT_HEADER,
    CONFLUENT_MAGIC,
    as_bytes,
    decode,
    encode,
    head_hex,
)

_EXPECTED = "00 + a 4-byte schema ID known to the registry + Avro body"


class RegistryCodec:
    """Encode and decode with the Confluent wire format and a schema registry."""

    def __init__(
        self,
        url: str,
        *,
        timeout_s: float = 10.0,
        schemas: Catalog | None = None,
        client: Any = None,
        event_subject: str | None = None,
        state_subject: str | None = None,
    ) -> None:
        self._catalog = schemas or catalog()
        if client is None:
            from confluent_kafka.schema_registry import SchemaRegistryClient

            client = SchemaRegistryClient({"url": url, "timeout": timeout_s, "max.retries": 2})
        self._client = client
        self._url = url
        self._event_subject = event_subject or self._catalog.envelope.name
        self._state_subject = state_subject or self._catalog.state.name
        self._headers: dict[str, bytes] = {}  # subject -> header of the newest schema
        # schema ID -> (kind, writer schema, reader schema or None)
        self._by_id: dict[int, tuple[str, Any, Any]] = {}

    # --- encode ----------------------------------------------------------------

    def encode_event(self, env: Envelope) -> bytes:
        newest = self._catalog.envelope
        header = self._header(self._event_subject, newest)
        return encode(header, newest.parsed, envelope_to_record(env), "event")

    def encode_state(self, s: TaskState) -> bytes:
        newest = self._catalog.state
        header = self._header(self._state_subject, newest)
        return encode(header, newest.parsed, state_to_record(s), "task state")

    def _header(self, subject: str, newest: SchemaVersion) -> bytes:
        header = self._headers.get(subject)
        if header is None:
            schema_id = self._register(subject, newest)
            header = CONFLUENT_MAGIC + schema_id.to_bytes(4, "big")
            self._headers[subject] = header
            self._by_id[schema_id] = (newest.name, newest.parsed, None)
        return header

    def _register(self, subject: str, newest: SchemaVersion) -> int:
        from confluent_kafka.schema_registry import Schema

        try:
            schema_id: int = self._client.register_schema(subject, Schema(newest.json, "AVRO"))
        except Exception as exc:  # SchemaRegistryError, httpx transport errors, ...
            raise RegistryError(
                f"cannot register {newest.name} v{newest.version} under subject {subject!r} "
                f"at {self._url}: {exc}; check that the registry is up and that the subject's "
                f"compatibility allows this version"
            ) from exc
        return schema_id

    # --- decode ----------------------------------------------------------------

    def decode_event(self, data: bytes) -> Envelope:
        data = as_bytes(data, "event")
        writer, reader = self._writer(data, self._catalog.envelope, "event")
        record = decode(data, CONFLUENT_HEADER, writer, reader, "event", _EXPECTED)
        try:
            return envelope_from_record(record)
        except (KeyError, TypeError, ValueError) as exc:
            raise DecodeError(f"event body does not map onto Envelope: {exc}") from exc

    def decode_state(self, data: bytes) -> TaskState:
        data = as_bytes(data, "task state")
        writer, reader = self._writer(data, self._catalog.state, "task state")
        record = decode(data, CONFLUENT_HEADER, writer, reader, "task state", _EXPECTED)
        try:
            return state_from_record(record)
        except (KeyError, TypeError, ValueError) as exc:
            raise DecodeError(f"task state does not map onto TaskState: {exc}") from exc

    def _writer(self, data: bytes, newest: SchemaVersion, what: str) -> tuple[Any, Any]:
        if len(data) < CONFLUENT_HEADER or data[:1] != CONFLUENT_MAGIC:
            raise DecodeError(
                f"cannot decode {what}: not the Confluent wire format; expected {_EXPECTED}; "
                f"got {head_hex(data)}"
            )
        schema_id = int.from_bytes(data[1:CONFLUENT_HEADER], "big")
        found = self._by_id.get(schema_id)
        if found is None:
            found = self._fetch(schema_id, what)
            self._by_id[schema_id] = found
        kind, writer, reader = found
        if kind != newest.name:
            raise DecodeError(
                f"cannot decode {what}: schema ID {schema_id} is a {kind}, not a {newest.name}"
            )
        return writer, reader

    def _fetch(self, schema_id: int, what: str) -> tuple[str, Any, Any]:
        from confluent_kafka.schema_registry.error import SchemaRegistryError

        try:
            schema = self._client.get_schema(schema_id)
        except SchemaRegistryError as exc:
            if exc.http_status_code == 404:
                raise DecodeError(
                    f"cannot decode {what}: schema ID {schema_id} is unknown to the registry at "
                    f"{self._url}"
                ) from exc
            raise RegistryError(f"cannot fetch schema {schema_id} from {self._url}: {exc}") from exc
        except Exception as exc:  # transport errors: retriable, not the record's fault
            raise RegistryError(f"cannot fetch schema {schema_id} from {self._url}: {exc}") from exc
        try:
            writer_json = json.loads(schema.schema_str)
            canonical = to_parsing_canonical_form(writer_json)
            name = json.loads(canonical)["name"]
        except (ValueError, TypeError, KeyError) as exc:
            raise DecodeError(f"schema ID {schema_id} is not an Avro record schema: {exc}") from exc
        newest = (
            self._catalog.envelope if name == self._catalog.envelope.name else self._catalog.state
        )
        for known in (*self._catalog.envelopes, *self._catalog.states):
            if known.canonical == canonical:
                return name, known.parsed, None if known is newest else newest.parsed
        return name, parse_schema(writer_json), newest.parsed
