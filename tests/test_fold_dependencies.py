"""Dependencies and groups as pure folds (processors/fold/dependencies.py, group.py),
without a broker: every entity's events are delivered the way the log would, through a
small in-memory "log" that folds emitted events in any order we choose."""

from __future__ import annotations

import dataclasses
import random
from collections import deque
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from taskstream.processors.fold import dependencies, group
from taskstream.processors.fold.effects import (
    DeadLetter,
    Dispatch,
    Effect,
    Emit,
    PublishCancel,
    Rejected,
)
from taskstream.processors.fold.kinds import GROUP, apply_any, kind_of, task_timer
from taskstream.processors.fold.rules import Limits
from taskstream.schemas.entity_keys import group_key
from taskstream.schemas.events import (
    Backoff,
    Dependent,
    Envelope,
    EventBody,
    GroupCreated,
    ParentFailurePolicy,
    ParentOutcome,
    ParentUpdate,
    TaskFailed,
    TaskStarted,
    TaskSubmitted,
    TaskSucceeded,
    TimerFired,
)
from taskstream.schemas.ids import member_task_id
from taskstream.schemas.serde import decode_entity, encode_entity
from taskstream.schemas.state import EntityState, GroupState, GroupStatus, TaskState, TaskStatus

T0 = 1_767_225_600_000


def tid(name: str) -> str:
    return (name.upper() + "0" * 26)[:26].replace("I", "1").replace("L", "1").replace(
        "O", "0").replace("U", "V")


def submitted(depends_on: tuple[str, ...] = (), *, policy: str = "CANCEL",
              timeout_ms: int = 60_000, dependents: tuple[Dependent, ...] = ()) -> TaskSubmitted:
    return TaskSubmitted("t", "default", 0, b"{}", "application/json", None, 1, Backoff(), None,
                         30_000, depends_on=list(depends_on),
                         on_parent_failure=ParentFailurePolicy(policy),
                         dependency_timeout_ms=timeout_ms if depends_on else None,
                         dependents=list(dependents))


class Log:
    """Entity states and a queue of events in flight (emitted ones join the queue)."""

    def __init__(self, seed: int = 0, limits: Limits | None = None) -> None:
        self.states: dict[str, EntityState] = {}
        self.shadow: dict[str, EntityState] = {}  # folded with effects=False (replay)
        self.queue: deque[Envelope] = deque()
        self.now = T0
        self.n = 0
        self.rng = random.Random(seed)
        self.shuffle = seed != 0
        self.limits = limits or Limits()
        self.outbound: list[Effect] = []
        self.history: list[Envelope] = []  # every event folded, in order (the "log")

    def send(self, key: str, body: EventBody, attempt: int = 0) -> None:
        self.n += 1
        self.queue.append(Envelope(f"E{self.n:05d}", key, self.now, "test", attempt, body))

    def deliver(self, limit: int = 100_000) -> None:
        """Fold everything in flight (in a shuffled order when seeded)."""
        for _ in range(limit):
            if not self.queue:
                return
            if self.shuffle:
                self.queue.rotate(-self.rng.randrange(len(self.queue)))
            event = self.queue.popleft()
            self.now += 1
            event = Envelope(event.event_id, event.task_id, max(event.occurred_at_ms, self.now),
                             event.source, event.attempt, event.body)
            self.history.append(event)
            after, effects = apply_any(self.states.get(event.task_id), event, self.limits)
            quiet, _ = apply_any(self.shadow.get(event.task_id), event, self.limits,
                                 effects=False)
            assert quiet == after, event
            if after is not None:
                self.states[event.task_id] = after
                self.shadow[event.task_id] = after
                assert decode_entity(encode_entity(after)) == after
            for effect in effects:
                if isinstance(effect, Emit):
                    self.queue.append(effect.envelope)
                else:
                    self.outbound.append(effect)
        raise AssertionError("the graph did not settle")

    def task(self, key: str) -> TaskState:
        state = self.states[key]
        assert isinstance(state, TaskState)
        return state

    def run(self, key: str, ok: bool = True, result: bytes = b"1") -> None:
        """A worker starts and finishes the task's current dispatch."""
        s = self.task(key)
        assert s.status is TaskStatus.READY, (key, s.status)
        self.send(key, TaskStarted(s.dispatch_id or "", "w"), s.attempt)
        if ok:
            self.send(key, TaskSucceeded(s.dispatch_id or "", "w", result), s.attempt)
        else:
            self.send(key, TaskFailed(s.dispatch_id or "", "w", "Boom", "it broke",
                                      retryable=False), s.attempt)
        self.deliver()

    def fire_timer(self, key: str, at: int | None = None) -> None:
        timer = task_timer(self.task(key))
        assert timer is not None
        self.now = max(self.now, timer.due_at_ms if at is None else at)
        self.send(key, TimerFired(timer.kind, timer.due_at_ms, timer.dispatch_id), timer.attempt)
        self.deliver()


