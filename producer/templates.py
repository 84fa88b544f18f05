"""submit_many's items from templates: one payload encoding and one join each.

The bytes of a TaskSubmitted around the IDs and the payload depend only on the
task's options, the payload's kind (JSON or bytes), the time and the source;
one batch shares all of those but the options, which repeat across items. So
for each shape of options a batch meets (plain ``{name, payload}`` items by
name; items with options by the options' names, values and the values'
types), the general fast path (:mod:`fastspec` checks, :mod:`fastwire`
encoder) encodes two templates, with an empty payload and a one-byte one;
where they part is the payload's length, so the bytes before and after it are
known. By construction the bytes are the general encoder's (a test compares
them on generated items). Anything else (an idempotency key, an option the
fast path does not know, an invalid value, a payload that is not JSON-able or
too large) returns None and takes the general path, which accepts it or raises
the error that names the field.
"""

from __future__ import annotations

from typing import Any

from taskstream.producer.fastspec import FAST_KEYS, SimpleSpecs
from taskstream.producer.fastwire import HEADER_LEN, SimpleEncoder
from taskstream.schemas.codec.prims import SMALL_LEN, write_long
from taskstream.schemas.models import encode_json

PLAIN_KEYS = frozenset({"name", "payload"})
_ID_FIELD = 1 + 26  # the length byte, then a 26-character ID
_TEMPLATE_EVENT_ID = "0" * 26
_TEMPLATE_TASK_ID = "1" * 26
_MAX_TEMPLATES = 1024


def _varint(size: int) -> bytes:
    """Avro's long of a payload size >= 64: two bytes up to 8191, the general form beyond."""
    if size < 8192:  # zig-zag doubles it: 14 bits, 7 per byte
        return bytes((((size << 1) & 0x7F) | 0x80, size >> 6))
    return write_long(size)


class TemplateItems:
    """Encodes items from templates, for one producer (its limits, encoder and source).

    Two kinds of items take it: plain ones (``{name, payload}``, looked up by
    name) and items with options but no idempotency key (looked up by their
    option names, values and the values' types, so ``1``, ``1.0`` and ``True``
    never share a template). A template is made by the general fast path the
    first time a shape is met in a millisecond, so what it accepts and the bytes
    it writes are that path's.

    Safe to share between threads: the templates sit in one dict, read with
    ``get`` and cleared when full, never changed in place.
    """

    __slots__ = ("_encode", "_max_payload", "_parts", "_source", "_specs")

    def __init__(
        self, specs: SimpleSpecs, encode: SimpleEncoder, max_payload: int, source: str
    ) -> None:
        self._specs = specs
        self._encode = encode
        self._max_payload = max_payload
        self._source = source
        # (shape, payload is bytes) -> (bytes before the event ID, between the task ID
        # and the payload length, after the payload), or () if the shape is not valid
        self._parts: dict[tuple[Any, bool], tuple[bytes, bytes, bytes] | tuple[()]] = {}

    def encode(
        self, item: dict[str, Any], event_id: str, task_id: str, at_ms: int
    ) -> bytes | None:
        """The TaskSubmitted of ``item`` from a template, or None: take the general path."""
        if PLAIN_KEYS.issuperset(item):
            return self.encode_call(item.get("name"), item.get("payload"), event_id, task_id, at_ms)
        return self.encode_shaped(item, event_id, task_id, at_ms)

    def encode_call(
        self, name: Any, payload: Any, event_id: str, task_id: str, at_ms: int
    ) -> bytes | None:
        """``submit(name, payload)`` with no options, as :meth:`encode` would."""
        if type(name) is not str:
            return None
        return self._encode_with((at_ms, name), {"name": name}, payload, event_id, task_id, at_ms)

    def encode_shaped(
        self, item: dict[str, Any], event_id: str, task_id: str, at_ms: int
    ) -> bytes | None:
        """An item with options and no idempotency key (a key makes every item's shape
        new), from the template of its options; None: take the general path."""
        if "idempotency_key" in item or not FAST_KEYS.issuperset(item):
            return None
        options = item.copy()
        payload = options.pop("payload", None)
        values = tuple(options.values())
        shape = (at_ms, tuple(options), values, tuple(map(type, values)))
        return self._encode_with(shape, options, payload, event_id, task_id, at_ms)

    def _encode_with(
        self,
        shape: Any,
        options: dict[str, Any],
        payload: Any,
        event_id: str,
        task_id: str,
        at_ms: int,
    ) -> bytes | None:
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
        key = (shape, binary)
        try:
            parts = self._parts.get(key)
        except TypeError:  # an unhashable option value: the general path judges it
            return None
        if parts is None:
            parts = self._template(options, binary, at_ms)
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
                SMALL_LEN[size] if size < 64 else _varint(size),
                data,
                tail,
            )
        )

    def _template(
        self, options: dict[str, Any], binary: bool, at_ms: int
    ) -> tuple[bytes, bytes, bytes] | tuple[()]:
        fields = self._specs.fields({**options, "payload": b"" if binary else None}, at_ms)
        if fields is None or fields[9] is not None:
            return ()
        empty, one = (
            self._encode(
                _TEMPLATE_EVENT_ID,
                _TEMPLATE_TASK_ID,
                at_ms,
                self._source,
                fields._replace(payload=payload),
            )
            for payload in (b"", b"Z")
        )
        ids_end = HEADER_LEN + 2 * _ID_FIELD
        if empty[HEADER_LEN + 1 : ids_end] != (b"0" * 26 + b"\x34" + b"1" * 26):
            return ()  # IDs are not where this module expects them: take the general path
        split = next(i for i in range(ids_end, len(empty)) if empty[i] != one[i])
        head = empty[: HEADER_LEN + 1]  # the header and the event ID's length byte
        return head, empty[ids_end:split], empty[split + 1 :]
