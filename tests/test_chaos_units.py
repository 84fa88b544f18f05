"""The chaos harness's pure parts (D42): the seeded plan and mix, the runs file, the
rules that attribute extra runs and measure a limit, the fold of the log's facts, and
the rule of one firing per schedule tick."""

from __future__ import annotations

import dataclasses
import itertools
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from taskstream.chaos import schedule
from taskstream.chaos.checker import (
    PENDING_MS,
    FaultRecord,
    Run,
    ScheduleFacts,
    TickFindings,
    TimerPass,
    attribute,
    check,
    check_ticks,
    fold_facts,
    max_overlap,
    parse_runs,
)
from taskstream.chaos.errors import ChaosError
from taskstream.chaos.report import markdown, to_json
from taskstream.chaos.workload import EXPECTED_RUNS, WEIGHTS, mix, schedules
from taskstream.processors.fold.clock import clamp
from taskstream.processors.fold.effects import Emit
from taskstream.processors.fold.rules import Limits
from taskstream.processors.fold.schedule import apply as apply_schedule
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
from taskstream.schemas.schedules import ScheduleRequest
from taskstream.schemas.serde import encode_event
from taskstream.schemas.state import ScheduleState, TaskStatus
from tests.lifecycle_support import T0, Story, submitted


@given(st.integers(0, 2**32), st.integers(0, 60))
def test_the_same_seed_gives_the_same_plan(seed: int, count: int) -> None:
    kinds = tuple(schedule.KINDS)
    assert schedule.make_plan(seed, kinds, count) == schedule.make_plan(seed, kinds, count)


@given(st.integers(0, 2**32))
def test_a_plan_covers_every_selected_kind_once_per_round(seed: int) -> None:
    kinds = (schedule.WORKER_KILL, schedule.REPLICA_KILL, schedule.PRODUCER_DUP)
    plan = schedule.make_plan(seed, kinds, 6, gap_s=10.0)
    assert {f.kind for f in plan[:3]} == set(kinds) == {f.kind for f in plan[3:]}
    assert all(b.at_s > a.at_s for a, b in itertools.pairwise(plan))
    low, high = schedule.HOLD_S[schedule.WORKER_KILL]
    assert all(low <= f.hold_s <= high for f in plan if f.kind == schedule.WORKER_KILL)


def test_clock_skew_is_an_hour_either_way_and_only_for_that_kind() -> None:
    plan = schedule.make_plan(7, tuple(schedule.KINDS), 40)
    assert {abs(f.skew_ms) for f in plan if f.kind == schedule.CLOCK_SKEW} == {3_600_000}
    assert all(f.skew_ms == 0 for f in plan if f.kind != schedule.CLOCK_SKEW)


def test_fault_kinds_are_parsed_and_unknown_ones_refused() -> None:
    assert schedule.parse_kinds("all") == tuple(schedule.KINDS)
    assert schedule.parse_kinds("none") == ()
    assert schedule.parse_kinds("worker-kill, producer-dup,worker-kill") == (
        "worker-kill", "producer-dup")
    with pytest.raises(ChaosError, match="broker-kil"):
        schedule.parse_kinds("broker-kil")
    with pytest.raises(ChaosError):
        schedule.make_plan(1, (), 3)


def test_the_mix_is_seeded_and_has_every_kind() -> None:
    first = [next(m) for m in [mix(5, "r")] for _ in range(400)]
    again = mix(5, "r")
    assert [next(again) for _ in range(400)] == first
    assert {s.kind for s in first} == set(WEIGHTS)
    dup = next(s for s in first if s.kind == "duplicate")
    assert dup.options["idempotency_key"].startswith("r-dup-") and dup.repeat_after_s
    limited = next(s for s in first if s.kind == "limited")
    assert limited.options["concurrency_key"] == "r-ckey"
    assert all(kind in EXPECTED_RUNS for kind in WEIGHTS)


def test_runs_file_pairs_starts_with_ends_and_keeps_runs_that_never_returned() -> None:
    lines = [
        '{"task":"A","attempt":1,"pid":10,"ev":"start","mono":1.0,"outcome":""}',
        '{"task":"B","attempt":1,"pid":11,"ev":"start","mono":1.5,"outcome":""}',
        '{"task":"A","attempt":1,"pid":10,"ev":"end","mono":2.0,"outcome":"ok"}',
        '{"task":"B","attempt":2,"pid":12,"ev":"sta',  # cut short by a SIGKILL
    ]
    assert parse_runs(lines) == [Run("A", 1, 10, 1.0, 2.0, "ok"), Run("B", 1, 11, 1.5)]


