"""Keyrings, record signatures and sealed values (D26, D27): pure, no broker."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import SecretStr

from taskstream.security.errors import KeyringError, SealError
from taskstream.security.keyring import (
    Key,
    Keyring,
    keyring_json,
    load_keyring,
    new_secret,
    parse_keyring,
)
from taskstream.security.sealing import (
    MAX_OVERHEAD,
    Sealer,
    is_sealed,
    is_sealed_text,
    sealed_key_id,
    text_key_id,
)
from taskstream.security.signing import HEADER, TAG_BYTES, Signer, _tag, signature_of, verify

K1, K2 = new_secret(), new_secret()
TASK = "01J00000000000000000000001"
OTHER = "01J00000000000000000000002"


def payload_ring(current: str | None = "k2", **keys: str) -> Keyring:
    return parse_keyring(keyring_json(keys or {"k1": K1, "k2": K2}, current), "payload", "test")


def signing_ring(current: str | None = None) -> Keyring:
    keys = {"w1": {"role": "worker", "key": K1}, "p1": {"role": "processor", "key": K2}}
    return parse_keyring(keyring_json(keys, current), "signing", "test")


# -- keyrings ------------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "says"), [
    ("not json", "not valid JSON"),
    ('{"keys": []}', '"keys"'),
    (keyring_json({"k1": "@@@"}, None), "not valid base64"),
    (keyring_json({"k1": base64.b64encode(b"short").decode()}, None), "is 5 bytes"),
    (keyring_json({"bad id!": K1}, None), "key ID"),
    (keyring_json({"k1": K1}, "k9"), "current key 'k9'"),
], ids=["json", "no-keys", "base64", "length", "key-id", "current"])  # K1 is random: ids stay
def test_a_bad_payload_keyring_is_refused_with_the_reason(text: str, says: str) -> None:
    with pytest.raises(KeyringError, match="test") as info:
        parse_keyring(text, "payload", "test")
    assert says in str(info.value)


def test_a_signing_key_must_name_its_role() -> None:
    with pytest.raises(KeyringError, match="role"):
        parse_keyring(keyring_json({"k1": {"key": K1}}, None), "signing", "test")
    with pytest.raises(KeyringError, match="role"):
        parse_keyring(keyring_json({"k1": {"role": "submitter", "key": K1}}, None), "signing",
                      "test")


def test_keyring_from_the_environment_or_a_file(tmp_path: Path) -> None:
    text = keyring_json({"k1": K1}, "k1")
    inline = load_keyring(SecretStr(text), None, "payload")
    path = tmp_path / "ring.json"
    path.write_text(text)
    from_file = load_keyring(None, path, "payload")
    assert inline is not None and from_file is not None
    assert inline.current_key() == from_file.current_key()
    assert load_keyring(None, None, "payload") is None
    with pytest.raises(KeyringError, match="cannot read"):
        load_keyring(None, tmp_path / "missing.json", "payload")


def test_a_key_never_shows_its_secret() -> None:
    ring = payload_ring()
    assert K2 not in repr(ring) and base64.b64decode(K2).hex() not in repr(ring)


# -- signatures ------------------------------------------------------------------------------

def test_a_signed_record_verifies_with_its_role() -> None:
    ring = signing_ring("w1")
    signer = Signer.from_keyring(ring)
    assert signer is not None
    name, value = signer.header(b"key", b"value")
    assert name == HEADER and value.startswith(b"w1.")
    assert verify(ring, b"key", b"value", value) == ("worker", "")


@pytest.mark.parametrize(("key", "value", "why"), [
    (b"key", b"value!", "does not match"),   # the value was changed
    (b"kez", b"value", "does not match"),    # the key was changed
])
def test_a_changed_record_does_not_verify(key: bytes, value: bytes, why: str) -> None:
    ring = signing_ring("w1")
    signer = Signer.from_keyring(ring)
    assert signer is not None
    _, sig = signer.header(b"key", b"value")
    role, reason = verify(ring, key, value, sig)
    assert role is None and why in reason


def test_no_signature_an_unknown_key_or_a_malformed_one_does_not_verify() -> None:
    ring = signing_ring()
    assert verify(ring, b"k", b"v", None) == (None, "it is not signed")
    assert "does not hold" in verify(ring, b"k", b"v", b"x9.AAAA")[1]
    assert "does not hold" in verify(ring, b"k", b"v", b"\xff\xfe")[1]
    assert verify(ring, b"k", b"v", b"w1.!!!not-base64")[0] is None


def test_a_forged_tag_under_a_known_key_id_does_not_verify() -> None:
    forged = b"w1." + base64.urlsafe_b64encode(b"\0" * 16).rstrip(b"=")
    assert verify(signing_ring(), b"k", b"v", forged)[0] is None


def test_the_last_signature_header_counts() -> None:
    assert signature_of([("a", b"1"), (HEADER, b"x"), (HEADER, b"y")]) == b"y"
    assert signature_of(None) is None


@given(st.binary(max_size=64), st.binary(max_size=512))
def test_any_record_round_trips_and_any_bit_flip_is_caught(key: bytes, value: bytes) -> None:
    ring = signing_ring("p1")
    signer = Signer.from_keyring(ring)
    assert signer is not None
    _, sig = signer.header(key, value)
    assert verify(ring, key, value, sig)[0] == "processor"
    if value:
        flipped = bytes([value[0] ^ 1]) + value[1:]
        assert verify(ring, key, flipped, sig)[0] is None


# -- sealing ----------------------------------------------------------------------------------

def test_sealed_payload_opens_for_its_task_only() -> None:
    sealer = Sealer(payload_ring())
    sealed = sealer.seal(b'{"card": "4111"}', TASK)
    assert is_sealed(sealed) and b"4111" not in sealed
    assert sealed_key_id(sealed) == "k2"
    assert sealer.open(sealed, TASK) == b'{"card": "4111"}'
    with pytest.raises(SealError, match="sealed for another task"):
        sealer.open(sealed, OTHER)  # associated data: the owning entity


def test_a_changed_ciphertext_does_not_open() -> None:
    sealer = Sealer(payload_ring())
    sealed = bytearray(sealer.seal(b"secret", TASK))
    sealed[-1] ^= 1
    with pytest.raises(SealError, match="altered"):
        sealer.open(bytes(sealed), TASK)


def test_rotation_new_key_for_writes_old_keys_still_open() -> None:
    old = Sealer(payload_ring(current="k1"))
    before = old.seal(b"written before the rotation", TASK)
    rotated = Sealer(payload_ring(current="k2"))
    after = rotated.seal(b"written after", TASK)
    assert sealed_key_id(before) == "k1" and sealed_key_id(after) == "k2"
    assert rotated.open(before, TASK) == b"written before the rotation"
    retired = Sealer(payload_ring("k2", k2=K2))  # k1 dropped from the keyring
    with pytest.raises(SealError, match="key 'k1'"):
        retired.open(before, TASK)
    assert retired.open(after, TASK) == b"written after"


def test_sealing_is_deterministic_per_task_and_plaintext() -> None:
    sealer = Sealer(payload_ring())
    assert sealer.seal(b"same", TASK) == sealer.seal(b"same", TASK)  # duplicate checks work
    assert sealer.seal(b"same", TASK) != sealer.seal(b"same", OTHER)
    assert sealer.seal(b"same", TASK)[:30] != sealer.seal(b"other", TASK)[:30]


def test_a_keyring_without_a_current_key_opens_but_does_not_seal() -> None:
    sealer = Sealer(payload_ring(current=None))
    assert not sealer.can_seal
    with pytest.raises(SealError, match="no current key"):
        sealer.seal(b"x", TASK)


def test_texts_seal_as_text() -> None:
    sealer = Sealer(payload_ring())
    text = sealer.seal_text("ValueError: card 4111 declined", TASK)
    assert is_sealed_text(text) and "4111" not in text and text_key_id(text) == "k2"
    assert sealer.open_text(text, TASK) == "ValueError: card 4111 declined"
    assert sealer.open_text("plain message", TASK) == "plain message"
    json.dumps(text)  # it is a plain string: Avro and JSON carry it


def test_plain_text_and_json_never_look_sealed() -> None:
    for data in (b'{"a": 1}', b"hello", b"", "é".encode()):
        assert not is_sealed(data)


@given(st.binary(max_size=2048), st.text(min_size=1, max_size=40))
def test_any_value_round_trips_within_the_overhead(plain: bytes, owner: str) -> None:
    sealer = Sealer(payload_ring())
    sealed = sealer.seal(plain, owner)
    assert len(sealed) - len(plain) <= MAX_OVERHEAD
    assert sealer.open(sealed, owner) == plain


@given(st.binary(min_size=1, max_size=200), st.binary(max_size=64), st.binary(max_size=600))
def test_the_fast_record_tag_is_hmac_sha256(secret: bytes, key: bytes, value: bytes) -> None:
    """The precomputed HMAC states (Key.hmac_sha256) give exactly ``hmac.digest``'s bytes,
    for keys shorter and longer than SHA-256's block."""
    message = len(key).to_bytes(4, "big") + key + value
    expected = hmac.digest(secret, message, hashlib.sha256)[:TAG_BYTES]
    assert _tag(Key("k", secret, "worker"), key, value) == expected
