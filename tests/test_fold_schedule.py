"""The schedule entity's pure fold (processors/fold/schedule.py), without a broker:
firings exactly once with derived task IDs, misfire policies, pause/resume, jitter,
start/end dates, idempotency and redo, and replay (effects=False) giving the same state."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from taskstream.processors.fold import schedule
from taskstream.processors.fold.effects import Effect, Emit, Rejected
from taskstream.processors.fold.kinds import SCHEDULE, kind_of, schedule_timer
from taskstream.processors.fold.lifecycle import apply as apply_task
from taskstream.schemas.entity_keys import schedule_key
from taskstream.schemas.events import (
    Backoff,
    Envelope,
    EventBody,
    MisfirePolicy,
    ScheduleCommand,
    ScheduleOp,
    ScheduleSet,
    ScheduleSpec,
    TaskSubmitted,
    TimerFired,
    TimerKind,
)
from taskstream.schemas.ids import firing_task_id
from taskstream.schemas.serde import decode_entity, encode_entity
from taskstream.schemas.state import ScheduleState, ScheduleStatus

T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z
KEY = schedule_key("nightly")
TASK = TaskSubmitted("reports.nightly", "default", 0, b'{"a":1}', "application/json", None, 3,
                     Backoff(), None, 30_000)


def spec(**kw: object) -> ScheduleSpec:
    return dataclasses.replace(ScheduleSpec(TASK, every_ms=2_000), **kw)  # type: ignore[arg-type]


class Sched:
    """One schedule's events, applied as told (both with and without effects)."""

    def __init__(self) -> None:
        self.state: ScheduleState | None = None
        self.shadow: ScheduleState | None = None  # the same events with effects=False
        self.n = 0

    def send(self, body: EventBody, at: int, event_id: str | None = None) -> list[Effect]:
        self.n += 1
        event = Envelope(event_id or f"E{self.n}", KEY, at, "test", 0, body)
        self.state, effects = schedule.apply(self.state, event)
        self.shadow, quiet = schedule.apply(self.shadow, event, effects=False)
        assert self.shadow == self.state  # replay folds to the very same state
        assert all(isinstance(e, Rejected) for e in quiet)
        if self.state is not None:
            assert decode_entity(encode_entity(self.state)) == self.state
        return effects

    def fire(self, at: int | None = None) -> list[Effect]:
        """The timer scan's proposal at ``at`` (default: the due time)."""
        assert self.state is not None and self.state.due_at_ms is not None
        due = self.state.due_at_ms
        return self.send(TimerFired(TimerKind.SCHEDULE_DUE, due), due if at is None else at)


def fired_times(effects: list[Effect]) -> list[int]:
    out = []
    for e in effects:
        assert isinstance(e, Emit)
        body = e.envelope.body
        assert isinstance(body, TaskSubmitted)
        out.append(int(body.headers[schedule.FIRE_TIME_HEADER]))
        assert e.envelope.task_id == firing_task_id("nightly", out[-1])
    return out


def test_every_fires_on_the_interval_with_derived_ids() -> None:
    s = Sched()
    s.send(ScheduleSet(spec()), T0 + 500)
    assert s.state is not None and s.state.status is ScheduleStatus.ACTIVE
    assert s.state.next_fire_ms == T0 + 2_000  # anchored at the epoch: even seconds
    effects = s.fire()
    assert fired_times(effects) == [T0 + 2_000]
    emitted = effects[0]
    assert isinstance(emitted, Emit)
    assert emitted.envelope.event_id == f"E2.fire.{T0 + 2_000}"
    body = emitted.envelope.body
    assert isinstance(body, TaskSubmitted)
    assert (body.name, body.payload, body.headers[schedule.SCHEDULE_HEADER]) == (
        "reports.nightly", b'{"a":1}', "nightly")
    assert s.state.next_fire_ms == T0 + 4_000 and s.state.fired == 1
    assert [f.fire_at_ms for f in s.state.last_firings] == [T0 + 2_000]
    assert schedule_timer(s.state) == (T0 + 4_000, KEY, TimerKind.SCHEDULE_DUE, 0, "")


def test_a_repeated_or_stale_timer_fires_nothing_and_the_same_firing_is_the_same_task() -> None:
    s = Sched()
    s.send(ScheduleSet(spec()), T0)
    first = s.fire()
    stale = s.send(TimerFired(TimerKind.SCHEDULE_DUE, T0 + 2_000), T0 + 2_100)  # another replica
    assert len(stale) == 1 and isinstance(stale[0], Rejected) and "stale" in stale[0].reason
    # a second replica that fired the same time from a lost state submits the same task ID
    other = Sched()
    other.send(ScheduleSet(spec()), T0)
    again = other.fire(T0 + 2_050)
    assert [e.envelope.task_id for e in again if isinstance(e, Emit)] == [
        e.envelope.task_id for e in first if isinstance(e, Emit)]


