"""A small story-teller for lifecycle tests: build events for one task and apply them.

Every apply goes through :meth:`Story.send`, which also checks that an accepted
event took a transition listed in ``TRANSITIONS`` (the table is the contract).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from taskstream.processors.fold.effects import Duplicate, Effect, Rejected
from taskstream.processors.fold.lifecycle import TRANSITIONS, Limits, apply, event_key
from taskstream.schemas.events import (
    Backoff,
    CancelRequested,
    DependencyRegistered,
    Envelope,
    EventBody,
    LeaseRenewed,
    ParentFailurePolicy,
    ParentOutcome,
    ParentUpdate,
    RedriveRequested,
    TaskFailed,
    TaskStarted,
    TaskSubmitted,
    TaskSucceeded,
    TimerFired,
    TimerKind,
)
from taskstream.schemas.state import TaskState, applied_event_ids

T0 = 1_700_000_000_000


#: a parent ID for stories of waiting tasks
PARENT = "01HZX000000000000000PARENT"


def submitted(*, payload: bytes = b'{"n": 1}', name: str = "demo.add", eta_ms: int | None = None,
              max_attempts: int = 3, lease_ms: int = 30_000,
              backoff: Backoff | None = None, depends_on: list[str] | None = None,
              on_parent_failure: ParentFailurePolicy = ParentFailurePolicy.CANCEL,
              dependency_timeout_ms: int | None = 60_000) -> TaskSubmitted:
    return TaskSubmitted(
        name=name, queue="default", priority=1, payload=payload,
        content_type="application/json", eta_ms=eta_ms, max_attempts=max_attempts,
        backoff=backoff or Backoff(initial_ms=1_000, multiplier=2.0, max_ms=60_000, jitter=0.0),
        timeout_ms=5_000, lease_ms=lease_ms, idempotency_key="k1",
        headers={"h": "v"}, tags=["t"], depends_on=depends_on or [],
        on_parent_failure=on_parent_failure,
        dependency_timeout_ms=dependency_timeout_ms if depends_on else None,
    )


def accepted(effects: list[Effect]) -> bool:
    return not any(isinstance(e, Rejected | Duplicate) for e in effects)


@dataclass
class Story:
    """One task's events, applied as they are told."""

    task_id: str = "T1"
    limits: Limits = field(default_factory=Limits)
    now: int = T0
    state: TaskState | None = None
    log: list[Envelope] = field(default_factory=list)
    effects: list[Effect] = field(default_factory=list)
    _n: int = 0

    def event(self, body: EventBody, *, attempt: int | None = None, at: int | None = None,
              event_id: str | None = None) -> Envelope:
        self._n += 1
        self.now += 10
        if attempt is None:
            worker = isinstance(body, TaskStarted | LeaseRenewed | TaskSucceeded | TaskFailed)
            attempt = self.state.attempt if worker and self.state is not None else 0
        return Envelope(
            event_id=event_id or f"E{self._n:04d}",
            task_id=self.task_id,
            occurred_at_ms=self.now if at is None else at,
            source="test",
            attempt=attempt,
            body=body,
        )

    def apply(self, event: Envelope) -> list[Effect]:
        before = self.state
        after, effects = apply(before, event, self.limits)
        if after is not None and accepted(effects) and (
                before is None or event.event_id not in before.recent_event_ids):
            pair = (before.status if before else None, event_key(event))
            if pair in TRANSITIONS:
                assert after.status in TRANSITIONS[pair], (before, event, after)
            else:  # a worker's end settling a cancellation (issue 21): not a transition
                assert before is not None and after.status is before.status
        self.state = after
        self.log.append(event)
        self.effects = effects
        return effects

    def send(self, body: EventBody, **kw: object) -> list[Effect]:
        return self.apply(self.event(body, **kw))  # type: ignore[arg-type]

    # -- the usual events, about the current dispatch ---------------------------

    @property
    def s(self) -> TaskState:
        assert self.state is not None
        return self.state

    @property
    def dispatch_id(self) -> str:
        return self.s.dispatch_id or ""

    def submit(self, **kw: object) -> list[Effect]:
        return self.send(submitted(**kw))  # type: ignore[arg-type]

    def start(self, worker: str = "w1") -> list[Effect]:
        return self.send(TaskStarted(self.dispatch_id, worker))

    def renew(self, worker: str = "w1") -> list[Effect]:
        return self.send(LeaseRenewed(self.dispatch_id, worker))

    def succeed(self, result: bytes = b"3") -> list[Effect]:
        return self.send(TaskSucceeded(self.dispatch_id, "w1", result))

    def fail(self, *, retryable: bool = True, retry_after_ms: int | None = None) -> list[Effect]:
        return self.send(TaskFailed(self.dispatch_id, "w1", "ValueError", "boom", "tb",
                                    retryable=retryable, retry_after_ms=retry_after_ms))

    def fire(self, kind: TimerKind) -> list[Effect]:
        """The task's own timer, fired at its due time (the timer scan's behaviour)."""
        due = self.s.due_at_ms if self.s.due_at_ms is not None else self.now
        self.now = max(self.now, due)
        return self.send(TimerFired(kind, due, self.dispatch_id), attempt=self.s.attempt,
                         at=self.now)

    def cancel(self, reason: str = "test") -> list[Effect]:
        return self.send(CancelRequested(reason))

    def redrive(self, max_attempts: int | None = None) -> list[Effect]:
        return self.send(RedriveRequested("again", max_attempts))

    def wait_for(self, *parents: str, **kw: object) -> list[Effect]:
        return self.submit(depends_on=list(parents or (PARENT,)), **kw)

    def parent(self, outcome: ParentOutcome, parent: str = PARENT,
               reason: str = "") -> list[Effect]:
        return self.send(ParentUpdate(parent, outcome, reason))

    def registered(self, dependent: str = "01HZX00000000000000000CHLD") -> list[Effect]:
        return self.send(DependencyRegistered(dependent))


def unpositioned(states: dict[str, Any]) -> dict[str, Any]:
    """States without their log position (D45, processors/fold/position.py): what a pure
    fold of the same envelopes gives, for comparing the live or replay fold with it."""
    return {key: dataclasses.replace(state, recent_event_ids=applied_event_ids(
        state.recent_event_ids)) for key, state in states.items()}
