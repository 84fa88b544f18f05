"""Dataclasses to the dicts fastavro writes, and back.

Hand-written rather than :func:`dataclasses.asdict` (which deep-copies through
reflection and costs several times the Avro encoding itself). Flat records use
one :func:`operator.attrgetter` per type and ``cls(**fields)``; records with
nested records, enums or maps get a few explicit lines. Maps are written with
sorted keys so one value always encodes to the same bytes.

Every dict has exactly the fields of the newest schema, in its order: the
tests check that each dataclass and its ``.avsc`` agree field for field.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import fields
from operator import attrgetter
from types import MappingProxyType
from typing import Any

from taskstream.schemas.catalog import NAMESPACE
from taskstream.schemas.events import (
    BODY_TYPES,
    Backoff,
    Envelope,
    EventBody,
    FlowControl,
    TaskDispatched,
    TaskSubmitted,
    TimerFired,
    TimerKind,
)
from taskstream.schemas.flowstate import (
    ConcurrencyState,
    EntityState,
    GateOut,
    LimitState,
    LimitWaiter,
    SlotHolder,
    SlotWaiter,
)
from taskstream.schemas.state import ErrorInfo, TaskState, TaskStatus

Record = dict[str, Any]


def _sorted_map(value: dict[str, str]) -> dict[str, str]:
    return dict(sorted(value.items())) if len(value) > 1 else value


def _flat_to(cls: type) -> Callable[[Any], Record]:
    names = tuple(f.name for f in fields(cls))
    getter = attrgetter(*names)
    if len(names) == 1:
        only = names[0]
        return lambda obj: {only: getter(obj)}
    return lambda obj: dict(zip(names, getter(obj), strict=True))


_backoff_to = _flat_to(Backoff)
_error_to = _flat_to(ErrorInfo)
_flow_to = _flat_to(FlowControl)
_submitted_flat = _flat_to(TaskSubmitted)
_dispatched_flat = _flat_to(TaskDispatched)
_state_flat = _flat_to(TaskState)


def _submitted_to(body: TaskSubmitted) -> Record:
    record = _submitted_flat(body)
    record["backoff"] = _backoff_to(body.backoff)
    record["headers"] = _sorted_map(body.headers)
    if body.flow is not None:
        record["flow"] = _flow_to(body.flow)
    return record


def _flow_from(record: Record | None) -> FlowControl | None:
    return None if record is None else FlowControl(**record)


def _submitted_from(record: Record) -> TaskSubmitted:
    record["backoff"] = Backoff(**record["backoff"])
    record["flow"] = _flow_from(record["flow"])
    return TaskSubmitted(**record)


def _dispatched_to(body: TaskDispatched) -> Record:
    record = _dispatched_flat(body)
    record["headers"] = _sorted_map(body.headers)
    return record


def _timer_from(record: Record) -> TimerFired:
    record["kind"] = TimerKind(record["kind"])
    return TimerFired(**record)


def _body_codecs() -> tuple[
    Mapping[type, tuple[str, Callable[[Any], Record]]], Mapping[str, Callable[[Record], EventBody]]
]:
    special_to: dict[type, Callable[[Any], Record]] = {
        TaskSubmitted: _submitted_to,
        TaskDispatched: _dispatched_to,
    }
    special_from: dict[type, Callable[[Record], EventBody]] = {
        TaskSubmitted: _submitted_from,
        TimerFired: _timer_from,
    }
    to: dict[type, tuple[str, Callable[[Any], Record]]] = {}
    back: dict[str, Callable[[Record], EventBody]] = {}
    for cls in BODY_TYPES:
        avro_name = f"{NAMESPACE}.{cls.__name__}"
        to[cls] = (avro_name, special_to.get(cls) or _flat_to(cls))
        back[avro_name] = special_from.get(cls) or _make(cls)
    return MappingProxyType(to), MappingProxyType(back)


def _make(cls: type) -> Callable[[Record], EventBody]:
    def build(record: Record) -> EventBody:
        body: EventBody = cls(**record)
        return body

    return build


_BODY_TO, _BODY_FROM = _body_codecs()


def envelope_to_record(env: Envelope) -> Record:
    """The fastavro datum of an envelope (body in tuple notation: branch name, dict)."""
    body = env.body
    avro_name, to = _BODY_TO[type(body)]
    return {
        "event_id": env.event_id,
        "task_id": env.task_id,
        "occurred_at_ms": env.occurred_at_ms,
        "source": env.source,
        "attempt": env.attempt,
        "body": (avro_name, to(body)),
    }


def envelope_from_record(record: Record) -> Envelope:
    """Inverse of :func:`envelope_to_record`; ``record`` is consumed (mutated)."""
    avro_name, body = record["body"]
    return Envelope(
        record["event_id"],
        record["task_id"],
        record["occurred_at_ms"],
        record["source"],
        record["attempt"],
        _BODY_FROM[avro_name](body),
    )


def state_to_record(state: TaskState) -> Record:
    record = _state_flat(state)
    record["backoff"] = _backoff_to(state.backoff)
    record["headers"] = _sorted_map(state.headers)
    if state.last_error is not None:
        record["last_error"] = _error_to(state.last_error)
    if state.flow is not None:
        record["flow"] = _flow_to(state.flow)
    return record


def state_from_record(record: Record) -> TaskState:
    """Inverse of :func:`state_to_record`; ``record`` is consumed (mutated)."""
    record["status"] = TaskStatus(record["status"])
    record["backoff"] = Backoff(**record["backoff"])
    error = record["last_error"]
    if error is not None:
        record["last_error"] = ErrorInfo(**error)
    record["flow"] = _flow_from(record["flow"])
    return TaskState(**record)


# --- the other entity kinds' states (schema v2, issue 16) ---------------------------

_waiter_to = _flat_to(LimitWaiter)
_out_to = _flat_to(GateOut)
_holder_to = _flat_to(SlotHolder)
_slot_waiter_to = _flat_to(SlotWaiter)
_limit_flat = _flat_to(LimitState)
_concurrency_flat = _flat_to(ConcurrencyState)


def entity_to_record(state: EntityState) -> Record:
    """The fastavro datum of a rate-limit or concurrency-key state."""
    if isinstance(state, LimitState):
        record = _limit_flat(state)
        record["waiting"] = [_waiter_to(w) for w in state.waiting]
    else:
        record = _concurrency_flat(state)
        record["holders"] = [_holder_to(h) for h in state.holders]
        record["waiting"] = [_slot_waiter_to(w) for w in state.waiting]
    record["last_out"] = [_out_to(o) for o in state.last_out]
    return record


def limit_from_record(record: Record) -> LimitState:
    """Inverse of :func:`entity_to_record` for a LimitState; ``record`` is consumed."""
    record["waiting"] = [LimitWaiter(**w) for w in record["waiting"]]
    record["last_out"] = [GateOut(**o) for o in record["last_out"]]
    return LimitState(**record)


def concurrency_from_record(record: Record) -> ConcurrencyState:
    """Inverse of :func:`entity_to_record` for a ConcurrencyState; ``record`` is consumed."""
    record["holders"] = [SlotHolder(**h) for h in record["holders"]]
    record["waiting"] = [SlotWaiter(**w) for w in record["waiting"]]
    record["last_out"] = [GateOut(**o) for o in record["last_out"]]
    return ConcurrencyState(**record)


#: Avro full name -> (dataclass, from_record) of every entity state but the task's
ENTITY_FROM_RECORD: Mapping[str, tuple[type, Callable[[Record], EntityState]]] = (
    MappingProxyType({
        f"{NAMESPACE}.LimitState": (LimitState, limit_from_record),
        f"{NAMESPACE}.ConcurrencyState": (ConcurrencyState, concurrency_from_record),
    })
)
