"""Reading a topic for replay: partition choice, batched reads, the progress hook.

Replay reads with a plain confluent-kafka consumer that *assigns* partitions and never
joins or commits to a consumer group, so it never disturbs the processors. Every read
is bounded: it stops at an end offset per partition fixed before it starts (the high
watermark unless told otherwise), and it fails with :class:`ReplayError` when the
broker delivers nothing for ``Settings.kafka_timeout_s`` while records are still due.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

from aiokafka.partitioner import murmur2
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition

from taskstream.kafka_config import consumer_config
from taskstream.processors.replay.errors import ReplayError
from taskstream.settings import Settings
from taskstream.topics import REPLAY_GROUP

#: records asked of librdkafka per ``consume`` call
BATCH = 10_000


@dataclass(frozen=True, slots=True)
class SkippedRecord:
    """A record the replay could not use, and why."""

    partition: int
    offset: int
    reason: str

    def describe(self) -> str:
        return f"partition {self.partition} offset {self.offset}: {self.reason}"


# -- partitioning ---------------------------------------------------------------


def partition_for(key: bytes, partitions: int) -> int:
    """The partition every client of ours puts ``key`` on (Java's ``toPositive(murmur2) % n``).

    aiokafka's murmur2 is Faust's and the Java client's (tests/test_partitioner.py shows
    librdkafka's ``murmur2_random`` agrees).
    """
    return (int(murmur2(key)) & 0x7FFFFFFF) % partitions


# -- progress -------------------------------------------------------------------------


class Advances(Protocol):
    """Anything that counts records read (a progress bar, a child's shared counter)."""

    def advance(self, n: int) -> None: ...


#: ``progress(description, total)``: a context manager counting one read's records.
#: The CLI passes a progress bar (:mod:`taskstream.cli.progress`); the default is silent.
ProgressFactory = Callable[[str, int], AbstractContextManager[Advances]]


class _Silent:
    def advance(self, n: int) -> None:
        pass


@contextmanager
def no_progress(description: str, total: int) -> Iterator[Advances]:
    """The default :data:`ProgressFactory`: counts nothing, shows nothing."""
    yield _Silent()


# -- the consumer ------------------------------------------------------------------------


def make_consumer(settings: Settings) -> Consumer:
    """An assign-only consumer tuned for bulk reads (large fetches, no commits)."""
    return Consumer(consumer_config(settings, REPLAY_GROUP, {
        "enable.auto.offset.store": False,
        "enable.partition.eof": False,
        "fetch.max.bytes": 64 * 1024 * 1024,
        "max.partition.fetch.bytes": 16 * 1024 * 1024,
        "queued.max.messages.kbytes": 256 * 1024,
        "fetch.wait.max.ms": 50,
    }))


def consumer_bootstrap(consumer: Consumer) -> str:
    try:
        brokers = consumer.list_topics(timeout=1).brokers.values()
        return ",".join(f"{b.host}:{b.port}" for b in brokers) or "the cluster"
    except KafkaException:
        return "the cluster"


def partition_count(consumer: Consumer, topic: str, timeout: float) -> int:
    try:
        meta = consumer.list_topics(topic, timeout=timeout)
    except KafkaException as exc:
        raise ReplayError(f"cannot read metadata of topic {topic}: {exc}; is Kafka up?") from exc
    found = meta.topics.get(topic)
    if found is None or found.error is not None or not found.partitions:
        raise ReplayError(
            f"topic {topic} does not exist on {consumer_bootstrap(consumer)}; check "
            "TASKSTREAM_BOOTSTRAP and TASKSTREAM_TOPIC_PREFIX (or the settings file)"
        )
    return len(found.partitions)


#: errors of a partition whose leader is not known yet (a topic just made)
_ELECTING = frozenset({KafkaError.NOT_LEADER_FOR_PARTITION, KafkaError.LEADER_NOT_AVAILABLE})


def watermarks(
    consumer: Consumer, topic: str, partitions: range | list[int], timeout: float
) -> dict[int, tuple[int, int]]:
    """partition -> (low, high) watermark.

    A partition whose leader is still being elected (a topic just made) is asked
    again until ``timeout`` runs out; any other error, or that one at the end,
    is a ReplayError naming the partition.
    """
    out: dict[int, tuple[int, int]] = {}
    deadline = time.monotonic() + timeout
    for p in partitions:
        while True:
            try:
                low, high = consumer.get_watermark_offsets(
                    TopicPartition(topic, p), timeout=timeout
                )
                break
            except KafkaException as exc:
                if exc.args[0].code() not in _ELECTING or time.monotonic() >= deadline:
                    raise ReplayError(f"cannot read watermarks of {topic}[{p}]: {exc}") from exc
                time.sleep(0.2)
        out[p] = (low, high)
    return out


def offsets_for_time(
    consumer: Consumer, topic: str, partitions: list[int], time_ms: int, timeout: float
) -> dict[int, int]:
    """Per partition, the first offset whose record timestamp is >= ``time_ms``
    (the high watermark when there is none)."""
    asked = [TopicPartition(topic, p, time_ms) for p in partitions]
    try:
        found = consumer.offsets_for_times(asked, timeout=timeout)
    except KafkaException as exc:
        raise ReplayError(f"cannot look up offsets by time in {topic}: {exc}") from exc
    marks = watermarks(consumer, topic, partitions, timeout)
    return {tp.partition: tp.offset if tp.offset >= 0 else marks[tp.partition][1] for tp in found}


@dataclass(frozen=True, slots=True)
class ReadPlan:
    """Which records to read: per partition, offsets in [start, end)."""

    topic: str
    starts: Mapping[int, int]
    ends: Mapping[int, int]

    @property
    def total(self) -> int:
        return sum(max(0, self.ends[p] - self.starts.get(p, 0)) for p in self.ends)


def plan(
    consumer: Consumer, settings: Settings, topic: str,
    ends: Mapping[int, int] | None = None, starts: Mapping[int, int] | None = None,
) -> ReadPlan:
    """Bound the read: end = min(asked end, high watermark); start = max(asked, low)."""
    timeout = settings.kafka_timeout_s
    count = partition_count(consumer, topic, timeout)
    wanted = sorted(ends) if ends is not None else list(range(count))
    unknown = [p for p in wanted if p >= count]
    if unknown:
        raise ReplayError(f"topic {topic} has partitions 0..{count - 1}; no partition {unknown}")
    marks = watermarks(consumer, topic, wanted, timeout)
    bounded_ends = {
        p: min(ends[p], marks[p][1]) if ends is not None else marks[p][1] for p in wanted
    }
    bounded_starts = {
        p: max(starts.get(p, 0) if starts else 0, marks[p][0]) for p in wanted
    }
    return ReadPlan(topic, bounded_starts, bounded_ends)


def read_batches(
    consumer: Consumer, read: ReadPlan, timeout_s: float, progress: Advances | None = None
) -> Iterator[list[Any]]:
    """Yield lists of confluent-kafka messages of ``read``, in offset order per partition.

    Messages at or past a partition's end are dropped; a partition is done once the
    consumer's position reaches its end (which also steps over transaction markers).

    ``consume`` returns when it has the number of messages asked for or after its
    timeout, so near the end it is asked for no more than the records still due
    (the ranges' sizes minus those read): the last batch comes at once instead of
    after the timeout. Where the ranges hold fewer records than their size
    (transaction markers, compaction) it waits the timeout as before.
    """
    pending = {p for p in read.ends if read.ends[p] > read.starts[p]}
    if not pending:
        return
    consumer.assign([
        TopicPartition(read.topic, p, read.starts[p] if read.starts[p] > 0 else OFFSET_BEGINNING)
        for p in sorted(pending)
    ])
    last_progress = time.monotonic()
    paused = {p for p in read.ends if p not in pending}
    ends = read.ends
    due = read.total  # at most this many records still to come
    try:
        while pending:
            asked = BATCH if due >= BATCH else max(due, 1)
            messages: list[Any] = consumer.consume(num_messages=asked, timeout=0.5)
            batch: list[Any] = []
            keep = batch.append
            for m in messages:  # one pass: errors, the end cut, finished partitions
                if m.error() is not None:
                    raise ReplayError(f"Kafka error while reading {m.topic()}: {m.error()}")
                offset, end = m.offset(), ends[m.partition()]
                if offset < end:
                    keep(m)
                if offset >= end - 1:
                    pending.discard(m.partition())
            if batch:
                due -= len(batch)
                last_progress = time.monotonic()
                if progress is not None:
                    progress.advance(len(batch))
                yield batch
            _retire_finished(consumer, read, pending, paused, bool(messages))
            if pending and time.monotonic() - last_progress > timeout_s:
                raise ReplayError(
                    f"no records from {read.topic} partitions {sorted(pending)} for {timeout_s}s "
                    "although more are due; is the broker up? (raise kafka_timeout_s if slow)"
                )
    finally:
        consumer.unassign()


def _retire_finished(
    consumer: Consumer, read: ReadPlan, pending: set[int], paused: set[int], got: bool
) -> None:
    """After an empty batch, ask the consumer's positions (a partition whose end is a
    transaction marker never delivers its last offset); pause finished partitions."""
    if not got and pending:
        positions = consumer.position([TopicPartition(read.topic, p) for p in pending])
        for tp in positions:
            if tp.offset >= 0 and tp.offset >= read.ends[tp.partition]:
                pending.discard(tp.partition)
    finished = [p for p in read.ends if p not in pending and p not in paused]
    if pending and finished:
        consumer.pause([TopicPartition(read.topic, p) for p in finished])  # no fetch past end
        paused.update(finished)
