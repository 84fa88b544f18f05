"""Fencing, idempotency, redo and replay: the rules that make the fold safe to repeat.

Given a task and a worker, timer or client event that is late, repeated or about
another attempt, when it is applied, then nothing but the bookkeeping changes
and the rejection is counted; given the same log, replay gives the same states.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import pytest

from taskstream.processors.fold.effects import (
    DeadLetter,
    Dispatch,
    Duplicate,
    PublishCancel,
    Rejected,
)
from taskstream.processors.fold.lifecycle import LifecycleError, Limits, apply, fold
from taskstream.schemas.events import (
    CancelRequested,
    LeaseRenewed,
    TaskFailed,
    TaskStarted,
    TaskSucceeded,
    TimerFired,
    TimerKind,
)
from taskstream.schemas.serde import encode_state
from taskstream.schemas.state import TaskStatus
from tests.lifecycle_support import T0, Story, submitted

S = TaskStatus


def _rejected(effects: Sequence[object]) -> str:
    assert len(effects) == 1 and isinstance(effects[0], Rejected), effects
    return effects[0].reason


# --- fencing -----------------------------------------------------------------------------


@pytest.mark.parametrize("body", [
    TaskStarted("other", "w1"),
    LeaseRenewed("other", "w1"),
    TaskSucceeded("other", "w1", b"x"),
    TaskFailed("other", "w1", "E", "m"),
], ids=lambda b: type(b).__name__)
def test_worker_events_for_another_dispatch_are_rejected(body: object) -> None:
    story = Story()
    story.submit()
    before = story.s
    reason = _rejected(story.send(body))  # type: ignore[arg-type]
    assert "dispatch" in reason
    assert replace(story.s, recent_event_ids=before.recent_event_ids,
                   updated_at_ms=before.updated_at_ms, rejected=0) == before


def test_a_stale_attempt_is_rejected_even_with_the_right_dispatch() -> None:
    story = Story()
    story.submit()
    reason = _rejected(story.send(TaskStarted(story.dispatch_id, "w1"), attempt=7))
    assert "attempt 7" in reason and story.s.status is S.READY


def test_a_slow_worker_of_an_old_attempt_cannot_complete_the_task() -> None:
    story = Story()
    story.submit(lease_ms=400)
    story.start("slow")
    old_dispatch = story.dispatch_id
    story.fire(TimerKind.LEASE_EXPIRED)
    story.fire(TimerKind.RETRY_DUE)
    story.start("fast")
    story.succeed(b"3")
    for body in (TaskSucceeded(old_dispatch, "slow", b"late"),
                 TaskFailed(old_dispatch, "slow", "E", "late"),
                 LeaseRenewed(old_dispatch, "slow")):
        _rejected(story.send(body, attempt=1))
    state = story.s
    assert (state.status, state.result, state.attempt, state.rejected) == (S.SUCCEEDED, b"3", 2, 3)


def test_second_start_of_the_same_dispatch_is_rejected() -> None:
    story = Story()
    story.submit()
    story.start("w1")
    _rejected(story.start("w2"))
    assert story.s.worker_id == "w1"


# --- timers ------------------------------------------------------------------------------


def test_a_timer_for_another_due_time_is_stale() -> None:
    story = Story()
    story.submit(eta_ms=T0 + 1_000)
    reason = _rejected(story.send(TimerFired(TimerKind.DELAY_DUE, T0 + 999), at=T0 + 2_000))
    assert reason.startswith("stale timer") and story.s.status is S.SCHEDULED


def test_an_early_timer_is_refused() -> None:
    story = Story()
    story.submit(eta_ms=T0 + 1_000)
    reason = _rejected(story.send(TimerFired(TimerKind.DELAY_DUE, T0 + 1_000), at=T0 + 999))
    assert reason.startswith("early timer") and story.s.status is S.SCHEDULED


def test_a_retry_timer_for_another_attempt_is_stale() -> None:
    story = Story()
    story.submit()
    story.start()
    story.fail()
    due = story.s.due_at_ms or 0
    _rejected(story.send(TimerFired(TimerKind.RETRY_DUE, due), attempt=0, at=due))
    assert story.s.status is S.RETRYING


def test_a_lease_timer_for_another_dispatch_is_stale() -> None:
    story = Story()
    story.submit()
    story.start()
    due = story.s.due_at_ms or 0
    _rejected(story.send(TimerFired(TimerKind.LEASE_EXPIRED, due, "other"), attempt=1, at=due))
    assert story.s.status is S.RUNNING


def test_a_lease_timer_after_a_renewal_is_stale() -> None:
    story = Story()
    story.submit()
    story.start()
    first_due = story.s.due_at_ms or 0
    story.renew()
    _rejected(story.send(TimerFired(TimerKind.LEASE_EXPIRED, first_due, story.dispatch_id),
                         attempt=1, at=first_due))
    assert story.s.status is S.RUNNING


# --- unknown tasks and duplicates -------------------------------------------------------


def test_events_for_an_unknown_task_leave_no_state() -> None:
    story = Story()
    for body in (TaskStarted("d", "w"), CancelRequested("x"), TimerFired(TimerKind.RETRY_DUE, 1)):
        assert isinstance(story.send(body)[0], Rejected)
        assert story.state is None


def test_duplicate_submissions_are_counted_and_conflicts_noticed() -> None:
    story = Story()
    story.submit()
    assert story.submit() == [Duplicate(False)]
    assert story.submit(payload=b"other") == [Duplicate(True)]
    assert story.submit(name="other.name") == [Duplicate(True)]
    state = story.s
    assert (state.duplicates, state.conflicts, state.attempt, state.status) == (3, 2, 1, S.READY)


def test_applying_to_another_tasks_state_is_a_bug() -> None:
    story = Story()
    story.submit()
    other = Story(task_id="T2")
    with pytest.raises(LifecycleError, match="T2"):
        apply(story.s, other.event(submitted()))


# --- idempotency and redo ----------------------------------------------------------------


def test_repeating_the_last_event_changes_nothing_and_redoes_its_dispatch() -> None:
    story = Story()
    first = story.submit()
    state = story.s
    again, effects = apply(state, story.log[-1])
    assert again is state and effects == first


def test_redo_of_a_dead_task_re_emits_the_dlq_copy() -> None:
    story = Story()
    story.submit()
    story.start()
    first = story.fail(retryable=False)
    _, effects = apply(story.s, story.log[-1])
    assert effects == [e for e in first if isinstance(e, DeadLetter)]


def test_redo_of_a_cancelled_task_re_emits_the_cancellation() -> None:
    story = Story()
    story.submit()
    first = story.cancel()
    _, effects = apply(story.s, story.log[-1])
    assert effects == first and isinstance(effects[0], PublishCancel)


def test_redo_after_a_later_rejected_event_still_re_emits_the_dispatch() -> None:
    """A crash after the dispatching event and a rejected one: the dispatch is recovered."""
    story = Story()
    story.submit()
    dispatch_id = story.dispatch_id
    _rejected(story.send(TaskStarted("other", "w")))
    _, effects = apply(story.s, story.log[-1])
    [redo] = effects
    assert isinstance(redo, Dispatch) and redo.envelope.body.dispatch_id == dispatch_id  # type: ignore[union-attr]


def test_repeating_an_earlier_event_does_nothing_at_all() -> None:
    story = Story()
    story.submit()
    story.start()
    state = story.s
    again, effects = apply(state, story.log[0])
    assert again is state and effects == []


def test_running_and_other_states_redo_nothing() -> None:
    story = Story()
    story.submit()
    story.start()
    assert apply(story.s, story.log[-1])[1] == []


def test_recent_event_ids_are_bounded_newest_last() -> None:
    story = Story(limits=Limits(recent_events=3))
    story.submit()
    for _ in range(5):
        story.renew()
    assert story.s.recent_event_ids == [e.event_id for e in story.log[-3:]]


# --- replay ------------------------------------------------------------------------------


def _long_story() -> Story:
    story = Story()
    story.submit(eta_ms=T0 + 100, max_attempts=2)
    story.fire(TimerKind.DELAY_DUE)
    story.start()
    story.renew()
    story.fail()
    story.submit()
    story.fire(TimerKind.RETRY_DUE)
    story.start()
    story.fire(TimerKind.LEASE_EXPIRED)
    story.redrive()
    story.start()
    story.succeed(b"ok")
    return story


def test_replay_reproduces_the_live_state_byte_for_byte() -> None:
    story = _long_story()
    assert story.s.status is S.SUCCEEDED
    replayed = fold(story.log)
    assert replayed == {"T1": story.s}
    assert encode_state(replayed["T1"]) == encode_state(story.s)


def test_fold_keeps_tasks_apart() -> None:
    a, b = _long_story(), Story(task_id="T2")
    b.submit()
    b.cancel()
    interleaved = [e for pair in zip(a.log, b.log, strict=False) for e in pair]
    interleaved += a.log[len(b.log):]
    states = fold(interleaved)
    assert states == {"T1": a.s, "T2": b.s}