def _fault(kind: str, index: int, start: float, healed: float,
           pids: tuple[int, ...] = ()) -> FaultRecord:
    return FaultRecord(index, kind, "done", start, healed, pids=pids)


def test_an_extra_run_is_put_down_to_the_fault_that_killed_the_run_before_it() -> None:
    faults = [_fault("worker-kill", 0, 100.0, 102.0, (10,)),
              _fault("replica-kill", 1, 105.0, 110.0)]
    before, extra = Run("A", 1, 10, 99.0), Run("A", 2, 11, 109.0, 109.1)
    assert attribute(extra, before, faults, {10: 100.0}, {})[0] == "worker-kill #0"
    # a run that returned does not point at its process: the window decides
    done_before = Run("A", 1, 11, 99.0, 99.5)
    assert attribute(extra, done_before, faults, {}, {})[0] == "replica-kill #1"
    late = Run("A", 2, 11, 500.0, 500.1)
    assert attribute(late, done_before, faults, {}, {})[0] == "unattributed"


def test_runs_on_a_skewed_worker_are_the_clock_skews() -> None:
    faults = [_fault("clock-skew", 3, 100.0, 130.0, (20,))]
    assert attribute(Run("A", 2, 11, 400.0), Run("A", 1, 20, 120.0, 121.0), faults, {},
                     {20: 3_600_000})[0] == "clock-skew #3"


def test_max_overlap_ends_a_killed_run_when_its_process_ended() -> None:
    runs = [Run("A", 1, 1, 0.0, 2.0), Run("B", 1, 2, 1.0), Run("C", 1, 3, 3.0, 4.0)]
    assert max_overlap(runs, {2: 2.5}, until=10.0) == (2, 1.0)
    assert max_overlap(runs, {}, until=10.0)[0] == 2  # B runs on: overlaps C too
    assert max_overlap([*runs, Run("D", 1, 4, 3.5, 3.9)], {}, until=10.0)[0] == 3


@given(st.lists(st.tuples(st.floats(0, 100), st.floats(0, 10)), max_size=30))
def test_max_overlap_is_the_most_runs_alive_at_any_start(spans: list[tuple[float, float]]
                                                          ) -> None:
    runs = [Run(str(i), 1, i, s, s + d) for i, (s, d) in enumerate(spans)]
    most, _ = max_overlap(runs, {}, until=1e9)
    brute = max((sum(1 for r in runs if r.start <= p.start < (r.end or 0)) for p in runs),
                default=0)
    assert most == brute


def _log(*stories: Story) -> list[tuple[str, bytes, int | None]]:
    return [(env.task_id, encode_event(env), None) for story in stories for env in story.log]


def test_the_log_fold_counts_accepted_completions_and_starts() -> None:
    once = Story(task_id="T" + "1" * 25)
    once.submit()
    once.start()
    once.succeed()
    once.apply(once.log[-1])  # the same record read again: a duplicate, not a second one
    never = Story(task_id="T" + "2" * 25)
    never.submit()
    facts = fold_facts(_log(once, never))
    assert facts.accepted_terminal == {once.task_id: 1}
    assert facts.status == {once.task_id: "SUCCEEDED", never.task_id: "READY"}
    assert {t: len(d) for t, d in facts.started.items()} == {once.task_id: 1}
    tasks = {once.task_id: "fast", never.task_id: "fast"}
    found = check(tasks, facts, [Run(once.task_id, 1, 1, 1.0, 2.0),
                                 Run(once.task_id, 2, 1, 3.0, 4.0)], [], {}, {}, 10.0, True)
    assert found.lost == [never.task_id] and found.double_accepted == {}
    assert [e.cause for e in found.extras] == ["unattributed"]
    assert found.invariants()["0 lost"] is False and not found.ok()


def test_a_random_mix_never_needs_more_runs_than_expected_by_kind() -> None:
    rng = random.Random(1)
    assert all(EXPECTED_RUNS[k] >= 1 for k in rng.sample(sorted(WEIGHTS), len(WEIGHTS)))


