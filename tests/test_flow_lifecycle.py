"""A task's side of flow control (processors/fold/gates.py, steps.py): gates, expiry,
progress, releases, redo; and the rows of the transition table they add."""

from __future__ import annotations

import dataclasses

import pytest

from taskstream.processors.fold.effects import (
    Dispatch,
    Effect,
    Emit,
    PublishCancel,
    Rejected,
    SetTimer,
)
from taskstream.processors.fold.lifecycle import TRANSITIONS, apply
from taskstream.processors.fold.rules import FLOW_EVENT_KEYS, NOT_STARTED
from taskstream.processors.fold.timers import Timer, task_timer
from taskstream.schemas.events import (
    EventBody,
    FlowControl,
    RateGranted,
    RateRefused,
    RateRequested,
    RateWithdrawn,
    SlotGranted,
    SlotReleased,
    SlotRequested,
    TaskDispatched,
    TaskProgress,
    TaskStarted,
    TimerFired,
    TimerKind,
    WaitDeferred,
)
from taskstream.schemas.state import TaskStatus
from tests.flow_support import flow_submitted
from tests.lifecycle_support import T0, Story

S = TaskStatus
BOTH = FlowControl(rate_limit="emails", rate_key="c-42", concurrency_key="acct-7",
                   max_concurrency=2)
RATE = FlowControl(rate_limit="emails")
KEYED = FlowControl(concurrency_key="acct-7")


def emitted(effects: list[Effect]) -> list[tuple[str, EventBody]]:
    return [(e.envelope.task_id, e.envelope.body) for e in effects if isinstance(e, Emit)]


def story(flow: FlowControl | None = BOTH, **kw: object) -> Story:
    s = Story()
    s.send(dataclasses.replace(flow_submitted(**kw), flow=flow))  # type: ignore[arg-type]
    return s


def slot(s: Story, sequence: int = 7) -> list[Effect]:
    return s.send(SlotGranted("acct-7", sequence), attempt=s.s.attempt)


def token(s: Story, flow: FlowControl = BOTH) -> list[Effect]:
    return s.send(RateGranted(flow.rate_limit or "", flow.rate_key), attempt=s.s.attempt)


def test_a_task_with_gates_waits_for_a_slot_then_a_token_then_is_dispatched() -> None:
    s = Story()
    effects = s.send(flow_submitted(flow=BOTH))
    assert s.s.status is S.WAITING and s.s.attempt == 1 and s.s.dispatch_id is None
    assert "slot of concurrency key 'acct-7' (at most 2" in (s.s.status_reason or "")
    assert emitted(effects) == [("ckey:acct-7", SlotRequested("T1", "acct-7", 2, s.now))]
    (slot_request,) = [e.envelope for e in effects if isinstance(e, Emit)]
    assert slot_request.event_id == f"{s.log[0].event_id}.slot" and slot_request.attempt == 1

    effects = slot(s)
    assert s.s.status is S.WAITING and s.s.slot_sequence == 7
    assert "token of rate limit 'emails' (key 'c-42')" in (s.s.status_reason or "")
    assert emitted(effects) == [("limit:emails", RateRequested("T1", "emails", "c-42",
                                                                s.s.submitted_at_ms))]

    effects = token(s)
    assert s.s.status is S.READY and s.s.status_reason is None
    assert s.s.dispatched_at_ms == s.now and s.s.dispatch_id
    (dispatch,) = [e for e in effects if isinstance(e, Dispatch)]
    body = dispatch.envelope.body
    assert isinstance(body, TaskDispatched)
    assert (body.concurrency_key, body.fencing_token) == ("acct-7", 7)


def test_only_a_rate_limit_asks_for_a_token_at_once() -> None:
    s = Story()
    effects = s.send(flow_submitted(flow=RATE))
    assert emitted(effects) == [("limit:emails", RateRequested("T1", "emails", None, s.now))]
    token(s, RATE)
    assert s.s.status is S.READY


