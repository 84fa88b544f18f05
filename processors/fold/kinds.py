"""The entity kinds of the fold, told apart by their record keys (ENTITIES.md; D37, D32).

Every event is about one entity, whose key is ``Envelope.task_id``: a task ID (26
Crockford base32 characters, uppercase and digits) or ``<kind>:<id>`` with a
lowercase kind name (:mod:`taskstream.schemas.entity_keys`). Lowercase sorts after
digits and uppercase, so in a partition's RocksDB every other kind's key sorts after
every task ID: a scan of tasks stops at the first key ``>= b"a"``
(:data:`~taskstream.schemas.entity_keys.FIRST_ENTITY_KEY`).

:data:`KINDS` is the one registry the live engine and replay dispatch on: per kind,
its key prefix, its state type, the body types it takes (``events``), its pure
``apply`` (same signature for all: ``apply(state, envelope, limits, *, effects)``) and
its ``timer_of`` (the one due index entry its state implies, D5,
:mod:`~taskstream.processors.fold.timers`).

``events`` is stated once, by the kind's own module, from the table its ``apply``
dispatches on (:func:`~taskstream.processors.fold.rules.body_types` of its event
keys): ``EVENT_TYPES`` of groups, schedules, limits and keys; for tasks, the keys of
:data:`~taskstream.processors.fold.rules.TRANSITIONS` and the removals
(:data:`~taskstream.processors.fold.retention.REMOVAL_KEYS`), put together here
because rules.py cannot import retention.py (retention -> timers -> rules). The
record check (:mod:`~taskstream.processors.fold.validate`) reads it to refuse, under
another kind's key, a body that kind's ``apply`` would refuse anyway (a ``TimerFired``
for a group or a key: they have no timers).
States are stored as single-object Avro (``schemas.serde.encode_entity`` /
``decode_entity``: the fingerprints tell the kinds apart; the fold imports no
codec). The engine folds a partition's records through :func:`kind_of` ``(key)``,
stores the state under the key, moves the due entry when ``timer_of`` changes and
performs the effects (``Emit`` events go back to the events topic, keyed by their
target). :func:`apply_any` and :func:`fold_all` do the same in memory (replay and
tests). Nothing here does I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from taskstream.processors.fold import concurrency, group, lifecycle, limits, schedule
from taskstream.processors.fold.effects import Effect, Emit
from taskstream.processors.fold.retention import REMOVAL_KEYS
from taskstream.processors.fold.rules import TRANSITIONS, Limits, body_types
from taskstream.processors.fold.timers import (
    Timer,
    concurrency_timer,
    group_timer,
    limit_timer,
    schedule_timer,
    task_timer,
)
from taskstream.schemas.entity_keys import (
    CKEY_PREFIX,
    FIRST_ENTITY_KEY,
    GROUP_PREFIX,
    LIMIT_PREFIX,
    SCHEDULE_PREFIX,
)
from taskstream.schemas.events import Envelope
from taskstream.schemas.flowstate import ConcurrencyState, LimitState
from taskstream.schemas.state import EntityState, GroupState, ScheduleState, TaskState

__all__ = [
    "CONCURRENCY_KEY", "FIRST_ENTITY_KEY", "GROUP", "KINDS", "LIMIT", "SCHEDULE", "TASK",
    "TASK_EVENT_TYPES", "EntityKind", "Timer", "apply_any", "fold_all", "kind_of",
    "schedule_timer", "status_of", "task_timer", "timer_of",
]


@dataclass(frozen=True, slots=True)
class EntityKind:
    """One entity kind: which events it takes, how they fold, what timer its state implies."""

    name: str
    prefix: str  # "" for tasks (a task ID has no prefix)
    state_type: type
    #: the body types its ``apply`` takes (any other is refused, by the record check too)
    events: frozenset[type]
    apply: Callable[..., tuple[Any, list[Effect]]]  # (state | None, envelope, limits, *, effects)
    timer_of: Callable[[Any], Timer | None]


#: the body types a task takes: its transitions' and its removals' (lifecycle.apply)
TASK_EVENT_TYPES: frozenset[type] = body_types([*(key for _, key in TRANSITIONS),
                                                *REMOVAL_KEYS])

TASK = EntityKind("task", "", TaskState, TASK_EVENT_TYPES, lifecycle.apply, task_timer)
SCHEDULE = EntityKind("schedule", SCHEDULE_PREFIX, ScheduleState, schedule.EVENT_TYPES,
                      schedule.apply, schedule_timer)
GROUP = EntityKind("group", GROUP_PREFIX, GroupState, group.EVENT_TYPES, group.apply,
                   group_timer)
LIMIT = EntityKind("limit", LIMIT_PREFIX, LimitState, limits.EVENT_TYPES, limits.apply,
                   limit_timer)
CONCURRENCY_KEY = EntityKind("ckey", CKEY_PREFIX, ConcurrencyState, concurrency.EVENT_TYPES,
                             concurrency.apply, concurrency_timer)

#: every kind; tasks first (the commonest)
KINDS: tuple[EntityKind, ...] = (TASK, SCHEDULE, GROUP, LIMIT, CONCURRENCY_KEY)
_BY_PREFIX: tuple[EntityKind, ...] = (SCHEDULE, GROUP, LIMIT, CONCURRENCY_KEY)
_BY_TYPE: dict[type, EntityKind] = {k.state_type: k for k in KINDS}


def kind_of(key: str) -> EntityKind:
    """The kind of the entity with record key ``key`` (tasks: anything without a prefix)."""
    if key[:1].islower():
        for kind in _BY_PREFIX:
            if key.startswith(kind.prefix):
                return kind
    return TASK


def timer_of(state: EntityState | None) -> Timer | None:
    """The due index entry of any entity's state (None: no timer)."""
    if state is None:
        return None
    return _BY_TYPE[type(state)].timer_of(state)


def status_of(state: EntityState | None) -> str | None:
    """The status of an entity that has one (tasks, schedules, groups), else None (limits
    and keys have none: they never finish)."""
    status = getattr(state, "status", None)
    return None if status is None else str(status)


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
