"""The invariants of a chaos run, checked from the events log, the handlers' own
record of their runs and the ledger, once the faults have healed (D42).

* **lost**: a task the ledger holds (Kafka acknowledged it) that the fold of the log
  does not leave in a terminal state;
* **double-accepted**: a task whose fold entered a terminal state more than once (the
  log is folded record by record, as a replica does, counting accepted transitions);
* **extra runs**: handler runs beyond what the task's kind needs
  (:data:`~taskstream.chaos.workload.EXPECTED_RUNS`), each attributed to a fault
  (:func:`attribute`); an extra run no fault explains is a finding;
* **limits**: at no moment more handler runs of the concurrency key than it allows;
* **one firing per schedule tick** (:func:`check_ticks`): each fire time of the run's
  schedules, from the schedule's creation to its removal, submitted exactly one task,
  except the ticks its misfire policy says to skip (D37); the ticks' tasks join the
  other invariants like the ledger's (kind ``tick``);
* ``replay verify`` clean (run by the runner; its result is passed in).

Everything below :func:`read_log` is pure, so the rules are tested without a broker.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from taskstream.chaos.workload import EXPECTED_RUNS, MAX_CONCURRENCY, TICK_KIND
from taskstream.kafka_config import consumer_config
from taskstream.processors.fold.clock import clamp
from taskstream.processors.fold.effects import Effect, Emit
from taskstream.processors.fold.kinds import SCHEDULE, TASK, apply_any, kind_of
from taskstream.processors.fold.rules import Limits
from taskstream.processors.fold.schedule import FIRE_TIME_HEADER, SCHEDULE_HEADER, next_fire_ms
from taskstream.schemas.entity_keys import schedule_key
from taskstream.schemas.errors import DecodeError
from taskstream.schemas.events import (
    Envelope,
    MisfirePolicy,
    ScheduleCommand,
    ScheduleOp,
    ScheduleSet,
    ScheduleSpec,
    TaskStarted,
    TaskSubmitted,
    TimerFired,
    TimerKind,
)
from taskstream.schemas.ids import new_event_id
from taskstream.schemas.serde import decode_event
from taskstream.schemas.state import TERMINAL, EntityState, ScheduleState, TaskState
from taskstream.settings import Settings
from taskstream.topics import chaos_reader_group, events_topic

#: an extra run is put down to a fault whose window (start .. healed + this) holds it
SETTLE_S = 20.0
#: a tick due less than this before its schedule's removal may still have been on its
#: way (the owner's timer scan, the TimerFired record's trip through Kafka) when the
#: removal was folded: it is pending, not missed
PENDING_MS = 10_000
#: the most fire times one timer pass is walked through (a guard, not a rule)
MAX_WALK = 100_000


# -- facts ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Run:
    """One handler run, from the runs file (``end`` None: it never returned)."""

    task_id: str
    attempt: int
    pid: int
    start: float
    end: float | None = None
    outcome: str = ""


@dataclass(frozen=True, slots=True)
class FaultRecord:
    """One fault as it was carried out: its window (monotonic times) and the processes
    it ended or started. ``status``: done, or not-run (``note`` says why)."""

    index: int
    kind: str
    status: str
    started: float
    healed: float
    target: str = ""
    pids: tuple[int, ...] = ()
    canary: str | None = None
    recovery_s: float | None = None
    note: str = ""

    def to_json(self, t0: float) -> dict[str, Any]:
        return {"index": self.index, "kind": self.kind, "status": self.status,
                "target": self.target, "at_s": round(self.started - t0, 2),
                "held_s": round(self.healed - self.started, 2), "pids": list(self.pids),
                "canary": self.canary,
                "recovery_s": None if self.recovery_s is None else round(self.recovery_s, 2),
                "note": self.note}


@dataclass(frozen=True, slots=True)
class TimerPass:
    """One ``SCHEDULE_DUE`` timer the schedule's fold accepted: at ``now_ms`` (the event's
    time) every fire time from ``pending_ms`` (the one the schedule waited for) to
    ``now_ms`` was due."""

    now_ms: int
    pending_ms: int


@dataclass
class ScheduleFacts:
    """One schedule as the log tells it: its spec and creation (the first accepted
    ScheduleSet), its removal (the first accepted pause or delete), the timer passes its
    fold accepted, the fire times its fold fired (times each), and the TaskSubmitted
    records the log holds for each fire time's task (their distinct event IDs)."""

    key: str
    spec: ScheduleSpec | None = None
    created_ms: int | None = None
    removed_ms: int | None = None
    replaced: int = 0  # ScheduleSets accepted after the first (the rule takes the first)
    passes: list[TimerPass] = field(default_factory=list)
    fold_fired: dict[int, int] = field(default_factory=dict)
    submitted: dict[int, set[str]] = field(default_factory=dict)  # fire time -> event IDs
    tasks: dict[int, str] = field(default_factory=dict)  # fire time -> task ID


