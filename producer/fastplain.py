"""submit_many's commonest item, ``{"name": ..., "payload": ...}``, in one step.

With every option at its default, the bytes of a TaskSubmitted around the
IDs and the payload depend only on the name, the payload's kind (JSON or
bytes), the time and the source: one batch shares all but the name. So for
each name a batch meets, the general fast path (:mod:`fastspec` checks,
:mod:`fastwire` encoder) encodes two templates, with an empty payload and a
one-byte one; where they part is the payload's length, so the bytes before
and after it are known. Each item then costs one payload encoding and one
join. By construction the bytes are the general encoder's (a test compares
them on generated items); anything else (another option, a name that does
not pass, a payload that is not JSON-able or too large) returns None and takes
the general path, which accepts it or raises the error that names the field.
"""

from __future__ import annotations

from typing import Any

from taskstream.producer.fastspec import SimpleSpecs
from taskstream.producer.fastwire import HEADER_LEN, SimpleEncoder, avro_long
from taskstream.schemas.models import encode_json

PLAIN_KEYS = frozenset({"name", "payload"})
_ID_FIELD = 1 + 26  # the length byte, then a 26-character ID
_TEMPLATE_EVENT_ID = "0" * 26
_TEMPLATE_TASK_ID = "1" * 26
_SHORT = tuple(avro_long(n) for n in range(64))  # one-byte payload lengths
_MAX_TEMPLATES = 1024


def _varint(size: int) -> bytes:
    """Avro's long of a payload size >= 64: two bytes up to 8191, the general form beyond."""
    if size < 8192:  # zig-zag doubles it: 14 bits, 7 per byte
        return bytes((((size << 1) & 0x7F) | 0x80, size >> 6))
    return avro_long(size)


class PlainItems:
    """Encodes plain items for one producer (its limits, encoder and source).

    Safe to share between threads: the templates are keyed by time and name in
    one dict, read with ``get`` and cleared when full, never changed in place.
    """

    __slots__ = ("_encode", "_max_payload", "_parts", "_source", "_specs")

    def __init__(
        self, specs: SimpleSpecs, encode: SimpleEncoder, max_payload: int, source: str
    ) -> None:
        self._specs = specs
        self._encode = encode
        self._max_payload = max_payload
        self._source = source
        # (at_ms, name, payload is bytes) -> (bytes before the event ID, between the
        # task ID and the payload length, after the payload), or () if not plain
        self._parts: dict[tuple[int, str, bool], tuple[bytes, bytes, bytes] | tuple[()]] = {}

    def encode(
        self, item: dict[str, Any], event_id: str, task_id: str, at_ms: int
    ) -> bytes | None:
        """The TaskSubmitted of ``item`` if it is plain and valid, else None."""
        if not PLAIN_KEYS.issuperset(item):
            return None
        return self.encode_call(item.get("name"), item.get("payload"), event_id, task_id, at_ms)

    def encode_call(
        self, name: Any, payload: Any, event_id: str, task_id: str, at_ms: int
    ) -> bytes | None:
        """``submit(name, payload)`` with no options, as :meth:`encode` would."""
        if type(name) is not str:
            return None
        binary = type(payload) is bytes
        data: bytes
        if binary:
            data = payload
        else:
            try:
                data = encode_json(payload)
            except (TypeError, ValueError):
                return None
        size = len(data)
        if size > self._max_payload:
            return None
        key = (at_ms, name, binary)
        parts = self._parts.get(key)
        if parts is None:
            parts = self._template(name, binary, at_ms)
            if len(self._parts) >= _MAX_TEMPLATES:
                self._parts.clear()
            self._parts[key] = parts
        if not parts:
            return None
        head, middle, tail = parts
        return b"".join(
            (
                head,
                event_id.encode("ascii"),
                b"\x34",  # 26, the length of the task ID
                task_id.encode("ascii"),
                middle,
                _SHORT[size] if size < 64 else _varint(size),
                data,
                tail,
            )
        )

    def _template(
        self, name: str, binary: bool, at_ms: int
    ) -> tuple[bytes, bytes, bytes] | tuple[()]:
        fields = self._specs.fields({"name": name, "payload": b"" if binary else None}, 0)
        if fields is None:
            return ()
        empty, one = (
            self._encode(
                _TEMPLATE_EVENT_ID,
                _TEMPLATE_TASK_ID,
                at_ms,
                self._source,
                (*fields[:3], payload, *fields[4:]),
            )
            for payload in (b"", b"Z")
        )
        ids_end = HEADER_LEN + 2 * _ID_FIELD
        if empty[HEADER_LEN + 1 : ids_end] != (b"0" * 26 + b"\x34" + b"1" * 26):
            return ()  # IDs are not where this module expects them: take the general path
        split = next(i for i in range(ids_end, len(empty)) if empty[i] != one[i])
        head = empty[: HEADER_LEN + 1]  # the header and the event ID's length byte
        return head, empty[ids_end:split], empty[split + 1 :]