def test_the_log_fold_holds_event_times_to_the_record_timestamps_as_a_replica_does() -> None:
    """A delayed task whose submission the broker appended late (a broker was down while
    the client held it): the replica holds its times to the record's timestamp (D44), so
    its timer fires at the moved due time. The checker's fold must do the same, or it
    refuses that timer as stale and calls a task that succeeded lost (a chaos run did)."""
    tolerance = 5_000
    limits = Limits(clock_tolerance_ms=tolerance)
    story = Story(task_id="T" + "3" * 25, limits=limits)
    appended = T0 + 20_000
    submit = story.event(submitted(eta_ms=T0 + 5_000), at=T0)
    story.apply(clamp(submit, appended, tolerance))
    story.fire(TimerKind.DELAY_DUE)
    story.start()
    story.succeed()
    assert story.s.status is TaskStatus.SUCCEEDED
    log = [(story.task_id, encode_event(submit), appended)] + [
        (story.task_id, encode_event(env), env.occurred_at_ms) for env in story.log[1:]]
    facts = fold_facts(log, limits)
    assert facts.status[story.task_id] == TaskStatus.SUCCEEDED.value
    assert facts.accepted_terminal[story.task_id] == 1


# -- one firing per schedule tick ---------------------------------------------------------

TICK_TEMPLATE = TaskSubmitted("chaos.fast", "chaos", 0, b"{}", "application/json", None, 10,
                              Backoff(), None, 8_000)
TICK_KEY = schedule_key("tick")


class ScheduleLog:
    """One schedule's log, written by the platform's own fold: its ScheduleSet, the
    timer passes, the TaskSubmitted records its firings emit, its deletion."""

    def __init__(self, misfire: MisfirePolicy = MisfirePolicy.CATCH_UP) -> None:
        self.spec = ScheduleSpec(TICK_TEMPLATE, every_ms=2_000, misfire=misfire,
                                 catch_up_max=1000)
        self.state: ScheduleState | None = None
        self.records: list[Envelope] = []
        self.n = 0

    def send(self, body: EventBody, at: int) -> list[Envelope]:
        self.n += 1
        env = Envelope(f"E{self.n}", TICK_KEY, at, "test", 0, body)
        self.records.append(env)
        self.state, effects = apply_schedule(self.state, env)
        return [e.envelope for e in effects if isinstance(e, Emit)]

    def fire(self, at: int | None = None, deliver: bool = True) -> list[Envelope]:
        """The owner's timer pass (at the due time by default); its firings reach the
        log unless ``deliver`` is False (an emission lost)."""
        assert self.state is not None and self.state.due_at_ms is not None
        due = self.state.due_at_ms
        emitted = self.send(TimerFired(TimerKind.SCHEDULE_DUE, due), due if at is None else at)
        if deliver:
            self.records += emitted
        return emitted

    def log(self) -> list[tuple[str, bytes, int | None]]:
        return [(e.task_id, encode_event(e), None) for e in self.records]


def _ticks(log: ScheduleLog) -> TickFindings:
    facts = fold_facts(log.log())
    return check_ticks(facts.schedules[TICK_KEY], facts.status)


def test_a_clean_tick_sequence_passes_and_a_redo_is_no_second_firing() -> None:
    log = ScheduleLog()
    log.send(ScheduleSet(log.spec), T0 + 500)
    for _ in range(5):
        emitted = log.fire()
    log.records.append(emitted[0])  # the last firing sent again by a redo (same event ID)
    log.send(ScheduleCommand(ScheduleOp.DELETE, "done"), T0 + 10_500)
    found = _ticks(log)
    assert (found.expected, found.fired, found.skipped, found.pending) == (5, 5, 0, 0)
    assert found.ok and found.removed and not found.missed and not found.duplicated


def test_a_tick_fired_twice_is_caught_though_the_task_fold_keeps_one_task() -> None:
    log = ScheduleLog()
    log.send(ScheduleSet(log.spec), T0 + 500)
    log.fire()
    second = log.fire()[0]
    # a replica that fired the same tick from a timer of its own (a zombie): same task ID,
    # another event ID
    log.records.append(dataclasses.replace(second, event_id="zombie-timer.fire.x"))
    log.fire()
    log.send(ScheduleCommand(ScheduleOp.DELETE, "done"), T0 + 6_500)
    found = _ticks(log)
    fire_at = T0 + 4_000
    assert list(found.duplicated) == [fire_at] and "distinct event IDs" in found.duplicated[
        fire_at]
    assert found.fired == 3 and not found.missed and not found.ok


