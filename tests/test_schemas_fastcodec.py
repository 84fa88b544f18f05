"""The compiled codec against the fastavro path: same bytes, same values, same errors."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from taskstream.schemas.catalog import catalog
from taskstream.schemas.codec import compiled as fastcodec
from taskstream.schemas.codec.canaries import canary_envelopes, canary_states
from taskstream.schemas.codec.compiled import same
from taskstream.schemas.codec.prims import read_long, write_long
from taskstream.schemas.errors import DecodeError, EncodeError
from taskstream.schemas.events import BODY_TYPES, Envelope, TaskStarted, TimerFired, TimerKind
from taskstream.schemas.serde import AvroCodec, default_codec
from taskstream.schemas.state import TaskState, TaskStatus
from tests.test_schemas_serde import BODIES, ENVELOPES, _builds, envelope, full_state

FAST = default_codec()
SLOW = AvroCodec(catalog(), compiled=False)
STATES = _builds(TaskState)
CANARIES = [*canary_envelopes(), *(envelope(b) for b in BODIES)]


def test_the_default_codec_is_compiled() -> None:
    assert FAST.compiled
    assert not SLOW.compiled


@pytest.mark.parametrize("env", CANARIES, ids=lambda e: e.type_name)
def test_canary_envelopes_agree_both_ways(env: Envelope) -> None:
    data = SLOW.encode_event(env)
    assert FAST.encode_event(env) == data
    assert same(FAST.decode_event(data), SLOW.decode_event(data))


@pytest.mark.parametrize("state", [full_state(), *canary_states()])
def test_canary_states_agree_both_ways(state: TaskState) -> None:
    data = SLOW.encode_state(state)
    assert FAST.encode_state(state) == data
    back = FAST.decode_state(data)
    assert same(back, SLOW.decode_state(data))
    assert back.status is state.status


@settings(max_examples=300, deadline=None)
@given(ENVELOPES)
def test_any_envelope_encodes_and_decodes_as_fastavro_does(env: Envelope) -> None:
    data = SLOW.encode_event(env)
    assert FAST.encode_event(env) == data
    assert same(FAST.decode_event(data), SLOW.decode_event(data))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(STATES)
def test_any_state_encodes_and_decodes_as_fastavro_does(state: TaskState) -> None:
    data = SLOW.encode_state(state)
    assert FAST.encode_state(state) == data
    assert same(FAST.decode_state(data), SLOW.decode_state(data))


# --- values the compiled writer does not take go to fastavro ---------------------

ODD_VALUES: list[Any] = [
    None,
    1.0,
    2.5,
    True,
    "x",
    b"x",
    bytearray(b"x"),
    2**64,
    -(2**63) - 1,
    ("a",),
]


def _outcome(encode: Any, value: Any) -> bytes | str:
    try:
        result: bytes = encode(value)
    except EncodeError:
        return "EncodeError"
    except Exception as exc:  # the fastavro path raises some errors raw (as before)
        return type(exc).__name__
    return result


@pytest.mark.parametrize("odd", ODD_VALUES, ids=repr)
def test_odd_field_values_give_what_fastavro_gives(odd: Any) -> None:
    base = full_state()
    for f in dataclasses.fields(TaskState):
        state = dataclasses.replace(base, **{f.name: odd})
        assert _outcome(FAST.encode_state, state) == _outcome(SLOW.encode_state, state), f.name
    for f in dataclasses.fields(TaskStarted):
        env = envelope(dataclasses.replace(TaskStarted("d", "w"), **{f.name: odd}))
        assert _outcome(FAST.encode_event, env) == _outcome(SLOW.encode_event, env), f.name


def test_plain_str_for_an_enum_and_a_tuple_for_a_list_encode_as_before() -> None:
    state = dataclasses.replace(full_state(), status="DEAD", tags=("a", "b"))  # type: ignore[arg-type]
    assert FAST.encode_state(state) == SLOW.encode_state(state)
    timer = envelope(TimerFired("RETRY_DUE", 5))  # type: ignore[arg-type]
    assert FAST.encode_event(timer) == SLOW.encode_event(timer)


# --- bad bytes ---------------------------------------------------------------------

VALID_EVENT = FAST.encode_event(canary_envelopes()[0])
VALID_STATE = FAST.encode_state(canary_states()[0])


def test_truncation_at_every_byte_is_a_decode_error() -> None:
    for data, decode in ((VALID_EVENT, FAST.decode_event), (VALID_STATE, FAST.decode_state)):
        for cut in range(len(data)):
            with pytest.raises(DecodeError, match="cannot decode"):
                decode(data[:cut])


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", "the data ends inside a value"),
        (b"\x04a", "runs past the end"),  # event_id of 2 bytes, 1 there
        (b"\x80\x01" + b"a" * 20, "string of 64 bytes at byte 12 runs past the end"),
        (b"\x01", "negative string length"),  # event_id length -1
        (b"\x04\xff\xfeab", "not valid UTF-8"),
        (b"\x00\x00\x00\x00\x00" + bytes([2 * len(BODY_TYPES)]),
         f"union index {len(BODY_TYPES)} of field 'body'"),
        (b"\x00\x00\x00\x00\x00\x01", "union index -1 of field 'body'"),
        (b"\x00\x00\x00\x00\x00\x0e" + bytes([2 * len(TimerKind)]),
         f"enum index {len(TimerKind)} of field 'kind'"),
        (b"\x00\x00\x00\x00\x00\x0e\x01", "enum index -1 of field 'kind'"),
        (b"\x00\x00" + b"\xff" * 11 + b"\x01", "longer than 10 bytes"),
        (b"\x00\x00\x00\x00\x00\x02\x00\x00", "1 unexpected bytes"),  # CancelRequested + 1
    ],
)
def test_bad_bodies_are_decode_errors_with_a_clear_message(body: bytes, message: str) -> None:
    data = VALID_EVENT[:10] + body
    with pytest.raises(DecodeError, match=message) as caught:
        FAST.decode_event(data)
    assert "expected c3 01 + the fingerprint" in str(caught.value)
    assert "got" in str(caught.value) and data[:4].hex(" ") in str(caught.value)


def test_bad_index_in_a_state_is_a_decode_error() -> None:
    body = SLOW.encode_state(canary_states()[1])[10:]
    status_at = 2 + 2 + 2 + 1  # task_id "t", name "n", queue "q", priority 0
    assert body[status_at] == 0
    past = len(TaskStatus)
    for bad, message in ((bytes([2 * past]), f"enum index {past}"), (b"\x03", "enum index -2")):
        data = VALID_STATE[:10] + body[:status_at] + bad + body[status_at + 1 :]
        with pytest.raises(DecodeError, match=message):
            FAST.decode_state(data)


def test_a_block_count_past_the_data_is_a_decode_error() -> None:
    data = SLOW.encode_state(dataclasses.replace(canary_states()[1], tags=["zz"]))
    tags = b"\x02\x04zz\x00"
    at = data.index(tags)
    huge = data[:at] + write_long(2**40) + tags[1:] + data[at + len(tags) :]
    with pytest.raises(DecodeError, match="block count 1099511627776 at byte"):
        FAST.decode_state(huge)


def test_negative_block_counts_are_read() -> None:
    state = dataclasses.replace(canary_states()[1], tags=["a", "bb"])
    data = SLOW.encode_state(state)
    plain = b"\x04\x02a\x04bb\x00"
    at = data.index(plain)
    blocked = b"\x01" + write_long(2) + b"\x02a" + b"\x01" + write_long(3) + b"\x04bb\x00"
    again = data[:at] + blocked + data[at + len(plain) :]
    assert FAST.decode_state(again) == SLOW.decode_state(again) == state


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=200))
def test_garbage_after_a_valid_header_is_read_as_fastavro_reads_it_or_refused(
    garbage: bytes,
) -> None:
    """The compiled reader never accepts what fastavro refuses, nor reads it differently.

    It may refuse what fastavro accepts (negative indexes, over-long varints).
    """
    for header, fast, slow in (
        (VALID_EVENT[:10], FAST.decode_event, SLOW.decode_event),
        (VALID_STATE[:10], FAST.decode_state, SLOW.decode_state),
    ):
        try:
            got = fast(header + garbage)
        except DecodeError:
            continue
        assert same(got, slow(header + garbage))


@settings(max_examples=300, deadline=None)
@given(st.sampled_from([VALID_EVENT, VALID_STATE]), st.data())
def test_a_flipped_byte_decodes_as_fastavro_or_raises_decode_error(
    valid: bytes, data: st.DataObject
) -> None:
    position = data.draw(st.integers(10, len(valid) - 1))
    flipped = bytearray(valid)
    flipped[position] ^= data.draw(st.integers(1, 255))
    fast, slow = (
        (FAST.decode_event, SLOW.decode_event)
        if valid is VALID_EVENT
        else (FAST.decode_state, SLOW.decode_state)
    )
    with contextlib.suppress(DecodeError):
        assert same(fast(bytes(flipped)), slow(bytes(flipped)))


def test_header_errors_and_other_inputs_keep_the_fastavro_path_messages() -> None:
    with pytest.raises(DecodeError, match="tombstone"):
        FAST.decode_event(None)  # type: ignore[arg-type]
    with pytest.raises(DecodeError, match="TaskState, not an Envelope"):
        FAST.decode_event(VALID_STATE)
    assert FAST.decode_event(bytearray(VALID_EVENT)) == SLOW.decode_event(VALID_EVENT)  # type: ignore[arg-type]


# --- the self-check -------------------------------------------------------------------


def test_varints_round_trip_at_the_limits() -> None:
    for n in (0, -1, 63, -64, 64, -65, 2**31 - 1, -(2**31), 2**63 - 1, -(2**63), 1_700_000_000_123):
        data = write_long(n) + b"\x00"
        assert read_long(data, 0) == (n, len(data) - 1)
    with pytest.raises(OverflowError):
        write_long(2**63)


def test_a_codec_that_disagrees_with_fastavro_is_not_used(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    wrong = fastcodec.BINDINGS.enums["io.taskstream.TimerKind"]
    swapped = dict(fastcodec.BINDINGS.enums)
    swapped["io.taskstream.TaskStatus"] = wrong  # symbols differ: compile refuses
    monkeypatch.setattr(
        fastcodec, "BINDINGS", fastcodec.Bindings(fastcodec.BINDINGS.records, swapped)
    )
    with caplog.at_level(logging.WARNING, logger="taskstream.schemas.codec.compiled"):
        codec = AvroCodec(catalog())
    assert not codec.compiled
    assert "using fastavro" in caplog.text
    assert codec.decode_state(codec.encode_state(full_state())) == full_state()


def test_a_wrong_compiled_value_is_caught_by_the_canaries(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    real = fastcodec.compile_version

    def off_by_one(version: Any, what: str, expected: str) -> tuple[Any, Any]:
        decode, encode = real(version, what, expected)
        if what != "event":
            return decode, encode
        return decode, lambda env: encode(dataclasses.replace(env, attempt=env.attempt + 1))

    monkeypatch.setattr(fastcodec, "compile_version", off_by_one)
    with caplog.at_level(logging.WARNING, logger="taskstream.schemas.codec.compiled"):
        codec = AvroCodec(catalog())
    assert not codec.compiled
    assert "differs from fastavro" in caplog.text
    env = envelope(TimerFired(TimerKind.DELAY_DUE, 1))
    assert codec.encode_event(env) == SLOW.encode_event(env)


def test_samples_cover_every_enum_symbol_and_body_type() -> None:
    ref, state_ref = fastcodec.references(catalog())
    bodies = {FAST.decode_event(ref.write_record(r)).type_name for r in _samples(ref)}
    assert len(bodies) == len(BODY_TYPES)
    statuses = {FAST.decode_state(state_ref.write_record(r)).status for r in _samples(state_ref)}
    assert statuses == set(TaskStatus)


def _samples(ref: fastcodec.Reference) -> list[Any]:
    from taskstream.schemas.catalog import sample_records

    return sample_records(ref.version.schema)