def test_the_task_fold_counts_a_repeated_firing_as_a_duplicate() -> None:
    s = Sched()
    s.send(ScheduleSet(spec()), T0)
    (one,) = s.fire()
    other = Sched()  # another replica, its own TimerFired (another event id)
    other.send(ScheduleSet(spec()), T0)
    (two,) = other.send(TimerFired(TimerKind.SCHEDULE_DUE, T0 + 2_000), T0 + 2_300, "X9")
    assert isinstance(one, Emit) and isinstance(two, Emit)
    assert one.envelope.event_id != two.envelope.event_id
    task, _ = apply_task(None, one.envelope)
    task, _ = apply_task(task, two.envelope)
    assert task is not None and task.duplicates == 1 and task.conflicts == 0


def test_an_early_timer_is_refused() -> None:
    s = Sched()
    s.send(ScheduleSet(spec()), T0)
    effects = s.send(TimerFired(TimerKind.SCHEDULE_DUE, T0 + 2_000), T0 + 1_999)
    assert isinstance(effects[0], Rejected) and "early" in effects[0].reason


@pytest.mark.parametrize(("policy", "late_ms", "expected"), [
    (MisfirePolicy.RUN_ONCE, 10_100, [T0 + 12_000]),
    (MisfirePolicy.CATCH_UP, 10_100, [T0 + 6_000, T0 + 8_000, T0 + 10_000, T0 + 12_000]),
    (MisfirePolicy.SKIP, 10_100, [T0 + 12_000]),  # the latest is 100 ms late: within grace
    (MisfirePolicy.SKIP, 11_900, []),  # the latest is 1.9 s late: beyond a 1 s grace
])
def test_misfire_policies_after_an_outage(
        policy: MisfirePolicy, late_ms: int, expected: list[int]) -> None:
    s = Sched()
    s.send(ScheduleSet(spec(misfire=policy, catch_up_max=4, misfire_grace_ms=1_000)), T0)
    effects = s.fire(T0 + 2_000 + late_ms)  # ticks at +2, +4, ... +12 s have all passed
    assert fired_times(effects) == expected
    assert s.state is not None
    assert s.state.fired + s.state.skipped == 6
    assert s.state.next_fire_ms is not None and s.state.next_fire_ms > T0 + 2_000 + late_ms


def test_pause_stops_firing_and_resume_applies_the_misfire_policy() -> None:
    s = Sched()
    s.send(ScheduleSet(spec()), T0)
    s.send(ScheduleCommand(ScheduleOp.PAUSE, "maintenance"), T0 + 1_000)
    assert s.state is not None and s.state.status is ScheduleStatus.PAUSED
    assert schedule_timer(s.state) is None and s.state.reason == "maintenance"
    # a timer proposed before the pause is refused
    refused = s.send(TimerFired(TimerKind.SCHEDULE_DUE, T0 + 2_000), T0 + 2_000)
    assert isinstance(refused[0], Rejected)
    s.send(ScheduleCommand(ScheduleOp.RESUME), T0 + 9_000)
    assert s.state.status is ScheduleStatus.ACTIVE and s.state.due_at_ms == T0 + 2_000
    assert fired_times(s.fire(T0 + 9_010)) == [T0 + 8_000]  # run once: the latest
    assert s.state.skipped == 3 and s.state.next_fire_ms == T0 + 10_000


def test_delete_then_set_again() -> None:
    s = Sched()
    s.send(ScheduleSet(spec()), T0)
    s.send(ScheduleCommand(ScheduleOp.DELETE, "gone"), T0 + 1)
    assert s.state is not None and s.state.status is ScheduleStatus.DELETED
    assert isinstance(s.send(ScheduleCommand(ScheduleOp.RESUME), T0 + 2)[0], Rejected)
    s.send(ScheduleSet(spec(every_ms=5_000)), T0 + 3)
    assert s.state.status is ScheduleStatus.ACTIVE and s.state.revision == 2
    assert s.state.next_fire_ms == T0 + 5_000


def test_update_while_paused_stays_paused() -> None:
    s = Sched()
    s.send(ScheduleSet(spec()), T0)
    s.send(ScheduleCommand(ScheduleOp.PAUSE), T0 + 1)
    s.send(ScheduleSet(spec(every_ms=60_000)), T0 + 2)
    assert s.state is not None and s.state.status is ScheduleStatus.PAUSED
    assert s.state.next_fire_ms == T0 + 60_000 and s.state.due_at_ms is None


