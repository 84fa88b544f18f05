"""Runtime pieces shared by the compiled Avro readers and writers (schemas/codec/compiled.py).

The generated code inlines the common one-byte cases; these functions are the
slow paths it calls for everything else. They raise :class:`Corrupt` for bytes
no Avro writer produces; any other exception out of a compiled reader means the
data ended early (IndexError, struct.error) or held invalid UTF-8.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

#: zig-zag value of each one-byte varint (0..127)
ONE_BYTE_LONG = tuple((b >> 1) ^ -(b & 1) for b in range(128))
#: the one-byte encoding of each integer in -64..63, indexed by n + 64
SMALL_LONG = tuple(bytes([(n << 1) if n >= 0 else ((-n << 1) - 1)]) for n in range(-64, 64))
#: the one-byte length prefix of each length 0..63
SMALL_LEN = tuple(bytes([n << 1]) for n in range(64))
#: length of a string or bytes value by its first byte, when that byte is the whole
#: (non-negative, one-byte) length; otherwise a length past any data (the slow path)
SHORT_LEN = tuple(b >> 1 if b < 128 and not b & 1 else 2**62 for b in range(256))
NULL = b"\x00"  # union branch 0, an empty map or array, boolean false
SECOND = b"\x02"  # union branch 1
TRUE = b"\x01"
LONG_MIN = -(2**63)
LONG_MAX = 2**63 - 1
_MASK64 = 2**64 - 1
_MAX_VARINT = 10  # a 64-bit zig-zag long never needs more bytes

pack_double = struct.Struct("<d").pack
unpack_double = struct.Struct("<d").unpack_from


class Corrupt(Exception):
    """Bytes that cannot be Avro of the schema (the codec turns it into a DecodeError)."""


class Unsupported(Exception):
    """A value the compiled writer leaves to fastavro (which encodes it or raises EncodeError)."""


def read_long(data: bytes, pos: int) -> tuple[int, int]:
    """A zig-zag varint at ``pos``: (value, position after it)."""
    n = 0
    shift = 0
    start = pos
    while True:
        b = data[pos]
        pos += 1
        n |= (b & 0x7F) << shift
        if b < 0x80:
            break
        shift += 7
        if pos - start >= _MAX_VARINT:
            raise Corrupt(f"a varint at byte {start} is longer than {_MAX_VARINT} bytes")
    n &= _MASK64  # as fastavro's 64-bit reader does with a 10th byte above 1
    return (n >> 1) ^ -(n & 1), pos


def memo_long_reader(
    limit: int = 4096, memo: dict[bytes, tuple[int, int]] | None = None
) -> Callable[[bytes, int], tuple[int, int]]:
    """A :func:`read_long` that remembers multi-byte varints (timestamps repeat: many events a ms).

    The key is the next 6 bytes: a varint of at most 6 bytes (every ms timestamp
    until the year 36812) is determined by them, so a hit is always right. One
    memo per codec (``memo``, which the compiled readers also look up inline),
    cleared when it holds ``limit`` entries.
    """
    if memo is None:
        memo = {}
    found = memo

    def read_long_memo(data: bytes, pos: int) -> tuple[int, int]:
        key = data[pos : pos + 6]
        hit = found.get(key)
        if hit is not None:
            return hit[0], pos + hit[1]
        value, after = read_long(data, pos)
        if after - pos <= 6:
            if len(found) >= limit:
                found.clear()
            found[key] = (value, after - pos)
        return value, after

    return read_long_memo


class LongMemo(dict[int, bytes]):
    """``memo[n]`` is ``write_long(n)`` for a plain ``int`` n, remembered (one per codec).

    The compiled writers index it only with values whose class is ``int`` (a float
    equal to a cached int must not hit: fastavro decides what a float becomes);
    cleared when it holds ``limit`` entries.
    """

    def __init__(self, limit: int = 4096) -> None:
        super().__init__()
        self.limit = limit

    def __missing__(self, n: int) -> bytes:
        encoded = write_long(n)
        if len(self) >= self.limit:
            self.clear()
        self[n] = encoded
        return encoded


def read_length(data: bytes, pos: int, what: str) -> tuple[int, int]:
    """A non-negative length (of a string or bytes) at ``pos``."""
    n, after = read_long(data, pos)
    if n < 0:
        raise Corrupt(f"negative {what} length {n} at byte {pos}")
    if after + n > len(data):
        raise Corrupt(f"{what} of {n} bytes at byte {after} runs past the end")
    return n, after


def read_count(data: bytes, pos: int, item_size: int) -> tuple[int, int]:
    """A block count of a map or array at ``pos`` (skips the size after a negative count).

    ``item_size`` is the least number of bytes one item takes; a count that
    cannot fit in the rest of the data is corrupt (and would loop for long).
    """
    start = pos
    count, pos = read_long(data, pos)
    if count < 0:
        count = -count
        _, pos = read_long(data, pos)
    if count * item_size > len(data) - pos:
        raise bad_count(count, start)
    return count, pos


def read_bytes(data: bytes, pos: int) -> tuple[bytes, int]:
    """A bytes value at ``pos`` (the slow path: long, negative or truncated lengths)."""
    n, pos = read_length(data, pos, "bytes")
    return data[pos : pos + n], pos + n


def read_text(data: bytes, pos: int) -> tuple[str, int]:
    """A string at ``pos`` (the slow path: long, negative or truncated lengths)."""
    n, pos = read_length(data, pos, "string")
    return data[pos : pos + n].decode(), pos + n


def bad_count(count: int, start: int) -> Corrupt:
    return Corrupt(f"block count {count} at byte {start} exceeds the remaining data")


def bad_index(kind: str, index: int, size: int, field: str) -> Corrupt:
    return Corrupt(f"{kind} index {index} of field {field!r} is outside 0..{size - 1}")


def write_long(n: int) -> bytes:
    """Avro's zig-zag varint of a 64-bit integer (OverflowError outside, as fastavro)."""
    if -64 <= n < 64:
        return SMALL_LONG[n + 64]
    if not LONG_MIN <= n <= LONG_MAX:
        raise OverflowError(f"{n} does not fit an Avro long")
    z = (n << 1) ^ (n >> 63)
    out = bytearray()
    while z >= 0x80:
        out.append((z & 0x7F) | 0x80)
        z >>= 7
    out.append(z)
    return bytes(out)


def write_length(n: int) -> bytes:
    return SMALL_LEN[n] if n < 64 else write_long(n)
