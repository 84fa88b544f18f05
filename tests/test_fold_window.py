"""The changelog window (D50): batches gather their changelog records, one per entity,
its latest state, and the events offsets are committed only past batches whose
changelog records and effects are all acknowledged.

``FoldEngine.persist`` and ``close_window`` run here against in-memory stand-ins for
the table, the producer and the consumer (the real clients are exercised by
tests/test_durability.py, which kills a replica inside an open window).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any

import pytest
from confluent_kafka import KafkaException

from taskstream.processors.fold.lifecycle import Limits
from taskstream.processors.fold.validate import Checks
from taskstream.processors.live.batch import PartitionFold, fold_partition
from taskstream.processors.live.engine import FoldEngine, Topics
from taskstream.processors.live.metrics import ProcessorMetrics
from taskstream.schemas.serde import decode_state
from taskstream.schemas.state import TaskStatus
from tests.test_fold_batch import A, B, Rec, life, records

EVENTS, CHANGELOG = "events", "changelog"
#: where a default-priority dispatch to the default queue goes
READY = "ready.default.p1"


@dataclass
class Sent:
    """A record the fake producer was handed, as its delivery report gives it back."""

    _topic: str
    _key: bytes | None
    _value: bytes | None
    _partition: int
    _offset: int = -1

    def topic(self) -> str:
        return self._topic

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return self._offset

    def key(self) -> bytes | None:
        return self._key

    def value(self) -> bytes | None:
        return self._value

    def headers(self) -> None:
        return None


@dataclass
class FakeProducer:
    """Acknowledges every record at its flush; ``refuse`` makes ``produce`` raise for a
    topic (a record the client will not take)."""

    sent: list[Sent] = field(default_factory=list)
    waiting: list[tuple[Sent, Any]] = field(default_factory=list)
    refuse: set[str] = field(default_factory=set)
    offsets: dict[tuple[str, int], int] = field(default_factory=dict)

    def produce(self, topic: str, value: bytes | None, key: bytes | None, *, partition: int,
                on_delivery: Any, headers: Any) -> None:
        if topic in self.refuse:
            raise KafkaException(f"{topic} refused")
        part = max(partition, 0)
        offset = self.offsets.get((topic, part), 0)
        self.offsets[(topic, part)] = offset + 1
        self.waiting.append((Sent(topic, key, value, part, offset), on_delivery))

    def poll(self, timeout: float) -> int:
        return 0

    def flush(self, timeout: float) -> int:
        waiting, self.waiting = self.waiting, []
        for record, report in waiting:
            self.sent.append(record)
            if report is not None:
                report(None, record)
        return 0

    def on(self, topic: str) -> list[Sent]:
        return [r for r in self.sent if r.topic() == topic]


@dataclass
class FakeConsumer:
    commits: list[dict[int, int]] = field(default_factory=list)

    def commit(self, *, offsets: list[Any], asynchronous: bool) -> None:
        self.commits.append({tp.partition: tp.offset for tp in offsets})


class FakeWriter:
    def __init__(self, db: dict[bytes, bytes]) -> None:
        self.db, self.pending = db, dict(db)

    def put(self, key: bytes, encoded: bytes, *_: Any) -> None:
        self.pending[key] = encoded

    def delete(self, key: bytes, _: Any) -> None:
        self.pending.pop(key, None)

    def commit(self) -> None:
        self.db.clear()
        self.db.update(self.pending)


@dataclass
class FakeTables:
    dbs: dict[int, dict[bytes, bytes]] = field(default_factory=dict)

    def writer(self, partition: int) -> FakeWriter:
        return FakeWriter(self.dbs.setdefault(partition, {}))

    def partition_db(self, partition: int) -> dict[bytes, bytes]:
        return self.dbs.setdefault(partition, {})


@dataclass
class Rig:
    window_s: float
    producer: FakeProducer = field(default_factory=FakeProducer)
    consumer: FakeConsumer = field(default_factory=FakeConsumer)
    tables: FakeTables = field(default_factory=FakeTables)
    persisted: dict[int, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        async def no_registry() -> set[str]:
            return set()

        async def no_route(route: str) -> None:
            return None

        self.engine = FoldEngine(
            self.tables, ProcessorMetrics(), Limits(),  # type: ignore[arg-type]
            Topics(EVENTS, CHANGELOG, "dlq", "cancellations", "quarantine",
                   ready=lambda queue, level, tags: f"ready.{queue}.p{level}",
                   route=lambda queue, tags: queue),
            checks=Checks(), consumer_config={}, producer=self.producer,  # type: ignore[arg-type]
            set_persisted_offset=self.persisted.__setitem__, read_registry=no_registry,
            make_route=no_route, queues_ready={"default"}, source="test", legacy_group=None,
            max_batch=100, poll_wait_s=0.05, flush_timeout_s=5.0, window_s=self.window_s)
        self.engine._consumer = self.consumer  # type: ignore[assignment]

    def fold(self, partition: int, recs: list[Rec]) -> PartitionFold:
        db = self.tables.partition_db(partition)
        return fold_partition(partition, recs, db.get, Limits(), Checks())  # type: ignore[arg-type]

    def persist(self, *folds: PartitionFold) -> None:
        asyncio.run(self.engine.persist(list(folds)))

    def changelog(self) -> dict[bytes | None, TaskStatus]:
        """The changelog's last state per key, as a compacted topic keeps it."""
        last = {r.key(): r.value() for r in self.producer.on(CHANGELOG)}
        return {k: decode_state(v).status for k, v in last.items() if v is not None}


