"""Model check of flow control end to end, in memory (tests/flow_support.py's World).

Tasks with rate limits (with and without keys), a concurrency key, expiries and a limit
nobody set are submitted; then events are delivered in random orders (what one source
sent one entity stays in order), timers fire late, workers start, fail, crash, tasks are
cancelled, old events are read again. After every step:

* a concurrency key never has more holders than allowed, and never more tasks READY or
  RUNNING than that;
* no attempt runs that started at or after its task's expiry.

Then the world settles (everything delivered, every dispatch run, every timer fired):

* every task has ended; no key is held, no request waits anywhere;
* the grants of every bucket, in any window of its period, are at most burst + rate;
* the fencing tokens of a key are 1, 2, 3, ... with no repeats;
* folding the log again with effects off gives the same states (replay).
"""

from __future__ import annotations

import itertools

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from taskstream.processors.fold.rules import Limits
from taskstream.schemas.events import FlowControl, SlotGranted, WaitDeferred
from taskstream.schemas.flowstate import ConcurrencyState, LimitState
from taskstream.schemas.state import TaskStatus
from tests.flow_support import World, max_in_window, running_with_key

KEY = "acct"
FLOWS = [
    None,
    FlowControl(rate_limit="emails"),
    FlowControl(rate_limit="emails", rate_key="a"),
    FlowControl(rate_limit="emails", rate_key="b"),
    FlowControl(concurrency_key=KEY),
    FlowControl(rate_limit="emails", rate_key="a", concurrency_key=KEY),
    FlowControl(rate_limit="nope"),  # nobody sets it: those tasks die
]


def check_safety(world: World, n_max: int) -> None:
    key = world.states.get(f"ckey:{KEY}")
    if isinstance(key, ConcurrencyState):
        assert len(key.holders) <= n_max, key.holders
    assert len(running_with_key(world, KEY)) <= n_max
    for state in world.tasks().values():
        if state.status is TaskStatus.RUNNING and state.expires_at_ms is not None:
            assert state.started_at_ms is not None and state.started_at_ms < state.expires_at_ms


def _populate(world: World, data: st.DataObject, n_tasks: int, n_max: int) -> None:
    for n in range(n_tasks):
        flow = data.draw(st.sampled_from(FLOWS))
        if flow is not None and flow.concurrency_key is not None:
            flow = FlowControl(flow.rate_limit, flow.rate_key, flow.concurrency_key, n_max)
        expires = data.draw(st.none() | st.integers(1, 5_000))
        world.submit(n, flow=flow, expires_in_ms=expires, max_attempts=2, lease_ms=2_000)


ACTIONS = ["deliver", "deliver", "deliver", "time", "timers", "take", "finish", "fail",
           "crash", "cancel", "again"]


def _step(world: World, data: st.DataObject, action: str) -> None:
    """One thing the world does next (nothing, when it does not apply now)."""
    running = sorted(world.running)
    if action == "deliver" and world.inflight:
        world.deliver(data.draw(st.sampled_from(world.deliverable())))
    elif action == "time":
        world.now += data.draw(st.integers(1, 1_500))
    elif action == "timers":
        for key, timer in world.due():
            world.fire(key, timer)
    elif action == "take" and world.ready:
        world.take(data.draw(st.integers(0, len(world.ready) - 1)))
    elif action in ("finish", "fail") and running:
        world.finish(data.draw(st.sampled_from(running)), action == "finish")
    elif action == "crash" and running:
        world.crash(data.draw(st.sampled_from(running)))
    elif action == "cancel" and world.tasks():
        world.cancel(data.draw(st.sampled_from(sorted(world.tasks()))))
    elif action == "again" and world.applied:
        world.redeliver(data.draw(st.integers(0, len(world.applied) - 1)))


