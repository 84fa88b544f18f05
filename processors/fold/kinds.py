"""The entity kinds the fold knows, told apart by their record keys (docs/decisions.md, D19).

Every event is about one entity, whose key is ``Envelope.task_id``: a task ID
(26 Crockford base32 characters, uppercase and digits) or ``<kind>:<id>`` with a
lowercase kind name. Lowercase sorts after digits and uppercase, so in a
partition's RocksDB every other kind's key sorts after every task ID: a scan of
tasks stops at the first key ``>= b"a"``.

:data:`KINDS` is the registry the live engine and replay dispatch on: per kind,
its key prefix, its state type, its pure ``apply`` and its ``timer_of`` (the
timer its state implies, D5). :func:`apply_any` and :func:`fold_all` use it for
replay and tests.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, NamedTuple

from taskstream.processors.fold import group, lifecycle, schedule
from taskstream.processors.fold.effects import Effect, Emit
from taskstream.processors.fold.rules import Limits, timer_kind_for
from taskstream.schemas.events import Envelope, TimerKind
from taskstream.schemas.ids import GROUP_PREFIX, SCHEDULE_PREFIX
from taskstream.schemas.state import EntityState, GroupState, ScheduleState, TaskState

#: every non-task key sorts at or after this one (lowercase kind names)
FIRST_ENTITY_KEY = b"a"


class Timer(NamedTuple):
    """A due index entry (D5): what the timer scan emits as ``TimerFired`` when due."""

    due_at_ms: int
    key: str  # the entity's key: the TimerFired's record key
    kind: TimerKind
    attempt: int = 0
    dispatch_id: str = ""


def task_timer(state: TaskState | None) -> Timer | None:
    if state is None or state.due_at_ms is None:
        return None
    kind = timer_kind_for(state.status)
    if kind is None:
        return None
    return Timer(state.due_at_ms, state.task_id, kind, state.attempt, state.dispatch_id or "")


def schedule_timer(state: ScheduleState | None) -> Timer | None:
    found = schedule.timer_of(state)
    return None if found is None else Timer(*found)


@dataclass(frozen=True, slots=True)
class Kind:
    """One entity kind: how its events fold and what timer its state implies."""

    name: str
    prefix: str  # "" for tasks
    state_type: type
    apply: Callable[..., tuple[Any, list[Effect]]]
    timer_of: Callable[[Any], Timer | None]


TASK = Kind("task", "", TaskState, lifecycle.apply, task_timer)
SCHEDULE = Kind("schedule", SCHEDULE_PREFIX, ScheduleState, schedule.apply, schedule_timer)
GROUP = Kind("group", GROUP_PREFIX, GroupState, group.apply, group.timer_of)
KINDS: tuple[Kind, ...] = (TASK, SCHEDULE, GROUP)


def kind_of(key: str) -> Kind:
    """The kind of the entity with record key ``key`` (tasks: anything without a prefix)."""
    if key[:1].islower():
        for kind in (SCHEDULE, GROUP):
            if key.startswith(kind.prefix):
                return kind
    return TASK


def apply_any(state: EntityState | None, event: Envelope, limits: Limits | None = None,
              *, effects: bool = True) -> tuple[EntityState | None, list[Effect]]:
    """Fold one event into the state of whatever entity it is about."""
    kind = kind_of(event.task_id)
    if state is not None and not isinstance(state, kind.state_type):
        raise TypeError(f"{event.task_id!r} is a {kind.name} key but holds a "
                        f"{type(state).__name__}")
    return kind.apply(state, event, limits or Limits(), effects=effects)


def fold_all(events: Iterable[Envelope], limits: Limits | None = None,
             ) -> dict[str, EntityState]:
    """Apply ``events`` in order, one state per entity key (replay and tests), and fold
    every emitted event too, as the live engine would after writing it to the log."""
    states: dict[str, EntityState] = {}
    pending = list(events)
    pending.reverse()
    while pending:
        event = pending.pop()
        after, effects = apply_any(states.get(event.task_id), event, limits)
        if after is not None:
            states[event.task_id] = after
        emitted = [e.envelope for e in effects if isinstance(e, Emit)]
        pending.extend(reversed(emitted))
    return states
