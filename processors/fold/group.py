"""The group entity: fan-in of many tasks counted on one key (docs/decisions.md, D37).

``depends_on`` takes at most ``max_dependencies`` parents, because a waiting
task's state lists them and is rewritten on every answer. A larger fan-in (a
chord: N members, then one callback) goes through a group, keyed ``group:<id>``:

* each member is submitted with the group as its dependent (``Dependent(group
  key, slot)``) and an ID derived from (group ID, slot), so nobody stores the
  member list: :func:`~taskstream.schemas.ids.member_task_id` recomputes it;
* ``GroupCreated(size)`` creates the group; a member's ``ParentUpdate`` may come
  first (another partition), so either event creates the state;
* each member's outcome sets its slot's bit in ``seen`` (the first report of a
  slot counts, a repeat is a no-op) and counts it; once every slot has
  reported, the group is SUCCEEDED (all succeeded) or FAILED, and tells its
  dependents like a settled task does;
* the callback depends on the group key (``depends_on=["group:<id>"]``): it
  registers with the group and waits for one answer. Its state never grows with
  the group and is not rewritten per member.

A group of 10,000 members is a 1.25 KB bitmap and a few counters. A registration
that arrives before ``GroupCreated`` is dropped (the dependent asks again, see
:mod:`~taskstream.processors.fold.dependencies`).
"""

from __future__ import annotations

from dataclasses import replace

from taskstream.processors.fold.effects import Effect, emit_envelope
from taskstream.processors.fold.entity import Step, apply_entity
from taskstream.processors.fold.errors import LifecycleError
from taskstream.processors.fold.rules import Limits, body_types
from taskstream.schemas.entity_keys import GROUP_PREFIX, group_key
from taskstream.schemas.events import (
    DependencyRegistered,
    Dependent,
    Envelope,
    GroupCreated,
    ParentOutcome,
    ParentUpdate,
)
from taskstream.schemas.state import GroupState, GroupStatus

G = GroupStatus
#: the largest group: its bitmap is at most 12.5 KB (and GroupCreated checks slots)
MAX_GROUP_SIZE = 100_000

_SETTLED = (G.SUCCEEDED, G.FAILED)
#: (from status, event key) -> the statuses the event may lead to
TRANSITIONS: dict[tuple[GroupStatus | None, str], frozenset[GroupStatus]] = {
    (None, "GroupCreated"): frozenset({G.OPEN, G.SUCCEEDED}),
    (None, "ParentUpdate"): frozenset({G.OPEN}),
    (G.OPEN, "GroupCreated"): frozenset({G.OPEN, G.SUCCEEDED, G.FAILED}),
    (G.OPEN, "ParentUpdate"): frozenset({G.OPEN, G.SUCCEEDED, G.FAILED}),
    (G.OPEN, "DependencyRegistered"): frozenset({G.OPEN}),
    **{(s, "DependencyRegistered"): frozenset({s}) for s in _SETTLED},
    **{(s, "GroupCreated"): frozenset({s}) for s in _SETTLED},  # a repeat: no change
}
#: the body types a group takes (the record check refuses any other under a group key):
#: no TimerFired, groups have no timers
EVENT_TYPES: frozenset[type] = body_types(key for _, key in TRANSITIONS)

_DEFAULT_LIMITS = Limits()


def group_id_of(key: str) -> str:
    if not key.startswith(GROUP_PREFIX) or len(key) == len(GROUP_PREFIX):
        raise LifecycleError(f"{key!r} is not a group key (group:<id>)")
    return key[len(GROUP_PREFIX):]


def has(seen: bytes, slot: int) -> bool:
    byte = slot >> 3
    return byte < len(seen) and bool(seen[byte] & (1 << (slot & 7)))


def with_slot(seen: bytes, slot: int) -> bytes:
    byte = slot >> 3
    grown = bytearray(seen.ljust(byte + 1, b"\x00"))
    grown[byte] |= 1 << (slot & 7)
    return bytes(grown)


def apply(
    state: GroupState | None, event: Envelope, limits: Limits = _DEFAULT_LIMITS,
    *, effects: bool = True,
) -> tuple[GroupState | None, list[Effect]]:
    """Fold one event into one group's state (the module docstring has the rules)."""
    return apply_entity(
        state, event, limits, kind="group", key=type(event.body).__name__, table=TRANSITIONS,
        fresh=lambda: GroupState(group_id=group_id_of(event.task_id), status=G.OPEN),
        step=lambda s, on: _step(s, event, limits, on), redo=redo_effects,
        settled=lambda before, after: notifications(after, event.event_id, event.occurred_at_ms)
        if after.status in _SETTLED and before.status is G.OPEN else [],
        effects=effects)