@dataclass
class LogFacts:
    """What the fold of the events log says, per task (and per schedule)."""

    status: dict[str, str] = field(default_factory=dict)
    accepted_terminal: dict[str, int] = field(default_factory=dict)
    started: dict[str, set[str]] = field(default_factory=dict)  # task -> dispatch IDs
    schedules: dict[str, ScheduleFacts] = field(default_factory=dict)  # schedule key ->
    records: int = 0
    undecodable: int = 0


def fold_facts(events: Iterable[tuple[str, bytes, int | None]],
               limits: Limits | None = None) -> LogFacts:
    """Fold ``(key, value, record timestamp)`` records in log order (one partition's order
    per key is all that matters), as a replica does: event times held to the record's
    timestamp (D44) and the processor's limits, so a delayed task whose submission the
    broker appended late is folded to the same state as live. Counts, per task, accepted
    entries into a terminal state and the dispatches workers reported started."""
    limits = limits or Limits()
    tolerance = limits.clock_tolerance_ms
    facts = LogFacts()
    states: dict[str, EntityState] = {}
    for key, value, record_ms in events:
        facts.records += 1
        try:
            env = clamp(decode_event(value), record_ms, tolerance)
        except DecodeError:
            facts.undecodable += 1
            continue
        kind = kind_of(key)
        if kind is SCHEDULE:
            before_schedule = states.get(key)
            after, made = apply_any(before_schedule, env, limits)
            if after is not None:
                states[key] = after
                _schedule_step(facts, key, before_schedule, after, env, made)
            continue
        if kind is not TASK:
            after, _ = apply_any(states.get(key), env, limits, effects=False)
            if after is not None:
                states[key] = after
            continue
        if isinstance(env.body, TaskStarted):
            facts.started.setdefault(key, set()).add(env.body.dispatch_id)
        if isinstance(env.body, TaskSubmitted) and SCHEDULE_HEADER in env.body.headers:
            _firing_record(facts, key, env)
        before = states.get(key)
        after, _ = apply_any(before, env, limits, effects=False)
        if after is None:
            continue
        states[key] = after
        assert isinstance(after, TaskState)
        was_terminal = isinstance(before, TaskState) and before.status in TERMINAL
        if after.status in TERMINAL and not was_terminal:
            facts.accepted_terminal[key] = facts.accepted_terminal.get(key, 0) + 1
        facts.status[key] = after.status.value
    return facts


