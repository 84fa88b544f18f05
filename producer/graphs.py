"""Task graphs in one batch: chains and groups with a callback (D37). Pure: no Kafka.

Each helper turns its steps into the records of the whole graph, which the producer
sends in one ``submit_many`` batch:

* :func:`chain_records`: A, then B, then C. Each step after the first depends on
  the one before (``depends_on=[previous]``) and reads its result as
  ``ctx.parent_results[previous]``. Step IDs are made here (ULIDs, or derived from
  a step's idempotency key), so each step can name the one before it.
* :func:`group_records`: N members and a callback that runs once they have all
  succeeded (a chord): a ``GroupCreated`` for ``group:<id>``, the members (each
  with its slot; IDs derived from the group ID and the slot) and the callback
  (``depends_on=["group:<id>"]``). The callback's ``ctx.parent_results`` has every
  member's result, by member task ID.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from taskstream.producer.build import EventBuilder, invalid
from taskstream.producer.errors import InvalidTaskError
from taskstream.schemas.entity_keys import group_key
from taskstream.schemas.ids import derived_task_id, new_ulids
from taskstream.schemas.models import GroupSlot, TaskSpec

Step = TaskSpec | Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class GraphRecords:
    """The records of one graph, in sending order: keys, encoded events, event types."""

    keys: list[str]
    values: list[bytes]
    event_types: list[str]


def _fields(step: Step, index: int) -> dict[str, Any]:
    if isinstance(step, TaskSpec):
        return step.model_dump(exclude_unset=True)
    if not isinstance(step, Mapping):
        raise InvalidTaskError(f"step #{index}: expected a TaskSpec or a mapping, got "
                               f"{type(step).__name__}", [f"[{index}]"])
    return dict(step)


def _spec(builder: EventBuilder, fields: Mapping[str, Any], what: str) -> TaskSpec:
    try:
        return TaskSpec.model_validate(fields, context={"limits": builder.limits})
    except ValidationError as exc:
        raise invalid(exc, what) from None


def chain_records(builder: EventBuilder, steps: Sequence[Step], at_ms: int) -> GraphRecords:
    """The records of a chain; InvalidTaskError for the first bad step, before any is sent."""
    if not steps:
        raise InvalidTaskError("a chain needs at least one step", ["steps"])
    ids = new_ulids(len(steps), at_ms)
    keys: list[str] = []
    values: list[bytes] = []
    previous: str | None = None
    for i, step in enumerate(steps):
        fields = _fields(step, i)
        if previous is not None:
            fields["depends_on"] = [*fields.get("depends_on", []), previous]
        spec = _spec(builder, fields, f"chain step #{i} ({fields.get('name')!r})")
        key = spec.idempotency_key
        task_id = derived_task_id(spec.name, key) if key is not None else ids[i]
        task_id, value = builder.submitted(spec, at_ms, task_id=task_id)
        keys.append(task_id)
        values.append(value)
        previous = task_id
    return GraphRecords(keys, values, ["TaskSubmitted"] * len(keys))


def group_records(builder: EventBuilder, members: Sequence[Step], callback: Step | None,
                  group_id: str, at_ms: int) -> GraphRecords:
    """The records of a group (and its callback): GroupCreated first, then the members,
    then the callback."""
    if not members:
        raise InvalidTaskError("a group needs at least one member", ["members"])
    gkey, created = builder.group_created(group_id, len(members), at_ms)
    keys, values, types = [gkey], [created], ["GroupCreated"]
    for i, member in enumerate(members):
        fields = _fields(member, i)
        fields["member_of"] = GroupSlot(group_id=group_id, slot=i)
        spec = _spec(builder, fields, f"group member #{i} ({fields.get('name')!r})")
        task_id, value = builder.submitted(spec, at_ms)
        keys.append(task_id)
        values.append(value)
        types.append("TaskSubmitted")
    if callback is not None:
        fields = _fields(callback, len(members))
        fields["depends_on"] = [*fields.get("depends_on", []), group_key(group_id)]
        spec = _spec(builder, fields, f"group callback ({fields.get('name')!r})")
        task_id, value = builder.submitted(spec, at_ms)
        keys.append(task_id)
        values.append(value)
        types.append("TaskSubmitted")
    return GraphRecords(keys, values, types)
