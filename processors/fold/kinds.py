"""The entity kinds of the fold, as the engine needs them (ENTITIES.md; issue 16).

A record's key says its kind: a 26-character task ID, or ``<kind>:<id>``
(:mod:`taskstream.schemas.entity_keys`). For each kind this registry gives the pure
``apply`` (same signature for all: ``apply(state, envelope, limits, *, effects)``),
the state's type and ``timer_of`` (the one due-index entry its state implies).
States are stored as single-object Avro (``schemas.serde``: ``encode_state`` /
``decode_state`` for tasks, ``encode_entity`` / ``decode_entity`` for the others,
whose fingerprints tell the kinds apart; the fold itself imports no codec). The
engine folds a partition's records through :func:`kind_of` ``(key).apply``, stores
the state under the key, moves the due entry when ``timer_of`` changes, and
performs the effects (``Emit`` events go back to the events topic, keyed by their
target). Nothing here does I/O.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from taskstream.processors.fold import concurrency, lifecycle, limits
from taskstream.processors.fold.timers import Timer, concurrency_timer, limit_timer, task_timer
from taskstream.schemas.entity_keys import CKEY_PREFIX, LIMIT_PREFIX
from taskstream.schemas.flowstate import ConcurrencyState, LimitState
from taskstream.schemas.state import TaskState


@dataclass(frozen=True, slots=True)
class EntityKind:
    """One kind of entity: how its events fold and how its state is stored."""

    name: str
    prefix: str  # "" for tasks (a task ID has no prefix)
    state_type: type
    apply: Callable[..., tuple[Any, list[Any]]]  # (state | None, envelope, limits, *, effects)
    timer_of: Callable[[Any], Timer | None]


TASK = EntityKind("task", "", TaskState, lifecycle.apply, task_timer)
LIMIT = EntityKind("limit", LIMIT_PREFIX, LimitState, limits.apply, limit_timer)
CONCURRENCY_KEY = EntityKind("ckey", CKEY_PREFIX, ConcurrencyState, concurrency.apply,
                             concurrency_timer)

#: every kind; the task kind last (its key has no prefix)
KINDS: tuple[EntityKind, ...] = (LIMIT, CONCURRENCY_KEY, TASK)


def kind_of(key: str) -> EntityKind:
    """The kind of the entity with record key ``key``."""
    if key.startswith(LIMIT_PREFIX):
        return LIMIT
    if key.startswith(CKEY_PREFIX):
        return CONCURRENCY_KEY
    return TASK