def _schedule_step(facts: LogFacts, key: str, before: EntityState | None,
                   after: EntityState, env: Envelope, made: Sequence[Effect]) -> None:
    """What one event the schedule's fold took tells the tick rule (refusals, repeats of
    an applied event and redo effects tell it nothing)."""
    assert isinstance(after, ScheduleState)
    if isinstance(before, ScheduleState) and (env.event_id in before.recent_event_ids
                                              or after.rejected > before.rejected):
        return
    sched = facts.schedules.setdefault(key, ScheduleFacts(key))
    body = env.body
    if isinstance(body, ScheduleSet):
        if sched.spec is None:
            sched.spec, sched.created_ms = after.spec, env.occurred_at_ms
        else:
            sched.replaced += 1
    elif isinstance(body, ScheduleCommand):
        if ScheduleOp(body.op) in (ScheduleOp.PAUSE, ScheduleOp.DELETE) \
                and sched.removed_ms is None:
            sched.removed_ms = env.occurred_at_ms
    elif (isinstance(body, TimerFired) and TimerKind(body.kind) is TimerKind.SCHEDULE_DUE
          and isinstance(before, ScheduleState) and before.next_fire_ms is not None):
        sched.passes.append(TimerPass(env.occurred_at_ms, before.next_fire_ms))
    for effect in made:
        if isinstance(effect, Emit) and isinstance(effect.envelope.body, TaskSubmitted):
            at = int(effect.envelope.body.headers.get(FIRE_TIME_HEADER, "-1"))
            sched.fold_fired[at] = sched.fold_fired.get(at, 0) + 1


def _firing_record(facts: LogFacts, task_id: str, env: Envelope) -> None:
    """A TaskSubmitted record of a schedule's firing, as the log holds it (every copy)."""
    assert isinstance(env.body, TaskSubmitted)
    headers = env.body.headers
    try:
        at = int(headers.get(FIRE_TIME_HEADER, ""))
    except ValueError:
        return
    sched = facts.schedules.setdefault(schedule_key(headers[SCHEDULE_HEADER]),
                                       ScheduleFacts(schedule_key(headers[SCHEDULE_HEADER])))
    sched.submitted.setdefault(at, set()).add(env.event_id)
    sched.tasks[at] = task_id


def read_log(settings: Settings, timeout: float = 60.0) -> LogFacts:
    """The events topic read from its beginning to its end now, folded (:func:`fold_facts`)."""
    group = chaos_reader_group(settings, "check", new_event_id())
    consumer = Consumer(consumer_config(settings, group, {"enable.auto.commit": False}))
    topic = events_topic(settings)
    try:
        parts = sorted(consumer.list_topics(topic, timeout=timeout).topics[topic].partitions)
        ends = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout)[1]
                for p in parts}
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in parts])
        return fold_facts(_records(consumer, ends, timeout), Limits.from_settings(settings))
    finally:
        consumer.close()


def _records(consumer: Consumer, ends: Mapping[int, int], timeout: float
             ) -> Iterable[tuple[str, bytes, int | None]]:
    import time

    left = {p for p, end in ends.items() if end > 0}
    deadline = time.monotonic() + timeout
    while left:
        if time.monotonic() > deadline:
            raise TimeoutError(f"the events topic was not read to its end in {timeout:g} s")
        for msg in consumer.consume(1000, 0.5):
            if msg.error():
                continue
            part, offset = msg.partition(), msg.offset()
            if part is None or offset is None or part not in left or offset >= ends[part]:
                continue
            key, value = msg.key(), msg.value()
            if key is not None and value is not None:
                yield key.decode(errors="replace"), value, msg.timestamp()[1]
            if offset + 1 >= ends[part]:
                left.discard(part)


def load_runs(path: Path) -> list[Run]:
    """The runs file as runs (a start without an end: a run that never returned)."""
    if not path.exists():
        return []
    return parse_runs(path.read_text(errors="replace").splitlines())


def parse_runs(lines: Iterable[str]) -> list[Run]:
    open_runs: dict[tuple[str, int, int], dict[str, Any]] = {}
    runs: list[Run] = []
    for line in lines:
        try:
            item = json.loads(line)
        except ValueError:
            continue  # a line cut short by a SIGKILL mid-write
        ident = (item["task"], item["attempt"], item["pid"])
        if item["ev"] == "start":
            if ident in open_runs:
                runs.append(_run(open_runs.pop(ident), None, ""))
            open_runs[ident] = item
        elif ident in open_runs:
            runs.append(_run(open_runs.pop(ident), item["mono"], item.get("outcome", "")))
    runs += [_run(item, None, "") for item in open_runs.values()]
    return sorted(runs, key=lambda r: r.start)


