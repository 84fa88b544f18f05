"""Rate limits as a pure fold (processors/fold/limits.py), without a broker.

Given a limit and requests at random times, timers firing late or not at all, repeats
of old events: the grants in any window of W ms never exceed burst + W * rate, every
request is granted once when its turn comes, in submit order, and replay (effects off)
rebuilds the same state.
"""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from taskstream.processors.fold import limits
from taskstream.processors.fold.effects import Emit, Rejected
from taskstream.processors.fold.rules import Limits
from taskstream.schemas.entity_keys import limit_key
from taskstream.schemas.events import (
    Envelope,
    EventBody,
    LimitSet,
    RateGranted,
    RateRefused,
    RateRequested,
    RateWithdrawn,
    TimerFired,
    TimerKind,
    WaitDeferred,
)
from taskstream.schemas.flowstate import LimitState
from taskstream.schemas.serde import decode_entity, encode_entity
from tests.flow_support import T0, max_in_window, task_id

NAME = "emails"
DEF = limit_key(NAME)


class Bucket:
    """One limit's events, applied as they are told; the emitted events collected."""

    def __init__(self, key: str = DEF, lim: Limits | None = None) -> None:
        self.key = key
        self.limits = lim or Limits()
        self.state: LimitState | None = None
        self.log: list[Envelope] = []
        self.out: list[Envelope] = []
        self.rejected: list[str] = []
        self._n = 0

    def send(self, body: EventBody, at: int, attempt: int = 1, event_id: str | None = None,
             key: str | None = None) -> list[Envelope]:
        self._n += 1
        env = Envelope(event_id or f"E{self._n:06d}", key or self.key, at, "test", attempt, body)
        return self.apply(env)

    def apply(self, env: Envelope) -> list[Envelope]:
        self.state, effects = limits.apply(self.state, env, self.limits)
        self.log.append(env)
        self.rejected += [e.reason for e in effects if isinstance(e, Rejected)]
        emitted = [e.envelope for e in effects if isinstance(e, Emit)]
        self.out += emitted
        return emitted

    def set(self, count: int, period_ms: int, burst: int, at: int) -> list[Envelope]:
        return self.send(LimitSet(NAME, count, period_ms, burst), at)

    def request(self, n: int, at: int, submitted_at: int | None = None,
                attempt: int = 1) -> list[Envelope]:
        return self.send(RateRequested(task_id(n), NAME, None,
                                       submitted_at if submitted_at is not None else at),
                         at, attempt)

    def fire(self, at: int) -> list[Envelope]:
        assert self.state is not None and self.state.due_at_ms is not None
        return self.send(TimerFired(TimerKind.TOKEN_DUE, self.state.due_at_ms), at, 0)

    def granted(self) -> list[tuple[str, int]]:
        """(task, time) of every grant, once per event id, at its first sending: a redo,
        or an old request read again past the idempotency window, sends the same id again
        (derived from its cause), which the task takes once (a token is wasted, never
        exceeded: the property test checks that)."""
        seen: dict[str, Envelope] = {}
        for e in self.out:
            if isinstance(e.body, RateGranted):
                seen.setdefault(e.event_id, e)
        return [(e.task_id, e.occurred_at_ms) for e in seen.values()]


def test_a_full_bucket_grants_burst_at_once_then_one_per_interval() -> None:
    b = Bucket()
    b.set(5, 1000, 2, T0)
    for n in range(5):
        b.request(n, T0)
    assert [t for _, t in b.granted()] == [T0, T0]
    assert b.state is not None and b.state.due_at_ms == T0 + 200  # the next token
    b.fire(T0 + 200)
    b.fire(T0 + 450)  # late: one token at 400 came, the next is due at 600
    assert [t for _, t in b.granted()] == [T0, T0, T0 + 200, T0 + 450]
    assert b.state.due_at_ms == T0 + 600
    b.fire(T0 + 600)
    assert len(b.granted()) == 5 and b.state.due_at_ms is None and b.state.waiting == []


def test_grants_follow_submit_order_not_arrival_order() -> None:
    b = Bucket()
    b.set(1, 1000, 1, T0)
    b.request(0, T0)  # takes the only token
    b.request(1, T0 + 1, submitted_at=T0 + 50)
    b.request(2, T0 + 2, submitted_at=T0 + 10)  # submitted earlier, arrived later
    b.fire(T0 + 1000)
    b.fire(T0 + 2000)
    assert [tid for tid, _ in b.granted()] == [task_id(0), task_id(2), task_id(1)]


def test_a_request_for_a_limit_nobody_set_is_refused_and_stores_nothing() -> None:
    b = Bucket()
    out = b.request(0, T0)
    assert b.state is None
    assert len(out) == 1 and isinstance(out[0].body, RateRefused)
    assert out[0].task_id == task_id(0) and out[0].attempt == 1
    assert "taskstream limits set emails" in out[0].body.reason


