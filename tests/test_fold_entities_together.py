"""Dependencies (D37) and flow control (D32, D33) on one task: the merged WAITING.

A task with parents and gates waits for its parents first, then at its gates; an
expired parent tells its dependents it was cancelled; the one kind registry folds
every kind. In memory (tests/flow_support.py's World), no broker.
"""

from __future__ import annotations

import dataclasses

from taskstream.processors.fold import kinds
from taskstream.processors.fold.timers import task_timer
from taskstream.schemas.entity_keys import (
    CKEY_PREFIX,
    FIRST_ENTITY_KEY,
    GROUP_PREFIX,
    LIMIT_PREFIX,
    SCHEDULE_PREFIX,
)
from taskstream.schemas.events import FlowControl, ParentFailurePolicy, TimerKind
from taskstream.schemas.state import TaskStatus as S
from tests.flow_support import World, flow_submitted, task_id

MUTEX = FlowControl(concurrency_key="acct-7")


def _child(world: World, n: int, parents: list[str], flow: FlowControl | None = None,
           expires_in_ms: int | None = None) -> str:
    tid = task_id(n)
    body = dataclasses.replace(
        flow_submitted(flow=flow, expires_at_ms=None if expires_in_ms is None
                       else world.now + expires_in_ms),
        depends_on=parents, dependency_timeout_ms=60_000,
        on_parent_failure=ParentFailurePolicy.CANCEL)
    world.send(tid, body)
    return tid


def test_every_prefix_picks_its_kind_and_sorts_after_every_task_id() -> None:
    for prefix, kind in ((SCHEDULE_PREFIX, kinds.SCHEDULE), (GROUP_PREFIX, kinds.GROUP),
                         (LIMIT_PREFIX, kinds.LIMIT), (CKEY_PREFIX, kinds.CONCURRENCY_KEY)):
        assert kinds.kind_of(prefix + "x") is kind
        assert (prefix + "x").encode() >= FIRST_ENTITY_KEY > task_id(1).encode()
    assert kinds.kind_of(task_id(1)) is kinds.TASK
    assert len({k.name for k in kinds.KINDS}) == len(kinds.KINDS) == 5


def test_a_child_with_a_key_waits_for_its_parent_then_for_the_key() -> None:
    w = World()
    parent = w.submit(1)
    holder = w.submit(2, flow=MUTEX)
    child = _child(w, 3, [parent], flow=MUTEX)
    for _ in range(3):
        w.deliver(0)
    state = w.task(child)  # registered with its parent, which has not answered yet
    timer = task_timer(state)
    assert timer is not None and timer.kind is TimerKind.DEPENDENCY_CHECK
    while w.inflight:
        w.deliver(0)
    # the parent is dispatched and answered PENDING (no recheck timer now), the holder has
    # the key; the child waits for its parent and has not asked the key (attempt 0)
    state = w.task(child)
    assert state.status is S.WAITING and state.attempt == 0 and state.waiting_on == [parent]
    assert task_timer(state) is None
    assert w.task(holder).status is S.READY  # it holds the key
    w.settle()
    assert w.task(child).status is S.SUCCEEDED and w.task(holder).status is S.SUCCEEDED
    # the child asked the key only after its parent succeeded: attempt 1, one dispatch
    child_dispatches = [d for d in w.dispatches if d.task_id == child]
    assert len(child_dispatches) == 1 and child_dispatches[0].attempt == 1
    assert w.replayed() == w.states


def test_an_expired_parent_cancels_its_child_with_the_reason() -> None:
    w = World()
    parent = w.submit(1, delay_ms=10_000, expires_in_ms=5_000)
    child = _child(w, 2, [parent])
    w.settle()
    assert w.task(parent).status is S.EXPIRED
    state = w.task(child)
    assert state.status is S.CANCELLED and f"parent {parent} expired" in (state.cancel_reason or "")


def test_a_child_that_expires_while_waiting_for_its_parent_never_runs() -> None:
    w = World()
    parent = w.submit(1, delay_ms=20_000)
    child = _child(w, 2, [parent], expires_in_ms=5_000)
    w.settle()
    assert w.task(child).status is S.EXPIRED and w.task(parent).status is S.SUCCEEDED
    assert not [d for d in w.dispatches if d.task_id == child]
