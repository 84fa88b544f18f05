"""The SDK's dependencies, groups and schedules without a broker: the records it sends."""

from __future__ import annotations

from typing import Any

import pytest

from taskstream.producer.build import EventBuilder
from taskstream.producer.errors import InvalidTaskError
from taskstream.producer.graphs import chain_records, group_records
from taskstream.schemas.entity_keys import group_key, schedule_key
from taskstream.schemas.events import (
    GroupCreated,
    MisfirePolicy,
    ParentFailurePolicy,
    ScheduleCommand,
    ScheduleOp,
    ScheduleSet,
    TaskSubmitted,
)
from taskstream.schemas.ids import member_task_id, new_task_id
from taskstream.schemas.models import SpecLimits
from taskstream.schemas.serde import decode_event

AT = 1_767_225_600_000


@pytest.fixture
def builder() -> EventBuilder:
    return EventBuilder("test", 1 << 20, limits=SpecLimits(dependency_timeout_s=42))


def body(value: bytes) -> Any:
    return decode_event(value).body


# --- what is sent ----------------------------------------------------------


def test_a_submission_with_parents_carries_the_timeout_and_the_policy(
        builder: EventBuilder) -> None:
    parent = new_task_id()
    task_id, value = builder.from_call(
        "a.b", {"x": 1}, {"depends_on": [parent], "on_parent_failure": "run"}, AT)
    sub = body(value)
    assert isinstance(sub, TaskSubmitted)
    assert sub.depends_on == [parent] and sub.on_parent_failure is ParentFailurePolicy.RUN
    assert sub.dependency_timeout_ms == 42_000  # the setting, stamped into the event
    assert task_id not in sub.depends_on


def test_self_dependency_too_many_parents_and_delay_are_refused(builder: EventBuilder) -> None:
    from taskstream.schemas.ids import derived_task_id

    me = derived_task_id("a.b", "k")
    with pytest.raises(InvalidTaskError, match="depend on itself"):
        builder.from_call("a.b", None, {"depends_on": [me], "idempotency_key": "k"}, AT)
    small = EventBuilder("t", 1 << 20, limits=SpecLimits(max_dependencies=2))
    with pytest.raises(InvalidTaskError, match="at most 2"):
        small.from_call("a.b", None, {"depends_on": [new_task_id() for _ in range(3)]}, AT)
    with pytest.raises(InvalidTaskError, match="not both"):
        builder.from_call("a.b", None, {"depends_on": [new_task_id()], "delay": 5}, AT)
    with pytest.raises(InvalidTaskError, match="not a 26-character task ID"):
        builder.from_call("a.b", None, {"depends_on": ["nope"]}, AT)


def test_a_chain_links_each_step_to_the_one_before(builder: EventBuilder) -> None:
    records = chain_records(builder, [{"name": "s.one"}, {"name": "s.two"},
                                      {"name": "s.three", "idempotency_key": "k3"}], AT)
    subs = [body(v) for v in records.values]
    assert [s.depends_on for s in subs] == [[], [records.keys[0]], [records.keys[1]]]
    from taskstream.schemas.ids import derived_task_id
    assert records.keys[2] == derived_task_id("s.three", "k3")


def test_a_group_is_created_its_members_know_their_slot_and_the_callback_waits(
        builder: EventBuilder) -> None:
    records = group_records(builder, [{"name": "m.x", "payload": i} for i in range(3)],
                            {"name": "m.done"}, "g7", AT)
    assert records.event_types == ["GroupCreated", *["TaskSubmitted"] * 4]
    assert records.keys[0] == group_key("g7") and body(records.values[0]) == GroupCreated(3)
    for slot in range(3):
        assert records.keys[1 + slot] == member_task_id("g7", slot)
        sub = body(records.values[1 + slot])
        assert [(d.key, d.slot) for d in sub.dependents] == [(group_key("g7"), slot)]
    assert body(records.values[-1]).depends_on == [group_key("g7")]


def test_a_schedule_request_becomes_a_schedule_set(builder: EventBuilder) -> None:
    request = builder.schedule_request({
        "schedule_id": "nightly", "task_name": "reports.run", "payload": {"a": 1},
        "cron": "0 3 * * *", "tz": "Europe/Berlin", "misfire": "catch_up", "jitter": 1.5,
        "priority": 1})
    key, value = builder.schedule_set(request, AT)
    assert key == schedule_key("nightly")
    event = decode_event(value)
    assert event.task_id == key and isinstance(event.body, ScheduleSet)
    spec = event.body.spec
    assert (spec.cron, spec.timezone, spec.misfire, spec.jitter_ms) == (
        "0 3 * * *", "Europe/Berlin", MisfirePolicy.CATCH_UP, 1_500)
    assert (spec.task.name, spec.task.payload, spec.task.priority) == (
        "reports.run", b'{"a":1}', 1)
    key, value = builder.schedule_command("nightly", ScheduleOp.PAUSE, "why", AT)
    assert body(value) == ScheduleCommand(ScheduleOp.PAUSE, "why")


def test_bad_schedules_name_the_field(builder: EventBuilder) -> None:
    with pytest.raises(InvalidTaskError, match=r"cron: .*field 2 \(hour\) '24'"):
        builder.schedule_request({"schedule_id": "n", "task_name": "a.b", "cron": "0 24 * * *"})
    with pytest.raises(InvalidTaskError, match="exactly one"):
        builder.schedule_request({"schedule_id": "n", "task_name": "a.b", "cron": "* * * * *",
                                  "every": 3})
    with pytest.raises(InvalidTaskError, match=r"tz: .*unknown time zone"):
        builder.schedule_request({"schedule_id": "n", "task_name": "a.b", "every": 3,
                                  "tz": "Nowhere/Land"})
    with pytest.raises(InvalidTaskError, match="schedule_id"):
        builder.schedule_request({"schedule_id": "a b", "task_name": "a.b", "every": 3})
