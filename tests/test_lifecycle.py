"""The lifecycle's transition matrix: every status against every event.

Given a task brought to a status by ordinary events, when one more event about
its current dispatch arrives, then the status it ends in (or the rejection) is
the one written in EXPECTED below, independently of the TRANSITIONS table; and
every accepted event took a transition listed in TRANSITIONS (Story.apply
checks that on every step).
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from taskstream.processors.fold.effects import (
    ClearTimer,
    DeadLetter,
    Dispatch,
    Duplicate,
    Effect,
    ForgetCancel,
    PublishCancel,
    Rejected,
    RetryScheduled,
    SetTimer,
)
from taskstream.processors.fold.lifecycle import (
    TRANSITIONS,
    LifecycleError,
    Limits,
    redo_effects,
)
from taskstream.processors.fold.rules import FLOW_EVENT_KEYS
from taskstream.schemas.events import ParentOutcome, TimerKind
from taskstream.schemas.state import TaskStatus
from tests.lifecycle_support import T0, Story

S = TaskStatus


def _scheduled() -> Story:
    story = Story()
    story.submit(eta_ms=T0 + 60_000)
    return story


def _ready() -> Story:
    story = Story()
    story.submit()
    return story


def _running() -> Story:
    story = _ready()
    story.start()
    return story


def _retrying() -> Story:
    story = _running()
    story.fail()
    return story


def _succeeded() -> Story:
    story = _running()
    story.succeed()
    return story


def _dead() -> Story:
    story = _running()
    story.fail(retryable=False)
    return story


def _cancelled() -> Story:
    story = _ready()
    story.cancel()
    return story


def _waiting() -> Story:
    story = Story()
    story.wait_for()
    return story


REACH: dict[TaskStatus, Callable[[], Story]] = {
    S.SCHEDULED: _scheduled, S.READY: _ready, S.RUNNING: _running, S.RETRYING: _retrying,
    S.SUCCEEDED: _succeeded, S.DEAD: _dead, S.CANCELLED: _cancelled, S.WAITING: _waiting,
}

EVENTS: dict[str, Callable[[Story], list[Effect]]] = {
    "submit": lambda s: s.submit(),
    "delay_due": lambda s: s.fire(TimerKind.DELAY_DUE),
    "retry_due": lambda s: s.fire(TimerKind.RETRY_DUE),
    "lease_expired": lambda s: s.fire(TimerKind.LEASE_EXPIRED),
    "started": lambda s: s.start(),
    "renewed": lambda s: s.renew(),
    "succeeded": lambda s: s.succeed(),
    "failed": lambda s: s.fail(),
    "failed_fatal": lambda s: s.fail(retryable=False),
    "cancel": lambda s: s.cancel(),
    "redrive": lambda s: s.redrive(),
    "registered": lambda s: s.registered(),
    "parent_succeeded": lambda s: s.parent(ParentOutcome.SUCCEEDED),
    "parent_failed": lambda s: s.parent(ParentOutcome.FAILED, reason="boom"),
    "dependency_check": lambda s: s.fire(TimerKind.DEPENDENCY_CHECK),
}

R, D = "rejected", "duplicate"
# status -> event -> outcome; anything not listed is rejected
_SAME = {"registered"}  # a dependent registers with a task in any status: no transition
EXPECTED: dict[TaskStatus, dict[str, TaskStatus | str]] = {
    S.WAITING: {"parent_succeeded": S.READY, "parent_failed": S.CANCELLED,
                "dependency_check": S.WAITING, "cancel": S.CANCELLED},
    S.SCHEDULED: {"delay_due": S.READY, "cancel": S.CANCELLED},
    S.READY: {"started": S.RUNNING, "renewed": S.RUNNING, "succeeded": S.SUCCEEDED,
              "failed": S.RETRYING, "failed_fatal": S.DEAD, "cancel": S.CANCELLED},
    S.RUNNING: {"lease_expired": S.RETRYING, "renewed": S.RUNNING, "succeeded": S.SUCCEEDED,
                "failed": S.RETRYING, "failed_fatal": S.DEAD, "cancel": S.CANCELLED},
    S.RETRYING: {"retry_due": S.READY, "cancel": S.CANCELLED},
    S.SUCCEEDED: {},
    S.DEAD: {"redrive": S.READY},
    S.CANCELLED: {},
}

#: a worker's end of the attempt a cancel stopped: not a transition, the cancellation
#: record is tombstoned (issue 21); the matrix's CANCELLED task was cancelled READY
SETTLES = {(S.CANCELLED, "succeeded"), (S.CANCELLED, "failed"), (S.CANCELLED, "failed_fatal")}

CASES = [(status, name) for status in REACH for name in EVENTS]


@pytest.mark.parametrize(("status", "event"), CASES, ids=[f"{s}-{e}" for s, e in CASES])
def test_matrix(status: TaskStatus, event: str) -> None:
    story = REACH[status]()
    before = story.s
    assert before.status is status
    effects = EVENTS[event](story)
    after = story.s
    expected = (D if event == "submit" else status if event in _SAME
                else EXPECTED[status].get(event, R))
    assert after.recent_event_ids[-1] == story.log[-1].event_id
    assert after.updated_at_ms == story.log[-1].occurred_at_ms
    if (status, event) in SETTLES:
        assert effects == [ForgetCancel(before.task_id)]
        assert after.status is status and after.rejected == before.rejected
        assert after.last_error is not None and after.last_error.attempt == after.attempt
    elif expected == D:
        assert effects == [Duplicate(False)]
        assert after.status is status and after.duplicates == before.duplicates + 1
    elif expected == R:
        assert len(effects) == 1 and isinstance(effects[0], Rejected)
        assert after.status is status and after.rejected == before.rejected + 1
        assert after.attempt == before.attempt and after.dispatch_id == before.dispatch_id
    else:
        assert after.status is expected
        assert after.rejected == before.rejected
        assert after.status in TRANSITIONS[(status, story_key(event))]


def story_key(event: str) -> str:
    return {
        "delay_due": "TimerFired.DELAY_DUE", "retry_due": "TimerFired.RETRY_DUE",
        "lease_expired": "TimerFired.LEASE_EXPIRED", "started": "TaskStarted",
        "renewed": "LeaseRenewed", "succeeded": "TaskSucceeded", "failed": "TaskFailed",
        "failed_fatal": "TaskFailed", "cancel": "CancelRequested", "redrive": "RedriveRequested",
        "registered": "DependencyRegistered", "parent_succeeded": "ParentUpdate",
        "parent_failed": "ParentUpdate", "dependency_check": "TimerFired.DEPENDENCY_CHECK",
    }[event]


def test_the_table_is_what_the_matrix_exercises() -> None:
    """Every pair in TRANSITIONS is reached by an accepted case above, but for the
    flow-control events (tests/test_flow_lifecycle.py has their matrix)."""
    exercised = {(status, story_key(event)) for status, row in EXPECTED.items() for event in row}
    exercised |= {(status, story_key(event)) for status in S for event in _SAME}
    listed = {(s, k) for (s, k) in TRANSITIONS if s is not None and k not in FLOW_EVENT_KEYS}
    assert listed == exercised
    assert TRANSITIONS[(None, "TaskSubmitted")] == {S.SCHEDULED, S.READY, S.WAITING, S.DEAD}


def test_terminal_states_lead_nowhere_but_dead_by_redrive() -> None:
    for (status, key), targets in TRANSITIONS.items():
        if status is not None and status.terminal and key != "DependencyRegistered":
            assert (status, key, targets) == (S.DEAD, "RedriveRequested",
                                               frozenset({S.READY, S.WAITING}))
        assert targets, (status, key)


# --- effects of the accepted transitions ----------------------------------------------


def test_submit_now_dispatches_attempt_one() -> None:
    story = Story()
    effects = story.submit()
    state = story.s
    assert state.status is S.READY and state.attempt == 1 and state.dispatch_id
    assert state.dispatched_at_ms == state.submitted_at_ms == story.now
    assert len(state.payload_digest) == 64
    [dispatch] = effects
    assert isinstance(dispatch, Dispatch)
    env = dispatch.envelope
    assert (env.event_id, env.attempt, env.source, env.occurred_at_ms) == (
        f"{story.log[0].event_id}.dispatch", 1, "processor", story.now)
    body = env.body
    assert body.dispatch_id == state.dispatch_id  # type: ignore[union-attr]
    assert body.payload == b'{"n": 1}' and body.headers == {"h": "v"}  # type: ignore[union-attr]


def test_submit_with_future_eta_is_scheduled_with_a_delay_timer() -> None:
    story = Story()
    effects = story.submit(eta_ms=T0 + 5_000)
    assert story.s.status is S.SCHEDULED and story.s.attempt == 0
    assert effects == [SetTimer(T0 + 5_000, TimerKind.DELAY_DUE)]
    effects = story.fire(TimerKind.DELAY_DUE)
    state = story.s  # a fresh read: the timer moved it on
    assert state.status is S.READY and state.attempt == 1
    assert state.dispatched_at_ms == T0 + 5_000
    assert ClearTimer(T0 + 5_000) in effects and any(isinstance(e, Dispatch) for e in effects)


def test_submit_with_past_eta_dispatches_at_once() -> None:
    story = Story()
    story.submit(eta_ms=T0 - 1)
    assert story.s.status is S.READY


def test_start_sets_a_lease_and_renewal_extends_it_never_shortens() -> None:
    story = _ready()
    effects = story.start()
    lease_due = story.now + 30_000
    assert story.s.worker_id == "w1" and story.s.started_at_ms == story.now
    assert effects == [SetTimer(lease_due, TimerKind.LEASE_EXPIRED)]
    effects = story.renew()
    assert story.s.due_at_ms == story.now + 30_000
    assert effects == [ClearTimer(lease_due), SetTimer(story.now + 30_000,
                                                       TimerKind.LEASE_EXPIRED)]
    due = story.s.due_at_ms
    from taskstream.schemas.events import LeaseRenewed
    effects = story.send(LeaseRenewed(story.dispatch_id, "w1"), at=T0)  # a late, old renewal
    assert effects == [] and story.s.due_at_ms == due and story.s.status is S.RUNNING


def test_renewal_while_ready_stands_in_for_a_lost_start() -> None:
    story = _ready()
    effects = story.renew("w9")
    assert story.s.status is S.RUNNING and story.s.worker_id == "w9"
    assert effects == [SetTimer(story.now + 30_000, TimerKind.LEASE_EXPIRED)]


def test_success_records_the_result_and_clears_the_lease() -> None:
    story = _running()
    due = story.s.due_at_ms
    effects = story.succeed(b"42")
    state = story.s
    assert (state.result, state.result_truncated, state.finished_at_ms) == (b"42", False, story.now)
    assert state.due_at_ms is None and effects == [ClearTimer(due or 0)]


def test_success_from_ready_is_accepted_when_the_start_was_lost() -> None:
    story = _ready()
    assert story.succeed() == []
    assert story.s.status is S.SUCCEEDED and story.s.worker_id == "w1"


def test_long_results_are_truncated() -> None:
    story = Story(limits=Limits(max_result_bytes=4))
    story.submit()
    story.start()
    story.succeed(b"0123456789")
    assert story.s.result == b"0123" and story.s.result_truncated


def test_failure_retries_with_backoff_then_dead_letters_when_the_budget_is_spent() -> None:
    story = _running()
    effects = story.fail()
    state = story.s
    assert state.status is S.RETRYING and state.retries == 1
    assert state.due_at_ms == story.now + 1_000
    assert state.last_error is not None and state.last_error.attempt == 1
    assert SetTimer(story.now + 1_000, TimerKind.RETRY_DUE) in effects
    assert RetryScheduled(1_000) in effects
    story.fire(TimerKind.RETRY_DUE)
    assert story.s.status is S.READY and story.s.attempt == 2
    story.start()
    story.fail()
    assert story.s.due_at_ms == story.now + 2_000  # 1 s, then 2 s
    story.fire(TimerKind.RETRY_DUE)
    story.start()
    effects = story.fail()  # third of three attempts
    state = story.s
    assert state.status is S.DEAD and state.retries == 2 and state.due_at_ms is None
    [dead] = [e for e in effects if isinstance(e, DeadLetter)]
    body = dead.envelope.body
    assert (body.error_type, body.message, body.attempts) == ("ValueError", "boom", 3)  # type: ignore[union-attr]
    assert dead.envelope.event_id == f"{story.log[-1].event_id}.dlq"


def test_retry_after_overrides_the_backoff() -> None:
    story = _running()
    effects = story.fail(retry_after_ms=12_345)
    assert story.s.due_at_ms == story.now + 12_345 and RetryScheduled(12_345) in effects


def test_non_retryable_failure_dead_letters_at_once() -> None:
    story = _running()
    effects = story.fail(retryable=False)
    assert story.s.status is S.DEAD and story.s.attempt == 1
    assert any(isinstance(e, DeadLetter) for e in effects)


def test_lease_expiry_fails_the_attempt_as_timed_out() -> None:
    story = _running()
    story.fire(TimerKind.LEASE_EXPIRED)
    state = story.s
    assert state.status is S.RETRYING
    assert state.last_error is not None
    assert (state.last_error.error_type, state.last_error.timed_out) == ("LeaseExpired", True)


def test_lease_expiry_on_the_last_attempt_dead_letters() -> None:
    story = Story()
    story.submit(max_attempts=1)
    story.start()
    effects = story.fire(TimerKind.LEASE_EXPIRED)
    assert story.s.status is S.DEAD and any(isinstance(e, DeadLetter) for e in effects)


def test_lease_expiry_withdraws_the_attempt_before_anything_else() -> None:
    """D49: the expired attempt's cancellations record goes out first (before the slot it
    held can be granted again): a worker that reads its dispatch again skips it. It names
    the expired attempt, so the next one is not touched."""
    story = _running()
    effects = story.fire(TimerKind.LEASE_EXPIRED)
    revoke = effects[0]
    assert isinstance(revoke, PublishCancel)
    assert revoke.envelope.attempt == 1 and revoke.envelope.task_id == story.s.task_id
    assert revoke.envelope.event_id == f"{story.log[-1].event_id}.revoke"
    assert "lease of attempt 1 ran out" in revoke.envelope.body.reason  # type: ignore[union-attr]
    assert redo_effects(story.s, story.log[-1].event_id)[0] == revoke  # a redo sends it again
    story.fire(TimerKind.RETRY_DUE)
    assert story.s.attempt == 2
    story.start()
    assert story.succeed()[-1] == ForgetCancel(story.s.task_id)  # final: its tombstone


def test_lease_expiry_on_the_last_attempt_withdraws_it_and_tombstones_at_once() -> None:
    story = Story()
    story.submit(max_attempts=1)
    story.start()
    effects = story.fire(TimerKind.LEASE_EXPIRED)
    assert isinstance(effects[0], PublishCancel)
    assert effects[-1] == ForgetCancel(story.s.task_id)


def test_an_attempt_holding_a_key_is_withdrawn_when_it_ends() -> None:
    """D49: a task under a concurrency key withdraws each attempt as it ends, before its
    slot is released (the key grants it on at once): a worker that reads the finished
    attempt's dispatch again skips it instead of running it beside the next holders."""
    from dataclasses import replace as copy

    from taskstream.schemas.events import FlowControl, SlotGranted
    from tests.lifecycle_support import submitted

    story = Story()
    story.send(copy(submitted(), flow=FlowControl(concurrency_key="pool",
                                                  max_concurrency=2)))
    assert story.s.status is S.WAITING
    story.send(SlotGranted(key="pool", sequence=1), attempt=1)
    story.start()
    failed = story.fail()
    assert isinstance(failed[0], PublishCancel) and failed[0].envelope.attempt == 1
    assert failed[0].envelope.event_id.endswith(".revoke")
    assert "ended and gave back its slot" in failed[0].envelope.body.reason  # type: ignore[union-attr]
    story.fire(TimerKind.RETRY_DUE)
    story.send(SlotGranted(key="pool", sequence=2), attempt=2)
    story.start()
    done = story.succeed()
    assert isinstance(done[0], PublishCancel) and done[0].envelope.attempt == 2
    assert done[-1] == ForgetCancel(story.s.task_id)  # final: the tombstone


