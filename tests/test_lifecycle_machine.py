"""Random event sequences against the lifecycle's invariants (hypothesis state machine).

The machine plays one task's life with everything the real world does to it:
duplicate submissions, repeats of earlier events (producer retries, processor
restarts), worker events for stale attempts and other dispatches, timers that
are late, early or stale, clocks that go backwards, cancels and redrives. After
every step it checks:

* an accepted event took a transition listed in TRANSITIONS; a rejected one
  changed neither status nor attempt;
* at most one completion is accepted per task life (SUCCEEDED ever, or DEAD by
  failure, between redrives);
* terminal states stay terminal, except DEAD -> READY by RedriveRequested, and
  the removal of a finished task by a retention timer or a purge (D35), after
  which a resubmission starts a new life;
* the attempt never goes backwards;
* re-applying an already-applied event changes nothing (and only the last one
  re-emits outbound records);
* folding the log from the start gives exactly the live state.
"""

from __future__ import annotations

from collections.abc import Sequence

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from taskstream.processors.fold.effects import (
    OUTBOUND,
    Dispatch,
    Duplicate,
    ForgetCancel,
    Rejected,
    Removed,
)
from taskstream.processors.fold.lifecycle import (
    TRANSITIONS,
    Limits,
    apply,
    event_key,
    fold,
    timer_kind_for,
)
from taskstream.processors.fold.retention import REMOVAL_KEYS
from taskstream.processors.fold.steps import lease_ran_out
from taskstream.schemas.events import (
    Backoff,
    CancelRequested,
    Envelope,
    EventBody,
    LeaseRenewed,
    PurgeRequested,
    RedriveRequested,
    TaskDispatched,
    TaskFailed,
    TaskStarted,
    TaskSucceeded,
    TimerFired,
    TimerKind,
)
from taskstream.schemas.serde import encode_state
from taskstream.schemas.state import TaskState, TaskStatus
from tests.lifecycle_support import T0, submitted

S = TaskStatus
WORKER_KINDS = ("started", "renewed", "succeeded", "failed")


def redo_count(state: TaskState) -> int:
    """How many outbound records a redo of ``state``'s last event sends: the dispatch, dead
    letter or cancellation it implies, and D49's withdrawal of an attempt whose lease ran
    out (RETRYING) or the withdrawals' tombstone once final (a task that retried, or
    whose last attempt ran out its lease)."""
    ran_out = lease_ran_out(state)
    count = 1 if state.status in (S.READY, S.DEAD, S.CANCELLED) else 0
    if state.status is S.RETRYING and ran_out:
        count += 1
    if state.status is S.DEAD and (state.retries or ran_out):
        count += 1
    if state.status is S.SUCCEEDED and state.retries:
        count += 1
    return count


