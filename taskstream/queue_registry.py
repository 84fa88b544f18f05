"""The queue registry: which queues the platform knows, on the compacted ``queues`` topic.

A queue is *registered* by making its ready topics and only then writing the record
``key = registered/<queue>``, ``value = {"registered_at_ms": ...}`` (acks=all). So a
registration on the topic means the queue's topics exist, and whoever reads the
registry may send to them without asking the cluster first (docs/decisions.md, D20).
The same topic holds the queues' pause commands, keyed by the bare queue name
(workers/queuectl.py); no queue name holds a ``/``, so the two never share a key and
compaction keeps the latest of each.

Who registers: ``taskstream topics create`` (the settings' queues, or ``--queues``),
``POST /queues`` (admin scope), and each processor replica at start-up (the settings'
queues). Nobody else makes a queue's topics: a submission is accepted only for a
registered queue (D31). The SDK and the API refuse any other (:class:`KnownQueues`:
the registry cached, read again on a miss); a submission that reaches the log anyway
(a forged record, an old client) is folded, and when its dispatch is due the replica
reads the registry off the fold and, the queue still unknown, cancels the task with
the reason instead of making topics (processors/live/engine.py).
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Iterable

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, Producer, TopicPartition

from taskstream.admin import create_topics, ensure_topics, queue_topic_specs
from taskstream.errors import KafkaUnavailableError, UnknownQueueError
from taskstream.faults import fault_point
from taskstream.kafka_config import consumer_config, producer_config
from taskstream.settings import Settings
from taskstream.topics import queues_topic

REGISTERED = "registered/"


def registration_key(queue: str) -> bytes:
    return f"{REGISTERED}{queue}".encode()


def registered_queue(key: bytes | None) -> str | None:
    """The queue a queues-topic record registers; None for any other record (a command)."""
    if not key or not key.startswith(REGISTERED.encode()):
        return None
    return key[len(REGISTERED):].decode("utf-8", "replace")


def register_queues(settings: Settings, queues: Iterable[str]) -> list[str]:
    """Make the queues' ready topics, then write their registrations and wait for the
    broker's acknowledgement. Idempotent. Raises TopicError for a name that is not a
    queue name, KafkaUnavailableError when the broker does not answer in time."""
    names = sorted(set(queues))
    fault_point("queue.create_topics")
    create_topics(settings, [spec for q in names for spec in queue_topic_specs(settings, q)])
    producer = Producer(producer_config(settings))
    errors: list[str] = []
    value = json.dumps({"registered_at_ms": time.time_ns() // 1_000_000}).encode()
    for queue in names:
        producer.produce(queues_topic(settings), key=registration_key(queue), value=value,
                         on_delivery=lambda err, _msg: errors.append(str(err)) if err else None)
    if producer.flush(settings.kafka_timeout_s) or errors:
        raise KafkaUnavailableError(
            f"could not register queues {names} on {queues_topic(settings)} within "
            f"{settings.kafka_timeout_s}s ({'; '.join(errors) or 'no acknowledgement'}); "
            "check that Kafka is up and retry")
    return names


def make_route_topics(settings: Settings, queue: str, tags: Iterable[str]) -> dict[str, bool]:
    """Make the ready topics of a tag set of ``queue`` (D38), if missing; blocking.

    Only for a registered queue (the caller has read the registry: D31): a tag set is
    no new queue, so it is not registered itself; its topics follow from its queue's
    registration, and whichever processor replica first dispatches the tag set makes
    them, off the fold (processors/live/engine.py). Idempotent; the processor's ACLs
    allow it (it may create topics under the ready prefix, D25)."""
    fault_point("queue.create_topics")
    return create_topics(settings, queue_topic_specs(settings, queue, tags))


def set_up_platform(settings: Settings) -> tuple[dict[str, bool], list[str]]:
    """What ``taskstream topics create`` does: every platform topic that is missing, then
    the settings' queues registered. Returns (topic -> created now, registered queues)."""
    created = ensure_topics(settings)
    return created, register_queues(settings, settings.queues)


