"""Correctness of the fold under skewed clocks and re-read records (issue 21).

* D44: event times are held to the record's broker timestamp +/- the tolerance, so a
  worker an hour behind does not lose its lease at once, one hours ahead does not
  hold a dead task for hours, and a producer an hour behind does not run a delayed
  task early. Replay reads the same timestamps and folds to the same states.
* D45: a record read again (a crash before the offset commit, a rewound fold group)
  changes nothing, however many events of its entity came after it: it is at or
  before the entity's position.
* Cancellations are tombstoned once settled.

Pure tests over the live batch fold (processors/live/batch.py) and replay's fold
(processors/replay/folding.py); tests/test_fold_correctness_kafka.py runs the same
on the real broker.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from taskstream.processors.fold import effects as fx
from taskstream.processors.fold.effects import PublishCancel
from taskstream.processors.fold.lifecycle import Limits
from taskstream.processors.fold.validate import Checks
from taskstream.processors.live.batch import fold_partition
from taskstream.schemas.entity_keys import limit_key
from taskstream.schemas.events import (
    CancelRequested,
    Envelope,
    LimitSet,
    RateRequested,
    TaskFailed,
    TaskStarted,
    TimerKind,
)
from taskstream.schemas.serde import decode_entity, encode_event
from taskstream.schemas.state import TaskStatus
from tests.lifecycle_support import T0, Story, submitted

S = TaskStatus
CHECKS = Checks()
HOUR = 3_600_000
TOLERANCE = 5_000
CLAMPED: Limits | None = Limits(clock_tolerance_ms=TOLERANCE)
TASK = "A" * 26


@dataclass
class Rec:
    """A consumed record as both folds see it (confluent_kafka.Message's calls)."""

    v: bytes
    o: int
    ts: int = -1  # the broker's timestamp (LogAppendTime)
    k: bytes | None = None
    p: int = 0

    def key(self) -> bytes | None:
        return self.k

    def value(self) -> bytes:
        return self.v

    def offset(self) -> int:
        return self.o

    def partition(self) -> int:
        return self.p

    def headers(self) -> None:
        return None

    def timestamp(self) -> tuple[int, int]:
        return (2, self.ts)  # TIMESTAMP_LOG_APPEND_TIME


def rec(env: Envelope, offset: int, ts: int = -1) -> Rec:
    return Rec(encode_event(env), offset, ts, env.task_id.encode())


class Partition:
    """One partition's stored states, folded batch by batch as the live engine does."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.stored: dict[bytes, bytes] = {}
        self.effects: list[object] = []

    def fold(self, records: list[Rec]) -> None:
        from taskstream.schemas.serde import encode_entity
        out = fold_partition(0, records, self.stored.get, self.limits, CHECKS)
        for key, change in out.changes.items():
            if change.after is None:
                self.stored.pop(key, None)
            else:
                self.stored[key] = encode_entity(change.after)
        self.effects = [c.effect for c in out.effects]

    def state(self, key: str) -> object:
        return decode_entity(self.stored[key.encode()])


def env(body: object, at: int, n: int, attempt: int = 0, task: str = TASK) -> Envelope:
    return Envelope(f"E{n:04d}", task, at, "worker:w1", attempt, body)  # type: ignore[arg-type]


# --- D44: event times held to the broker's clock ---------------------------------------


def _started_at(skew_ms: int) -> tuple[object, int]:
    """A task submitted at broker time T0 and started by a worker whose clock is off by
    ``skew_ms``, its TaskStarted appended at T0 + 1 s: the state and that append time."""
    assert CLAMPED is not None
    part = Partition(CLAMPED)
    first = env(submitted(lease_ms=30_000), T0, 1)
    part.fold([rec(first, 0, T0)])
    state = part.state(TASK)
    appended = T0 + 1_000
    start = env(TaskStarted(state.dispatch_id, "w1"), appended + skew_ms, 2, attempt=1)  # type: ignore[attr-defined]
    part.fold([rec(start, 1, appended)])
    return part.state(TASK), appended


def test_a_worker_an_hour_behind_gets_a_lease_from_the_broker_clock() -> None:
    state, appended = _started_at(-HOUR)
    assert state.status is S.RUNNING  # type: ignore[attr-defined]
    # the lease runs from at most the tolerance before the append, not an hour before
    assert state.due_at_ms >= appended - TOLERANCE + 30_000  # type: ignore[attr-defined]


def test_a_worker_hours_ahead_holds_its_lease_no_longer_than_the_tolerance_allows() -> None:
    state, appended = _started_at(3 * HOUR)
    assert state.due_at_ms <= appended + TOLERANCE + 30_000  # type: ignore[attr-defined]


def test_a_producer_an_hour_behind_still_waits_its_delay() -> None:
    assert CLAMPED is not None
    part = Partition(CLAMPED)
    producer_now = T0 - HOUR  # its clock; the broker's is T0
    first = env(submitted(eta_ms=producer_now + 60_000), producer_now, 1)
    part.fold([rec(first, 0, T0)])
    state = part.state(TASK)
    assert state.status is S.SCHEDULED  # type: ignore[attr-defined]
    assert state.due_at_ms >= T0 - TOLERANCE + 60_000  # type: ignore[attr-defined]


def test_within_the_tolerance_an_event_keeps_its_own_time() -> None:
    state, appended = _started_at(-2_000)
    assert state.started_at_ms == appended - 2_000  # type: ignore[attr-defined]


def test_replay_folds_the_skewed_log_to_the_live_states(tmp_path: Path) -> None:
    """Live (batch by batch) and replay read the same record timestamps: same states."""
    from taskstream.processors.replay.folding import (
        FoldStats,
        StateCache,
        StateDB,
        fold_messages,
        open_db,
    )
    assert CLAMPED is not None
    story = Story(task_id=TASK)
    story.submit(eta_ms=T0 + 5 * HOUR)
    story.cancel()
    events = list(story.log)
    other = "B" * 26
    events.insert(0, env(submitted(), T0 - 2 * HOUR, 90, task=other))
    events.append(env(TaskStarted("x", "w1"), T0 + 4 * HOUR, 91, attempt=1, task=other))
    records = [rec(e, i, T0 + 1000 * i) for i, e in enumerate(events)]
    part = Partition(CLAMPED)
    part.fold(records[:2])
    part.fold(records[2:])
    db = open_db(tmp_path / "db", create=True)
    try:
        cache = StateCache(db, capacity=2)
        fold_messages([records], cache, CLAMPED, FoldStats())
        cache.flush()
        replayed = dict(StateDB(db))
    finally:
        db.close()
    assert replayed == {k.decode(): decode_entity(v) for k, v in part.stored.items()}


# --- D45: a record read again never applies twice ---------------------------------------

ACTIONS = ("renew", "fail", "fail_fatal", "cancel", "redrive", "submit", "start", "succeed")


def _history(actions: list[str]) -> list[Envelope]:
    story = Story(task_id=TASK)
    story.submit(max_attempts=2)
    for action in actions:
        match action:
            case "fail":
                story.fail()
            case "fail_fatal":
                story.fail(retryable=False)
            case "submit":
                story.submit()
            case _:
                getattr(story, action)()
        if story.s.status is S.RETRYING:
            story.fire(TimerKind.RETRY_DUE)
    return story.log


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from(ACTIONS), min_size=20, max_size=40), st.data())
def test_reading_records_again_from_any_offset_changes_nothing(actions: list[str],
                                                               data: st.DataObject) -> None:
    """However many events came after a record, reading it (and what follows) again
    leaves every state byte for byte as it was."""
    log = _history(actions)
    records = [rec(e, i) for i, e in enumerate(log)]
    part = Partition(Limits())
    part.fold(records)
    before = dict(part.stored)
    again = data.draw(st.integers(min_value=0, max_value=len(records) - 1))
    part.fold(records[again:])
    assert part.stored == before


def test_a_cancel_refused_while_dead_does_not_cancel_the_redriven_task_when_read_again() -> None:
    story = Story(task_id=TASK)
    story.submit(max_attempts=1)
    story.start()
    story.fail()
    assert story.s.status is S.DEAD
    story.cancel()  # refused: DEAD is not cancellable
    story.redrive()
    story.start()
    for _ in range(20):
        story.renew()
    records = [rec(e, i) for i, e in enumerate(story.log)]
    part = Partition(Limits())
    part.fold(records)
    assert part.state(TASK).status is S.RUNNING  # type: ignore[attr-defined]
    part.fold(records)  # all of it read again: a rewound fold group
    assert part.state(TASK).status is S.RUNNING  # type: ignore[attr-defined]


def test_an_old_rate_request_read_again_is_not_granted_again() -> None:
    """The known case: a limit's request, granted, re-read after more than 16 events of
    the limit, was granted again under the same derived id (a second token spent)."""
    key = limit_key("emails")
    log = [Envelope("L0", key, T0, "api", 0, LimitSet("emails", 100, 1_000, 100))]
    for n in range(20):
        log.append(Envelope(f"R{n:02d}", key, T0 + 10 * (n + 1), "processor", 1,
                            RateRequested(f"{n:026d}", "emails", None, T0)))
    records = [Rec(encode_event(e), i, -1, key.encode()) for i, e in enumerate(log)]
    part = Partition(Limits())
    part.fold(records)
    granted = part.state(key).granted  # type: ignore[attr-defined]
    assert granted == 20
    part.fold(records[1:])  # every request read again
    assert part.state(key).granted == granted  # type: ignore[attr-defined]
    assert not [e for e in part.effects if e.__class__.__name__ == "Emit"
                and e.envelope.event_id.startswith("R00.")]  # type: ignore[attr-defined]


# --- cancellations tombstoned once settled ----------------------------------------------


def test_a_task_cancelled_before_any_dispatch_is_tombstoned_at_once() -> None:
    story = Story(task_id=TASK)
    story.submit(eta_ms=T0 + HOUR)
    effects = story.cancel()
    kinds = [e.__class__ for e in effects if e.__class__ in (PublishCancel, fx.ForgetCancel)]
    assert kinds == [PublishCancel, fx.ForgetCancel]


def test_a_running_task_s_cancellation_is_tombstoned_when_its_worker_reports() -> None:
    story = Story(task_id=TASK)
    story.submit()
    story.start()
    effects = story.cancel()
    assert [e.__class__ for e in effects if isinstance(e, PublishCancel | fx.ForgetCancel)] == [
        PublishCancel]
    effects = story.send(TaskFailed(story.dispatch_id, "w1", "Cancelled", "stopped"))
    assert effects == [fx.ForgetCancel(story.task_id)]
    assert story.s.status is S.CANCELLED
    # a repeat of the last event redoes the tombstone, never the cancellation
    from taskstream.processors.fold.lifecycle import apply
    _, redo = apply(story.s, story.log[-1])
    assert redo == [fx.ForgetCancel(story.task_id)]


def test_a_cancel_of_a_retrying_task_is_settled_at_once() -> None:
    story = Story(task_id=TASK)
    story.submit()
    story.start()
    story.fail()
    assert story.s.status is S.RETRYING
    effects = story.send(CancelRequested("stop"))
    assert [e.__class__ for e in effects if isinstance(e, PublishCancel | fx.ForgetCancel)] == [
        PublishCancel, fx.ForgetCancel]


def test_skew_is_exported_as_metrics() -> None:
    """The engine adds a batch's clamps by writer kind and sets the largest skew seen."""
    from types import SimpleNamespace

    from taskstream.processors.live.engine import FoldEngine
    from taskstream.processors.live.metrics import ProcessorMetrics
    assert CLAMPED is not None
    first = env(submitted(), T0 - HOUR, 1)  # source "worker:w1", an hour behind
    out = fold_partition(0, [rec(first, 0, T0)], {}.get, CLAMPED, CHECKS)
    metrics = ProcessorMetrics()
    FoldEngine._count_clock(SimpleNamespace(metrics=metrics), [out])  # type: ignore[arg-type]
    sample = metrics.registry.get_sample_value
    assert sample("taskstream_event_times_clamped_total", {"writer": "worker"}) == 1
    assert sample("taskstream_event_clock_skew_seconds") == HOUR / 1000