def test_a_task_that_never_retried_sends_no_tombstone() -> None:
    story = _running()
    assert not any(isinstance(e, ForgetCancel) for e in story.succeed())


def test_cancel_clears_the_timer_and_publishes_the_cancellation() -> None:
    story = _scheduled()
    effects = story.cancel("no longer needed")
    state = story.s
    assert state.status is S.CANCELLED and state.cancel_reason == "no longer needed"
    assert state.due_at_ms is None and state.finished_at_ms == story.now
    assert effects[0] == ClearTimer(T0 + 60_000)
    assert isinstance(effects[1], PublishCancel)
    assert effects[1].envelope.body.reason == "no longer needed"  # type: ignore[union-attr]


def test_a_cancelled_task_never_succeeds_later() -> None:
    story = _running()
    story.cancel()
    effects = story.succeed()  # it settles the cancellation (issue 21), nothing more
    assert effects == [ForgetCancel(story.s.task_id)] and story.s.status is S.CANCELLED
    assert story.s.result is None
    effects = story.succeed()  # a second end is refused
    assert isinstance(effects[0], Rejected) and story.s.status is S.CANCELLED


def test_redrive_gives_a_fresh_budget() -> None:
    story = Story()
    story.submit(max_attempts=1)
    story.start()
    story.fail()
    assert story.s.status is S.DEAD
    effects = story.redrive(max_attempts=2)
    state = story.s
    assert (state.status, state.attempt, state.attempt_base, state.max_attempts,
            state.redrives, state.finished_at_ms) == (S.READY, 2, 1, 2, 1, None)
    [dispatch] = [e for e in effects if isinstance(e, Dispatch)]
    assert dispatch.envelope.attempt == 2
    assert dispatch.envelope.body.max_attempts == 3  # type: ignore[union-attr]
    story.start()
    story.fail()
    state = story.s
    assert state.status is S.RETRYING  # attempt 1 of the new budget of 2
    assert state.due_at_ms == story.now + 1_000  # the backoff restarts with the budget
    story.fire(TimerKind.RETRY_DUE)
    story.start()
    story.fail()
    assert story.s.status is S.DEAD and story.s.attempt == 3


