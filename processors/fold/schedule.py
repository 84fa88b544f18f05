"""The schedule entity: a pure fold of ``schedule:<id>`` events (docs/decisions.md, D37).

A schedule lives on the events topic under the key ``schedule:<id>``, so one
partition (one processor) owns it, and replay rebuilds it like a task. Its events:

* ``ScheduleSet`` (create, or replace the spec), ``ScheduleCommand`` (pause,
  resume, delete), from clients;
* ``TimerFired(SCHEDULE_DUE)``, from the owner's timer scan, when ``due_at_ms``
  (the next fire time plus its jitter) has come.

A firing emits a ``TaskSubmitted`` whose task ID is derived from (schedule ID,
fire time): a firing that happens twice (a replica that fired and crashed before
its commit, and the one that takes over and fires again) submits the same task
ID twice, and the task's own fold counts the second as a duplicate. The fire
time is the schedule's time (``next_fire_ms``), never a replica's clock; the
clock only decides *when* the timer is proposed, and ``apply`` re-checks it.

Misfires: when the timer fires, every fire time up to the event's time is due.
``RUN_ONCE`` fires the latest of them, ``SKIP`` the latest only if it is within
``misfire_grace_ms``, ``CATCH_UP`` each of them but at most ``catch_up_max``
(the latest ones). Pausing keeps the pending fire time; resuming re-arms it, so
the times that passed while paused meet the same policy.

Jitter: a fire time ``T`` is due at ``T + j`` with ``j`` in ``[0, jitter_ms)`` a
hash of (schedule ID, ``T``): a replay computes the same due times (D7).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import replace

from taskstream.processors.fold.backoff import stable_fraction
from taskstream.processors.fold.effects import Effect, Emit, emit_envelope
from taskstream.processors.fold.entity import Step, apply_entity
from taskstream.processors.fold.errors import LifecycleError
from taskstream.processors.fold.rules import Limits, body_types
from taskstream.schemas.cron import Cron, check_spec, next_cron_ms, zone
from taskstream.schemas.entity_keys import SCHEDULE_PREFIX as PREFIX
from taskstream.schemas.entity_keys import schedule_key
from taskstream.schemas.errors import CronError
from taskstream.schemas.events import (
    Envelope,
    MisfirePolicy,
    ScheduleCommand,
    ScheduleOp,
    ScheduleSet,
    ScheduleSpec,
    TimerFired,
    TimerKind,
)
from taskstream.schemas.ids import firing_task_id
from taskstream.schemas.state import Firing, ScheduleState, ScheduleStatus

S = ScheduleStatus
#: firings a schedule's state remembers (GET /schedules/{id} shows them)
FIRINGS_KEPT = 10
#: headers every firing's task carries
SCHEDULE_HEADER = "taskstream-schedule"
FIRE_TIME_HEADER = "taskstream-fire-time"
#: how many missed cron fire times are walked through before looking closer to now
MISSED_SCAN = 10_000
_LOOKBACKS_MS = (86_400_000, 3_600_000, 60_000)

_ANY = frozenset({S.ACTIVE, S.PAUSED, S.ENDED, S.DELETED})
#: (from status, event key) -> the statuses the event may lead to
TRANSITIONS: dict[tuple[ScheduleStatus | None, str], frozenset[ScheduleStatus]] = {
    (None, "ScheduleSet"): frozenset({S.ACTIVE, S.ENDED}),
    (S.ACTIVE, "ScheduleSet"): frozenset({S.ACTIVE, S.ENDED}),
    (S.PAUSED, "ScheduleSet"): frozenset({S.PAUSED}),
    (S.ENDED, "ScheduleSet"): frozenset({S.ACTIVE, S.ENDED}),
    (S.DELETED, "ScheduleSet"): frozenset({S.ACTIVE, S.ENDED}),
    (S.ACTIVE, "ScheduleCommand.PAUSE"): frozenset({S.PAUSED}),
    (S.PAUSED, "ScheduleCommand.RESUME"): frozenset({S.ACTIVE, S.ENDED}),
    **{(s, "ScheduleCommand.DELETE"): frozenset({S.DELETED})
       for s in (S.ACTIVE, S.PAUSED, S.ENDED)},
    (S.ACTIVE, "TimerFired.SCHEDULE_DUE"): frozenset({S.ACTIVE, S.ENDED}),
}
assert all(to <= _ANY for to in TRANSITIONS.values())
#: the body types a schedule takes (the record check refuses any other under its key)
EVENT_TYPES: frozenset[type] = body_types(key for _, key in TRANSITIONS)

_DEFAULT_LIMITS = Limits()


def jitter_of(schedule_id: str, fire_at_ms: int, jitter_ms: int) -> int:
    """The delay in ``[0, jitter_ms)`` of one fire time, a hash (same on replay)."""
    if jitter_ms <= 0:
        return 0
    return math.floor(stable_fraction(schedule_key(schedule_id), fire_at_ms) * jitter_ms)


def next_fire_ms(spec: ScheduleSpec, after_ms: int) -> int | None:
    """The schedule's first fire time strictly after ``after_ms`` (None: no more).

    Intervals count from ``start_at_ms`` when given, else from the Unix epoch (so
    ``every=60`` fires on the minute). Fire times are never before ``start_at_ms``
    nor after ``end_at_ms``.
    """
    start = spec.start_at_ms
    if start is not None and after_ms < start:
        after_ms = start - 1
    if spec.every_ms is not None:
        anchor = start if start is not None else 0
        at = anchor + ((after_ms - anchor) // spec.every_ms + 1) * spec.every_ms
    elif spec.cron is not None:
        found = next_cron_ms(Cron.parse(spec.cron), zone(spec.timezone), after_ms)
        if found is None:
            return None
        at = found
    else:
        return None
    if spec.end_at_ms is not None and at > spec.end_at_ms:
        return None
    return at


def upcoming(state: ScheduleState, n: int) -> list[int]:
    """The next ``n`` fire times of an active or paused schedule (for the API)."""
    out: list[int] = []
    at = state.next_fire_ms
    while at is not None and len(out) < n and state.status in (S.ACTIVE, S.PAUSED):
        out.append(at)
        at = next_fire_ms(state.spec, at)
    return out


def timer_of(state: ScheduleState | None) -> tuple[int, str, TimerKind] | None:
    """The schedule's timer, derived from its state (D5): (due at, entity key, kind)."""
    if state is None or state.status is not S.ACTIVE or state.due_at_ms is None:
        return None
    return state.due_at_ms, schedule_key(state.schedule_id), TimerKind.SCHEDULE_DUE


