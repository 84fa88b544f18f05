"""Rate limits: a pure fold of events into token buckets (issue 16; docs/flow-control.md).

Two roles share one state record (:class:`~taskstream.schemas.flowstate.LimitState`):

* ``limit:<name>``, the **definition**: ``LimitSet`` sets its rate and burst. It is also
  the bucket of requests without a rate key. A request *with* a key is forwarded to
  that key's bucket with the rate filled in, so a key's bucket lives on the partition
  of its own key and needs no other partition's state (DESIGN.md, "Entities other
  than tasks"). A request for a limit nobody set is refused (the task fails for good).
* ``limit:<name>:<key>``, a key's **bucket**: takes its rate from the forwarded requests
  (the newest one's rate applies from then on).

A bucket is a token bucket counted in integers: ``tokens`` in units of
``1/period_ms`` of a token, ``count`` units added per millisecond, at most
``burst * period_ms`` held. A request joins the waiting list, ordered by the task's
submit time (then task ID); while the head can have a token it is granted
(``RateGranted`` to the task). With waiters and no token, the bucket's timer
(``TOKEN_DUE``) is due when the next token is. Every grant is made at the time of
the event that made it (its ``occurred_at_ms``, never earlier than the bucket's
last refill), and tokens are counted up to exactly that time, so in any window of
``W`` ms of grant times at most ``burst + W * count / period_ms`` grants happen:
the property the tests check on random histories.

A bucket keeps at most ``Limits.max_waiting`` requests; beyond that a request is
answered ``WaitDeferred`` with the time the list should have drained, and the
task asks again then. The state stays bounded and the order roughly fair.

Idempotency: the ids of applied events are remembered (``recent_event_ids``) and a
request already waiting for the same (task, attempt) is not queued twice. The
definition's forwards and refusals change no state: they are pure functions of the
event and the definition, emitted under ids derived from the event's, so a repeat
emits the same ids and the receiver drops them. A repeat of the *last* applied
event re-emits what it sent (``last_out``: the redo of docs/decisions.md, D4).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType

from taskstream.processors.fold.copy import fast_replace
from taskstream.processors.fold.effects import Effect, Rejected, emit_envelope
from taskstream.processors.fold.errors import LifecycleError
from taskstream.processors.fold.gates import GATE_RATE
from taskstream.processors.fold.outbox import in_line, recorded, rejected, sent
from taskstream.processors.fold.rules import Limits, body_types, event_key
from taskstream.schemas.entity_keys import limit_key, parse_limit_key
from taskstream.schemas.events import (
    Envelope,
    LimitSet,
    RateGranted,
    RateRefused,
    RateRequested,
    RateWithdrawn,
    TimerFired,
    TimerKind,
)
from taskstream.schemas.flowstate import GateOut, LimitState, LimitWaiter

__all__ = ["EVENT_TYPES", "LIMIT_EVENTS", "apply", "fill_at", "redo_effects", "timer_of"]

DEFINITION, BUCKET = "definition", "bucket"

_DEFAULT_LIMITS = Limits()
_copy = fast_replace(LimitState)
Result = tuple[LimitState | None, list[Effect]]


# --- the arithmetic of one bucket ----------------------------------------------------


def capacity(state: LimitState) -> int:
    return state.burst * state.period_ms


def refill(state: LimitState, at_ms: int) -> LimitState:
    """The bucket at ``at_ms`` (never before its last refill): tokens added, capped."""
    if at_ms <= state.refilled_at_ms or not state.defined:
        return state
    gained = (at_ms - state.refilled_at_ms) * state.count
    return _copy(state, tokens=min(capacity(state), state.tokens + gained), refilled_at_ms=at_ms)


def next_token_at(state: LimitState) -> int | None:
    """When the bucket next holds a whole token, if anyone waits for it."""
    if not state.waiting or not state.defined:
        return None
    need = state.period_ms - state.tokens
    if need <= 0:
        return state.refilled_at_ms
    return state.refilled_at_ms + -(-need // state.count)  # ceil


def fill_at(state: LimitState, now_ms: int) -> float:
    """Tokens in the bucket at ``now_ms`` (for views; the fold itself never reads a clock)."""
    if not state.defined:
        return 0.0
    return refill(state, now_ms).tokens / state.period_ms


def _drain(state: LimitState, at_ms: int) -> tuple[LimitState, list[GateOut]]:
    """Grant the head of the list while there are tokens; set the timer for the rest."""
    tokens, waiting = state.tokens, list(state.waiting)
    granted: list[GateOut] = []
    while waiting and tokens >= state.period_ms:
        head = waiting.pop(0)
        tokens -= state.period_ms
        granted.append(GateOut("grant", head.task_id, head.attempt, at_ms))
    drained = _copy(state, tokens=tokens, waiting=waiting, granted=state.granted + len(granted))
    return _copy(drained, due_at_ms=next_token_at(drained)), granted


def _configured(state: LimitState, count: int, period_ms: int, burst: int,
                at_ms: int) -> LimitState:
    """A new rate from ``at_ms``: tokens up to then at the old rate, then re-expressed in
    the new period's units (same number of tokens, capped at the new burst)."""
    if count < 1 or period_ms < 1 or burst < 1:
        raise LifecycleError(f"limit {state.key}: a rate of {count}/{period_ms} ms with burst "
                             f"{burst} is not valid (every part must be >= 1)")
    if not state.defined:
        return _copy(state, defined=True, count=count, period_ms=period_ms, burst=burst,
                     tokens=burst * period_ms, refilled_at_ms=at_ms)
    now = refill(state, at_ms)
    if (count, period_ms, burst) == (state.count, state.period_ms, state.burst):
        return now
    tokens = min(burst * period_ms, now.tokens * period_ms // state.period_ms)
    return _copy(now, count=count, period_ms=period_ms, burst=burst, tokens=tokens)


# --- what each event does ---------------------------------------------------------------


def _set(state: LimitState, event: Envelope, limits: Limits) -> tuple[LimitState, list[GateOut]]:
    body = event.body
    assert isinstance(body, LimitSet)
    at = max(event.occurred_at_ms, state.refilled_at_ms)
    configured = _configured(state, body.count, body.period_ms, body.burst, at)
    return _drain(_copy(configured, set_at_ms=event.occurred_at_ms), at)


def _request(state: LimitState, event: Envelope,
             limits: Limits) -> tuple[LimitState, list[GateOut]]:
    body = event.body
    assert isinstance(body, RateRequested)
    at = max(event.occurred_at_ms, state.refilled_at_ms)
    now = refill(state, at)
    if state.bucket_key is not None:  # a key's bucket takes the rate the definition sent
        now = _configured(now, body.count, body.period_ms, body.burst, at)
    if any(w.task_id == body.task_id and w.attempt == event.attempt for w in now.waiting):
        return now, []  # already waiting (a repeat under another id)
    if len(now.waiting) >= limits.max_waiting:
        drain_ms = -(-len(now.waiting) * now.period_ms // now.count)
        reason = (f"rate limit {now.name!r} has {len(now.waiting)} requests waiting "
                  f"(at most {limits.max_waiting} are kept)")
        out = GateOut("defer", body.task_id, event.attempt, at, retry_at_ms=at + max(1, drain_ms),
                      reason=reason)
        return _copy(now, deferred=now.deferred + 1), [out]
    waiting = in_line(now.waiting, LimitWaiter(body.task_id, event.attempt, body.submitted_at_ms))
    return _drain(_copy(now, waiting=waiting), at)


def _withdraw(state: LimitState, event: Envelope,
              limits: Limits) -> tuple[LimitState, list[GateOut]]:
    body = event.body
    assert isinstance(body, RateWithdrawn)
    kept = [w for w in state.waiting
            if not (w.task_id == body.task_id and w.attempt == event.attempt)]
    if len(kept) == len(state.waiting):
        return state, []
    at = max(event.occurred_at_ms, state.refilled_at_ms)
    return _drain(_copy(refill(state, at), waiting=kept), at)


def _timer(state: LimitState, event: Envelope,
           limits: Limits) -> tuple[LimitState, list[GateOut]] | str:
    body = event.body
    assert isinstance(body, TimerFired)
    if body.due_at_ms != state.due_at_ms:
        return f"stale timer: due {body.due_at_ms}, the bucket's is due {state.due_at_ms}"
    if event.occurred_at_ms < body.due_at_ms:
        return f"early timer: fired at {event.occurred_at_ms}, due {body.due_at_ms}"
    at = max(event.occurred_at_ms, state.refilled_at_ms)
    return _drain(refill(state, at), at)


Handler = Callable[[LimitState, Envelope, Limits],
                   tuple[LimitState, list[GateOut]] | str]

#: (role, event key) -> what the state does with it; any other pair is rejected. A
#: definition also forwards keyed requests and withdrawals (before this table is read).
LIMIT_EVENTS: Mapping[tuple[str, str], Handler] = MappingProxyType({
    (DEFINITION, "LimitSet"): _set,
    (DEFINITION, "RateRequested"): _request,
    (DEFINITION, "RateWithdrawn"): _withdraw,
    (DEFINITION, "TimerFired.TOKEN_DUE"): _timer,
    (BUCKET, "RateRequested"): _request,
    (BUCKET, "RateWithdrawn"): _withdraw,
    (BUCKET, "TimerFired.TOKEN_DUE"): _timer,
})
#: the body types a limit takes, either role (the record check refuses any other under
#: its key); what a definition forwards is among them
EVENT_TYPES: frozenset[type] = body_types(key for _, key in LIMIT_EVENTS)


# --- the fold ------------------------------------------------------------------------


def apply(state: LimitState | None, event: Envelope, limits: Limits = _DEFAULT_LIMITS, *,
          effects: bool = True) -> Result:
    """Fold one event into one limit's state (``event.task_id`` is the entity key)."""
    name, bucket_key = parse_limit_key(event.task_id)
    if state is not None and state.key != event.task_id:
        raise LifecycleError(f"event {event.event_id} is for {event.task_id} but was applied "
                             f"to the state of {state.key}")
    body = event.body
    role = DEFINITION if bucket_key is None else BUCKET
    if role == DEFINITION and isinstance(body, RateRequested | RateWithdrawn):
        if body.key is not None:
            return state, _forward(state, event, effects)
        if state is None or not state.defined:
            return state, _refuse(name, event, effects)
    if state is not None and event.event_id in state.recent_event_ids:
        last = state.recent_event_ids[-1] == event.event_id
        return state, redo_effects(state) if last and effects else []
    handler = LIMIT_EVENTS.get((role, event_key(event)))
    if handler is None or (isinstance(body, LimitSet) and body.name != name):
        return _reject(state, event, limits, f"{event_key(event)} does not apply to {role} "
                                              f"{event.task_id}")
    if state is None:
        if not isinstance(body, LimitSet | RateRequested):
            return None, [Rejected(f"{event_key(event)} for unknown limit {event.task_id}")]
        if isinstance(body, RateRequested) and body.count < 1:
            return None, [Rejected(f"RateRequested without a rate reached bucket "
                                   f"{event.task_id}; requests go to limit:{name}")]
        state = LimitState(key=event.task_id, name=name, bucket_key=bucket_key)
    try:
        outcome = handler(state, event, limits)
    except LifecycleError as exc:  # an invalid rate in an event: refused, never applied
        return _reject(state, event, limits, str(exc))
    if isinstance(outcome, str):
        return _reject(state, event, limits, outcome)
    after, out = outcome
    after = recorded(after, _copy, event, limits, out)
    return after, _emits(after, out) if effects else []


def _reject(state: LimitState | None, event: Envelope, limits: Limits, reason: str) -> Result:
    return rejected(state, _copy, event, limits, reason)


def _emits(state: LimitState, out: list[GateOut]) -> list[Effect]:
    return sent(state, out, GATE_RATE,
                lambda _: RateGranted(limit=state.name, key=state.bucket_key))


def redo_effects(state: LimitState) -> list[Effect]:
    """What the last applied event sent, sent again under the same ids."""
    return _emits(state, state.last_out) if state.recent_event_ids else []


def _forward(state: LimitState | None, event: Envelope, effects: bool) -> list[Effect]:
    """A keyed request or withdrawal, passed on to the key's bucket with the rate."""
    body = event.body
    assert isinstance(body, RateRequested | RateWithdrawn)
    if state is None or not state.defined:
        return _refuse(body.limit, event, effects) if isinstance(body, RateRequested) else []
    if not effects:
        return []
    target = limit_key(state.name, body.key)
    if isinstance(body, RateRequested):
        body = RateRequested(task_id=body.task_id, limit=state.name, key=body.key,
                             submitted_at_ms=body.submitted_at_ms, count=state.count,
                             period_ms=state.period_ms, burst=state.burst)
    return [emit_envelope(target, f"{event.event_id}.fwd", event.occurred_at_ms, event.attempt,
                          body)]


def _refuse(name: str, event: Envelope, effects: bool) -> list[Effect]:
    body = event.body
    if not isinstance(body, RateRequested):
        return [Rejected(f"{event.type_name} for unknown limit {name!r}")]
    reason = (f"no rate limit named {name!r} is set; set it (taskstream limits set {name} "
              "--rate N/s) and redrive the task")
    made: list[Effect] = [Rejected(reason)]
    if effects:
        made.append(emit_envelope(body.task_id, f"{event.event_id}.refuse", event.occurred_at_ms,
                                  event.attempt, RateRefused(limit=name, reason=reason)))
    return made


def timer_of(state: LimitState | None) -> tuple[int, TimerKind] | None:
    """The bucket's timer (docs/decisions.md, D5: derived from the state): when the head
    of its waiting list gets a token."""
    if state is None or state.due_at_ms is None:
        return None
    return state.due_at_ms, TimerKind.TOKEN_DUE