def test_a_firing_that_never_reached_the_log_is_a_missed_tick() -> None:
    log = ScheduleLog()
    log.send(ScheduleSet(log.spec), T0 + 500)
    log.fire()
    log.fire(deliver=False)  # the schedule moved on, its TaskSubmitted was lost
    log.fire()
    log.send(ScheduleCommand(ScheduleOp.DELETE, "done"), T0 + 6_500)
    found = _ticks(log)
    assert found.missed == [T0 + 4_000] and found.fired == 2 and not found.ok


def test_ticks_a_stalled_timer_never_reached_are_missed_unless_still_pending() -> None:
    log = ScheduleLog()
    log.send(ScheduleSet(log.spec), T0 + 500)
    log.fire()  # T0+2 s; then the owner stalls, and the schedule is deleted at T0+30.5 s
    log.send(ScheduleCommand(ScheduleOp.DELETE, "done"), T0 + 30_500)
    found = _ticks(log)
    # 4 .. 20 s are missed; 22 .. 30 s were due less than PENDING_MS before the removal
    assert found.missed == list(range(T0 + 4_000, T0 + 20_001, 2_000))
    assert found.pending == len(range(T0 + 22_000, T0 + 30_001, 2_000))
    assert found.expected == 1 + len(found.missed) and not found.ok


@pytest.mark.parametrize("misfire", [MisfirePolicy.CATCH_UP, MisfirePolicy.RUN_ONCE])
def test_a_late_timer_pass_fires_what_the_misfire_policy_promises(misfire: MisfirePolicy
                                                                   ) -> None:
    """A timer pass 18 s late (the owner was down): catch-up fires all ten due ticks,
    run-once the latest and skips nine, as D37 documents; neither is a missed tick."""
    log = ScheduleLog(misfire)
    log.send(ScheduleSet(log.spec), T0 + 500)
    log.fire(at=T0 + 20_100)
    log.send(ScheduleCommand(ScheduleOp.DELETE, "done"), T0 + 20_500)
    found = _ticks(log)
    skipped = 9 if misfire is MisfirePolicy.RUN_ONCE else 0
    assert (found.expected, found.fired, found.skipped) == (10, 10 - skipped, skipped)
    assert found.ok, found


def test_a_pass_that_skips_what_catch_up_promises_is_caught() -> None:
    """The same late pass, as facts, when only its latest tick fired: under run-once the
    nine others are skipped; under catch-up (1000 at most) they are missed."""
    ticks = range(T0 + 2_000, T0 + 20_001, 2_000)
    for misfire, missed in ((MisfirePolicy.RUN_ONCE, []),
                            (MisfirePolicy.CATCH_UP, list(ticks)[:-1])):
        spec = ScheduleSpec(TICK_TEMPLATE, every_ms=2_000, misfire=misfire,
                            catch_up_max=1000)
        task = firing_task_id("tick", T0 + 20_000)
        facts = ScheduleFacts(TICK_KEY, spec, T0 + 500, T0 + 20_500,
                              passes=[TimerPass(T0 + 20_100, T0 + 2_000)],
                              fold_fired={T0 + 20_000: 1},
                              submitted={T0 + 20_000: {"E2.fire"}}, tasks={T0 + 20_000: task})
        assert check_ticks(facts, {task: "SUCCEEDED"}).missed == missed


def test_a_firing_after_the_removal_is_unexpected() -> None:
    spec = ScheduleSpec(TICK_TEMPLATE, every_ms=2_000)
    facts = ScheduleFacts(TICK_KEY, spec, T0 + 500, T0 + 2_500,
                          passes=[TimerPass(T0 + 2_000, T0 + 2_000)],
                          submitted={T0 + 2_000: {"a"}, T0 + 4_000: {"b"}},
                          tasks={T0 + 2_000: "A", T0 + 4_000: "B"})
    found = check_ticks(facts, {"A": "SUCCEEDED", "B": "SUCCEEDED"})
    assert found.unexpected == [T0 + 4_000] and found.fired == 1 and not found.ok