def test_keyed_requests_are_forwarded_to_their_bucket_with_the_rate() -> None:
    b = Bucket()
    b.set(10, 1000, 3, T0)
    before = b.state
    out = b.send(RateRequested(task_id(0), NAME, "customer-42", T0), T0 + 5)
    assert b.state is before, "a forward changes nothing at the definition"
    (fwd,) = out
    assert fwd.task_id == limit_key(NAME, "customer-42") == "limit:emails:customer-42"
    assert fwd.body == RateRequested(task_id(0), NAME, "customer-42", T0, 10, 1000, 3)
    assert fwd.event_id == f"{b.log[-1].event_id}.fwd" and fwd.attempt == 1

    bucket = Bucket(key=fwd.task_id)
    granted = bucket.apply(fwd)
    assert [e.body for e in granted] == [RateGranted(NAME, "customer-42")]
    assert bucket.state is not None and bucket.state.bucket_key == "customer-42"
    assert bucket.state.tokens == 2 * 1000  # three tokens, one spent


def test_a_request_straight_to_a_bucket_without_a_rate_is_rejected() -> None:
    b = Bucket(key=limit_key(NAME, "k"))
    b.send(RateRequested(task_id(0), NAME, "k", T0), T0)
    assert b.state is None and b.rejected


def test_a_withdrawn_request_is_never_granted() -> None:
    b = Bucket()
    b.set(1, 1000, 1, T0)
    b.request(0, T0)
    b.request(1, T0)
    b.request(2, T0)
    b.send(RateWithdrawn(task_id(1), NAME, None), T0 + 10)
    b.fire(T0 + 1000)
    assert [tid for tid, _ in b.granted()] == [task_id(0), task_id(2)]
    assert b.state is not None and b.state.due_at_ms is None


def test_a_full_waiting_list_defers_with_a_time_to_ask_again() -> None:
    b = Bucket(lim=Limits(max_waiting=2))
    b.set(2, 1000, 1, T0)
    b.request(0, T0)  # granted
    b.request(1, T0)
    b.request(2, T0)  # the list holds 1 and 2
    (deferred,) = b.request(3, T0 + 7)
    assert isinstance(deferred.body, WaitDeferred) and deferred.task_id == task_id(3)
    assert deferred.body.gate == "rate" and deferred.body.retry_at_ms == T0 + 7 + 1000
    assert b.state is not None and b.state.deferred == 1 and len(b.state.waiting) == 2


def test_the_same_attempt_waits_once_even_under_another_event_id() -> None:
    b = Bucket()
    b.set(1, 1000, 1, T0)
    b.request(0, T0)
    b.request(1, T0)
    b.request(1, T0 + 1)  # the task's redo under a later event's id
    assert b.state is not None and len(b.state.waiting) == 1


def test_changing_the_rate_keeps_the_tokens_and_applies_from_then_on() -> None:
    b = Bucket()
    b.set(1, 1000, 4, T0)  # full: 4 tokens
    for n in range(3):
        b.request(n, T0)
    b.set(10, 1000, 2, T0 + 100)  # 1.1 tokens left, capped at the new burst of 2
    assert b.state is not None and b.state.tokens == 1100 * 1000 // 1000
    for n in range(3, 6):
        b.request(n, T0 + 100)
    assert len(b.granted()) == 4  # 3 at T0, then 1 of the 1.1
    assert b.state.due_at_ms == T0 + 100 + 90  # 0.1 left, 10/s: 90 ms to the next


def test_repeats_change_nothing_and_the_last_one_redoes_its_grants() -> None:
    b = Bucket()
    b.set(1, 1000, 1, T0)
    b.request(0, T0)
    b.request(1, T0)
    first = b.fire(T0 + 1000)
    state, last = b.state, b.log[-1]
    assert b.apply(b.log[1]) == [] and b.state is state  # an older repeat: nothing
    assert b.apply(last) == first and b.state is state  # the last one: the same grants


def test_early_and_stale_timers_are_rejected() -> None:
    b = Bucket()
    b.set(1, 1000, 1, T0)
    b.request(0, T0)
    b.request(1, T0)
    b.send(TimerFired(TimerKind.TOKEN_DUE, T0 + 1000), T0 + 999, 0)
    b.send(TimerFired(TimerKind.TOKEN_DUE, T0 + 5), T0 + 2000, 0)
    assert len(b.granted()) == 1 and len(b.rejected) == 2


