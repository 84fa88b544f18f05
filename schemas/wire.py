"""Shared byte-level helpers of the two wire formats (single-object and Confluent)."""

from __future__ import annotations

import io
from typing import Any, cast

import fastavro

from taskstream.schemas.errors import DecodeError, EncodeError

#: Avro single-object encoding: these two bytes, then the 8-byte fingerprint.
SINGLE_OBJECT_MAGIC = b"\xc3\x01"
SINGLE_OBJECT_HEADER = 10
#: Confluent wire format: magic byte 0, then a 4-byte big-endian schema ID.
CONFLUENT_MAGIC = b"\x00"
CONFLUENT_HEADER = 5

_SHOWN_BYTES = 16


def head_hex(data: bytes) -> str:
    """The first bytes of ``data`` in hex, for error messages."""
    shown = bytes(data[:_SHOWN_BYTES]).hex(" ")
    more = " ..." if len(data) > _SHOWN_BYTES else ""
    return f"{len(data)} bytes: {shown or '(none)'}{more}"


def as_bytes(data: object, what: str) -> bytes:
    if isinstance(data, bytes):
        return data
    if isinstance(data, bytearray | memoryview):
        return bytes(data)
    hint = " (a Kafka tombstone?)" if data is None else ""
    raise DecodeError(f"cannot decode {what}: expected bytes, got {type(data).__name__}{hint}")


def encode(header: bytes, parsed: Any, record: dict[str, Any], what: str) -> bytes:
    buffer = io.BytesIO()
    buffer.write(header)
    try:
        fastavro.schemaless_writer(buffer, parsed, record)
    except Exception as exc:  # fastavro raises ValueError, TypeError, KeyError, ...
        raise EncodeError(
            f"cannot encode {what}: a field does not fit its Avro type ({type(exc).__name__}: "
            f"{exc}); check the field types against schemas/events.py"
        ) from exc
    return buffer.getvalue()


def decode(
    data: bytes, offset: int, writer: Any, reader: Any, what: str, expected: str
) -> dict[str, Any]:
    """Read one Avro body from ``data[offset:]``; every failure is a DecodeError.

    ``reader`` is None when the writer's schema is the newest (no resolution);
    record-typed union branches come back as ``(full name, dict)``.
    """
    buffer = io.BytesIO(data)
    buffer.seek(offset)
    try:
        record = cast(
            dict[str, Any],
            fastavro.schemaless_reader(
                buffer, writer, reader, return_record_name=True, return_record_name_override=True
            ),
        )
    except Exception as exc:  # EOFError, ValueError, UnicodeDecodeError, IndexError, ...
        raise DecodeError(
            f"cannot decode {what}: the Avro body is truncated or corrupt "
            f"({type(exc).__name__}: {exc}); expected {expected}; got {head_hex(data)}"
        ) from exc
    if buffer.tell() != len(data):
        raise DecodeError(
            f"cannot decode {what}: {len(data) - buffer.tell()} unexpected bytes after the "
            f"Avro body; expected {expected}; got {head_hex(data)}"
        )
    return record