def _run(start: Mapping[str, Any], end: float | None, outcome: str) -> Run:
    return Run(str(start["task"]), int(start["attempt"]), int(start["pid"]),
               float(start["mono"]), end, outcome)


# -- the rules -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ExtraRun:
    task_id: str
    kind: str
    run: Run
    cause: str  # "<fault kind> #<index>" or "unattributed"
    why: str


def attribute(extra: Run, previous: Run | None, faults: Sequence[FaultRecord],
              ended: Mapping[int, float], skewed: Mapping[int, int]) -> tuple[str, str]:
    """Which fault made ``extra`` happen, and why we think so:

    1. the run before it never returned and its process was ended by a fault;
    2. it, or the run before it, ran on a clock-skewed worker;
    3. it started inside a fault's window (from the fault's start to ``SETTLE_S`` after
       it healed): the latest such fault.

    Otherwise ``("unattributed", ...)``."""
    done = [f for f in faults if f.status == "done"]
    if previous is not None and previous.end is None and previous.pid in ended:
        for fault in done:
            if previous.pid in fault.pids:
                return _name(fault), f"the run before it (pid {previous.pid}) was ended by it"
    for run in (previous, extra):
        if run is not None and run.pid in skewed:
            for fault in done:
                if run.pid in fault.pids:
                    return _name(fault), f"ran on the clock-skewed worker (pid {run.pid})"
    inside = [f for f in done if f.started - 1.0 <= extra.start <= f.healed + SETTLE_S]
    if inside:
        fault = max(inside, key=lambda f: f.started)
        return _name(fault), "started within its window"
    return "unattributed", "no fault explains it"


def _name(fault: FaultRecord) -> str:
    return f"{fault.kind} #{fault.index}"


def extra_runs(tasks: Mapping[str, str], runs: Sequence[Run], faults: Sequence[FaultRecord],
               ended: Mapping[int, float], skewed: Mapping[int, int]) -> list[ExtraRun]:
    """Every run beyond what its task's kind needs, with its cause."""
    by_task: dict[str, list[Run]] = {}
    for run in runs:
        if run.task_id in tasks:
            by_task.setdefault(run.task_id, []).append(run)
    extras = []
    for task_id, task_runs in by_task.items():
        kind = tasks[task_id]
        task_runs.sort(key=lambda r: r.start)
        for i in range(EXPECTED_RUNS.get(kind, 1), len(task_runs)):
            cause, why = attribute(task_runs[i], task_runs[i - 1], faults, ended, skewed)
            extras.append(ExtraRun(task_id, kind, task_runs[i], cause, why))
    return extras


def max_overlap(runs: Sequence[Run], ended: Mapping[int, float], until: float
                ) -> tuple[int, float | None]:
    """The most runs at one time (and when), a run lasting from its start to its end, or
    to its process's end when it never returned (else ``until``)."""
    points: list[tuple[float, int]] = []
    for run in runs:
        end = run.end if run.end is not None else ended.get(run.pid, until)
        points += [(run.start, 1), (end, -1)]
    points.sort(key=lambda p: (p[0], p[1]))  # an end before a start at the same instant
    most, at, now = 0, None, 0
    for t, step in points:
        now += step
        if now > most:
            most, at = now, t
    return most, at