A, B, C, D = tid("A"), tid("B"), tid("C"), tid("D")


def diamond(log: Log) -> None:
    log.send(A, submitted())
    log.send(B, submitted((A,)))
    log.send(C, submitted((A,)))
    log.send(D, submitted((B, C)))
    log.deliver()


def test_diamond_runs_each_task_after_its_parents() -> None:
    log = Log()
    diamond(log)
    assert [log.task(k).status for k in (A, B, C, D)] == [
        TaskStatus.READY, TaskStatus.WAITING, TaskStatus.WAITING, TaskStatus.WAITING]
    assert log.task(D).waiting_on == [B, C] and log.task(D).unconfirmed == []
    assert task_timer(log.task(D)) is None  # every parent answered: no recheck timer
    log.run(A)
    assert log.task(B).status is log.task(C).status is TaskStatus.READY
    log.run(B)
    assert log.task(D).status is TaskStatus.WAITING and log.task(D).waiting_on == [C]
    log.run(C)
    d = log.task(D)
    assert d.status is TaskStatus.READY and d.attempt == 1
    dispatch = [e for e in log.outbound if isinstance(e, Dispatch) and e.envelope.task_id == D]
    assert len(dispatch) == 1 and dispatch[0].envelope.body.parents == [B, C]  # type: ignore


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(1, 10_000))
def test_any_order_of_delivery_settles_the_diamond_the_same_way(seed: int) -> None:
    """Registrations may reach a parent before its own submission (another partition):
    the child asks again on its timer, and the graph still runs in order."""
    log = Log(seed)
    diamond(log)
    for _ in range(6):  # the recheck timers of children whose registration came too early
        for key in (B, C, D):
            if task_timer(log.task(key)) is not None:
                log.fire_timer(key)
    log.run(A)
    log.run(B)
    log.run(C)
    assert log.task(D).status is TaskStatus.READY


def test_a_dead_parent_cancels_every_descendant_with_the_reason() -> None:
    log = Log()
    diamond(log)
    log.run(A, ok=False)
    assert log.task(A).status is TaskStatus.DEAD
    for key in (B, C, D):
        assert log.task(key).status is TaskStatus.CANCELLED, key
    assert log.task(B).cancel_reason == f"parent {A} ended DEAD (Boom: it broke)"
    reason = log.task(D).cancel_reason or ""
    assert reason.startswith(f"parent {B} was cancelled (parent {A} ended DEAD") or \
        reason.startswith(f"parent {C} was cancelled (parent {A} ended DEAD")
    assert sum(isinstance(e, PublishCancel) for e in log.outbound) == 3


def test_run_policy_runs_after_a_failed_parent_and_remembers_it() -> None:
    log = Log()
    log.send(A, submitted())
    log.send(B, submitted((A,), policy="RUN"))
    log.deliver()
    log.run(A, ok=False)
    b = log.task(B)
    assert b.status is TaskStatus.READY and b.parent_failure is not None
    assert "ended DEAD" in b.parent_failure


def test_a_child_after_its_parent_finished_is_answered_at_once() -> None:
    log = Log()
    log.send(A, submitted())
    log.deliver()
    log.run(A)
    log.send(B, submitted((A,)))
    log.deliver()
    assert log.task(B).status is TaskStatus.READY
    assert log.task(A).dependents == []  # a settled parent keeps no record of the child


def test_an_unknown_parent_times_out_with_a_clear_reason() -> None:
    log = Log()
    ghost = tid("GHOST")
    log.send(B, submitted((ghost,), timeout_ms=10_000))
    log.deliver()
    checks = 0
    while log.task(B).status is TaskStatus.WAITING:
        log.fire_timer(B)
        checks += 1
    b = log.task(B)
    assert b.status is TaskStatus.DEAD and checks == 4  # at 1, 3 and 7 s; dead at 10 s
    assert b.last_error is not None
    assert b.last_error.error_type == dependencies.DEPENDENCY_TIMEOUT_ERROR
    assert ghost in b.last_error.message and "never answered" in b.last_error.message
    assert any(isinstance(e, DeadLetter) and e.envelope.task_id == B for e in log.outbound)