def test_redrive_keeps_the_budget_by_default_and_refuses_a_bad_one() -> None:
    story = _dead()
    assert isinstance(story.redrive(max_attempts=0)[0], Rejected)
    assert story.s.status is S.DEAD
    story.redrive()
    assert story.s.max_attempts == 3 and story.s.attempt_base == 1


# --- misc rules ------------------------------------------------------------------------


def test_derived_records_are_rejected() -> None:
    story = _ready()
    from taskstream.schemas.events import TaskCancelled
    effects = story.send(TaskCancelled("x"))
    assert isinstance(effects[0], Rejected) and story.s.rejected == 1


def test_limits_are_validated() -> None:
    with pytest.raises(LifecycleError, match="recent_events"):
        Limits(recent_events=0)
    with pytest.raises(LifecycleError, match="max_result_bytes"):
        Limits(max_result_bytes=-1)


def test_docs_show_the_table_as_it_is() -> None:
    """docs/lifecycle.md's table lists exactly TRANSITIONS (docs drift is a test failure)."""
    from pathlib import Path
    doc = Path(__file__).resolve().parent.parent / "docs" / "lifecycle.md"
    rows = set()
    for line in doc.read_text().splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) == 3 and (cells[1].startswith(("Task", "Timer", "Lease", "Cancel",
                                                     "Redrive", "Parent", "Dependency",
                                                     "Slot", "Rate", "Wait"))):
            rows.add((cells[0], cells[1], cells[2]))
    listed = {(s.value if s else "(none)", k, ", ".join(sorted(t)))
              for (s, k), t in TRANSITIONS.items()}
    assert rows == listed