def test_an_open_window_sends_dispatches_but_no_changelog_record_and_commits_nothing() -> None:
    """Given a window that has not lasted its time, when two batches are folded, then
    their dispatches are acknowledged, their states are in the local table, and no
    changelog record is sent and no offset committed."""
    rig = Rig(window_s=3600.0)
    a, b = life(A), life(B)
    rig.persist(rig.fold(0, records([a[0], b[0]])))
    assert len(rig.producer.on(READY)) == 2
    assert rig.producer.on(CHANGELOG) == [] and rig.consumer.commits == []
    assert rig.engine.folded_offset(0) == 2  # the API reads the local table
    assert set(rig.tables.dbs[0]) == {A.encode(), B.encode()}


def test_closing_the_window_sends_each_entity_once_in_its_latest_state_then_commits() -> None:
    """Given batches that took a task from submitted to succeeded inside one window, when
    the window closes, then the changelog gets one record for the task (SUCCEEDED, not
    its earlier states), the persisted offset follows it, and the commit covers both
    batches."""
    rig = Rig(window_s=3600.0)
    a = life(A)
    rig.persist(rig.fold(0, records(a[:1])))
    rig.persist(rig.fold(0, records(a[1:], start=1)))
    asyncio.run(rig.engine.close_window())
    assert [r.key() for r in rig.producer.on(CHANGELOG)] == [A.encode()]
    assert rig.changelog() == {A.encode(): TaskStatus.SUCCEEDED}
    assert rig.persisted == {0: 0}
    assert rig.consumer.commits == [{0: 3}]


def test_a_window_of_zero_sends_and_commits_every_batch() -> None:
    """Given ``changelog_window_ms`` 0, each batch sends its changelog records and commits
    past itself, as before the window (D19)."""
    rig = Rig(window_s=0.0)
    a = life(A)
    rig.persist(rig.fold(0, records(a[:1])))
    rig.persist(rig.fold(0, records(a[1:], start=1)))
    statuses = [decode_state(r.value()).status for r in rig.producer.on(CHANGELOG)
                if r.value() is not None]
    assert statuses == [TaskStatus.READY, TaskStatus.SUCCEEDED]
    assert rig.consumer.commits == [{0: 1}, {0: 3}]


def test_a_batch_whose_effects_failed_is_not_committed_by_the_window() -> None:
    """Given a window holding a durable batch and a later batch whose dispatch the client
    refused (the batch is read again), when the window closes, then the commit stops
    before the failed batch: a crash then reads it again and redoes its dispatch."""
    rig = Rig(window_s=3600.0)
    a, b = life(A), life(B)
    rig.persist(rig.fold(0, records(a[:1])))
    rig.producer.refuse.add(READY)
    with pytest.raises(KafkaException):
        rig.persist(rig.fold(0, records(b[:1], start=1)))
    asyncio.run(rig.engine.close_window())
    assert rig.consumer.commits == [{0: 1}]
    assert rig.engine.folded_offset(0) == 1


def test_the_window_is_due_once_it_has_lasted_its_time() -> None:
    """Given a short window, the fold's idle wait is bounded by what the window has left,
    and an empty window is never due."""
    rig = Rig(window_s=0.2)
    assert not rig.engine._window_due() and rig.engine._wait_s() == pytest.approx(0.05)
    rig.persist(rig.fold(0, records(life(A)[:1])))
    assert not rig.engine._window_due()
    assert rig.engine._wait_s() <= 0.05
    asyncio.run(asyncio.sleep(0.2))
    assert rig.engine._window_due() and rig.engine._wait_s() == 0.0


class Consumed(Rec):
    def error(self) -> None:
        return None


class BusyConsumer(FakeConsumer):
    """Always holds one more record: a fold under steady load."""

    def consume(self, n: int, timeout: float) -> list[Consumed]:
        return [Consumed(b"k", b"v", 0)]

    def poll(self, timeout: float) -> Consumed:
        return Consumed(b"k", b"v", 0)


def rounds_begun(round_s: float, for_s: float) -> list[float]:
    """When each round of the loop took its batch, on a client that always has records."""
    rig = Rig(window_s=3600.0)
    engine = rig.engine
    engine._consumer = BusyConsumer()  # type: ignore[assignment]
    engine.round_s = round_s
    begun: list[float] = []

    async def fold(records: list[Any]) -> None:
        begun.append(asyncio.get_running_loop().time())
        await asyncio.sleep(0)

    engine.fold = fold  # type: ignore[method-assign]

    async def run() -> None:
        loop = asyncio.create_task(engine._run(lambda: True))
        await asyncio.sleep(for_s)
        engine._stopping.set()
        await loop

    asyncio.run(run())
    return begun


def test_rounds_under_load_begin_no_closer_than_the_round_time() -> None:
    """Given a client that always has records, rounds begin at least ``fold_round_ms``
    apart (D51); with 0 the loop takes batches back to back."""
    spaced = rounds_begun(0.05, 0.5)
    gaps = [b - a for a, b in pairwise(spaced)]
    assert len(spaced) >= 2 and min(gaps) >= 0.045
    assert len(spaced) <= 11
    assert len(rounds_begun(0.0, 0.5)) > 50
