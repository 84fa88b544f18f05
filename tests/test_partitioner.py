"""Every client puts a key on the same partition (DESIGN.md, "Topics").

confluent-kafka with ``partitioner=murmur2_random`` and aiokafka (Java's
murmur2, which Faust uses) must agree, or a task's events would be split across
partitions and folded by different processor replicas. The records are read
back from the broker, so this checks what the clients did, not what they say.
"""

from __future__ import annotations

import asyncio
import uuid

import pytest
from aiokafka import AIOKafkaProducer
from confluent_kafka import Consumer, Producer, TopicPartition

from taskstream.admin import TopicSpec, create_topics
from taskstream.settings import Settings

pytestmark = pytest.mark.kafka

PARTITIONS = 7
KEYS = [f"task-{i}-{uuid.uuid4().hex[:6]}".encode() for i in range(300)] + [
    b"", b"a", "ünïcode-ключ".encode(), bytes(range(256))]


def produce_confluent(settings: Settings, topic: str) -> None:
    producer = Producer({"bootstrap.servers": settings.bootstrap,
                         "partitioner": "murmur2_random", "acks": "all"})
    for key in KEYS:
        producer.produce(topic, key=key, value=b"confluent")
    assert producer.flush(settings.kafka_timeout_s) == 0


async def produce_aiokafka(settings: Settings, topic: str) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap, acks="all")
    await producer.start()
    try:
        for key in KEYS:
            await producer.send(topic, key=key, value=b"aiokafka")
        await asyncio.wait_for(producer.flush(), settings.kafka_timeout_s)
    finally:
        await producer.stop()


def read_back(settings: Settings, topic: str, expected: int) -> dict[bytes, dict[bytes, int]]:
    """key -> {client: partition} for every record in the topic."""
    consumer = Consumer({"bootstrap.servers": settings.bootstrap, "group.id": "unused",
                         "enable.auto.commit": False})
    consumer.assign([TopicPartition(topic, p, 0) for p in range(PARTITIONS)])
    seen: dict[bytes, dict[bytes, int]] = {}
    try:
        for _ in range(200):
            for msg in consumer.consume(1000, timeout=0.5):
                assert msg.error() is None, msg.error()
                seen.setdefault(msg.key() or b"", {})[msg.value()] = msg.partition()
            if sum(len(v) for v in seen.values()) >= expected:
                break
    finally:
        consumer.close()
    return seen


def test_confluent_and_aiokafka_agree_on_partitions(settings: Settings) -> None:
    topic = settings.topic("partitioner")
    create_topics(settings, [TopicSpec(topic, PARTITIONS)])
    produce_confluent(settings, topic)
    asyncio.run(produce_aiokafka(settings, topic))

    seen = read_back(settings, topic, expected=2 * len(KEYS))

    assert len(seen) == len(KEYS)
    disagreements = {k: v for k, v in seen.items() if v[b"confluent"] != v[b"aiokafka"]}
    assert not disagreements
    used = {v[b"aiokafka"] for v in seen.values()}
    assert used == set(range(PARTITIONS)), "keys should spread over every partition"
