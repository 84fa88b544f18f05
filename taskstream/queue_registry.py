"""The queue registry: which queues the platform knows, on the compacted ``queues`` topic.

A queue is *registered* by making its ready topics and only then writing the record
``key = registered/<queue>``, ``value = {"registered_at_ms": ...}`` (acks=all). So a
registration on the topic means the queue's topics exist, and whoever reads the
registry may send to them without asking the cluster first (docs/decisions.md, D20).
The same topic holds the queues' pause commands, keyed by the bare queue name
(workers/queuectl.py); no queue name holds a ``/``, so the two never share a key and
compaction keeps the latest of each.

Who registers: ``taskstream topics create`` (the settings' queues, or ``--queues``),
each processor replica at start-up (the settings' queues), and a replica whose fold
meets a queue nobody registered, in the background, never inside the fold (its
dispatches wait meanwhile: processors/live/queues.py). The security issue (17) makes
registration explicit (submissions only for registered queues, ``POST /queues``) on
this same record.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterable

from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

from taskstream.admin import create_topics, queue_topic_specs
from taskstream.errors import KafkaUnavailableError
from taskstream.kafka_config import consumer_config, producer_config
from taskstream.settings import Settings
from taskstream.topics import api_reader_group, queues_topic

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


def read_queues_topic(settings: Settings, timeout_s: float
                      ) -> list[tuple[bytes | None, bytes | None]]:
    """Every record of the compacted queues topic, in order, read to its end (blocking;
    TimeoutError when the end is not reached in ``timeout_s``; [] when there is no topic)."""
    consumer = Consumer(consumer_config(settings, api_reader_group(uuid.uuid4().hex), {
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


def read_registered(settings: Settings, timeout_s: float) -> set[str]:
    """The registered queues: the latest registry record per queue, tombstones removing."""
    latest: dict[str, bool] = {}
    for key, value in read_queues_topic(settings, timeout_s):
        queue = registered_queue(key)
        if queue is not None:
            latest[queue] = value is not None
    return {queue for queue, registered in latest.items() if registered}
