"""Bookkeeping every non-task kind shares (D37): idempotency, rejections, the table check.

A schedule's and a group's ``apply`` follow the lifecycle's order (docs/lifecycle.md):
a repeat of an applied event id changes nothing (the last one returns its redo
effects, D4); an event the kind's table does not list for the status is rejected
(counted, recorded); an accepted step must lead to a status the table lists
(anything else is a bug, :class:`LifecycleError`); every event that reaches a known
entity is remembered in ``recent_event_ids`` and sets ``updated_at_ms``. The states
are frozen dataclasses with those three fields and a ``status``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any, Protocol, TypeVar

from taskstream.processors.fold.effects import Effect, Rejected
from taskstream.processors.fold.errors import LifecycleError
from taskstream.processors.fold.rules import Limits
from taskstream.schemas.events import Envelope


class EntityState(Protocol):
    @property
    def status(self) -> Any: ...
    @property
    def recent_event_ids(self) -> list[str]: ...
    @property
    def rejected(self) -> int: ...


S = TypeVar("S", bound=EntityState)
#: a kind's step: the new state and its effects, or why the event does not fit
Step = tuple[Any, list[Effect]] | str


def apply_entity(
    state: S | None, event: Envelope, limits: Limits, *, kind: str, key: str,
    table: Mapping[tuple[Any, str], frozenset[Any]], fresh: Callable[[], S],
    step: Callable[[S, bool], Step], redo: Callable[[S, str], list[Effect]],
    settled: Callable[[S, S], list[Effect]], effects: bool,
) -> tuple[S | None, list[Effect]]:
    """Fold one event into one entity of ``kind`` (``key``: the event's key in ``table``).

    ``fresh()`` is the state an unknown entity starts from when the table lists
    ``(None, key)``; ``settled(before, after)`` adds the effects of the change itself
    (notifications of a group that just settled), with effects on.
    """
    if state is not None and event.event_id in state.recent_event_ids:
        last = state.recent_event_ids[-1] == event.event_id
        return state, redo(state, event.event_id) if last and effects else []
    status = None if state is None else state.status
    allowed = table.get((status, key))
    if allowed is None:
        return reject(state, event, limits, f"{key} does not apply to "
                      f"{'an unknown' if state is None else f'a {status}'} {kind}")
    before = fresh() if state is None else state
    outcome = step(before, effects)
    if isinstance(outcome, str):
        return reject(state, event, limits, outcome)
    after, made = outcome
    if after.status not in allowed:
        raise LifecycleError(f"{kind} bug: {status} --{key}--> {after.status} is not in "
                             f"its TRANSITIONS (allowed: {sorted(allowed)})")
    if effects:
        made = [*made, *settled(before, after)]
    return recorded(after, event, limits), made


def recorded(state: S, event: Envelope, limits: Limits, **changes: Any) -> S:
    recent = [*state.recent_event_ids, event.event_id][-limits.recent_events:]
    done: S = replace(state, recent_event_ids=recent,  # type: ignore[type-var]
                      updated_at_ms=event.occurred_at_ms, **changes)
    return done


def reject(state: S | None, event: Envelope, limits: Limits,
           reason: str) -> tuple[S | None, list[Effect]]:
    """A counted, recorded refusal (no state for an unknown entity)."""
    if state is None:
        return None, [Rejected(reason)]
    return recorded(state, event, limits, rejected=state.rejected + 1), [Rejected(reason)]