def event_key(event: Envelope) -> str:
    body = event.body
    if isinstance(body, TimerFired):
        return f"TimerFired.{TimerKind(body.kind).value}"
    if isinstance(body, ScheduleCommand):
        return f"ScheduleCommand.{ScheduleOp(body.op).value}"
    return type(body).__name__


def schedule_id_of(key: str) -> str:
    if not key.startswith(PREFIX) or len(key) == len(PREFIX):
        raise LifecycleError(f"{key!r} is not a schedule key (schedule:<id>)")
    return key[len(PREFIX):]


# --- apply -------------------------------------------------------------------------------


def apply(
    state: ScheduleState | None, event: Envelope, limits: Limits = _DEFAULT_LIMITS,
    *, effects: bool = True,
) -> tuple[ScheduleState | None, list[Effect]]:
    """Fold one event into one schedule's state (the module docstring has the rules)."""
    return apply_entity(
        state, event, limits, kind="schedule", key=event_key(event), table=TRANSITIONS,
        fresh=lambda: _new(event), step=lambda s, on: _step(s, event, on),
        redo=redo_effects, settled=lambda before, after: [], effects=effects)


def _new(event: Envelope) -> ScheduleState:
    """An unknown schedule, before its first ScheduleSet is applied."""
    body = event.body
    assert isinstance(body, ScheduleSet)  # the table creates schedules by ScheduleSet only
    return ScheduleState(schedule_id=schedule_id_of(event.task_id), status=S.ACTIVE,
                         spec=body.spec, revision=0, created_at_ms=event.occurred_at_ms,
                         updated_at_ms=event.occurred_at_ms)


def _step(state: ScheduleState, event: Envelope, effects: bool) -> Step:
    body = event.body
    match body:
        case ScheduleSet():
            return _set(state, event, body)
        case ScheduleCommand():
            return _command(state, event, body)
        case TimerFired():
            return _fire(state, event, body, effects)
        case _:  # the table has no other keys
            return f"{event.type_name} is not a schedule event"


def _armed(state: ScheduleState, next_fire: int | None, reason: str = "") -> ScheduleState:
    """``state`` with its next fire time and timer (ENDED when there is none)."""
    if next_fire is None:
        return replace(state, status=S.ENDED, next_fire_ms=None, due_at_ms=None,
                       reason=reason or "no fire time left (past end_at)")
    due = next_fire + jitter_of(state.schedule_id, next_fire, state.spec.jitter_ms)
    return replace(state, status=S.ACTIVE, next_fire_ms=next_fire, due_at_ms=due, reason="")


