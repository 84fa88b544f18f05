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
    Dependent,
    Envelope,
    EventBody,
    FlowControl,
    MisfirePolicy,
    ObjectRef,
    ParentFailurePolicy,
    ParentOutcome,
    ParentUpdate,
    ScheduleCommand,
    ScheduleOp,
    ScheduleSet,
    ScheduleSpec,
    TaskDeadLettered,
    TaskDispatched,
    TaskSubmitted,
    TaskSucceeded,
    TimerFired,
    TimerKind,
)
from taskstream.schemas.flowstate import (
    ConcurrencyState,
    GateOut,
    LimitState,
    LimitWaiter,
    SlotHolder,
    SlotWaiter,
)
from taskstream.schemas.state import (
    EntityState,
    ErrorInfo,
    Firing,
    GroupState,
    GroupStatus,
    ScheduleState,
    ScheduleStatus,
    TaskState,
    TaskStatus,
)

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
_ref_to = _flat_to(ObjectRef)
_dead_flat = _flat_to(TaskDeadLettered)
_succeeded_flat = _flat_to(TaskSucceeded)


def _ref_out(ref: ObjectRef | None) -> Record | None:
    return None if ref is None else _ref_to(ref)


def _ref_in(record: Record | None) -> ObjectRef | None:
    return None if record is None else ObjectRef(**record)


_dependent_to = _flat_to(Dependent)


def _dependents_from(records: list[Record]) -> list[Dependent]:
    return [Dependent(**r) for r in records]


def _submitted_to(body: TaskSubmitted) -> Record:
    record = _submitted_flat(body)
    record["backoff"] = _backoff_to(body.backoff)
    record["headers"] = _sorted_map(body.headers)
    record["payload_ref"] = _ref_out(body.payload_ref)
    if body.dependents:
        record["dependents"] = [_dependent_to(d) for d in body.dependents]
    if body.flow is not None:
        record["flow"] = _flow_to(body.flow)
    return record


def _flow_from(record: Record | None) -> FlowControl | None:
    return None if record is None else FlowControl(**record)


def _submitted_from(record: Record) -> TaskSubmitted:
    record["backoff"] = Backoff(**record["backoff"])
    record["payload_ref"] = _ref_in(record["payload_ref"])
    record["on_parent_failure"] = ParentFailurePolicy(record["on_parent_failure"])
    record["dependents"] = _dependents_from(record["dependents"])
    record["flow"] = _flow_from(record["flow"])
    return TaskSubmitted(**record)


_spec_flat = _flat_to(ScheduleSpec)


def _spec_to(spec: ScheduleSpec) -> Record:
    record = _spec_flat(spec)
    record["task"] = _submitted_to(spec.task)
    return record


def _spec_from(record: Record) -> ScheduleSpec:
    record["task"] = _submitted_from(record["task"])
    record["misfire"] = MisfirePolicy(record["misfire"])
    return ScheduleSpec(**record)


def _parent_update_from(record: Record) -> ParentUpdate:
    record["outcome"] = ParentOutcome(record["outcome"])
    return ParentUpdate(**record)


def _command_from(record: Record) -> ScheduleCommand:
    record["op"] = ScheduleOp(record["op"])
    return ScheduleCommand(**record)


def _dispatched_to(body: TaskDispatched) -> Record:
    record = _dispatched_flat(body)
    record["headers"] = _sorted_map(body.headers)
    record["payload_ref"] = _ref_out(body.payload_ref)
    return record


def _dispatched_from(record: Record) -> TaskDispatched:
    record["payload_ref"] = _ref_in(record["payload_ref"])
    return TaskDispatched(**record)


def _dead_to(body: TaskDeadLettered) -> Record:
    record = _dead_flat(body)
    record["payload_ref"] = _ref_out(body.payload_ref)
    return record


def _dead_from(record: Record) -> TaskDeadLettered:
    record["payload_ref"] = _ref_in(record["payload_ref"])
    return TaskDeadLettered(**record)


def _succeeded_to(body: TaskSucceeded) -> Record:
    record = _succeeded_flat(body)
    record["result_ref"] = _ref_out(body.result_ref)
    return record


def _succeeded_from(record: Record) -> TaskSucceeded:
    record["result_ref"] = _ref_in(record["result_ref"])
    return TaskSucceeded(**record)


def _timer_from(record: Record) -> TimerFired:
    record["kind"] = TimerKind(record["kind"])
    return TimerFired(**record)


