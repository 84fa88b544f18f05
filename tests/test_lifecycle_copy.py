"""The fold's fast constructors and copy (processors/fold/copy.py) give exactly
what the dataclasses give, and the one-build ``submit_new`` gives exactly the state
and effects of building SCHEDULED and then dispatching."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from taskstream.processors.fold.copy import (
    copy_done,
    copy_lease,
    copy_recorded,
    copy_state,
    fast_init,
    fast_replace,
    fast_replace_only,
    new_cancelled,
    new_dead_lettered,
    new_dispatched,
    new_envelope,
    new_state,
)
from taskstream.processors.fold.effects import Effect, SetTimer
from taskstream.processors.fold.steps import dispatch_next, submit_new, submitted_digest
from taskstream.schemas.codec.compiled import same
from taskstream.schemas.events import (
    Envelope,
    TaskCancelled,
    TaskDeadLettered,
    TaskDispatched,
    TaskSubmitted,
    TimerKind,
)
from taskstream.schemas.state import TaskState, TaskStatus
from tests.test_schemas_serde import ENVELOPES, _builds, full_state

FAST = [
    (TaskState, new_state),
    (Envelope, new_envelope),
    (TaskDispatched, new_dispatched),
    (TaskDeadLettered, new_dead_lettered),
    (TaskCancelled, new_cancelled),
]


def _values(obj: Any) -> list[Any]:
    return [getattr(obj, f.name) for f in dataclasses.fields(obj)]


@pytest.mark.parametrize(("cls", "fast"), FAST, ids=[c.__name__ for c, _ in FAST])
@given(data=st.data())
def test_fast_constructors_build_what_the_dataclass_builds(cls: Any, fast: Any,
                                                            data: st.DataObject) -> None:
    model = data.draw(ENVELOPES if cls is Envelope else _builds(cls))
    values = _values(model)
    by_position = fast(*values)
    by_name = fast(**{f.name: v for f, v in zip(dataclasses.fields(cls), values, strict=True)})
    assert type(by_position) is cls and same(by_position, model) and same(by_name, model)
    assert all(a is b for a, b in zip(_values(by_position), values, strict=True))


@pytest.mark.parametrize(("cls", "fast"), FAST, ids=[c.__name__ for c, _ in FAST])
def test_defaults_and_fresh_default_containers(cls: Any, fast: Any) -> None:
    required = {f.name: object() for f in dataclasses.fields(cls)
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
    one, two = fast(**required), fast(**required)
    assert one == cls(**required)
    for f in dataclasses.fields(cls):
        if f.default_factory is not dataclasses.MISSING:  # a new container per object
            assert getattr(one, f.name) is not getattr(two, f.name)
    with pytest.raises(TypeError):
        fast(**required, nope=1)


def test_copy_state_is_dataclasses_replace() -> None:
    state = full_state()
    before = dataclasses.replace(state)
    for f in dataclasses.fields(TaskState):
        value = object()  # a value no field holds: proves this field was set, and only it
        fast = copy_state(state, **{f.name: value})
        assert fast == dataclasses.replace(state, **{f.name: value})
        assert getattr(fast, f.name) is value
    assert copy_state(state) == state and copy_state(state) is not state
    assert copy_state(state, status=TaskStatus.DEAD, attempt=9) == dataclasses.replace(
        state, status=TaskStatus.DEAD, attempt=9)
    assert state == before  # the original is never touched
    with pytest.raises(TypeError):
        copy_state(state, nope=1)


@pytest.mark.parametrize("copy", [copy_lease, copy_done, copy_recorded])
def test_specialised_copies_are_dataclasses_replace(copy: Any) -> None:
    state = full_state()
    changed = copy.__code__.co_varnames[1:copy.__code__.co_kwonlyargcount + 1]
    assert changed  # every specialised copy changes some fields, all of them required
    values = {name: object() for name in changed}  # values no field holds
    fast = copy(state, **values)
    assert fast == dataclasses.replace(state, **values) and fast is not state
    for name, value in values.items():
        assert getattr(fast, name) is value
    with pytest.raises(TypeError):
        copy(state, **dict(list(values.items())[1:]))  # one missing
    with pytest.raises(TypeError):
        copy(state, **values, nope=1)
    with pytest.raises(TypeError):
        fast_replace_only(TaskState, ("status", "nope"))


def test_classes_the_fast_path_cannot_build_are_refused() -> None:
    @dataclasses.dataclass(frozen=True)
    class NoSlots:
        a: int

    @dataclasses.dataclass(frozen=True, slots=True)
    class Checked:
        a: int

        def __post_init__(self) -> None:
            pass

    for cls in (NoSlots, Checked):
        with pytest.raises(TypeError):
            fast_init(cls)
        with pytest.raises(TypeError):
            fast_replace(cls)


def _submit_in_two_builds(event: Envelope, body: TaskSubmitted) -> tuple[TaskState, list[Effect]]:
    """``submit_new`` as it was: build SCHEDULED with the dataclass, then dispatch."""
    at = event.occurred_at_ms
    state = TaskState(
        task_id=event.task_id, name=body.name, queue=body.queue, priority=body.priority,
        status=TaskStatus.SCHEDULED, payload=body.payload, content_type=body.content_type,
        payload_digest=submitted_digest(body), max_attempts=body.max_attempts,
        backoff=body.backoff, timeout_ms=body.timeout_ms, lease_ms=body.lease_ms,
        submitted_at_ms=at, updated_at_ms=at, idempotency_key=body.idempotency_key,
        headers=dict(body.headers), tags=list(body.tags), depends_on=list(body.depends_on),
        on_parent_failure=body.on_parent_failure, dependents=list(body.dependents),
        expires_at_ms=body.expires_at_ms, flow=body.flow,
        payload_ref=body.payload_ref)
    if body.eta_ms is not None and body.eta_ms > at:
        return (dataclasses.replace(state, due_at_ms=body.eta_ms),
                [SetTimer(body.eta_ms, TimerKind.DELAY_DUE)])
    return dispatch_next(state, event)


@given(body=_builds(TaskSubmitted), at=st.integers(0, 2**40),
       eta=st.sampled_from([None, -1, 0, 1]), event_id=st.text(max_size=8))
def test_submit_new_equals_building_scheduled_then_dispatching(
    body: TaskSubmitted, at: int, eta: int | None, event_id: str
) -> None:
    # without parents (a task with parents is WAITING: dependencies.waiting completes it)
    body = dataclasses.replace(body, eta_ms=None if eta is None else at + eta,
                               dependency_timeout_ms=None)
    event = Envelope(event_id, "01HZX00000000000000000TASK", at, "test", 0, body)
    state, effects = submit_new(event, body)
    expected_state, expected_effects = _submit_in_two_builds(event, body)
    assert same(state, expected_state)
    assert effects == expected_effects and repr(effects) == repr(expected_effects)
    assert state.headers is not body.headers and state.tags is not body.tags