def test_only_a_key_is_dispatched_on_its_grant() -> None:
    s = story(KEYED)
    effects = slot(s, 1)
    assert s.s.status is S.READY and any(isinstance(e, Dispatch) for e in effects)


@pytest.mark.parametrize("end", ["succeed", "fail", "fail_fatal", "cancel", "lease"])
def test_every_end_of_an_attempt_releases_its_slot(end: str) -> None:
    s = story()
    slot(s)
    token(s)
    s.start()
    if end == "succeed":
        effects = s.succeed()
    elif end == "fail":
        effects = s.fail()
    elif end == "fail_fatal":
        effects = s.fail(retryable=False)
    elif end == "cancel":
        effects = s.cancel()
    else:
        effects = s.fire(TimerKind.LEASE_EXPIRED)
    assert emitted(effects)[0][0] == "ckey:acct-7"
    released = emitted(effects)[0][1]
    assert isinstance(released, SlotReleased) and released.task_id == "T1"
    assert [e.envelope.attempt for e in effects if isinstance(e, Emit)] == [1]


def test_a_retry_waits_at_the_gates_again_with_the_next_attempt() -> None:
    s = story()
    slot(s)
    token(s)
    s.start()
    s.fail()
    effects = s.fire(TimerKind.RETRY_DUE)
    assert s.s.status is S.WAITING and s.s.attempt == 2 and s.s.slot_sequence is None
    (request,) = [e.envelope for e in effects if isinstance(e, Emit)]
    assert request.task_id == "ckey:acct-7" and request.attempt == 2


def test_cancel_while_waiting_withdraws_the_request_and_releases_the_slot() -> None:
    s = story()
    slot(s)
    effects = s.cancel()
    assert [b for _, b in emitted(effects)] == [
        SlotReleased("T1", "acct-7", "cancelled", 7), RateWithdrawn("T1", "emails", "c-42")]
    assert any(isinstance(e, PublishCancel) for e in effects)


def test_a_grant_the_task_no_longer_waits_for_is_handed_back() -> None:
    s = story()
    s.cancel()
    effects = slot(s, 9)
    assert isinstance(effects[0], Rejected)
    assert emitted(effects) == [("ckey:acct-7", SlotReleased(
        "T1", "acct-7", "granted to an attempt that no longer waits", 9))]
    last = s.log[-1]
    _, redo = apply(s.s, last, s.limits)
    assert emitted(redo) == emitted(effects), "a repeat hands it back again"


def test_a_grant_for_another_attempt_is_refused() -> None:
    s = story()
    s.send(SlotGranted("acct-7", 3), attempt=5)
    assert s.s.slot_sequence is None and s.s.rejected == 1
    s.send(RateGranted("emails", "c-42"), attempt=1)  # the rate gate is not yet its turn
    assert s.s.status is S.WAITING and s.s.rejected == 2


def test_a_deferral_sets_a_timer_and_the_timer_asks_again() -> None:
    s = story()
    effects = s.send(WaitDeferred("concurrency", T0 + 5_000, "full"), attempt=1)
    assert s.s.due_at_ms == T0 + 5_000 and "full; asking again at" in (s.s.status_reason or "")
    assert SetTimer(T0 + 5_000, TimerKind.WAIT_RETRY_DUE) in effects
    assert task_timer(s.s) == Timer(T0 + 5_000, "T1", TimerKind.WAIT_RETRY_DUE, 1, "")
    effects = s.fire(TimerKind.WAIT_RETRY_DUE)
    assert s.s.due_at_ms is None and emitted(effects)[0][0] == "ckey:acct-7"
    assert [e.envelope.event_id for e in effects if isinstance(e, Emit)] == [
        f"{s.log[-1].event_id}.slot"]