def test_a_bad_limit_set_is_rejected_and_changes_nothing() -> None:
    b = Bucket()
    b.set(1, 1000, 1, T0)
    state = b.state
    b.set(0, 1000, 1, T0 + 1)
    assert b.rejected and b.state is not None
    assert (b.state.count, b.state.rejected) == (state.count if state else 0, 1)
    b.send(LimitSet("other", 1, 1000, 1), T0 + 2)  # a LimitSet under another limit's key
    assert b.state.rejected == 2


def test_fill_at_counts_what_the_rate_added_since() -> None:
    b = Bucket()
    b.set(10, 1000, 5, T0)
    for n in range(5):
        b.request(n, T0)
    assert b.state is not None
    assert limits.fill_at(b.state, T0) == 0.0
    assert limits.fill_at(b.state, T0 + 250) == 2.5
    assert limits.fill_at(b.state, T0 + 60_000) == 5.0


def test_states_round_trip_through_avro() -> None:
    b = Bucket()
    b.set(3, 60_000, 2, T0)
    for n in range(4):
        b.request(n, T0 + n)
    assert b.state is not None and b.state.waiting and b.state.last_out is not None
    assert decode_entity(encode_entity(b.state)) == b.state


# --- the property: never more than burst + W * rate in any window of W ms ----------------

ACTIONS = st.lists(
    st.one_of(
        st.tuples(st.just("request"), st.integers(0, 400)),  # ms to wait before it
        st.tuples(st.just("fire"), st.integers(0, 3000)),  # the timer fires this late
        st.tuples(st.just("repeat"), st.integers(0, 10_000)),  # an old event again
        st.tuples(st.just("withdraw"), st.integers(0, 50)),
    ),
    min_size=1, max_size=120,
)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(count=st.integers(1, 50), period=st.sampled_from([1, 10, 1000, 60_000]),
       burst=st.integers(1, 20), actions=ACTIONS, max_waiting=st.integers(1, 30))
def test_grants_never_exceed_burst_plus_rate_in_any_window(
    count: int, period: int, burst: int, actions: list[tuple[str, int]], max_waiting: int
) -> None:
    b = Bucket(lim=Limits(max_waiting=max_waiting, recent_events=8))
    now = T0
    b.set(count, period, burst, now)
    n = 0
    for action, x in actions:
        state = b.state
        assert state is not None
        if action == "request":
            now += x
            b.request(n, now)
            n += 1
        elif action == "fire" and state.due_at_ms is not None:
            now = max(now, state.due_at_ms + x)
            b.fire(now)
        elif action == "repeat":
            b.apply(b.log[x % len(b.log)])
        elif action == "withdraw" and state.waiting:
            w = state.waiting[x % len(state.waiting)]
            b.send(RateWithdrawn(w.task_id, NAME, None), now, w.attempt)
    while b.state is not None and b.state.due_at_ms is not None:  # drain: timers on time
        now = max(now, b.state.due_at_ms)
        b.fire(now)
    times = [t for _, t in b.granted()]
    for window in (0, period - 1, period, 3 * period):
        assert max_in_window(times, window) <= burst + window * count // period
    assert times == sorted(times), "grants are made in time order"
    granted = [tid for tid, _ in b.granted()]
    # a repeat older than recent_events may queue a granted task again (its second grant
    # is fenced by the task; a token is wasted, never exceeded): grants <= requests
    assert set(granted) <= {task_id(i) for i in range(n)}
    deferred = {e.task_id for e in b.out if isinstance(e.body, WaitDeferred)}
    withdrawn = {e.body.task_id for e in b.log if isinstance(e.body, RateWithdrawn)}
    assert set(granted) | deferred | withdrawn >= {task_id(i) for i in range(n)}
    replayed: LimitState | None = None
    for env in b.log:
        replayed, _ = limits.apply(replayed, env, b.limits, effects=False)
    assert replayed == b.state


def test_the_transition_table_names_every_event_a_limit_takes() -> None:
    assert {key for _, key in limits.LIMIT_EVENTS} == {
        "LimitSet", "RateRequested", "RateWithdrawn", "TimerFired.TOKEN_DUE"}
    assert ("bucket", "LimitSet") not in limits.LIMIT_EVENTS


@pytest.mark.parametrize("body", [RateGranted(NAME, None), WaitDeferred("rate", T0)])
def test_events_for_tasks_are_rejected_by_a_limit(body: EventBody) -> None:
    b = Bucket()
    b.set(1, 1000, 1, T0)
    b.send(body, T0 + 1)
    assert b.rejected and b.state is not None and b.state.rejected == 1


def test_timer_of_is_the_next_token_while_requests_wait() -> None:
    b = Bucket()
    b.set(4, 1000, 1, T0)
    assert limits.timer_of(b.state) is None
    b.request(0, T0)
    b.request(1, T0)
    assert limits.timer_of(b.state) == (T0 + 250, TimerKind.TOKEN_DUE)
    assert dataclasses.replace(b.state, due_at_ms=None) != b.state
