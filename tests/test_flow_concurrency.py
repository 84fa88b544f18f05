"""Concurrency keys as a pure fold (processors/fold/concurrency.py), without a broker.

Given requests and releases in any order, repeats of old events and redos: a key never
has more holders than the max_concurrency of the grants, grants go strictly in submit
order, the fencing tokens grow by one per grant, and replay rebuilds the same state.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from taskstream.processors.fold import concurrency
from taskstream.processors.fold.effects import Emit, Rejected
from taskstream.processors.fold.rules import Limits
from taskstream.schemas.entity_keys import ckey_key
from taskstream.schemas.events import (
    Envelope,
    EventBody,
    RateRequested,
    SlotGranted,
    SlotReleased,
    SlotRequested,
    WaitDeferred,
)
from taskstream.schemas.flowstate import ConcurrencyState
from taskstream.schemas.serde import decode_entity, encode_entity
from tests.flow_support import T0, task_id

KEY = "account-7"


class Key:
    def __init__(self, lim: Limits | None = None) -> None:
        self.limits = lim or Limits()
        self.state: ConcurrencyState | None = None
        self.log: list[Envelope] = []
        self.out: dict[str, Envelope] = {}
        self.rejected: list[str] = []
        self._n = 0

    def send(self, body: EventBody, attempt: int = 1, at: int = T0) -> list[Envelope]:
        self._n += 1
        return self.apply(Envelope(f"E{self._n:06d}", ckey_key(KEY), at, "test", attempt, body))

    def apply(self, env: Envelope) -> list[Envelope]:
        self.state, effects = concurrency.apply(self.state, env, self.limits)
        self.log.append(env)
        self.rejected += [e.reason for e in effects if isinstance(e, Rejected)]
        emitted = [e.envelope for e in effects if isinstance(e, Emit)]
        self.out.update((e.event_id, e) for e in emitted)
        return emitted

    def request(self, n: int, max_concurrency: int = 1, attempt: int = 1,
                submitted_at: int = T0) -> list[Envelope]:
        return self.send(SlotRequested(task_id(n), KEY, max_concurrency, submitted_at + n),
                         attempt)

    def release(self, n: int, attempt: int = 1) -> list[Envelope]:
        return self.send(SlotReleased(task_id(n), KEY, "done"), attempt)

    def holders(self) -> list[str]:
        assert self.state is not None
        return [h.task_id for h in self.state.holders]


def test_a_mutex_grants_one_at_a_time_in_submit_order() -> None:
    k = Key()
    (first,) = k.request(0)
    assert first.task_id == task_id(0) and first.body == SlotGranted(KEY, 1)
    assert first.attempt == 1
    assert k.request(2) == [] and k.request(1) == []
    assert k.holders() == [task_id(0)]
    (second,) = k.release(0)
    assert second.task_id == task_id(1) and second.body == SlotGranted(KEY, 2)
    (third,) = k.release(1)
    assert third.task_id == task_id(2) and third.body == SlotGranted(KEY, 3)


def test_a_semaphore_of_three_holds_three() -> None:
    k = Key()
    granted = [e for n in range(5) for e in k.request(n, 3)]
    assert [e.task_id for e in granted] == [task_id(0), task_id(1), task_id(2)]
    assert [e.task_id for e in k.release(1)] == [task_id(3)]


def test_a_head_asking_for_a_mutex_holds_back_those_behind_it() -> None:
    k = Key()
    k.request(0, 2)
    k.request(1, 1)  # a mutex request: must wait for 0 to leave
    assert k.request(2, 5) == []  # would fit, but the mutex is first in line
    assert [e.task_id for e in k.release(0)] == [task_id(1)]
    assert [e.task_id for e in k.release(1)] == [task_id(2)]


def test_a_release_of_a_waiting_request_withdraws_it() -> None:
    k = Key()
    k.request(0)
    k.request(1)
    k.request(2)
    assert k.release(1) == []
    assert [e.task_id for e in k.release(0)] == [task_id(2)]


def test_releases_of_what_is_neither_held_nor_waiting_change_nothing() -> None:
    k = Key()
    k.request(0)
    state = k.state
    k.release(5)
    k.release(0, attempt=2)
    assert k.state is not None and k.state.holders == state.holders if state else False
    assert concurrency.apply(None, Envelope("x", ckey_key(KEY), T0, "t", 1,
                                            SlotReleased(task_id(0), KEY)))[0] is None


def test_a_request_already_holding_or_waiting_is_dropped() -> None:
    k = Key()
    k.request(0)
    k.request(1)
    k.request(0)
    k.request(1)
    assert k.state is not None and len(k.state.holders) == 1 and len(k.state.waiting) == 1


def test_a_full_waiting_list_defers() -> None:
    k = Key(Limits(max_waiting=1, defer_ms=700))
    k.request(0)
    k.request(1)
    (deferred,) = k.request(2)
    assert deferred.task_id == task_id(2)
    assert deferred.body == WaitDeferred("concurrency", T0 + 700, deferred.body.reason)
    assert "account-7" in deferred.body.reason


def test_the_last_event_repeated_regrants_under_the_same_ids() -> None:
    k = Key()
    k.request(0)
    k.request(1)
    regrant = k.release(0)
    last, state = k.log[-1], k.state
    assert k.apply(last) == regrant and k.state is state
    assert k.apply(k.log[0]) == [] and k.state is state


def test_foreign_events_are_rejected() -> None:
    k = Key()
    k.request(0)
    k.send(RateRequested(task_id(1), "x", None, T0))
    k.send(SlotRequested(task_id(1), "another-key", 1, T0))
    assert len(k.rejected) == 2 and k.state is not None and k.state.rejected == 2


def test_states_round_trip_through_avro() -> None:
    k = Key()
    for n in range(4):
        k.request(n, 2)
    assert k.state is not None
    assert decode_entity(encode_entity(k.state)) == k.state


OPS = st.lists(st.tuples(st.sampled_from(["request", "release", "repeat", "retry"]),
                         st.integers(0, 11), st.integers(0, 10_000)), max_size=150)


@settings(max_examples=300)
@given(n_max=st.integers(1, 4), ops=OPS, max_waiting=st.integers(1, 12))
def test_never_more_holders_than_allowed_and_strictly_in_order(
    n_max: int, ops: list[tuple[str, int, int]], max_waiting: int
) -> None:
    k = Key(Limits(max_waiting=max_waiting, recent_events=8))
    attempts: dict[int, int] = {}
    for op, n, x in ops:
        if op == "request":
            k.request(n, n_max, attempts.setdefault(n, 1))
        elif op == "release":
            k.release(n, attempts.get(n, 1))
        elif op == "retry":  # the attempt ended; the task asks again for the next one
            k.release(n, attempts.get(n, 1))
            attempts[n] = attempts.get(n, 1) + 1
            k.request(n, n_max, attempts[n])
        elif k.log:
            k.apply(k.log[x % len(k.log)])
        state = k.state
        if state is not None:
            assert len(state.holders) <= n_max
            if state.waiting and len(state.holders) < n_max:
                raise AssertionError("a request waits while a slot is free")
            order = [(w.submitted_at_ms, w.task_id, w.attempt) for w in state.waiting]
            assert order == sorted(order)
            sequences = [h.sequence for h in state.holders]
            assert len(set(sequences)) == len(sequences) <= state.sequence
    grants = [e for e in k.out.values() if isinstance(e.body, SlotGranted)]
    assert sorted(e.body.sequence for e in grants) == list(range(1, len(grants) + 1))
    replayed: ConcurrencyState | None = None
    for env in k.log:
        replayed, _ = concurrency.apply(replayed, env, k.limits, effects=False)
    assert replayed == k.state


def test_a_release_naming_a_sequence_frees_only_that_hold() -> None:
    k = Key()
    k.request(0)  # sequence 1
    k.send(SlotReleased(task_id(0), KEY, "stale", sequence=9))
    assert k.holders() == [task_id(0)]
    k.request(1)
    (granted,) = k.send(SlotReleased(task_id(0), KEY, "done", sequence=1))
    assert granted.task_id == task_id(1) and granted.event_id.endswith(f"{task_id(1)}.1.2")