@dataclass(frozen=True, slots=True)
class TickFindings:
    """The tick rule's verdict on one schedule (:func:`check_ticks`). Fire times are the
    schedule's (epoch ms, before jitter)."""

    schedule: str
    expected: int  # fire times from creation to removal, less the pending ones
    fired: int  # of those, the ones whose task the log holds and the task fold took
    skipped: int  # of those, the ones the misfire policy skips (D37): not missed
    pending: int  # due within PENDING_MS of the removal and not fired: not counted
    missed: list[int]
    duplicated: dict[int, str]  # fire time -> what fired it twice
    unexpected: list[int]  # fired, but not a fire time of the window, or one to skip
    removed: bool
    created: bool = True  # False: Kafka acknowledged its ScheduleSet, the log has none
    note: str = ""

    @property
    def ok(self) -> bool:
        return self.created and not (self.missed or self.duplicated or self.unexpected)


def fire_times(spec: ScheduleSpec, after_ms: int, until_ms: int) -> list[int]:
    """The spec's fire times in ``(after_ms, until_ms]`` (its own definition of them)."""
    out: list[int] = []
    at = next_fire_ms(spec, after_ms)
    while at is not None and at <= until_ms and len(out) < MAX_WALK:
        out.append(at)
        at = next_fire_ms(spec, at)
    return out


def promised(spec: ScheduleSpec, due: Sequence[int], now_ms: int) -> list[int]:
    """Of the fire times ``due`` at once (oldest first) when a timer pass came at
    ``now_ms``, those the misfire policy says to fire, as D37 documents it: ``catch_up``
    each, the latest ``catch_up_max`` at most; ``run_once`` the latest; ``skip`` the
    latest if it is at most ``misfire_grace`` late."""
    if not due:
        return []
    if spec.misfire is MisfirePolicy.CATCH_UP:
        return list(due[-spec.catch_up_max:])
    if spec.misfire is MisfirePolicy.SKIP and now_ms - due[-1] > spec.misfire_grace_ms:
        return []
    return [due[-1]]


def check_ticks(sched: ScheduleFacts, known: Mapping[str, str]) -> TickFindings:
    """One firing per tick, for one schedule (pure). The window runs from its creation
    to its removal (its first pause or delete, or the last timer pass folded before it
    when that came later; without a removal, its last timer pass).

    * **duplicated**: a fire time the schedule's fold fired twice, or whose task the log
      holds from two different firings (distinct event IDs: a redo repeats its ID, so
      two IDs are two firings, even though the task's fold keeps one task);
    * **missed**: a fire time of the window that no task answers (no TaskSubmitted in
      the log, or one the task's fold refused), unless the misfire policy skips it at
      the timer pass that went past it (:func:`promised`), or no timer pass had gone
      past it yet and it was due less than :data:`PENDING_MS` before the removal
      (pending, counted apart);
    * **unexpected**: a firing of a time outside the window (after the removal, off the
      schedule's times) or of one the policy skips.

    Not checked: when a tick fired (its lateness), the task's own fate (the other
    invariants do that, kind ``tick``), a schedule replaced or resumed during the run.
    """
    if sched.spec is None or sched.created_ms is None:
        return TickFindings(sched.key, 0, 0, 0, 0, [], {}, sorted(sched.submitted), False,
                            created=False, note="its acknowledged creation is not in the log")
    spec = sched.spec
    removed = sched.removed_ms is not None
    # a pass folded before the removal fires what it finds due, even a time past the
    # removal's own clock (its record was on its way): the window ends at the later
    passed = max([sched.created_ms, *(p.now_ms for p in sched.passes)])
    end = passed if sched.removed_ms is None else max(sched.removed_ms, passed)
    window = fire_times(spec, sched.created_ms, end)
    skip: set[int] = set()
    for timer in sched.passes:
        due = fire_times(spec, timer.pending_ms - 1, timer.now_ms)
        skip |= set(due) - set(promised(spec, due, timer.now_ms))
    fired = {at for at, task_id in sched.tasks.items() if task_id in known}
    left = [at for at in window if at not in fired and at not in skip]
    pending = [at for at in left if removed and at > passed and at > end - PENDING_MS]
    duplicated = {at: f"fired {n} times by the schedule's fold"
                  for at, n in sched.fold_fired.items() if n > 1}
    for at, ids in sched.submitted.items():
        if len(ids) > 1:
            duplicated.setdefault(at, f"{len(ids)} firings in the log (distinct event IDs)")
    in_window = set(window)
    return TickFindings(
        sched.key, expected=len(window) - len(pending),
        fired=len((fired & in_window) - skip), skipped=len(skip & in_window),
        pending=len(pending), missed=[at for at in left if at not in pending],
        duplicated=dict(sorted(duplicated.items())),
        unexpected=sorted(at for at in sched.submitted if at not in in_window or at in skip),
        removed=removed,
        note=f"replaced {sched.replaced} time(s): checked against its first spec"
        if sched.replaced else "")


