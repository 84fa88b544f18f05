"""The cheap option check and encoder agree with TaskSpec and encode_event."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from taskstream.producer.build import EventBuilder
from taskstream.producer.fastspec import SimpleSpecs
from taskstream.producer.fastwire import (
    make_simple_encoder,
    reference_simple_encoder,
    simple_encoder,
    simple_to_submitted,
)
from taskstream.producer.templates import TemplateItems
from taskstream.schemas.ids import derived_task_id
from taskstream.schemas.models import SpecLimits, TaskSpec
from taskstream.schemas.serde import decode_event

LIMITS = SpecLimits(max_payload_bytes=200)
AT = 1_700_000_000_000

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda kids: (
        st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=4), kids, max_size=3)
    ),
    max_leaves=8,
)
seconds = st.integers(-2, 10**6) | st.floats(allow_nan=True) | st.text(max_size=2) | st.booleans()
options = st.fixed_dictionaries(
    {"name": st.sampled_from(["ok", "a.b:c-d", "9bad", "", "x" * 201]) | st.integers()},
    optional={
        "payload": json_values | st.binary(max_size=250) | st.just(object()),
        "queue": st.sampled_from(["default", "q_1", "bad queue", "", "é"]) | st.integers(),
        "priority": st.integers(-1, 3) | st.booleans() | st.sampled_from([1.0, "1"]),
        "delay": seconds,
        "max_attempts": st.integers(-1, 1001) | st.sampled_from([2.0, "3", True]),
        "timeout": seconds,
        "lease": seconds,
        "idempotency_key": st.text(max_size=3) | st.just("k" * 513) | st.integers(),
        "headers": st.dictionaries(st.text(max_size=2), st.text(max_size=2), max_size=2),
        "colour": st.just("red"),
    },
)


@settings(max_examples=600, deadline=None)
@given(options)
def test_fast_path_accepts_only_what_taskspec_accepts_and_builds_the_same(
    fields: dict[str, Any],
) -> None:
    fast = SimpleSpecs(LIMITS).fields(fields, AT)
    try:
        expected = TaskSpec.model_validate(fields, context={"limits": LIMITS}).to_submitted(AT)
    except ValidationError:
        assert fast is None  # the fast path never lets an invalid task through
        return
    if fast is not None:
        assert simple_to_submitted(fast) == expected


def test_the_common_case_takes_the_fast_path() -> None:
    fast = SimpleSpecs(LIMITS)
    assert fast.fields({"name": "a", "payload": {"i": 1}}, AT) is not None
    assert (
        fast.fields(
            {
                "name": "a",
                "queue": "q",
                "priority": 2,
                "delay": 1.5,
                "max_attempts": 5,
                "timeout": 3,
                "lease": 10,
                "idempotency_key": "k",
                "payload": b"\x00",
            },
            AT,
        )
        is not None
    )


SIMPLE = ("n", "default", 0, b"{}", "application/json", None, 3, None, 30_000, None)


def test_simple_encoder_is_fast_and_matches_encode_event() -> None:
    assert simple_encoder() is not reference_simple_encoder


@settings(max_examples=300, deadline=None)
@given(options)
def test_simple_encoder_writes_what_encode_event_writes(fields: dict[str, Any]) -> None:
    fast = SimpleSpecs(LIMITS).fields(fields, AT)
    if fast is None:
        return
    enc = make_simple_encoder(reference_simple_encoder("A" * 26, "B" * 26, 0, "s", fast)[:10])
    args = ("01ARZ3NDEKTSV4RRFFQ69G5FAV", "01ARZ3NDEKTSV4RRFFQ69G5FAW", AT, "producer:t", fast)
    assert enc(*args) == reference_simple_encoder(*args)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(options, st.sampled_from([AT, AT + 1]), st.sampled_from(["a", "b"]))))
def test_one_simple_encoder_stays_right_across_calls(
    calls: list[tuple[dict[str, Any], int, str]],
) -> None:
    """The encoder memoizes the bytes around the payload: reuse must never leak."""
    header = reference_simple_encoder("A" * 26, "B" * 26, 0, "s", SIMPLE)[:10]
    enc = make_simple_encoder(header)
    specs = SimpleSpecs(LIMITS)
    for fields, at, source in calls:
        fast = specs.fields(fields, at)
        if fast is None:
            continue
        args = ("01ARZ3NDEKTSV4RRFFQ69G5FAV", "01ARZ3NDEKTSV4RRFFQ69G5FAW", at, source, fast)
        assert enc(*args) == reference_simple_encoder(*args)


def test_simple_encoder_memos_are_bounded_and_stay_right() -> None:
    header = reference_simple_encoder("A" * 26, "B" * 26, 0, "s", SIMPLE)[:10]
    enc = make_simple_encoder(header)
    for i in range(2_500):  # more distinct names than a memo holds: it is cleared, not wrong
        fast = (f"n{i}", "default", i % 3, b"{}", "application/json", None, 3, None, 30_000, None)
        args = ("01ARZ3NDEKTSV4RRFFQ69G5FAV", "01ARZ3NDEKTSV4RRFFQ69G5FAW", AT + i, "p", fast)
        assert enc(*args) == reference_simple_encoder(*args)


def test_both_builder_paths_give_the_same_event() -> None:
    build = EventBuilder("producer:t", 200, limits=LIMITS)
    fields = {"name": "charge", "payload": {"a": [1, 2]}, "idempotency_key": "o-1", "delay": 2}
    tid_fast, fast = build.from_fields(fields, AT, "t")
    tid_slow, slow = build.submitted(TaskSpec.model_validate(fields), AT)
    assert tid_fast == tid_slow
    a, b = decode_event(fast), decode_event(slow)
    assert (a.task_id, a.body, a.source, a.occurred_at_ms) == (b.task_id, b.body, b.source, AT)


plain_items = st.fixed_dictionaries(
    {"name": st.sampled_from(["ok", "a.b:c-d", "9bad", "", "x" * 201]) | st.integers()},
    optional={"payload": json_values | st.binary(max_size=250) | st.just(object())},
)


@settings(max_examples=400, deadline=None)
@given(st.lists(st.tuples(plain_items | options, st.sampled_from([AT, AT + 1])), max_size=8))
def test_plain_items_encode_exactly_what_the_general_path_encodes(
    items: list[tuple[dict[str, Any], int]],
) -> None:
    """A plain item ({name, payload}) gives the general encoder's bytes; anything the
    plain path turns down is left to the general path, never encoded differently."""
    specs, encode = SimpleSpecs(LIMITS), simple_encoder()
    plain = TemplateItems(specs, encode, LIMITS.max_payload_bytes, "producer:t")
    ids = ("01ARZ3NDEKTSV4RRFFQ69G5FAV", "01ARZ3NDEKTSV4RRFFQ69G5FAW")
    for item, at in items:
        got = plain.encode(item, *ids, at)
        general = specs.fields(item, at)
        if got is None:
            plain_and_valid = set(item) <= {"name", "payload"} and general is not None
            assert not plain_and_valid, item  # the plain path took every plain, valid item
            continue
        assert general is not None  # only valid items are encoded
        assert got == encode(*ids, at, "producer:t", general)


def test_a_plain_submit_call_is_the_general_event() -> None:
    build = EventBuilder("producer:t", 200, limits=LIMITS)
    tid_plain, plain = build.from_call("ok", {"a": 1}, {}, AT)
    tid_general, general = build.from_call("ok", {"a": 1}, {"queue": "default"}, AT)
    a, b = decode_event(plain), decode_event(general)
    assert (a.body, a.occurred_at_ms, a.source) == (b.body, b.occurred_at_ms, b.source)
    assert a.task_id == tid_plain and b.task_id == tid_general and tid_plain != tid_general


def test_many_takes_the_plain_path_and_keeps_order() -> None:
    build = EventBuilder("producer:t", 200, limits=LIMITS)
    items: list[Any] = [
        {"name": "ok", "payload": {"i": 1}},
        {"name": "ok", "payload": b"raw"},
        {"name": "ok", "payload": None, "queue": "q_1"},
        TaskSpec(name="ok", payload=[1]),
        {"name": "ok", "idempotency_key": "k"},
    ]
    task_ids, values = build.many(items, AT)
    bodies = [decode_event(v) for v in values]
    assert [b.task_id for b in bodies] == task_ids
    assert [b.body.payload for b in bodies] == [b'{"i":1}', b"raw", b"null", b"[1]", b"null"]
    assert bodies[2].body.queue == "q_1"
    assert task_ids[4] == derived_task_id("ok", "k")
    assert len(set(task_ids)) == 5


@pytest.mark.parametrize("size", [0, 63, 64, 127, 128, 8191, 8192, 70_000])
def test_plain_payload_lengths_are_written_like_the_general_path(size: int) -> None:
    limits = SpecLimits(max_payload_bytes=100_000)
    specs, encode = SimpleSpecs(limits), simple_encoder()
    plain = TemplateItems(specs, encode, limits.max_payload_bytes, "producer:t")
    ids = ("01ARZ3NDEKTSV4RRFFQ69G5FAV", "01ARZ3NDEKTSV4RRFFQ69G5FAW")
    for item in ({"name": "n", "payload": b"x" * size}, {"name": "n", "payload": "y" * size}):
        general = specs.fields(item, AT)
        assert general is not None
        assert plain.encode(item, *ids, AT) == encode(*ids, AT, "producer:t", general)


def test_templates_never_mix_values_that_compare_equal() -> None:
    """1, 1.0 and True are equal and hash alike; a template of one is never used for another."""
    specs, encode = SimpleSpecs(LIMITS), simple_encoder()
    templates = TemplateItems(specs, encode, LIMITS.max_payload_bytes, "producer:t")
    ids = ("01ARZ3NDEKTSV4RRFFQ69G5FAV", "01ARZ3NDEKTSV4RRFFQ69G5FAW")
    first = {"name": "ok", "priority": 1, "payload": 1}
    general = specs.fields(first, AT)
    assert general is not None
    assert templates.encode(first, *ids, AT) == encode(*ids, AT, "producer:t", general)
    for lookalike in (True, 1.0):
        item = {"name": "ok", "priority": lookalike, "payload": 1}
        assert specs.fields(item, AT) is None  # the fast path refuses it ...
        assert templates.encode(item, *ids, AT) is None  # ... so the template path does too
    keyed = {"name": "ok", "priority": 1, "payload": 1, "idempotency_key": "k"}
    assert templates.encode(keyed, *ids, AT) is None  # keyed items are never templated