def test_start_and_end_dates_and_ending() -> None:
    s = Sched()
    s.send(ScheduleSet(spec(start_at_ms=T0 + 10_001, end_at_ms=T0 + 14_001)), T0)
    assert s.state is not None and s.state.next_fire_ms == T0 + 10_001  # anchored at start
    assert fired_times(s.fire()) == [T0 + 10_001]
    assert fired_times(s.fire()) == [T0 + 12_001]
    assert fired_times(s.fire()) == [T0 + 14_001]
    assert s.state.status is ScheduleStatus.ENDED and schedule_timer(s.state) is None


def test_cron_schedule_in_a_time_zone() -> None:
    s = Sched()
    s.send(ScheduleSet(spec(every_ms=None, cron="30 2 * * *", timezone="America/New_York")),
           1_772_884_800_000)  # 2026-03-07T12:00Z
    assert s.state is not None
    assert s.state.next_fire_ms == 1_772_953_200_000  # 2026-03-08T03:00-04:00: the gap's end
    assert schedule.upcoming(s.state, 2) == [1_772_953_200_000, 1_773_037_800_000]


def test_jitter_is_a_hash_of_the_schedule_and_the_fire_time() -> None:
    s = Sched()
    s.send(ScheduleSet(spec(jitter_ms=1_000)), T0)
    assert s.state is not None and s.state.next_fire_ms is not None
    jitter = s.state.due_at_ms - s.state.next_fire_ms  # type: ignore[operator]
    assert 0 <= jitter < 1_000
    assert jitter == schedule.jitter_of("nightly", s.state.next_fire_ms, 1_000)
    spread = {schedule.jitter_of("nightly", T0 + i * 2_000, 1_000) for i in range(50)}
    assert len(spread) > 25  # spread out, not constant
    assert fired_times(s.fire()) == [T0 + 2_000]  # the fire time is the schedule's, unjittered


def test_an_invalid_spec_is_rejected_and_changes_nothing() -> None:
    s = Sched()
    assert isinstance(s.send(ScheduleSet(spec(every_ms=None, cron="61 * * * *")), T0)[0],
                      Rejected)
    assert s.state is None
    s.send(ScheduleSet(spec()), T0)
    before = s.state
    effects = s.send(ScheduleSet(spec(timezone="Mars/Olympus")), T0 + 1)
    assert isinstance(effects[0], Rejected) and "unknown time zone" in effects[0].reason
    assert s.state is not None and before is not None
    assert (s.state.spec, s.state.rejected) == (before.spec, 1)


def test_a_repeat_of_the_last_firing_redoes_exactly_its_emits() -> None:
    s = Sched()
    s.send(ScheduleSet(spec(misfire=MisfirePolicy.CATCH_UP)), T0)
    s.fire()
    effects = s.fire(T0 + 8_100)
    assert s.state is not None
    event = Envelope(f"E{s.n}", KEY, T0 + 8_100, "test", 0,
                     TimerFired(TimerKind.SCHEDULE_DUE, T0 + 4_000))
    after, redo = schedule.apply(s.state, event)
    assert after is s.state and redo == effects
    # an older repeat does nothing
    older = dataclasses.replace(event, event_id="E2")
    assert schedule.apply(s.state, older) == (s.state, [])


def test_kind_registry_routes_schedule_keys() -> None:
    assert kind_of(KEY) is SCHEDULE
    assert kind_of("01HZX00000000000000000TASK").name == "task"


@settings(max_examples=60, deadline=None)
@given(every=st.integers(1_000, 60_000), gaps=st.lists(st.integers(0, 200_000), min_size=1,
                                                        max_size=8),
       policy=st.sampled_from(list(MisfirePolicy)))
def test_no_fire_time_is_fired_twice_and_none_is_lost_from_the_count(
        every: int, gaps: list[int], policy: MisfirePolicy) -> None:
    """Whatever the delays of the timer, each fire time fires at most once, fire times only
    grow, and fired + skipped counts every fire time passed."""
    s = Sched()
    s.send(ScheduleSet(spec(every_ms=every, misfire=policy, catch_up_max=3)), T0)
    seen: list[int] = []
    for gap in gaps:
        assert s.state is not None and s.state.due_at_ms is not None
        seen += fired_times(s.fire(s.state.due_at_ms + gap))
    assert seen == sorted(set(seen))
    assert s.state is not None and s.state.next_fire_ms is not None
    passed = (s.state.next_fire_ms - (T0 // every + 1) * every) // every
    assert s.state.fired + s.state.skipped == passed == s.state.fired + s.state.skipped
    assert s.state.fired == len(seen)