def _body_codecs() -> tuple[
    Mapping[type, tuple[str, Callable[[Any], Record]]], Mapping[str, Callable[[Record], EventBody]]
]:
    special_to: dict[type, Callable[[Any], Record]] = {
        TaskSubmitted: _submitted_to,
        TaskDispatched: _dispatched_to,
        TaskDeadLettered: _dead_to,
        TaskSucceeded: _succeeded_to,
        ScheduleSet: lambda body: {"spec": _spec_to(body.spec)},
    }
    special_from: dict[type, Callable[[Record], EventBody]] = {
        TaskSubmitted: _submitted_from,
        TimerFired: _timer_from,
        TaskDispatched: _dispatched_from,
        TaskDeadLettered: _dead_from,
        TaskSucceeded: _succeeded_from,
        ParentUpdate: _parent_update_from,
        ScheduleSet: lambda record: ScheduleSet(_spec_from(record["spec"])),
        ScheduleCommand: _command_from,
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
    if state.payload_ref is not None:
        record["payload_ref"] = _ref_to(state.payload_ref)
    if state.result_ref is not None:
        record["result_ref"] = _ref_to(state.result_ref)
    if state.dependents:
        record["dependents"] = [_dependent_to(d) for d in state.dependents]
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
    record["payload_ref"] = _ref_in(record["payload_ref"])
    record["result_ref"] = _ref_in(record["result_ref"])
    record["on_parent_failure"] = ParentFailurePolicy(record["on_parent_failure"])
    record["dependents"] = _dependents_from(record["dependents"])
    record["flow"] = _flow_from(record["flow"])
    return TaskState(**record)


# --- schedules' and groups' states (D37): rarer, so plain code --------------------------

_group_flat = _flat_to(GroupState)
_schedule_flat = _flat_to(ScheduleState)
_firing_to = _flat_to(Firing)


def group_to_record(state: GroupState) -> Record:
    record = _group_flat(state)
    record["dependents"] = [_dependent_to(d) for d in state.dependents]
    return record


def group_from_record(record: Record) -> GroupState:
    record["status"] = GroupStatus(record["status"])
    record["dependents"] = _dependents_from(record["dependents"])
    return GroupState(**record)


def schedule_to_record(state: ScheduleState) -> Record:
    record = _schedule_flat(state)
    record["spec"] = _spec_to(state.spec)
    record["last_firings"] = [_firing_to(f) for f in state.last_firings]
    return record


def schedule_from_record(record: Record) -> ScheduleState:
    record["status"] = ScheduleStatus(record["status"])
    record["spec"] = _spec_from(record["spec"])
    record["last_firings"] = [Firing(**f) for f in record["last_firings"]]
    return ScheduleState(**record)


# --- flow control's entity states (D32) -------------------------------------------------

_waiter_to = _flat_to(LimitWaiter)
_out_to = _flat_to(GateOut)
_holder_to = _flat_to(SlotHolder)
_slot_waiter_to = _flat_to(SlotWaiter)
_limit_flat = _flat_to(LimitState)
_concurrency_flat = _flat_to(ConcurrencyState)


def limit_to_record(state: LimitState) -> Record:
    """The fastavro datum of a rate-limit state."""
    record = _limit_flat(state)
    record["waiting"] = [_waiter_to(w) for w in state.waiting]
    record["last_out"] = [_out_to(o) for o in state.last_out]
    return record


def concurrency_to_record(state: ConcurrencyState) -> Record:
    """The fastavro datum of a concurrency-key state."""
    record = _concurrency_flat(state)
    record["holders"] = [_holder_to(h) for h in state.holders]
    record["waiting"] = [_slot_waiter_to(w) for w in state.waiting]
    record["last_out"] = [_out_to(o) for o in state.last_out]
    return record


def limit_from_record(record: Record) -> LimitState:
    """Inverse of :func:`limit_to_record`; ``record`` is consumed."""
    record["waiting"] = [LimitWaiter(**w) for w in record["waiting"]]
    record["last_out"] = [GateOut(**o) for o in record["last_out"]]
    return LimitState(**record)


def concurrency_from_record(record: Record) -> ConcurrencyState:
    """Inverse of :func:`concurrency_to_record`; ``record`` is consumed."""
    record["holders"] = [SlotHolder(**h) for h in record["holders"]]
    record["waiting"] = [SlotWaiter(**w) for w in record["waiting"]]
    record["last_out"] = [GateOut(**o) for o in record["last_out"]]
    return ConcurrencyState(**record)


#: Avro full name -> (dataclass, to_record, from_record) of every entity state but the
#: task's (whose codec is compiled, D12); ``from_record`` consumes its record
EntityCodec = tuple[type, Callable[[Any], Record], Callable[[Record], EntityState]]
ENTITY_CODECS: Mapping[str, EntityCodec] = (
    MappingProxyType({
        f"{NAMESPACE}.GroupState": (GroupState, group_to_record, group_from_record),
        f"{NAMESPACE}.ScheduleState": (ScheduleState, schedule_to_record, schedule_from_record),
        f"{NAMESPACE}.LimitState": (LimitState, limit_to_record, limit_from_record),
        f"{NAMESPACE}.ConcurrencyState": (ConcurrencyState, concurrency_to_record,
                                          concurrency_from_record),
    })
)
