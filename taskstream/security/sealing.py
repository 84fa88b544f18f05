"""Sealed payloads, results and error messages: AES-256-GCM under a keyring (D27).

A sealed value carries everything needed to open it but the key::

    0xFF 'T' 'S' 'E' | version (1) | len(key ID) | key ID | nonce (12) | ciphertext + tag (16)

Bytes fields (payload, result) hold it as is; string fields (error message,
traceback) hold ``enc:tse1:`` + its base64url. ``0xFF`` never starts UTF-8
text, so no JSON or text payload looks sealed by accident.

The associated data is the header and the ID of the entity that owns the value
(the task; or the schedule whose firings derive task IDs later): a ciphertext
copied into another task does not open there.

The nonce is derived, not random: HMAC-SHA256 of (owner, plaintext) under a
subkey, first 12 bytes. The same plaintext for the same task under the same key
seals to the same bytes, which keeps the fold's duplicate check (a resubmission
with an idempotency key compares payload digests) working without the fold
seeing any plaintext; two different plaintexts get different nonces except with
probability 2^-96. What it reveals is only that two sealed values of one task
are equal, which the digest already shows.

Rotation: seal with the keyring's current key; open with whichever key the
value names. Processors never open anything.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from taskstream.security.errors import SealError
from taskstream.security.keyring import Key, Keyring, load_keyring
from taskstream.settings import Settings

MAGIC = b"\xffTSE"
VERSION = 1
NONCE_BYTES = 12
TAG_BYTES = 16
TEXT_PREFIX = "enc:tse1:"
#: the most a sealed value is longer than its plaintext (header with a 32-byte key ID)
MAX_OVERHEAD = len(MAGIC) + 2 + 32 + NONCE_BYTES + TAG_BYTES


def is_sealed(data: bytes | None) -> bool:
    return data is not None and data[:4] == MAGIC


def is_sealed_text(text: str | None) -> bool:
    return text is not None and text.startswith(TEXT_PREFIX)


def sealed_key_id(data: bytes) -> str | None:
    """The key ID a sealed value names (None if it is not a well-formed sealed value)."""
    if not is_sealed(data) or len(data) < 6:
        return None
    size = data[5]
    try:
        return data[6:6 + size].decode("ascii")
    except UnicodeDecodeError:
        return None


@dataclass(frozen=True)
class _Cipher:
    key: Key
    aead: AESGCM = field(repr=False)
    nonce_key: bytes = field(repr=False)


class Sealer:
    """Seals with a keyring's current key and opens with any of its keys."""

    def __init__(self, keyring: Keyring) -> None:
        self.keyring = keyring
        self._ciphers: dict[str, _Cipher] = {}
        for kid, key in keyring.keys.items():
            enc = hmac.digest(key.secret, b"taskstream seal v1 encrypt", hashlib.sha256)
            nonce = hmac.digest(key.secret, b"taskstream seal v1 nonce", hashlib.sha256)
            self._ciphers[kid] = _Cipher(key, AESGCM(enc), nonce)

    @property
    def can_seal(self) -> bool:
        return self.keyring.current_key() is not None

    def seal(self, plaintext: bytes, owner: str) -> bytes:
        """``plaintext`` sealed for the entity ``owner`` with the current key."""
        kid = self.keyring.current
        if kid is None:
            raise SealError("this keyring has no current key to seal with; set \"current\" "
                            "in the payload keyring")
        cipher = self._ciphers[kid]
        header = MAGIC + bytes([VERSION, len(kid)]) + kid.encode("ascii")
        owner_bytes = owner.encode()
        nonce = hmac.digest(cipher.nonce_key,
                            len(owner_bytes).to_bytes(4, "big") + owner_bytes + plaintext,
                            hashlib.sha256)[:NONCE_BYTES]
        return header + nonce + cipher.aead.encrypt(nonce, plaintext, header + owner_bytes)

    def open(self, sealed: bytes, owner: str) -> bytes:
        """The plaintext of a value sealed for ``owner``; :class:`SealError` says why not."""
        if not is_sealed(sealed) or len(sealed) < 6 or sealed[4] != VERSION:
            raise SealError("the value is not sealed by this version of taskstream")
        size = sealed[5]
        header_end = 6 + size
        kid = sealed[6:header_end].decode("ascii", "replace")
        cipher = self._ciphers.get(kid)
        if cipher is None:
            raise SealError(f"the value is sealed with key {kid!r}, which the payload keyring "
                            "does not hold; add that key (keep old keys after a rotation)")
        nonce = sealed[header_end:header_end + NONCE_BYTES]
        body = sealed[header_end + NONCE_BYTES:]
        try:
            return cipher.aead.decrypt(nonce, body, sealed[:header_end] + owner.encode())
        except (InvalidTag, ValueError):
            raise SealError(f"the value does not open for {owner!r} with key {kid!r}: it was "
                            "altered, or sealed for another task") from None

    def seal_text(self, text: str, owner: str) -> str:
        sealed = self.seal(text.encode(), owner)
        return TEXT_PREFIX + base64.urlsafe_b64encode(sealed).decode("ascii")

    def open_text(self, text: str, owner: str) -> str:
        if not is_sealed_text(text):
            return text
        try:
            sealed = base64.urlsafe_b64decode(text[len(TEXT_PREFIX):])
        except (binascii.Error, ValueError):
            raise SealError("the sealed text is not valid base64") from None
        return self.open(sealed, owner).decode("utf-8", "replace")


def text_key_id(text: str) -> str | None:
    """The key ID a sealed text names."""
    if not is_sealed_text(text):
        return None
    try:
        return sealed_key_id(base64.urlsafe_b64decode(text[len(TEXT_PREFIX):]))
    except (binascii.Error, ValueError):
        return None


def payload_sealer(settings: Settings) -> Sealer | None:
    """The sealer of the settings' payload keyring, None without one."""
    keyring = load_keyring(settings.payload_keys, settings.payload_keyring_file, "payload")
    return Sealer(keyring) if keyring is not None else None