def _set(state: ScheduleState, event: Envelope, body: ScheduleSet) -> Step:
    try:
        check_spec(body.spec)
        first = next_fire_ms(body.spec, event.occurred_at_ms)
    except (CronError, ValueError) as exc:
        return f"invalid schedule spec: {exc}"
    if state.revision == 0:  # a new schedule (_new)
        return _armed(replace(state, revision=1), first), []
    updated = replace(state, spec=body.spec, revision=state.revision + 1)
    if state.status is S.PAUSED:  # stays paused; resuming arms the new plan
        return replace(updated, next_fire_ms=first, due_at_ms=None), []
    return _armed(updated, first), []


def _command(state: ScheduleState, event: Envelope, body: ScheduleCommand) -> Step:
    match ScheduleOp(body.op):
        case ScheduleOp.PAUSE:
            return replace(state, status=S.PAUSED, due_at_ms=None, reason=body.reason), []
        case ScheduleOp.RESUME:  # the pending fire time comes back: the misfire policy rules
            return _armed(state, state.next_fire_ms, "resumed with no fire time left"), []
        case ScheduleOp.DELETE:
            return replace(state, status=S.DELETED, next_fire_ms=None, due_at_ms=None,
                           reason=body.reason), []


def _due_times(spec: ScheduleSpec, first: int, now: int, keep: int) -> tuple[list[int], int]:
    """The latest ``keep`` fire times in ``[first, now]`` and how many there are in all
    (for a cron with more than :data:`MISSED_SCAN` of them, at least that many)."""
    if spec.every_ms is not None:
        count = (now - first) // spec.every_ms + 1
        latest = first + (count - 1) * spec.every_ms
        times = [latest - i * spec.every_ms for i in range(min(keep, count))]
        return sorted(t for t in times if spec.end_at_ms is None or t <= spec.end_at_ms), count
    found = list(_walk(spec, first - 1, now))
    count = len(found)
    for back in _LOOKBACKS_MS:  # the walk stopped short of now: walk again closer to it
        following = next_fire_ms(spec, found[-1]) if found else None
        if following is None or following > now:
            break
        found = list(_walk(spec, max(found[-1], now - back), now)) or found
        count += len(found)
    return found[-keep:], count


def _walk(spec: ScheduleSpec, after: int, now: int) -> Iterator[int]:
    at = next_fire_ms(spec, after)
    for _ in range(MISSED_SCAN):
        if at is None or at > now:
            return
        yield at
        at = next_fire_ms(spec, at)


def _fire(state: ScheduleState, event: Envelope, body: TimerFired, effects: bool) -> Step:
    now = event.occurred_at_ms
    if state.next_fire_ms is None or body.due_at_ms != state.due_at_ms:
        return (f"stale timer {body.kind}: due {body.due_at_ms}, the schedule's timer is due "
                f"{state.due_at_ms}")
    if now < body.due_at_ms:
        return f"early timer {body.kind}: fired at {now}, due {body.due_at_ms}"
    spec = state.spec
    keep = spec.catch_up_max if spec.misfire is MisfirePolicy.CATCH_UP else 1
    times, count = _due_times(spec, state.next_fire_ms, now, keep)
    if spec.misfire is MisfirePolicy.SKIP and times and now - times[-1] > spec.misfire_grace_ms:
        times = []
    firings = [Firing(t, firing_task_id(state.schedule_id, t), f"{event.event_id}.fire.{t}")
               for t in times]
    after = _armed(replace(
        state, fired=state.fired + len(firings), skipped=state.skipped + count - len(firings),
        last_firings=[*state.last_firings, *firings][-FIRINGS_KEPT:],
    ), next_fire_ms(spec, max(now, times[-1] if times else now)))
    if not effects:
        return after, []
    return after, [_submit(state, firing, now) for firing in firings]


def _submit(state: ScheduleState, firing: Firing, now: int) -> Emit:
    template = state.spec.task
    headers = {**template.headers, SCHEDULE_HEADER: state.schedule_id,
               FIRE_TIME_HEADER: str(firing.fire_at_ms)}
    return emit_envelope(firing.task_id, firing.event_id, now, 0,
                        replace(template, headers=headers))


def redo_effects(state: ScheduleState, cause_event_id: str) -> list[Effect]:
    """The firings the last applied event emitted, rebuilt exactly (D4): a crash between
    the state's write and the producer's flush loses none of them."""
    prefix = f"{cause_event_id}.fire."
    return [_submit(state, f, state.updated_at_ms) for f in state.last_firings
            if f.event_id.startswith(prefix)]