def test_the_tick_rule_is_an_invariant_and_its_tasks_join_the_others() -> None:
    log = ScheduleLog()
    log.send(ScheduleSet(log.spec), T0 + 500)
    log.fire()
    log.fire(deliver=False)
    log.send(ScheduleCommand(ScheduleOp.DELETE, "done"), T0 + 4_500)
    facts = fold_facts(log.log())
    found = check({}, facts, [], [], {}, {}, 10.0, True, schedules=[TICK_KEY])
    assert found.invariants()["one firing per schedule tick"] is False and not found.ok()
    first = firing_task_id("tick", T0 + 2_000)
    assert found.by_kind == {"tick": 1} and found.lost == [first]  # READY: not terminal
    assert check({}, facts, [], [], {}, {}, 10.0, True).invariants()[
        "one firing per schedule tick"] is None  # no schedule in the run: not checked
    lost = check({}, facts, [], [], {}, {}, 10.0, True, schedules=[schedule_key("gone")])
    assert [t.created for t in lost.ticks] == [False] and not lost.ok()  # ack'd, not in log


def test_the_run_creates_two_schedules_the_sdk_accepts() -> None:
    made = schedules("21-20261130t120000z")
    assert len(made) == 2 and len({sid for sid, _ in made}) == 2
    for schedule_id, kwargs in made:
        request = ScheduleRequest.build(schedule_id=schedule_id, **kwargs)
        assert request.queue == "chaos" and request.task_name == "chaos.fast"


def test_a_tick_fired_by_a_pass_folded_before_a_removal_stamped_earlier_counts() -> None:
    """The deletion's clock says T0+4.4 s, but the pass at T0+4.5 s (firing the 4 s tick)
    reached the log before it: the platform fired that tick rightly."""
    log = ScheduleLog()
    log.send(ScheduleSet(log.spec), T0 + 500)
    log.fire()
    log.fire(at=T0 + 4_500)
    log.send(ScheduleCommand(ScheduleOp.DELETE, "done"), T0 + 4_400)
    found = _ticks(log)
    assert (found.expected, found.fired, found.unexpected) == (2, 2, []) and found.ok


def test_the_report_shows_the_schedule_figures_and_the_tick_invariant() -> None:
    log = ScheduleLog()
    log.send(ScheduleSet(log.spec), T0 + 500)
    log.fire()
    twice = log.fire()[0]
    log.records.append(dataclasses.replace(twice, event_id="zombie.fire.x"))
    log.send(ScheduleCommand(ScheduleOp.DELETE, "done"), T0 + 4_500)
    found = check({}, fold_facts(log.log()), [], [], {}, {}, 10.0, True,
                  schedules=[TICK_KEY])
    meta = {"stamp": "s", "command": "c", "seed": 1, "kinds": [], "duration_s": 1.0,
            "topology": "t", "refused": 0}
    report = to_json(meta, [], found, 0.0)
    assert report["schedule_ticks"]["fired"] == 2
    assert report["schedule_ticks"]["duplicated"] == 1 and report["ok"] is False
    text = markdown(report)
    assert "| schedule ticks duplicated | 1 |" in text
    assert "| one firing per schedule tick | BROKEN |" in text


@given(st.sampled_from(list(MisfirePolicy)),
       st.lists(st.integers(0, 90_000), min_size=1, max_size=12),
       st.integers(0, PENDING_MS - 1))
def test_the_platforms_own_fold_always_keeps_the_tick_rule(
        misfire: MisfirePolicy, delays: list[int], delete_after: int) -> None:
    """Whatever lateness its timer passes have, the schedule fold's firings, all
    delivered, break no rule (the rule re-derives the policy: no false finding), when
    the removal comes before the timer stalls for PENDING_MS (a stall is a finding:
    test_ticks_a_stalled_timer_never_reached_are_missed_unless_still_pending)."""
    log = ScheduleLog(misfire)
    log.send(ScheduleSet(log.spec), T0 + 500)
    for delay in delays:
        assert log.state is not None and log.state.due_at_ms is not None
        log.fire(at=log.state.due_at_ms + delay)
    last = log.records[-1].occurred_at_ms
    log.send(ScheduleCommand(ScheduleOp.DELETE, "done"), last + delete_after)
    found = _ticks(log)
    assert found.ok, found
    assert found.fired + found.skipped + len(found.missed) == found.expected
