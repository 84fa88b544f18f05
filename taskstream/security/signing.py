"""Who wrote an event: an HMAC over the record, in a header (D26).

Every principal that may write to the events topic can write any event type
there: Kafka's ACLs stop at the topic, and a consumer cannot see who produced a
record. So a worker signs its events and a processor its own (timers and the
events other entities emit), and the fold accepts those event types only with a
valid signature under a key of the right role. Clients (submit, cancel,
redrive) sign nothing: anyone allowed to write the topic may send those.

The signature covers the record's exact bytes (key and value), so it never
depends on how a schema version renders the event, and it is checked the same
way by the live fold and by replay years later. Header ``ts-sig``::

    <key ID>.<base64url of HMAC-SHA256(key, len(record key) || record key || value)[:16]>

A 128-bit tag: forging one means guessing it. The keys are symmetric: the
processors hold every verifying key (they are trusted with everything anyway);
a worker holds only its own, a submitter none.
"""

from __future__ import annotations

import base64
import binascii
import hmac
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from taskstream.errors import ConfigError
from taskstream.security.keyring import Key, Keyring, load_keyring
from taskstream.settings import Settings

HEADER = "ts-sig"
#: a record's headers as the Kafka clients give them
RecordHeaders = (Mapping[str, str | bytes | None]
                 | Sequence[tuple[str, str | bytes | None]])
TAG_BYTES = 16


def _tag(signing: Key, key: bytes, value: bytes) -> bytes:
    """HMAC-SHA256 of the record under ``signing``, cut to TAG_BYTES: the key's
    precomputed inner and outer states continued with the message (the same bytes as
    ``hmac.digest(secret, message, sha256)``, about ten times faster per record)."""
    inner_state, outer_state = signing.hmac_sha256
    inner = inner_state.copy()
    inner.update(len(key).to_bytes(4, "big"))
    inner.update(key)
    inner.update(value)
    outer = outer_state.copy()
    outer.update(inner.digest())
    return outer.digest()[:TAG_BYTES]


@dataclass(frozen=True)
class Signer:
    """Signs records with one key (a keyring's current key)."""

    key: Key

    @classmethod
    def from_keyring(cls, keyring: Keyring | None) -> Signer | None:
        current = keyring.current_key() if keyring is not None else None
        return cls(current) if current is not None else None

    def header(self, key: bytes, value: bytes) -> tuple[str, bytes]:
        """The ``(name, value)`` header that signs the record ``key``/``value``."""
        tag = base64.urlsafe_b64encode(_tag(self.key, key, value)).rstrip(b"=")
        return HEADER, self.key.kid.encode() + b"." + tag


def signer_for(settings: Settings, role: str) -> Signer | None:
    """The signer of a process of ``role`` (``worker`` or ``processor``): its signing
    keyring's current key, which must be a key of that role; None without a keyring or
    a current key (then it signs nothing)."""
    signer = Signer.from_keyring(
        load_keyring(settings.signing_keys, settings.signing_keyring_file, "signing"))
    if signer is not None and signer.key.role != role:
        raise ConfigError(f"the signing keyring's current key {signer.key.kid!r} is a "
                          f"{signer.key.role} key; a {role} signs with a {role} key")
    return signer


def signature_of(headers: RecordHeaders | None) -> bytes | None:
    """The value of the signature header among a record's headers (the last one wins)."""
    if not headers:
        return None
    found = None
    for name, value in headers.items() if isinstance(headers, Mapping) else headers:
        if name == HEADER:
            found = value.encode() if isinstance(value, str) else value
    return found


def verify(keyring: Keyring, key: bytes, value: bytes, signature: bytes | None
           ) -> tuple[str | None, str]:
    """``(role, "")`` when ``signature`` is a valid signature of the record by a key of the
    keyring, else ``(None, why not)``."""
    if not signature:
        return None, "it is not signed"
    kid, dot, tag = signature.partition(b".")
    try:
        known = keyring.get(kid.decode("ascii")) if dot else None
    except UnicodeDecodeError:
        known = None
    if known is None:
        shown = kid[:32].decode("ascii", "replace")
        return None, f"it is signed with key {shown!r}, which this keyring does not hold"
    try:
        given = base64.urlsafe_b64decode(tag + b"=" * (-len(tag) % 4))
    except (binascii.Error, ValueError):
        return None, "its signature is malformed"
    if not hmac.compare_digest(given, _tag(known, key, value)):
        return None, f"its signature does not match (key {known.kid!r})"
    return known.role, ""
