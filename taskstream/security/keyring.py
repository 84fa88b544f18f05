"""Keyrings: keys by key ID, one of them current (the one new writes use).

A keyring is JSON, given inline in a setting (``TASKSTREAM_SIGNING_KEYS``,
``TASKSTREAM_PAYLOAD_KEYS``, secrets) or as a file (``..._KEYRING_FILE``)::

    {"current": "k2", "keys": {"k1": "<base64 of 32 bytes>", "k2": "..."}}

A signing keyring names each key's role (``processor`` or ``worker``): the fold
accepts a worker event only under a worker key and a processor event only under
a processor key (D26)::

    {"current": "w1", "keys": {"w1": {"role": "worker", "key": "<base64>"}}}

Rotation: add a new key, make it ``current``; keep the old ones as long as data
they wrote must be read (payloads) or replayed (signatures). ``current`` may be
absent: such a keyring only verifies or opens.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

from pydantic import SecretStr

from taskstream.security.errors import KeyringError

Purpose = Literal["signing", "payload"]
ROLES = ("processor", "worker")
KEY_ID = re.compile(r"^[A-Za-z0-9_.-]{1,32}$")
KEY_BYTES = 32


@dataclass(frozen=True)
class Key:
    kid: str
    secret: bytes
    role: str | None = None  # signing keys only

    def __repr__(self) -> str:  # never the secret
        return f"Key({self.kid!r}, role={self.role!r})"

    @cached_property
    def hmac_sha256(self) -> tuple[hashlib._Hash, hashlib._Hash]:
        """The inner and outer SHA-256 states of HMAC under this key (RFC 2104), made
        once: OpenSSL 3 spends ~25 us setting up each ``hmac.digest``, while copying
        two hash states costs ~2 us (security/signing.py uses them; a test holds them
        to ``hmac.digest``)."""
        block = hashlib.sha256().block_size
        secret = self.secret if len(self.secret) <= block else hashlib.sha256(
            self.secret).digest()
        padded = secret.ljust(block, b"\0")
        return (hashlib.sha256(bytes(b ^ 0x36 for b in padded)),
                hashlib.sha256(bytes(b ^ 0x5C for b in padded)))


@dataclass(frozen=True)
class Keyring:
    keys: Mapping[str, Key]
    current: str | None

    def get(self, kid: str) -> Key | None:
        return self.keys.get(kid)

    def current_key(self) -> Key | None:
        return self.keys.get(self.current) if self.current is not None else None


def _secret(kid: str, raw: Any, origin: str) -> bytes:
    if not isinstance(raw, str):
        raise KeyringError(f"{origin}: key {kid!r} must be a base64 string")
    try:
        secret = base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        raise KeyringError(f"{origin}: key {kid!r} is not valid base64") from None
    if len(secret) != KEY_BYTES:
        raise KeyringError(f"{origin}: key {kid!r} is {len(secret)} bytes; keys are "
                           f"{KEY_BYTES} random bytes (`taskstream keys new`)")
    return secret


def _key(kid: str, entry: Any, purpose: Purpose, origin: str) -> Key:
    if not KEY_ID.match(kid):
        raise KeyringError(f"{origin}: key ID {kid!r} must be 1-32 letters, digits, '_', "
                           "'.' or '-'")
    if purpose == "payload":
        return Key(kid, _secret(kid, entry, origin))
    if not isinstance(entry, dict) or entry.get("role") not in ROLES:
        raise KeyringError(f"{origin}: signing key {kid!r} must be "
                           '{"role": "processor" | "worker", "key": "<base64>"}')
    return Key(kid, _secret(kid, entry.get("key"), origin), str(entry["role"]))


def parse_keyring(text: str, purpose: Purpose, origin: str) -> Keyring:
    """Parse a keyring's JSON; :class:`KeyringError` names ``origin`` and the problem."""
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise KeyringError(f"{origin} is not valid JSON: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("keys"), dict):
        raise KeyringError(f'{origin} must be {{"current": <key ID>, "keys": {{...}}}}')
    keys = {kid: _key(kid, entry, purpose, origin) for kid, entry in data["keys"].items()}
    current = data.get("current")
    if current is not None and current not in keys:
        raise KeyringError(f"{origin}: current key {current!r} is not in its keys")
    return Keyring(keys, current)


def load_keyring(inline: SecretStr | None, file: Path | None, purpose: Purpose
                 ) -> Keyring | None:
    """The keyring of a pair of settings (inline secret or file), None when neither is set."""
    setting = f"{purpose}_keys"
    if inline is not None:
        return parse_keyring(inline.get_secret_value(), purpose, f"TASKSTREAM_{setting.upper()}")
    if file is not None:
        try:
            text = file.read_text()
        except OSError as exc:
            raise KeyringError(f"cannot read the {purpose} keyring {file}: {exc.strerror}"
                               ) from None
        return parse_keyring(text, purpose, str(file))
    return None


def new_secret() -> str:
    """A fresh key, base64 (what a keyring holds)."""
    return base64.b64encode(secrets.token_bytes(KEY_BYTES)).decode("ascii")


def keyring_json(keys: Mapping[str, Any], current: str | None) -> str:
    """A keyring's JSON (``keys`` as they are written: base64 or role entries)."""
    return json.dumps({"current": current, "keys": dict(keys)}, indent=2, sort_keys=True)