def test_self_dependency_and_too_many_parents_are_dead_at_once() -> None:
    log = Log(limits=Limits(max_dependencies=2))
    log.send(A, submitted((A,)))
    log.send(B, submitted((C, D, tid("E"))))
    log.deliver()
    for key, words in ((A, "depends on itself"), (B, "at most 2")):
        state = log.task(key)
        assert state.status is TaskStatus.DEAD and state.last_error is not None
        assert words in state.last_error.message


def test_a_parent_keeps_at_most_max_dependencies_dependents() -> None:
    log = Log(limits=Limits(max_dependencies=2))
    log.send(A, submitted())
    for name in ("B", "C", "D"):
        log.send(tid(name), submitted((A,)))
    log.deliver()
    assert len(log.task(A).dependents) == 2
    assert log.task(D).status is TaskStatus.CANCELLED
    assert "most it keeps" in (log.task(D).cancel_reason or "")


def test_duplicate_answers_and_registrations_change_nothing_twice() -> None:
    log = Log()
    log.send(A, submitted())
    log.send(B, submitted((A,)))
    log.deliver()
    b = log.task(B)
    log.send(B, ParentUpdate(A, ParentOutcome.PENDING))
    log.send(A, log.queue[0].body if log.queue else TaskStarted("x", "w"))  # noise
    log.deliver()
    assert log.task(B).waiting_on == b.waiting_on
    log.send(B, ParentUpdate(tid("Z"), ParentOutcome.SUCCEEDED))
    log.deliver()
    assert log.task(B).status is TaskStatus.WAITING and log.task(B).rejected == b.rejected + 1


def test_redo_of_a_settled_parent_repeats_its_notifications() -> None:
    log = Log()
    log.send(A, submitted())
    log.send(B, submitted((A,)))
    log.deliver()
    log.run(A)
    a = log.task(A)
    last = a.recent_event_ids[-1]
    event = Envelope(last, A, a.updated_at_ms, "test", a.attempt,
                     TaskSucceeded(a.dispatch_id or "", "w", b"1"))
    _, redo = apply_any(a, event)
    notes = [e.envelope for e in redo if isinstance(e, Emit)]
    assert [(n.task_id, n.event_id) for n in notes] == [(B, f"{last}.notify.{B}")]


# --- groups ---------------------------------------------------------------------------


def chord(log: Log, gid: str, size: int, *, callback: str = D, created_first: bool = True) -> None:
    members = [member_task_id(gid, i) for i in range(size)]
    if created_first:
        log.send(group_key(gid), GroupCreated(size))
    for i, member in enumerate(members):
        log.send(member, submitted(dependents=(Dependent(group_key(gid), i),)))
    if not created_first:
        log.send(group_key(gid), GroupCreated(size))
    log.send(callback, submitted((group_key(gid),)))
    log.deliver()


def test_a_group_counts_its_members_and_releases_the_callback_once() -> None:
    log = Log()
    chord(log, "g1", 50)
    g = log.states[group_key("g1")]
    assert isinstance(g, GroupState) and g.status is GroupStatus.OPEN
    def size(state: TaskState) -> int:  # without the idempotency window (bounded anyway)
        return len(encode_entity(dataclasses.replace(state, recent_event_ids=[])))

    callback_size = size(log.task(D))
    for i in range(50):
        log.run(member_task_id("g1", i), result=str(i).encode())
        if i < 49:  # waiting: one unchanged state, however many members reported
            assert log.task(D).status is TaskStatus.WAITING
            assert size(log.task(D)) == callback_size
    g = log.states[group_key("g1")]
    assert isinstance(g, GroupState)
    assert (g.status, g.succeeded, g.failed) == (GroupStatus.SUCCEEDED, 50, 0)
    assert log.task(D).status is TaskStatus.READY
    assert log.task(D).waiting_on == []


def test_a_large_group_is_a_small_state() -> None:
    log = Log()
    chord(log, "big", 10_000)
    for i in range(10_000):
        member = member_task_id("big", i)
        s = log.task(member)
        log.send(member, TaskSucceeded(s.dispatch_id or "", "w", b"1"), s.attempt)
    log.deliver()
    g = log.states[group_key("big")]
    assert isinstance(g, GroupState) and g.status is GroupStatus.SUCCEEDED
    assert len(g.seen) == 1_250  # a bit per member
    assert len(encode_entity(dataclasses.replace(g, recent_event_ids=[]))) < 1_350
    assert log.task(D).status is TaskStatus.READY