def test_an_unknown_limit_kills_the_task_and_frees_its_slot() -> None:
    s = story()
    slot(s)
    effects = s.send(RateRefused("emails", "no rate limit named 'emails' is set"), attempt=1)
    assert s.s.status is S.DEAD and s.s.last_error is not None
    assert s.s.last_error.error_type == "UnknownRateLimit"
    assert emitted(effects)[0] == ("ckey:acct-7", SlotReleased("T1", "acct-7",
                                                                "UnknownRateLimit", 7))


# --- expiry ------------------------------------------------------------------------------


def _expiring(status: TaskStatus) -> Story:
    expires = T0 + 10_000
    if status is S.SCHEDULED:
        return story(expires_at_ms=expires, eta_ms=T0 + 20_000)  # (the SDK refuses this)
    s = story(expires_at_ms=expires)
    if status is S.WAITING:
        return s
    slot(s)
    token(s)
    if status is S.RETRYING:
        s.start()
        s.fail(retry_after_ms=20_000)  # RETRYING, its retry due after the expiry
    return s


@pytest.mark.parametrize("status", NOT_STARTED)
def test_a_task_not_started_by_its_expiry_ends_expired(status: TaskStatus) -> None:
    s = _expiring(status)
    assert s.s.status is status
    timer = task_timer(s.s)
    assert timer is not None and timer.kind is TimerKind.EXPIRY_DUE
    effects = s.send(TimerFired(TimerKind.EXPIRY_DUE, T0 + 10_000), attempt=s.s.attempt,
                     at=T0 + 10_000)
    assert s.s.status is S.EXPIRED and s.s.status.terminal
    assert "not started by its expiry" in (s.s.status_reason or "")
    assert any(isinstance(e, PublishCancel) for e in effects) == (status is S.READY)
    assert task_timer(s.s) is None


def test_an_early_or_stale_expiry_timer_is_refused() -> None:
    s = story(expires_at_ms=T0 + 10_000)
    s.send(TimerFired(TimerKind.EXPIRY_DUE, T0 + 10_000), attempt=1, at=T0 + 9_999)
    s.send(TimerFired(TimerKind.EXPIRY_DUE, T0 + 3), attempt=1, at=T0 + 20_000)
    assert s.s.status is S.WAITING and s.s.rejected == 2


def test_a_start_at_or_after_the_expiry_expires_the_task_and_stops_the_worker() -> None:
    s = story(expires_at_ms=T0 + 10_000)
    slot(s)
    token(s)
    effects = s.send(TaskStarted(s.dispatch_id, "w1"), attempt=1, at=T0 + 10_000)
    assert s.s.status is S.EXPIRED and s.s.started_at_ms is None
    assert any(isinstance(e, PublishCancel) for e in effects)
    assert emitted(effects)[0][0] == "ckey:acct-7"


def test_a_running_task_is_not_expired() -> None:
    s = story(flow=None, expires_at_ms=T0 + 10_000)
    assert s.s.status is S.READY
    s.start()
    assert task_timer(s.s) == Timer(s.s.due_at_ms or 0, "T1", TimerKind.LEASE_EXPIRED, 1,
                                    s.dispatch_id)


def test_the_earlier_of_the_status_timer_and_the_expiry_is_the_timer() -> None:
    s = story(flow=None, expires_at_ms=T0 + 10_000, eta_ms=T0 + 5_000)
    assert task_timer(s.s) == Timer(T0 + 5_000, "T1", TimerKind.DELAY_DUE, 0, "")
    s2 = story(flow=None, expires_at_ms=T0 + 4_000, eta_ms=T0 + 5_000)
    assert task_timer(s2.s) == Timer(T0 + 4_000, "T1", TimerKind.EXPIRY_DUE, 0, "")


# --- progress ----------------------------------------------------------------------------