def _step(state: GroupState, event: Envelope, limits: Limits, effects: bool) -> Step:
    body = event.body
    match body:
        case GroupCreated():
            if state.size is not None:
                return state, []  # created before: a repeat
            if not 0 <= body.size <= MAX_GROUP_SIZE:
                return f"a group has 0 to {MAX_GROUP_SIZE} members, not {body.size}"
            if len(state.seen) * 8 > body.size and any(
                    has(state.seen, s) for s in range(body.size, len(state.seen) * 8)):
                return f"members reported slots beyond the group's size {body.size}"
            return _settle(replace(state, size=body.size, created_at_ms=event.occurred_at_ms),
                           event), []
        case ParentUpdate():
            return _member(state, event, body)
        case DependencyRegistered():
            return _registered(state, event, body, limits, effects)
        case _:
            return f"{event.type_name} is not a group event"


def _member(state: GroupState, event: Envelope, body: ParentUpdate) -> Step:
    slot = body.slot
    if slot is None or not 0 <= slot < (state.size if state.size is not None
                                         else MAX_GROUP_SIZE):
        return f"slot {slot} is not a member's slot of a group of size {state.size}"
    outcome = ParentOutcome(body.outcome)
    if outcome is ParentOutcome.PENDING or has(state.seen, slot):
        return state, []  # an answer, or a slot counted before: nothing to count
    counted = replace(state, seen=with_slot(state.seen, slot))
    if outcome is ParentOutcome.SUCCEEDED:
        counted = replace(counted, succeeded=counted.succeeded + 1)
    else:
        counted = replace(counted, failed=counted.failed + 1,
                          first_failure=counted.first_failure or (
                              f"member {body.parent} (slot {slot}): "
                              f"{body.reason or outcome.value}"))
    return _settle(counted, event), []


def _settle(state: GroupState, event: Envelope) -> GroupState:
    """SUCCEEDED or FAILED once every slot has reported."""
    if state.size is None or state.succeeded + state.failed < state.size:
        return state
    status = G.SUCCEEDED if state.failed == 0 else G.FAILED
    return replace(state, status=status, finished_at_ms=event.occurred_at_ms)


def outcome_of(state: GroupState) -> tuple[ParentOutcome, str]:
    key = group_key(state.group_id)
    if state.status is G.SUCCEEDED:
        return ParentOutcome.SUCCEEDED, ""
    if state.status is G.FAILED:
        return ParentOutcome.FAILED, (f"{state.failed} of {state.size} members of {key} did "
                                      f"not succeed; first: {state.first_failure}")
    return ParentOutcome.PENDING, ""


def _registered(state: GroupState, event: Envelope, body: DependencyRegistered, limits: Limits,
                effects: bool) -> Step:
    if state.size is None:
        return "the group is not created yet (GroupCreated has not arrived); ask again"
    outcome, reason = outcome_of(state)
    dependent = body.dependent
    if outcome is ParentOutcome.PENDING and all(d.key != dependent for d in state.dependents):
        if len(state.dependents) >= limits.max_dependencies:
            outcome, reason = ParentOutcome.FAILED, (
                f"{group_key(state.group_id)} already has {len(state.dependents)} dependents "
                "(max_dependencies)")
        else:
            state = replace(state, dependents=[*state.dependents, Dependent(dependent)])
    if not effects:
        return state, []
    answer = ParentUpdate(group_key(state.group_id), outcome, reason)
    return state, [emit_envelope(dependent, f"{event.event_id}.answer", event.occurred_at_ms, 0,
                                 answer)]


def notifications(state: GroupState, cause_event_id: str, at_ms: int) -> list[Effect]:
    outcome, reason = outcome_of(state)
    parent = group_key(state.group_id)
    return [emit_envelope(d.key, f"{cause_event_id}.notify.{d.key}", at_ms, 0,
                          ParentUpdate(parent, outcome, reason, d.slot))
            for d in state.dependents]


def redo_effects(state: GroupState, cause_event_id: str) -> list[Effect]:
    """A settled group's notifications again (D4); an open group implies nothing."""
    if state.status in _SETTLED:
        return notifications(state, cause_event_id, state.updated_at_ms)
    return []


def timer_of(state: GroupState | None) -> None:
    """Groups have no timers (the dependents time out on their own)."""
    return None