def read_queues_topic(settings: Settings, timeout_s: float, group: str
                      ) -> list[tuple[bytes | None, bytes | None]]:
    """Every record of the compacted queues topic, in order, read to its end (blocking;
    TimeoutError when the end is not reached in ``timeout_s``; [] when there is no topic).
    ``group`` is the (never joined) group id the reader's ACLs allow (D25)."""
    consumer = Consumer(consumer_config(settings, group, {
        "enable.partition.eof": True,
        "socket.connection.setup.timeout.ms": max(1000, int(timeout_s * 1000)),
    }))
    deadline = time.monotonic() + timeout_s
    try:
        topic = queues_topic(settings)
        meta = consumer.list_topics(topic, timeout=timeout_s).topics.get(topic)
        if meta is None or meta.error is not None or not meta.partitions:
            return []
        parts = [TopicPartition(topic, p, OFFSET_BEGINNING) for p in meta.partitions]
        ends = {}
        for tp in parts:
            low, high = consumer.get_watermark_offsets(tp, timeout=timeout_s)
            if high > low:
                ends[tp.partition] = high
        consumer.assign(parts)
        records: list[tuple[bytes | None, bytes | None]] = []
        while ends and time.monotonic() < deadline:
            msg = consumer.poll(0.2)
            if msg is None or msg.error() is not None:
                continue
            records.append((msg.key(), msg.value()))
            partition, offset = msg.partition(), msg.offset()
            if partition is not None and offset is not None and offset + 1 >= ends.get(
                    partition, 0):
                ends.pop(partition, None)
        if ends:
            raise TimeoutError(f"queues topic not read to its end in {timeout_s:g} s")
        return records
    finally:
        consumer.close()


def read_registered(settings: Settings, timeout_s: float, group: str) -> set[str]:
    """The registered queues: the latest registry record per queue, tombstones removing."""
    latest: dict[str, bool] = {}
    for key, value in read_queues_topic(settings, timeout_s, group):
        queue = registered_queue(key)
        if queue is not None:
            latest[queue] = value is not None
    return {queue for queue, registered in latest.items() if registered}


class KnownQueues:
    """The registered queues as this process last read them (safe across threads).

    A known queue costs a set lookup. A queue not known yet makes the caller read the
    registry again before it is refused, so a queue registered a moment ago is found;
    callers that miss at the same time share one read (one that started after their
    miss). Registrations are never withdrawn by the platform, so a known queue stays
    known. ``group`` makes the (never joined) group id of a read that the reader's ACLs
    allow (``registry_reader_group`` for clients, ``api_reader_group`` for replicas).
    """

    def __init__(self, settings: Settings, group: Callable[[Settings, str], str]) -> None:
        self._settings = settings
        self._group = group
        self._known: frozenset[str] = frozenset()
        self._lock = threading.Lock()
        self._reads_started = 0

    def __contains__(self, queue: object) -> bool:
        """Known without reading (the cache only)."""
        return queue in self._known

    def add(self, queues: Iterable[str]) -> None:
        """Queues this process has just registered itself."""
        self._known = self._known | frozenset(queues)

    def missing(self, queues: Iterable[str]) -> list[str]:
        """Those of ``queues`` not registered (sorted), the registry read again first when
        the cache does not know one. Raises KafkaUnavailableError when it cannot be read."""
        unknown = set(queues) - self._known
        if not unknown:
            return []
        self.refresh()
        return sorted(unknown - self._known)

    def require(self, queues: Iterable[str]) -> None:
        """Raise UnknownQueueError unless every queue is registered."""
        unknown = self.missing(queues)
        if unknown:
            raise UnknownQueueError(unknown)

    def refresh(self) -> None:
        """Read the registry, unless a read that started after this call began ends first."""
        wanted = self._reads_started
        with self._lock:
            if self._reads_started != wanted:
                return  # a read that started after the caller asked has just ended
            self._reads_started += 1
            settings = self._settings
            try:
                found = read_registered(settings, settings.kafka_timeout_s,
                                        self._group(settings, uuid.uuid4().hex))
            except (TimeoutError, KafkaException) as exc:
                raise KafkaUnavailableError(
                    f"the queue registry ({queues_topic(settings)}) could not be read in "
                    f"{settings.kafka_timeout_s:g}s ({exc}); check that Kafka is up and "
                    "retry") from None
            self._known = self._known | found
