"""A whole flow-control world in memory, for model checks without a broker.

Tasks, rate limits and concurrency keys are folded through the entity kinds exactly as
the engine must (processors/fold/kinds.py): a record's key picks its kind, ``Emit``
effects go back "to the events topic" (the in-flight list) keyed by their target,
``Dispatch`` effects go to the ready list, timers come from each kind's ``timer_of``.
Workers take dispatches, start, succeed, fail or crash. Events in flight are delivered
in any order the test chooses, except that what one source sent to one entity keeps its
order (one producer to one partition). The world records what invariants need and
checks nothing itself.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from taskstream.processors.fold.effects import Dispatch, Effect, Emit, PublishCancel
from taskstream.processors.fold.kinds import kind_of
from taskstream.processors.fold.rules import Limits
from taskstream.processors.fold.timers import Timer
from taskstream.schemas.entity_keys import limit_key
from taskstream.schemas.events import (
    Backoff,
    CancelRequested,
    Envelope,
    EventBody,
    FlowControl,
    LimitSet,
    RateGranted,
    SlotGranted,
    TaskDispatched,
    TaskFailed,
    TaskStarted,
    TaskSubmitted,
    TaskSucceeded,
    TimerFired,
)
from taskstream.schemas.state import TaskState, TaskStatus

T0 = 1_700_000_000_000


def flow_submitted(*, flow: FlowControl | None = None, expires_at_ms: int | None = None,
                   eta_ms: int | None = None, max_attempts: int = 3,
                   lease_ms: int = 30_000) -> TaskSubmitted:
    return TaskSubmitted(
        name="demo.send", queue="default", priority=0, payload=b"{}",
        content_type="application/json", eta_ms=eta_ms, max_attempts=max_attempts,
        backoff=Backoff(initial_ms=100, multiplier=1.0, max_ms=100, jitter=0.0),
        timeout_ms=None, lease_ms=lease_ms, expires_at_ms=expires_at_ms, flow=flow)


def task_id(n: int) -> str:
    """A 26-character task ID (digits and capitals, like a ULID)."""
    return f"T{n:025d}"


@dataclass
class InFlight:
    source: str  # who sent it: an entity key, "client", "worker" or "timer"
    envelope: Envelope


@dataclass
class World:
    limits: Limits = field(default_factory=Limits)
    now: int = T0
    states: dict[str, Any] = field(default_factory=dict)
    inflight: list[InFlight] = field(default_factory=list)
    applied: list[Envelope] = field(default_factory=list)
    ready: list[Envelope] = field(default_factory=list)
    running: dict[str, Envelope] = field(default_factory=dict)
    #: bucket key -> event id -> time of every RateGranted it sent (a redo: the same id)
    grants: dict[str, dict[str, int]] = field(default_factory=dict)
    #: ckey key -> event id -> sequence of every SlotGranted it sent
    slot_grants: dict[str, dict[str, int]] = field(default_factory=dict)
    #: task id -> (occurred_at, dispatch envelope) of every Dispatch effect
    dispatches: list[Envelope] = field(default_factory=list)
    cancels: list[Envelope] = field(default_factory=list)
    _n: int = 0

    # -- sending -----------------------------------------------------------------

    def next_id(self, prefix: str = "E") -> str:
        self._n += 1
        return f"{prefix}{self._n:08d}"

    def send(self, key: str, body: EventBody, *, attempt: int = 0, source: str = "client",
             at: int | None = None) -> Envelope:
        env = Envelope(self.next_id(), key, self.now if at is None else at, source, attempt,
                       body)
        self.inflight.append(InFlight(source, env))
        return env

    def submit(self, n: int, *, flow: FlowControl | None = None,
               expires_in_ms: int | None = None, delay_ms: int | None = None,
               max_attempts: int = 3, lease_ms: int = 30_000) -> str:
        tid = task_id(n)
        self.send(tid, flow_submitted(
            flow=flow, max_attempts=max_attempts, lease_ms=lease_ms,
            expires_at_ms=None if expires_in_ms is None else self.now + expires_in_ms,
            eta_ms=None if delay_ms is None else self.now + delay_ms))
        return tid

    def set_limit(self, name: str, count: int, period_ms: int, burst: int) -> None:
        self.send(limit_key(name), LimitSet(name, count, period_ms, burst))

    def cancel(self, tid: str) -> None:
        self.send(tid, CancelRequested("test"))

    # -- delivering ------------------------------------------------------------------

    def deliverable(self) -> list[int]:
        """Indices of in-flight events that may be delivered next (per source and target,
        in the order sent)."""
        seen: set[tuple[str, str]] = set()
        out = []
        for i, item in enumerate(self.inflight):
            lane = (item.source, item.envelope.task_id)
            if lane not in seen:
                seen.add(lane)
                out.append(i)
        return out

    def deliver(self, i: int) -> list[Effect]:
        return self.apply(self.inflight.pop(i).envelope)

    def apply(self, env: Envelope) -> list[Effect]:
        kind = kind_of(env.task_id)
        before = self.states.get(env.task_id)
        after, effects = kind.apply(before, env, self.limits)
        if after is not None:
            self.states[env.task_id] = after
        self.applied.append(env)
        for effect in effects:
            self._perform(env.task_id, effect)
        return effects

    def _perform(self, source: str, effect: Effect) -> None:
        if isinstance(effect, Emit):
            env = effect.envelope
            self.inflight.append(InFlight(source, env))
            if isinstance(env.body, RateGranted):
                self.grants.setdefault(source, {})[env.event_id] = env.occurred_at_ms
            if isinstance(env.body, SlotGranted):
                self.slot_grants.setdefault(source, {})[env.event_id] = env.body.sequence
        elif isinstance(effect, Dispatch):
            self.ready.append(effect.envelope)
            self.dispatches.append(effect.envelope)
        elif isinstance(effect, PublishCancel):
            self.cancels.append(effect.envelope)

    def redeliver(self, i: int) -> list[Effect]:
        """Apply an already applied event again (a processor restart reads it twice)."""
        return self.apply(self.applied[i])

    # -- timers ------------------------------------------------------------------------

    def timers(self) -> Iterator[tuple[str, Timer]]:
        for key, state in sorted(self.states.items()):
            timer = kind_of(key).timer_of(state)
            if timer is not None:
                yield key, timer

    def due(self) -> list[tuple[str, Timer]]:
        return [(k, t) for k, t in self.timers() if t.due_at_ms <= self.now]

    def fire(self, key: str, timer: Timer) -> None:
        self.send(key, TimerFired(timer.kind, timer.due_at_ms, timer.dispatch_id),
                  attempt=timer.attempt, source="timer")

    def next_due(self) -> int | None:
        return min((t.due_at_ms for _, t in self.timers()), default=None)

    # -- workers -----------------------------------------------------------------------

    def take(self, i: int) -> None:
        """A worker takes dispatch ``i``: it starts it unless it has expired by its clock."""
        env = self.ready.pop(i)
        body = env.body
        assert isinstance(body, TaskDispatched)
        if body.expires_at_ms is not None and self.now >= body.expires_at_ms:
            return  # the worker skips an expired dispatch (the processor expires the task)
        if any(c.task_id == env.task_id and c.attempt >= env.attempt for c in self.cancels):
            return
        self.send(env.task_id, TaskStarted(body.dispatch_id, "w"), attempt=env.attempt,
                  source="worker")
        self.running[env.task_id] = env

    def finish(self, tid: str, ok: bool = True) -> None:
        env = self.running.pop(tid)
        body = env.body
        assert isinstance(body, TaskDispatched)
        outcome: EventBody = (TaskSucceeded(body.dispatch_id, "w") if ok else
                              TaskFailed(body.dispatch_id, "w", "E", "boom"))
        self.send(tid, outcome, attempt=env.attempt, source="worker")

    def crash(self, tid: str) -> None:
        """The worker dies while running ``tid``: nothing more is heard from it."""
        self.running.pop(tid)

    # -- to the end ---------------------------------------------------------------------

    def settle(self, max_rounds: int = 200_000) -> None:
        """Deliver everything, run every dispatch to success, fire every timer, until
        nothing is left to do (the liveness check runs after this)."""
        for _ in range(max_rounds):
            if self.inflight:
                self.deliver(0)
            elif self.ready:
                self.take(0)
            elif self.running:
                self.finish(next(iter(self.running)))
            else:
                due = self.next_due()
                if due is None:
                    return
                self.now = max(self.now, due)
                for key, timer in self.due():
                    self.fire(key, timer)
        raise AssertionError("the world did not settle")

    # -- views ---------------------------------------------------------------------------

    def tasks(self) -> dict[str, TaskState]:
        return {k: v for k, v in self.states.items() if isinstance(v, TaskState)}

    def task(self, tid: str) -> TaskState:
        state = self.states[tid]
        assert isinstance(state, TaskState)
        return state

    def replayed(self) -> dict[str, Any]:
        """Every state rebuilt from the applied log with effects off (replay)."""
        states: dict[str, Any] = {}
        for env in self.applied:
            after, _ = kind_of(env.task_id).apply(states.get(env.task_id), env, self.limits,
                                                  effects=False)
            if after is not None:
                states[env.task_id] = after
        return states


def running_with_key(world: World, key: str) -> list[str]:
    """Tasks of concurrency key ``key`` that are READY or RUNNING (dispatched, not ended)."""
    return [tid for tid, s in world.tasks().items()
            if s.flow is not None and s.flow.concurrency_key == key
            and s.status in (TaskStatus.READY, TaskStatus.RUNNING)]


def max_in_window(times: list[int], window_ms: int) -> int:
    """The most of ``times`` inside any closed window [x, x + window_ms]."""
    ordered = sorted(times)
    best, lo = 0, 0
    for hi, t in enumerate(ordered):
        while ordered[lo] < t - window_ms:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


def replace_flow(body: TaskSubmitted, **changes: Any) -> TaskSubmitted:
    return dataclasses.replace(body, **changes)