def _label(world: World) -> None:
    """What the examples reached (pytest --hypothesis-show-statistics)."""
    for state in world.tasks().values():
        event(f"ended {state.status.value}")
        if state.attempt > 1:
            event("a task retried")
    if any(isinstance(e.body, WaitDeferred) for e in world.applied):
        event("a request was deferred")
    if any(isinstance(e.body, SlotGranted) for e in world.applied):
        event("a slot was granted")


def _check_settled(world: World, count: int, burst: int) -> None:
    for tid, state in world.tasks().items():
        assert state.status.terminal, (tid, state.status, state.status_reason)
        if state.flow is not None and state.flow.rate_limit == "nope":
            assert state.status in (TaskStatus.DEAD, TaskStatus.CANCELLED,
                                    TaskStatus.EXPIRED), state
    for key, state in world.states.items():
        if isinstance(state, ConcurrencyState):
            assert state.holders == [] and state.waiting == [], key
        if isinstance(state, LimitState):
            assert state.waiting == [] and state.due_at_ms is None, key
    for bucket, grants in world.grants.items():
        times = list(grants.values())
        assert max_in_window(times, 1000) <= burst + count, bucket
        assert max_in_window(times, 0) <= burst, bucket
    for key, sequences in world.slot_grants.items():
        assert sorted(sequences.values()) == list(range(1, len(sequences) + 1)), key
    assert world.replayed() == world.states


@settings(max_examples=100, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data(), count=st.integers(1, 20), burst=st.integers(1, 5),
       n_max=st.integers(1, 3), n_tasks=st.integers(1, 14), max_waiting=st.integers(1, 6))
def test_flow_control_holds_under_any_interleaving(
    data: st.DataObject, count: int, burst: int, n_max: int, n_tasks: int, max_waiting: int
) -> None:
    world = World(limits=Limits(max_waiting=max_waiting, defer_ms=300, recent_events=6))
    world.set_limit("emails", count, 1000, burst)
    world.deliver(0)
    _populate(world, data, n_tasks, n_max)
    for _ in range(data.draw(st.integers(0, 150))):
        _step(world, data, data.draw(st.sampled_from(ACTIONS)))
        check_safety(world, n_max)
    world.settle()
    check_safety(world, n_max)
    _label(world)
    _check_settled(world, count, burst)


def test_a_mutex_runs_one_task_at_a_time_and_a_crash_frees_it_after_the_lease() -> None:
    world = World()
    mutex = FlowControl(concurrency_key=KEY)
    tasks = [world.submit(n, flow=mutex, lease_ms=1_000) for n in range(3)]
    while world.inflight:
        world.deliver(0)
    assert len(world.ready) == 1
    world.take(0)
    world.deliver(0)
    world.crash(tasks[0])  # SIGKILL while holding the key
    assert len(running_with_key(world, KEY)) == 1 and not world.ready
    world.now += 1_000
    for key, timer in world.due():
        world.fire(key, timer)
    while world.inflight:
        world.deliver(0)
    assert world.task(tasks[0]).status is TaskStatus.RETRYING
    assert len(world.ready) == 1, "the lease lapsed: the key went to the next task"
    world.settle()
    assert all(s.status is TaskStatus.SUCCEEDED for s in world.tasks().values())
    intervals = sorted((s.started_at_ms or 0, s.finished_at_ms or 0)
                       for s in world.tasks().values())
    assert all(a[1] <= b[0] for a, b in itertools.pairwise(intervals))


def test_300_tasks_under_50_per_second_take_at_least_five_seconds_of_grants() -> None:
    """The issue's broker test in memory: grants in every 1-s window <= 50 + burst."""
    world = World()
    world.set_limit("emails", 50, 1000, 20)
    for n in range(300):
        world.submit(n, flow=FlowControl(rate_limit="emails"))
    world.settle()
    times = [s.dispatched_at_ms or 0 for s in world.tasks().values()]
    assert max_in_window(times, 1000) <= 70
    assert max(times) - min(times) >= (300 - 20) * 1000 // 50 - 20
    assert all(s.status is TaskStatus.SUCCEEDED for s in world.tasks().values())
