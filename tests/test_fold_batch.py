"""The batched fold (processors/live/batch.py) against event-by-event ``apply``.

Folding a partition's records in one batch must give, for every task, the state
that applying its events one by one gives, the same effects in the same order,
and a change for every task an event reached (even a repeat that changed
nothing: it must reach the changelog). Records that cannot be applied (not
decodable, derived, or refused by the record checks: D26, D28) are set aside with
their reason and the rest go on.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from hypothesis import given
from hypothesis import strategies as st

from taskstream.processors.fold.effects import Dispatch
from taskstream.processors.fold.lifecycle import Limits, apply
from taskstream.processors.fold.validate import Checks
from taskstream.processors.live.batch import fold_partition
from taskstream.schemas.events import (
    Envelope,
    TaskDispatched,
    TaskStarted,
    TaskSucceeded,
)
from taskstream.schemas.serde import decode_state, encode_event, encode_state
from taskstream.schemas.state import TaskState, TaskStatus
from taskstream.security.keyring import keyring_json, new_secret, parse_keyring
from taskstream.security.signing import Signer
from tests.lifecycle_support import T0, submitted, unpositioned

LIMITS = Limits()
CHECKS = Checks()
#: task IDs as the fold wants them (26 Crockford characters), by a short name
A, B, C, D = (c * 26 for c in "ABCD")


@dataclass
class Rec:
    """A consumed record as the fold sees it (confluent_kafka.Message's three calls)."""

    k: bytes | None
    v: bytes | None
    o: int
    h: list[tuple[str, bytes]] | None = None

    def key(self) -> bytes | None:
        return self.k

    def value(self) -> bytes | None:
        return self.v

    def offset(self) -> int | None:
        return self.o

    def headers(self) -> list[tuple[str, bytes]] | None:
        return self.h


def env(task: str, n: int, body: object, attempt: int = 0) -> Envelope:
    return Envelope(event_id=f"{task}-E{n}", task_id=task, occurred_at_ms=T0 + n,
                    source="test", attempt=attempt, body=body)  # type: ignore[arg-type]


def life(task: str) -> list[Envelope]:
    """Submitted, started, succeeded: the events of one task's happy life."""
    first = env(task, 1, submitted())
    state, _ = apply(None, first, LIMITS)
    assert state is not None and state.dispatch_id is not None
    dispatch = state.dispatch_id
    return [first, env(task, 2, TaskStarted(dispatch, "w1"), 1),
            env(task, 3, TaskSucceeded(dispatch, "w1", b"3"), 1)]


def records(events: list[Envelope], start: int = 0) -> list[Rec]:
    return [Rec(e.task_id.encode(), encode_event(e), start + i) for i, e in enumerate(events)]


def one_by_one(events: list[Envelope], stored: dict[bytes, bytes]) -> dict[str, TaskState]:
    states = {k.decode(): decode_state(v) for k, v in stored.items()}
    for event in events:
        after, _ = apply(states.get(event.task_id), event, LIMITS)
        if after is not None:
            states[event.task_id] = after
    return states


@given(st.lists(st.sampled_from([A, B, C, D]), min_size=1, max_size=12),
       st.integers(min_value=0, max_value=11))
def test_a_batch_equals_event_by_event(order: list[str], cut: int) -> None:
    """Tasks' events interleaved in any order, split into two batches anywhere."""
    lives = {t: life(t) for t in set(order)}
    events: list[Envelope] = []
    taken = dict.fromkeys(lives, 0)
    for task in order:
        if taken[task] < 3:
            events.append(lives[task][taken[task]])
            taken[task] += 1
    stored: dict[bytes, bytes] = {}
    cut = min(cut, len(events))
    for part, offset in ((events[:cut], 0), (events[cut:], cut)):
        fold = fold_partition(0, records(part, offset), stored.get, LIMITS, CHECKS)
        for key, change in fold.changes.items():
            stored[key] = encode_state(change.after)
        if part:
            assert fold.next_offset == offset + len(part)
    expected = one_by_one(events, {})
    assert unpositioned({k.decode(): decode_state(v) for k, v in stored.items()}) == expected


def test_a_repeat_that_changes_nothing_is_still_written() -> None:
    """A re-read event whose result is already stored must reach the changelog again."""
    events = life(A)[:2]
    stored: dict[bytes, bytes] = {}
    first = fold_partition(0, records(events), stored.get, LIMITS, CHECKS)
    stored.update((k, encode_state(c.after)) for k, c in first.changes.items())
    again = fold_partition(0, records(events), stored.get, LIMITS, CHECKS)
    assert list(again.changes) == [A.encode()]
    assert again.changes[A.encode()].after == decode_state(stored[A.encode()])
    assert again.changes[A.encode()].after.status is TaskStatus.RUNNING


def test_redo_effects_come_from_the_last_applied_event_only() -> None:
    submit = life(A)[:1]
    stored: dict[bytes, bytes] = {}
    first = fold_partition(0, records(submit), stored.get, LIMITS, CHECKS)
    stored.update((k, encode_state(c.after)) for k, c in first.changes.items())
    again = fold_partition(0, records(submit), stored.get, LIMITS, CHECKS)
    dispatched = [c.effect for c in again.effects
                  if isinstance(getattr(c.effect, "envelope", None), Envelope)]
    assert len(dispatched) == 1
    body = dispatched[0].envelope.body  # type: ignore[union-attr]
    assert isinstance(body, TaskDispatched)
    assert body.dispatch_id == first.changes[A.encode()].after.dispatch_id


def test_a_copy_of_the_last_event_at_a_new_offset_dispatches_nothing() -> None:
    """A client that sends the same submission again after a timeout (the chaos harness's
    producer-dup fault ran every such task's handler twice): the copy is a new record at a
    later offset, not the re-read D4 redoes, so it sends no second dispatch (D45)."""
    submit = life(A)[:1]
    stored: dict[bytes, bytes] = {}
    first = fold_partition(0, records(submit), stored.get, LIMITS, CHECKS)
    assert [c for c in first.effects if isinstance(c.effect, Dispatch)]
    stored.update((k, encode_state(c.after)) for k, c in first.changes.items())
    copy = fold_partition(0, records(submit, 7), stored.get, LIMITS, CHECKS)
    assert [c.effect for c in copy.effects] == []
    assert unpositioned({A: copy.changes[A.encode()].after}) == unpositioned(
        {A: first.changes[A.encode()].after})


def test_bad_records_are_set_aside_and_the_rest_goes_on() -> None:
    events = life(A)
    dispatched = apply(None, events[0], LIMITS)[1][0].envelope  # type: ignore[union-attr]
    a = A.encode()
    batch = [Rec(a, encode_event(events[0]), 0), Rec(b"X", b"not avro", 1),
             Rec(a, encode_event(dispatched), 2), Rec(a, encode_event(events[1]), 3)]
    fold = fold_partition(0, batch, {}.get, LIMITS, CHECKS)
    assert [(a.offset, a.key) for a in fold.set_aside] == [(1, b"X"), (2, A.encode())]
    assert "not an events-topic record" in fold.set_aside[1].reason
    assert fold.changes[A.encode()].after.status is TaskStatus.RUNNING
    assert fold.next_offset == 4


def test_first_state_of_the_batch_is_the_before_of_its_change() -> None:
    events = life(A)
    stored: dict[bytes, bytes] = {}
    first = fold_partition(0, records(events[:1]), stored.get, LIMITS, CHECKS)
    stored.update((k, encode_state(c.after)) for k, c in first.changes.items())
    second = fold_partition(0, records(events[1:], 1), stored.get, LIMITS, CHECKS)
    change = second.changes[A.encode()]
    assert change.before is not None and change.before.status is TaskStatus.READY
    assert change.after.status is TaskStatus.SUCCEEDED
    assert second.applied == {"TaskStarted": 1, "TaskSucceeded": 1}


def test_records_the_checks_refuse_are_set_aside_with_their_reason() -> None:
    """check_record runs per record before apply: a record keyed by another task, or out
    of bounds, is set aside; the other records of the batch are applied."""
    events = life(A)
    bad_priority = env(B, 1, dataclasses.replace(submitted(), priority=99))
    batch = [Rec(C.encode(), encode_event(events[0]), 0),  # names A, keyed by C
             Rec(B.encode(), encode_event(bad_priority), 1),
             Rec(A.encode(), encode_event(events[0]), 2)]
    fold = fold_partition(0, batch, {}.get, LIMITS, CHECKS)
    assert [a.offset for a in fold.set_aside] == [0, 1]
    assert "record key" in fold.set_aside[0].reason
    assert "priority 99" in fold.set_aside[1].reason
    assert list(fold.changes) == [A.encode()]
    assert fold.changes[A.encode()].after.status is TaskStatus.READY


def test_with_a_keyring_worker_events_count_only_when_a_worker_signed_them() -> None:
    keys = {"w1": {"role": "worker", "key": new_secret()},
            "p1": {"role": "processor", "key": new_secret()}}
    checks = Checks(keyring=parse_keyring(keyring_json(keys, None), "signing", "test"))
    worker = Signer.from_keyring(parse_keyring(keyring_json(keys, "w1"), "signing", "test"))
    assert worker is not None
    submit, started, _ = life(A)
    value = encode_event(started)
    signed = [worker.header(A.encode(), value)]
    batch = [Rec(A.encode(), encode_event(submit), 0),
             Rec(A.encode(), value, 1),  # unsigned: anyone who may write the topic
             Rec(A.encode(), value, 2, signed)]
    fold = fold_partition(0, batch, {}.get, LIMITS, checks)
    assert [(a.offset, "not signed" in a.reason) for a in fold.set_aside] == [(1, True)]
    assert fold.changes[A.encode()].after.status is TaskStatus.RUNNING


# --- every entity kind (D37, D32) -----------------------------------------------------------


def test_every_kind_folds_in_a_batch_and_emits_to_its_target() -> None:
    """A limit, a schedule and a task with a rate limit in one partition's batch: each
    record reaches its kind's ``apply`` (by its key), each state is stored under its key
    and decodes back by fingerprint, and the task's request is an ``Emit`` keyed by the
    limit, with a derived event id."""
    from dataclasses import replace

    from taskstream.processors.fold.effects import Emit
    from taskstream.processors.fold.kinds import timer_of
    from taskstream.schemas.entity_keys import limit_key, schedule_key
    from taskstream.schemas.events import FlowControl, LimitSet, ScheduleSet, ScheduleSpec
    from taskstream.schemas.flowstate import LimitState
    from taskstream.schemas.serde import decode_entity, encode_entity
    from taskstream.schemas.state import ScheduleState

    task = "01HZX0000000000000000000AA"
    events = [
        env(limit_key("emails"), 1, LimitSet("emails", 5, 1000, 1)),
        env(schedule_key("nightly"), 2, ScheduleSet(ScheduleSpec(submitted(), every_ms=60_000))),
        env(task, 3, replace(submitted(), flow=FlowControl(rate_limit="emails"))),
    ]
    fold = fold_partition(0, records(events), {}.get, LIMITS, CHECKS)
    assert fold.set_aside == []
    kinds = {k.decode(): type(c.after) for k, c in fold.changes.items()}
    assert kinds == {limit_key("emails"): LimitState, schedule_key("nightly"): ScheduleState,
                     task: TaskState}
    for change in fold.changes.values():
        assert change.after is not None
        assert decode_entity(encode_entity(change.after)) == change.after
    schedule = fold.changes[schedule_key("nightly").encode()].after
    assert timer_of(schedule) is not None  # its next fire time goes in the due index
    emitted = [c.effect.envelope for c in fold.effects if isinstance(c.effect, Emit)]
    assert [(e.task_id, e.event_id) for e in emitted] == [(limit_key("emails"), f"{task}-E3.rate")]
    waiting = fold.changes[task.encode()].after
    assert isinstance(waiting, TaskState) and waiting.status is TaskStatus.WAITING


def test_a_refold_after_a_crash_sends_every_holders_grant_again() -> None:
    """A key grants A (its record at offset 0) and B (offset 1) in one batch; the replica
    dies after its state is stored and before the grants are acknowledged (fault point
    ``fold.after_state_write``). Read again, offset 0 is before the stored position and
    is skipped (D45), and offset 1's redo sent only its own grant: A never heard and
    waited for ever while it held a slot (chaos full run 5's limited task left WAITING)."""
    from taskstream.processors.fold.effects import Emit
    from taskstream.schemas.entity_keys import ckey_key
    from taskstream.schemas.events import SlotGranted, SlotRequested
    from taskstream.schemas.serde import encode_entity

    key = ckey_key("pool")
    asks = [env(key, n, SlotRequested(task, "pool", 2, T0 + n), attempt=1)
            for n, task in enumerate((A, B))]
    first = fold_partition(0, records(asks), {}.get, LIMITS, CHECKS)
    granted = {c.effect.envelope.task_id for c in first.effects
               if isinstance(c.effect, Emit) and isinstance(c.effect.envelope.body, SlotGranted)}
    assert granted == {A, B}
    stored = {k: encode_entity(c.after) for k, c in first.changes.items() if c.after}
    again = fold_partition(0, records(asks), stored.get, LIMITS, CHECKS)
    regranted = {c.effect.envelope.task_id: c.effect.envelope.body.sequence  # type: ignore[union-attr]
                 for c in again.effects if isinstance(c.effect, Emit)
                 and isinstance(c.effect.envelope.body, SlotGranted)}
    assert regranted == {A: 1, B: 2}
