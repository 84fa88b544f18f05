"""Concurrency keys: a pure fold of events into a semaphore (issue 16; docs/flow-control.md).

``ckey:<key>`` (:class:`~taskstream.schemas.flowstate.ConcurrencyState`) holds who has
a slot and who waits, in order of the tasks' submit times (then task ID). A task's
attempt asks with ``SlotRequested`` (carrying its ``max_concurrency``); while fewer
attempts hold the key than the smallest ``max_concurrency`` among the holders and the
head of the list, the head is granted (``SlotGranted`` to the task, with the next
``sequence``: the fencing token). Strictly in order: a head that must wait holds back
everyone behind it, so a mutex request is never overtaken by tasks that would allow
more company. ``SlotReleased`` (the attempt ended: success, failure, lease expiry,
cancellation, expiry; or it no longer waits) frees the slot or removes the request,
and the next ones are granted. A release names the hold by its sequence, so a late
release never frees a newer hold of the same attempt.

So at most N attempts hold the key at once, and no holder ever shares the key with
more than its own N - 1 others. An attempt runs only while it holds the key (it is
dispatched after the grant and releases when it ends), hence at most N run. A slot outlives a
crashed worker only until the task's lease lapses (the task then releases it). A
handler whose lease lapsed may still be running somewhere, which is why it gets the
fencing token: docs/flow-control.md says what to do with it.

A key keeps at most ``Limits.max_waiting`` requests; beyond that a request is
answered ``WaitDeferred`` and the task asks again ``Limits.defer_ms`` later.

Idempotency as for limits: applied event ids are remembered, a request for a (task,
attempt) already holding or waiting is dropped, a release of one that neither holds
nor waits changes nothing, and a repeat of the last applied event re-emits its
grants under the same ids (``last_out``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType

from taskstream.processors.fold.copy import fast_replace
from taskstream.processors.fold.effects import Effect, Rejected
from taskstream.processors.fold.errors import LifecycleError
from taskstream.processors.fold.gates import GATE_CONCURRENCY
from taskstream.processors.fold.outbox import in_line, recorded, rejected, sent
from taskstream.processors.fold.rules import Limits, body_types, event_key
from taskstream.schemas.entity_keys import parse_ckey_key
from taskstream.schemas.events import (
    Envelope,
    SlotGranted,
    SlotReleased,
    SlotRequested,
)
from taskstream.schemas.flowstate import ConcurrencyState, GateOut, SlotHolder, SlotWaiter

__all__ = ["CONCURRENCY_EVENTS", "EVENT_TYPES", "apply", "redo_effects"]

_DEFAULT_LIMITS = Limits()
_copy = fast_replace(ConcurrencyState)
Result = tuple[ConcurrencyState | None, list[Effect]]


def _room(holders: list[SlotHolder], head: SlotWaiter) -> bool:
    """Whether ``head`` may join ``holders``: fewer than the smallest max_concurrency
    among them and it (each request's bound holds while it holds the key)."""
    bound = min([head.max_concurrency, *(h.max_concurrency for h in holders)])
    return len(holders) < bound


def _grant(state: ConcurrencyState, at_ms: int) -> tuple[ConcurrencyState, list[GateOut]]:
    """Grant from the head of the list while the head has room."""
    holders, waiting = list(state.holders), list(state.waiting)
    sequence = state.sequence
    out: list[GateOut] = []
    while waiting and _room(holders, waiting[0]):
        head = waiting.pop(0)
        sequence += 1
        holders.append(SlotHolder(head.task_id, head.attempt, sequence, at_ms,
                                  head.max_concurrency))
        out.append(GateOut("grant", head.task_id, head.attempt, at_ms, sequence=sequence))
    granted = _copy(state, holders=holders, waiting=waiting, sequence=sequence,
                    granted=state.granted + len(out))
    return granted, out


def _request(state: ConcurrencyState, event: Envelope,
             limits: Limits) -> tuple[ConcurrencyState, list[GateOut]]:
    body = event.body
    assert isinstance(body, SlotRequested)
    who = (body.task_id, event.attempt)
    if any((h.task_id, h.attempt) == who for h in state.holders) or any(
            (w.task_id, w.attempt) == who for w in state.waiting):
        return state, []  # already holding or waiting (a repeat under another id)
    at = event.occurred_at_ms
    if len(state.waiting) >= limits.max_waiting:
        reason = (f"concurrency key {state.name!r} has {len(state.waiting)} requests waiting "
                  f"(at most {limits.max_waiting} are kept)")
        out = GateOut("defer", body.task_id, event.attempt, at,
                      retry_at_ms=at + limits.defer_ms, reason=reason)
        return _copy(state, deferred=state.deferred + 1), [out]
    waiter = SlotWaiter(body.task_id, event.attempt, body.submitted_at_ms, body.max_concurrency)
    waiting = in_line(state.waiting, waiter)
    return _grant(_copy(state, waiting=waiting, max_concurrency=body.max_concurrency), at)


def _release(state: ConcurrencyState, event: Envelope,
             limits: Limits) -> tuple[ConcurrencyState, list[GateOut]]:
    body = event.body
    assert isinstance(body, SlotReleased)
    who = (body.task_id, event.attempt)
    holders = [h for h in state.holders if (h.task_id, h.attempt) != who
               or (body.sequence is not None and h.sequence != body.sequence)]
    waiting = [w for w in state.waiting if (w.task_id, w.attempt) != who]
    if len(holders) == len(state.holders) and len(waiting) == len(state.waiting):
        return state, []  # neither holds nor waits: released already
    freed = len(state.holders) - len(holders)
    released = _copy(state, holders=holders, waiting=waiting, released=state.released + freed)
    return _grant(released, event.occurred_at_ms)


Handler = Callable[[ConcurrencyState, Envelope, Limits],
                   tuple[ConcurrencyState, list[GateOut]]]

#: event key -> what the key does with it; anything else is rejected
CONCURRENCY_EVENTS: Mapping[str, Handler] = MappingProxyType({
    "SlotRequested": _request,
    "SlotReleased": _release,
})
#: the body types a key takes (the record check refuses any other under its key): no
#: TimerFired, keys have no timers
EVENT_TYPES: frozenset[type] = body_types(CONCURRENCY_EVENTS)


def apply(state: ConcurrencyState | None, event: Envelope, limits: Limits = _DEFAULT_LIMITS,
          *, effects: bool = True) -> Result:
    """Fold one event into one concurrency key's state (``event.task_id`` is the entity key)."""
    name = parse_ckey_key(event.task_id)
    if state is not None and state.key != event.task_id:
        raise LifecycleError(f"event {event.event_id} is for {event.task_id} but was applied "
                             f"to the state of {state.key}")
    if state is not None and event.event_id in state.recent_event_ids:
        last = state.recent_event_ids[-1] == event.event_id
        return state, redo_effects(state) if last and effects else []
    body = event.body
    handler = CONCURRENCY_EVENTS.get(event_key(event))
    if handler is None or not isinstance(body, SlotRequested | SlotReleased) or body.key != name:
        return rejected(state, _copy, event, limits,
                        f"{event_key(event)} does not apply to concurrency key {event.task_id}")
    if isinstance(body, SlotRequested) and body.max_concurrency < 1:
        return state, [Rejected(f"SlotRequested with max_concurrency {body.max_concurrency}")]
    if state is None:
        if isinstance(body, SlotReleased):  # nothing held: a release for a key never used
            return None, []
        state = ConcurrencyState(key=event.task_id, name=name)
    after, out = handler(state, event, limits)
    after = recorded(after, _copy, event, limits, out)
    return after, _emits(after, out) if effects else []


def _emits(state: ConcurrencyState, out: list[GateOut]) -> list[Effect]:
    return sent(state, out, GATE_CONCURRENCY,
                lambda o: SlotGranted(key=state.name, sequence=o.sequence or 0))


def redo_effects(state: ConcurrencyState) -> list[Effect]:
    """What the last applied event sent, sent again under the same ids, and every other
    holder's grant with it (issue 21).

    A redo is the record at the state's position read again after a crash; the records
    before it are skipped (D45), so grants they made that never reached the broker would
    never be sent: their tasks would wait for ever, each holding a slot (chaos full run 5
    left one so). A holder granted by an earlier event gets its grant again under this
    event's id, with its own sequence: a task that has it already keeps it (it holds that
    sequence), one still waiting takes it."""
    if not state.recent_event_ids:
        return []
    again = {(o.task_id, o.attempt, o.sequence) for o in state.last_out if o.what == "grant"}
    held = [GateOut("grant", h.task_id, h.attempt, h.granted_at_ms, sequence=h.sequence)
            for h in state.holders if (h.task_id, h.attempt, h.sequence) not in again]
    return _emits(state, [*state.last_out, *held])