@dataclass
class Findings:
    tasks: int
    by_kind: dict[str, int]
    lost: list[str]
    not_terminal_status: dict[str, str]
    double_accepted: dict[str, int]
    runs: int
    extras: list[ExtraRun]
    started_events: int
    limit_max: int
    limit_allowed: int
    limit_exceeded_at: float | None
    verify_ok: bool | None
    verify_detail: str
    ticks: list[TickFindings] = field(default_factory=list)

    @property
    def unattributed(self) -> list[ExtraRun]:
        return [e for e in self.extras if e.cause == "unattributed"]

    def invariants(self) -> dict[str, bool | None]:
        """Each invariant: True holds, False broken, None not checked."""
        return {
            "0 lost": not self.lost,
            "0 double-accepted completions": not self.double_accepted,
            "every extra run attributed to a fault": not self.unattributed,
            "replay verify clean": self.verify_ok,
            "limits never exceeded": self.limit_max <= self.limit_allowed,
            "one firing per schedule tick": all(t.ok for t in self.ticks) if self.ticks
            else None,
        }

    def ok(self) -> bool:
        return all(v is not False for v in self.invariants().values())


def check(tasks: Mapping[str, str], facts: LogFacts, runs: Sequence[Run],
          faults: Sequence[FaultRecord], ended: Mapping[int, float],
          skewed: Mapping[int, int], until: float, verify_ok: bool | None,
          verify_detail: str = "", schedules: Iterable[str] = ()) -> Findings:
    """Every invariant over one run's facts (pure). ``schedules``: the keys of the run's
    schedules (the ledger's); the tasks their ticks submitted join ``tasks`` (kind
    ``tick``), so a fired tick must reach a terminal state, once, like any other."""
    ticks = [check_ticks(facts.schedules.get(key, ScheduleFacts(key)), facts.status)
             for key in sorted(set(schedules))]
    tasks = {**tasks, **{task_id: TICK_KIND for key in sorted(set(schedules))
                         for task_id in facts.schedules.get(key, ScheduleFacts(key)
                                                            ).tasks.values()}}
    lost = sorted(t for t in tasks if facts.status.get(t) not in TERMINAL)
    limited = [r for r in runs if tasks.get(r.task_id) == "limited"]
    most, at = max_overlap(limited, ended, until)
    by_kind: dict[str, int] = {}
    for kind in tasks.values():
        by_kind[kind] = by_kind.get(kind, 0) + 1
    return Findings(
        tasks=len(tasks), by_kind=by_kind, lost=lost,
        not_terminal_status={t: facts.status.get(t, "absent") for t in lost},
        double_accepted={t: n for t, n in facts.accepted_terminal.items()
                         if t in tasks and n > 1},
        runs=sum(1 for r in runs if r.task_id in tasks),
        extras=extra_runs(tasks, runs, faults, ended, skewed),
        started_events=sum(len(d) for t, d in facts.started.items() if t in tasks),
        limit_max=most, limit_allowed=MAX_CONCURRENCY,
        limit_exceeded_at=at if most > MAX_CONCURRENCY else None,
        verify_ok=verify_ok, verify_detail=verify_detail, ticks=ticks)