def test_a_failed_member_fails_the_group_and_cancels_the_callback() -> None:
    log = Log()
    chord(log, "g2", 3)
    log.run(member_task_id("g2", 0))
    log.run(member_task_id("g2", 1), ok=False)
    log.run(member_task_id("g2", 2))
    g = log.states[group_key("g2")]
    assert isinstance(g, GroupState) and g.status is GroupStatus.FAILED and g.failed == 1
    assert log.task(D).status is TaskStatus.CANCELLED
    assert "1 of 3 members of group:g2 did not succeed" in (log.task(D).cancel_reason or "")


def test_members_before_the_group_exists_and_a_callback_before_it_asks_again() -> None:
    log = Log()
    gid = "late"
    members = [member_task_id(gid, i) for i in range(2)]
    for i, member in enumerate(members):
        log.send(member, submitted(dependents=(Dependent(group_key(gid), i),)))
    log.send(D, submitted((group_key(gid),)))
    log.deliver()
    for member in members:
        log.run(member)
    assert log.task(D).unconfirmed == [group_key(gid)]  # the group did not exist: dropped
    g = log.states[group_key(gid)]
    assert isinstance(g, GroupState) and g.size is None and g.succeeded == 2
    log.send(group_key(gid), GroupCreated(2))
    log.deliver()
    assert log.states[group_key(gid)].status is GroupStatus.SUCCEEDED  # type: ignore[union-attr]
    log.fire_timer(D)  # asks again; the settled group answers at once
    assert log.task(D).status is TaskStatus.READY


def test_a_repeated_member_report_counts_once() -> None:
    state, _ = group.apply(None, Envelope("e1", group_key("r"), T0, "t", 0, GroupCreated(2)))
    update = ParentUpdate(member_task_id("r", 0), ParentOutcome.SUCCEEDED, "", 0)
    state, _ = group.apply(state, Envelope("e2", group_key("r"), T0, "t", 0, update))
    state, _ = group.apply(state, Envelope("e3", group_key("r"), T0, "t", 0, update))
    assert state is not None and state.succeeded == 1 and state.status is GroupStatus.OPEN
    bad = ParentUpdate(member_task_id("r", 5), ParentOutcome.SUCCEEDED, "", 5)
    state, effects = group.apply(state, Envelope("e4", group_key("r"), T0, "t", 0, bad))
    assert isinstance(effects[0], Rejected) and state is not None and state.rejected == 1
    assert kind_of(group_key("r")) is GROUP


def test_replay_history_shows_the_dependency_events_and_what_they_caused() -> None:
    from taskstream.processors.replay.history import explain, format_entry

    log = Log()
    log.send(A, submitted())
    log.send(B, submitted((A,)))
    log.deliver()
    log.run(A)
    # the child's own key holds its submission and its parent's answers
    child_events = [e for e in log.history if e.task_id == B]
    lines = [format_entry(entry) for entry in explain(
        [(0, i, e.occurred_at_ms, e) for i, e in enumerate(child_events)], Limits())]
    text = "\n".join(lines)
    assert f"registered with {A}" in text and "-> WAITING" in text
    assert "ParentUpdate" in text and "WAITING -> READY; dispatched attempt 1" in text
    parent_events = [e for e in log.history if e.task_id == A]
    text = "\n".join(format_entry(entry) for entry in explain(
        [(0, i, e.occurred_at_ms, e) for i, e in enumerate(parent_events)], Limits()))
    assert "DependencyRegistered" in text and f"told {B}: PENDING" in text
    assert f"told {B}: SUCCEEDED" in text


def test_replay_rebuild_folds_every_kind_as_the_processor_would(tmp_path: Any) -> None:
    """replay's fold (processors/replay/folding.py) over a log with groups, waiting tasks
    and their messages rebuilds the same states as the kinds' own folds."""
    from taskstream.processors.replay.folding import (
        FoldStats,
        StateCache,
        StateDB,
        fold_messages,
        open_db,
    )
    from taskstream.schemas.serde import encode_event
    from tests.lifecycle_support import unpositioned
    from tests.test_replay_units import Msg

    log = Log()
    chord(log, "rg", 5)
    for i in range(5):
        log.run(member_task_id("rg", i))
    diamond(log)
    log.run(A, ok=False)
    messages = [Msg(encode_event(e), 0, i) for i, e in enumerate(log.history)]
    db = open_db(tmp_path / "db", create=True)
    try:
        cache = StateCache(db, capacity=3)
        fold_messages([messages[:40], messages[40:]], cache, Limits(), FoldStats())
        cache.flush()
        rebuilt = dict(StateDB(db))
    finally:
        db.close()
    assert unpositioned(rebuilt) == log.states
    assert isinstance(rebuilt[group_key("rg")], GroupState)