class LifecycleMachine(RuleBasedStateMachine):
    limits = Limits(recent_events=100_000)

    def __init__(self) -> None:
        super().__init__()
        self.now = T0
        self.n = 0
        self.state: TaskState | None = None
        self.log: list[Envelope] = []
        self.dispatches: list[tuple[str, int]] = [("never-dispatched", 1)]
        self.dues: list[int] = [T0]
        self.successes = 0
        self.completions = 0  # accepted completions since the last redrive

    # -- plumbing -------------------------------------------------------------------

    def envelope(self, body: EventBody, attempt: int = 0, at: int | None = None) -> Envelope:
        self.n += 1
        return Envelope(f"E{self.n:05d}", "T1", self.now if at is None else at, "test",
                        attempt, body)

    def step(self, event: Envelope) -> None:
        before = self.state
        after, effects = apply(before, event, self.limits)
        self.check_without_effects(before, event, after, effects)
        if before is not None and event.event_id in before.recent_event_ids:
            self.check_repeat(before, event, after, effects)
            self.log.append(event)
            return
        accepted = not any(isinstance(e, Rejected | Duplicate) for e in effects)
        if after is None:
            self.check_removal(before, event, effects, accepted)
        else:
            self.check_transition(before, event, after, accepted)
        for effect in effects:
            if isinstance(effect, Dispatch):
                body = effect.envelope.body
                assert isinstance(body, TaskDispatched)
                self.dispatches.append((body.dispatch_id, effect.envelope.attempt))
        if after is not None and after.due_at_ms is not None:
            self.dues.append(after.due_at_ms)
        self.state = after
        self.log.append(event)

    def check_without_effects(self, before: TaskState | None, event: Envelope,
                              after: TaskState | None, effects: Sequence[object]) -> None:
        """Replay's ``apply(..., effects=False)``: the same state (same bytes, same
        identity when unchanged), only the Rejected / Duplicate effects."""
        quiet, kept = apply(before, event, self.limits, effects=False)
        assert (quiet is None) == (after is None) and (quiet is before) == (after is before)
        if quiet is not None and after is not None:
            assert quiet == after and encode_state(quiet) == encode_state(after)
        assert kept == [e for e in effects if isinstance(e, Rejected | Duplicate)]

    def check_removal(self, before: TaskState | None, event: Envelope,
                      effects: Sequence[object], accepted: bool) -> None:
        """No state after the event: an event for no task, or a removal (D35) of a
        finished one (retention timer or purge), after which a new life may begin."""
        if event_key(event) not in REMOVAL_KEYS:
            assert before is None and not accepted
            return
        settled = [ForgetCancel] if before is not None and before.status in (
            S.CANCELLED, S.EXPIRED) else []  # its cancellation record goes too (issue 21)
        assert [type(e) for e in effects] == [Removed, *settled]
        if before is not None:
            assert before.status.terminal
            self.successes = self.completions = 0

    def check_repeat(self, before: TaskState, event: Envelope, after: TaskState | None,
                     effects: Sequence[object]) -> None:
        assert after is before
        if before.recent_event_ids[-1] != event.event_id:
            assert effects == []
        else:
            assert all(isinstance(e, OUTBOUND) for e in effects)
            assert len(effects) == redo_count(before)

    def check_transition(self, before: TaskState | None, event: Envelope, after: TaskState,
                         accepted: bool) -> None:
        status = before.status if before is not None else None
        if not accepted:
            assert before is not None
            assert (after.status, after.attempt, after.dispatch_id) == (
                before.status, before.attempt, before.dispatch_id)
            return
        if before is not None and (status, event_key(event)) not in TRANSITIONS:
            # a worker's end of the attempt a cancel stopped: it settles the cancellation
            assert after.status is before.status and before.status in (S.CANCELLED, S.EXPIRED)
            self.check_fenced(before, event)
            return
        assert after.status in TRANSITIONS[(status, event_key(event))], (status, event, after)
        if before is None:
            return
        self.check_fenced(before, event)
        assert after.attempt >= before.attempt
        if before.status.terminal:
            assert (before.status, after.status, event_key(event)) == (
                S.DEAD, S.READY, "RedriveRequested")
            self.completions = 0
        if after.status is S.SUCCEEDED:
            self.successes += 1
            self.completions += 1
        elif after.status is S.DEAD:
            self.completions += 1

    @staticmethod
    def check_fenced(before: TaskState, event: Envelope) -> None:
        """An accepted worker or timer event is about the current dispatch / timer."""
        body = event.body
        if isinstance(body, TaskStarted | LeaseRenewed | TaskSucceeded | TaskFailed):
            assert (body.dispatch_id, event.attempt) == (before.dispatch_id, before.attempt)
        if isinstance(body, TimerFired):
            assert body.due_at_ms == before.due_at_ms
            assert body.due_at_ms <= event.occurred_at_ms
            assert body.kind is timer_kind_for(before.status)
            if body.kind is TimerKind.LEASE_EXPIRED:
                assert body.dispatch_id == before.dispatch_id
            if body.kind is TimerKind.RETRY_DUE:
                assert event.attempt == before.attempt

    # -- rules --------------------------------------------------------------------------

    @rule(conflict=st.booleans(), eta=st.none() | st.integers(-1_000, 5_000),
          max_attempts=st.integers(1, 3))
    def submit(self, conflict: bool, eta: int | None, max_attempts: int) -> None:
        body = submitted(payload=b"other" if conflict else b"p", max_attempts=max_attempts,
                         eta_ms=None if eta is None else self.now + eta, lease_ms=1_000,
                         backoff=Backoff(initial_ms=100, multiplier=2.0, max_ms=1_000,
                                         jitter=0.5))
        self.step(self.envelope(body))

    @rule(ms=st.integers(0, 3_000))
    def time_passes(self, ms: int) -> None:
        self.now += ms

    @precondition(lambda self: self.state is not None and self.state.due_at_ms is not None)
    @rule(late=st.integers(0, 2_000))
    def the_tasks_timer_fires(self, late: int) -> None:
        state = self.state
        assert state is not None and state.due_at_ms is not None
        kind = timer_kind_for(state.status)
        assert kind is not None, state
        self.now = max(self.now, state.due_at_ms + late)
        self.step(self.envelope(TimerFired(kind, state.due_at_ms, state.dispatch_id or ""),
                                state.attempt))

    @rule(data=st.data(), kind=st.sampled_from(TimerKind), attempt=st.integers(0, 6))
    def a_stale_timer_fires(self, data: st.DataObject, kind: TimerKind, attempt: int) -> None:
        current = [self.state.due_at_ms] * 3 if self.state and self.state.due_at_ms else []
        due = data.draw(st.sampled_from(current + self.dues))
        dispatch_id, _ = data.draw(st.sampled_from(self.dispatches))
        at = data.draw(st.sampled_from([self.now, due - 1, due]))
        self.step(self.envelope(TimerFired(kind, due, dispatch_id), attempt, at))

    @rule(data=st.data(), kind=st.sampled_from(WORKER_KINDS), attempt_skew=st.sampled_from(
        [0, 0, 0, -1, 1]), back_in_time=st.sampled_from([0, 0, 0, 5_000]),
        retryable=st.booleans(), retry_after=st.none() | st.integers(-10, 500))
    def a_worker_reports(self, data: st.DataObject, kind: str, attempt_skew: int,
                         back_in_time: int, retryable: bool, retry_after: int | None) -> None:
        current = self.state.dispatch_id if self.state is not None else None
        choices = [d for d in self.dispatches if d[0] == current] * 3 + self.dispatches
        dispatch_id, attempt = data.draw(st.sampled_from(choices))
        body: EventBody
        if kind == "started":
            body = TaskStarted(dispatch_id, "w")
        elif kind == "renewed":
            body = LeaseRenewed(dispatch_id, "w")
        elif kind == "succeeded":
            body = TaskSucceeded(dispatch_id, "w", b"r" * data.draw(st.integers(0, 40)))
        else:
            body = TaskFailed(dispatch_id, "w", "E", "m", retryable=retryable,
                              retry_after_ms=retry_after)
        self.step(self.envelope(body, attempt + attempt_skew, self.now - back_in_time))

    @rule()
    def purge(self) -> None:
        self.step(self.envelope(PurgeRequested("p")))

    @rule()
    def cancel(self) -> None:
        self.step(self.envelope(CancelRequested("c")))

    @rule(max_attempts=st.sampled_from([None, None, 0, 1, 2]))
    def redrive(self, max_attempts: int | None) -> None:
        self.step(self.envelope(RedriveRequested("r", max_attempts)))

    @precondition(lambda self: bool(self.log))
    @rule(data=st.data())
    def an_earlier_event_is_delivered_again(self, data: st.DataObject) -> None:
        self.step(data.draw(st.sampled_from(self.log)))

    # -- invariants ---------------------------------------------------------------------

    @invariant()
    def one_completion_per_life(self) -> None:
        assert self.successes <= 1
        assert self.completions <= 1

    @invariant()
    def state_is_consistent(self) -> None:
        state = self.state
        if state is None:
            return
        assert (state.due_at_ms is not None) == (timer_kind_for(state.status) is not None)
        assert (state.status is S.SUCCEEDED) == (state.result is not None)
        if state.status in (S.READY, S.RUNNING):
            assert state.dispatch_id is not None and state.attempt >= 1
        assert len(state.recent_event_ids) <= self.limits.recent_events

    def teardown(self) -> None:
        """Replay (checked once per run: apply is deterministic, so prefixes agree too)."""
        expected = {} if self.state is None else {"T1": self.state}
        assert fold(self.log, self.limits) == expected


class LifecycleMachineSmallWindow(LifecycleMachine):
    """The same with a tiny idempotency window: repeats older than it are new events."""

    limits = Limits(recent_events=3, max_result_bytes=16)




_settings = settings(max_examples=150, stateful_step_count=40, deadline=None,
                     suppress_health_check=[HealthCheck.too_slow])
TestLifecycleMachine = LifecycleMachine.TestCase
TestLifecycleMachine.settings = _settings
TestLifecycleMachineSmallWindow = LifecycleMachineSmallWindow.TestCase
TestLifecycleMachineSmallWindow.settings = _settings