def test_progress_is_recorded_for_the_running_attempt_only() -> None:
    s = story(flow=None)
    s.send(TaskProgress(s.dispatch_id, "w1", 0.5, "half"), attempt=1)
    assert s.s.progress is None and s.s.rejected == 1  # READY: not running yet
    s.start()
    s.send(TaskProgress(s.dispatch_id, "w1", 0.25, "x" * 500), attempt=1)
    assert (s.s.progress, len(s.s.progress_note or "")) == (0.25, 200)
    assert s.s.progress_at_ms == s.now and s.s.status is S.RUNNING
    s.send(TaskProgress("other", "w1", 0.9), attempt=1)
    s.send(TaskProgress(s.dispatch_id, "w1", float("nan")), attempt=1)
    s.send(TaskProgress(s.dispatch_id, "w1", 1.5), attempt=1)
    s.send(TaskProgress(s.dispatch_id, "w1", 0.3), attempt=1, at=s.now - 100)
    assert s.s.progress == 0.25 and s.s.rejected == 5
    s.fail()
    s.fire(TimerKind.RETRY_DUE)
    assert s.s.progress is None, "progress belongs to an attempt"


# --- redo: the last event repeated re-emits what the state implies --------------------


def test_redo_of_a_waiting_task_asks_again_under_the_same_id() -> None:
    s = story()
    first = s.effects
    _, redo = apply(s.s, s.log[-1], s.limits)
    assert [e.envelope for e in redo if isinstance(e, Emit)] == [
        e.envelope for e in first if isinstance(e, Emit)]


def test_redo_of_an_ended_attempt_releases_again_under_the_same_id() -> None:
    s = story()
    slot(s)
    token(s)
    s.start()
    first = s.succeed()
    _, redo = apply(s.s, s.log[-1], s.limits)
    assert [e.envelope for e in redo if isinstance(e, Emit)] == [
        e.envelope for e in first if isinstance(e, Emit)]


# --- the table ---------------------------------------------------------------------------


#: WAITING's dependency rows (tests/test_lifecycle.py and test_fold_dependencies.py have them)
DEPENDENCY_KEYS = frozenset({"ParentUpdate", "DependencyRegistered", "TimerFired.DEPENDENCY_CHECK"})


def test_every_flow_row_of_the_table_is_exercised_here() -> None:
    """The rows flow control added (tests/test_lifecycle.py checks the others)."""
    flow_rows = {(st, k) for (st, k) in TRANSITIONS
                 if k in FLOW_EVENT_KEYS or (st is S.WAITING and k not in DEPENDENCY_KEYS)}
    exercised = {
        (S.WAITING, "SlotGranted"), (S.WAITING, "RateGranted"), (S.WAITING, "WaitDeferred"),
        (S.WAITING, "TimerFired.WAIT_RETRY_DUE"), (S.WAITING, "RateRefused"),
        (S.WAITING, "CancelRequested"), (S.RUNNING, "TaskProgress"),
        *((st, "TimerFired.EXPIRY_DUE") for st in NOT_STARTED),
    }
    assert flow_rows == exercised


def test_an_old_repeat_of_the_grant_it_holds_releases_nothing() -> None:
    """A repeat of the SlotGranted the running attempt holds, read again after it left the
    task's memory of event ids, must not hand the slot back: another task would get it."""
    s = story(KEYED)
    slot(s, 4)
    grant = s.log[-1]
    s.start()
    for _ in range(s.limits.recent_events):
        s.renew()
    effects = s.apply(grant)
    assert s.s.status is S.RUNNING and emitted(effects) == []


def test_a_regrant_under_a_new_sequence_is_handed_back_by_its_sequence() -> None:
    """Only that hold is released (the key drops holds by sequence): the one the running
    attempt has stays."""
    s = story(KEYED)
    slot(s, 4)
    s.start()
    effects = s.send(SlotGranted("acct-7", 5), attempt=1)
    assert emitted(effects) == [("ckey:acct-7", SlotReleased(
        "T1", "acct-7", "granted to an attempt that no longer waits", 5))]
