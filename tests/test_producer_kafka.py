"""The producer against the real local broker (TASKSTREAM_BOOTSTRAP).

Every test gets its own topic prefix and creates its own events topic, so tests
never share topics. What is read back is read with a plain consumer from the
beginning of the topic.
"""

from __future__ import annotations

import asyncio
import socket
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from aiokafka.partitioner import DefaultPartitioner, murmur2
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from taskstream.errors import TopicError, UnknownQueueError
from taskstream.producer import (
    AsyncTaskProducer,
    BrokerUnreachableError,
    DeliveryError,
    ProducerQueueFullError,
    TaskProducer,
)
from taskstream.queue_registry import register_queues, set_up_platform
from taskstream.schemas.events import CancelRequested, RedriveRequested, TaskSubmitted
from taskstream.schemas.ids import derived_task_id
from taskstream.schemas.serde import decode_event
from taskstream.settings import Settings
from taskstream.topics import events_topic

pytestmark = pytest.mark.kafka

PARTITIONS = 6


@pytest.fixture
def settings(kafka_bootstrap: str) -> Iterator[Settings]:
    s = Settings(
        bootstrap=kafka_bootstrap,
        topic_prefix=f"t{uuid.uuid4().hex[:8]}.",
        partitions=PARTITIONS,
        kafka_timeout_s=10,
        delivery_timeout_s=20,
    )
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    topic = events_topic(s)
    for fut in admin.create_topics([NewTopic(topic, PARTITIONS, 1)]).values():
        fut.result(timeout=30)
    deadline = time.monotonic() + 15
    while topic not in admin.list_topics(timeout=10).topics and time.monotonic() < deadline:
        time.sleep(0.1)
    set_up_platform(s)  # the queue registry: submissions go to registered queues only
    yield s
    for fut in admin.delete_topics([topic]).values():
        fut.result(timeout=30)


def read_all(s: Settings, expected: int, timeout: float = 60) -> list[tuple[int, bytes, bytes]]:
    """(partition, key, value) of every record, once ``expected`` arrived or time ran out."""
    topic = events_topic(s)
    consumer = Consumer(
        {
            "bootstrap.servers": s.bootstrap,
            "group.id": f"reader-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
        }
    )
    consumer.assign([TopicPartition(topic, p, 0) for p in range(PARTITIONS)])
    out: list[tuple[int, bytes, bytes]] = []
    deadline = time.monotonic() + timeout
    try:
        while len(out) < expected and time.monotonic() < deadline:
            for msg in consumer.consume(10_000, timeout=0.5):
                assert msg.error() is None, msg.error()
                out.append((msg.partition(), msg.key(), msg.value()))
        # anything beyond the expected count would be a duplicate: give it a moment
        for msg in consumer.consume(10_000, timeout=1.0):
            out.append((msg.partition(), msg.key(), msg.value()))
    finally:
        consumer.close()
    return out


def java_partition(key: bytes) -> int:
    return (murmur2(key) & 0x7FFFFFFF) % PARTITIONS


def test_every_task_exactly_once_on_its_key_partition(settings: Settings) -> None:
    with TaskProducer(settings) as producer:
        many = producer.submit_many({"name": "bulk", "payload": {"i": i}} for i in range(10_000))
        single = [producer.submit("single", {"i": i}) for i in range(1_000)]
    handles = many + single
    assert all(h.done and h.failure is None for h in handles)
    ids = [h.task_id for h in handles]
    assert len(set(ids)) == 11_000

    records = read_all(settings, 11_000)
    seen = Counter(key.decode() for _, key, _ in records)
    assert seen == Counter(ids)  # every task exactly once, nothing else
    aiokafka_partitioner = DefaultPartitioner()
    all_parts = list(range(PARTITIONS))
    for partition, key, value in records:
        assert partition == java_partition(key)
        assert partition == aiokafka_partitioner(key, all_parts, all_parts)
        env = decode_event(value)
        assert env.task_id == key.decode()
        assert isinstance(env.body, TaskSubmitted)
        assert env.body.name in ("bulk", "single")
        assert env.attempt == 0 and env.source == producer.source
    m = producer.metrics
    assert (
        m.registry.get_sample_value(
            "taskstream_producer_submitted_total", {"event": "TaskSubmitted"}
        )
        == 11_000
    )
    assert m.registry.get_sample_value("taskstream_producer_delivered_total") == 11_000
    assert m.registry.get_sample_value("taskstream_producer_produce_latency_seconds_count")


def test_idempotency_key_gives_the_derived_id_and_one_partition(settings: Settings) -> None:
    with TaskProducer(settings) as producer:
        a = producer.submit("charge", {"amount": 5}, idempotency_key="order-17")
        b = producer.submit("charge", {"amount": 5}, idempotency_key="order-17")
        a.delivered(10)
        b.delivered(10)
    assert a.task_id == b.task_id == derived_task_id("charge", "order-17")
    records = read_all(settings, 2)
    assert len(records) == 2  # the fold, not the producer, records the duplicate
    assert {p for p, _, _ in records} == {java_partition(a.task_id.encode())}
    assert all(decode_event(v).body.idempotency_key == "order-17" for _, _, v in records)  # type: ignore[union-attr]


def test_cancel_and_redrive_events(settings: Settings) -> None:
    with TaskProducer(settings, source="producer:test") as producer:
        task = producer.submit("slow")
        producer.cancel(task.task_id, reason="no longer needed").delivered(10)
        producer.redrive(task.task_id, max_attempts=5).delivered(10)
    bodies = [decode_event(v) for _, _, v in read_all(settings, 3)]
    by_type = {type(env.body): env for env in bodies}
    cancel = by_type[CancelRequested]
    assert cancel.task_id == task.task_id and cancel.source == "producer:test"
    assert cancel.body == CancelRequested(reason="no longer needed")
    assert by_type[RedriveRequested].body == RedriveRequested(reason="", max_attempts=5)


def test_async_producer_delivers_and_resolves_handles(settings: Settings) -> None:
    async def go() -> list[str]:
        async with AsyncTaskProducer(settings) as producer:
            many = await producer.submit_many({"name": "a", "payload": i} for i in range(2_000))
            one = await producer.submit("b", [1, 2, 3])
            await asyncio.wait_for(one.delivered(), 20)
            await asyncio.gather(*(h.delivered(20) for h in many[-100:]))
            return [h.task_id for h in [*many, one]]

    ids = asyncio.run(go())
    records = read_all(settings, len(ids))
    assert Counter(k.decode() for _, k, _ in records) == Counter(ids)


def test_only_registered_queues_take_submissions(settings: Settings) -> None:
    """An unregistered queue is a clear error before anything is sent (submit and
    submit_many, sync and asyncio); once registered, the next submission reads the
    registry again and is accepted (D31)."""
    with TaskProducer(settings) as producer:
        with pytest.raises(UnknownQueueError, match="'emails' is not registered"):
            producer.submit("send", {"to": "a"}, queue="emails")
        with pytest.raises(UnknownQueueError, match="topics create --queues emails"):
            producer.submit_many([{"name": "ok", "payload": 1},
                                  {"name": "send", "payload": 2, "queue": "emails"}])
        register_queues(settings, ["emails"])  # as `topics create --queues` or POST /queues
        sent = producer.submit("send", {"to": "a"}, queue="emails")
        producer.flush(20)

    async def go() -> str:
        async with AsyncTaskProducer(settings) as producer:
            with pytest.raises(UnknownQueueError, match="'reports' is not registered"):
                await producer.submit("report", queue="reports")
            with pytest.raises(UnknownQueueError):
                await producer.submit_many([{"name": "report", "queue": "reports"}])
            handle = await producer.submit("send", queue="emails")
            await handle.delivered(20)
            return handle.task_id

    later = asyncio.run(go())
    records = read_all(settings, 2)
    assert sorted(k.decode() for _, k, _ in records) == sorted([sent.task_id, later])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def test_unreachable_broker_fails_in_bounded_time_naming_it() -> None:
    bootstrap = f"127.0.0.1:{free_port()}"
    s = Settings(bootstrap=bootstrap, topic_prefix="nowhere.")
    producer = TaskProducer(s, connect_timeout_s=2)
    started = time.monotonic()
    with pytest.raises(BrokerUnreachableError, match=bootstrap) as info:
        producer.submit("x")
    assert time.monotonic() - started < 10
    assert info.value.retriable


def test_async_unreachable_broker_fails_naming_it() -> None:
    bootstrap = f"127.0.0.1:{free_port()}"
    s = Settings(bootstrap=bootstrap, topic_prefix="nowhere.")

    async def go() -> None:
        producer = AsyncTaskProducer(s, connect_timeout_s=1)
        await producer.submit("x")

    with pytest.raises(BrokerUnreachableError, match=bootstrap):
        asyncio.run(go())


def test_missing_events_topic_is_a_clear_error(kafka_bootstrap: str) -> None:
    s = Settings(bootstrap=kafka_bootstrap, topic_prefix=f"t{uuid.uuid4().hex[:8]}.")
    producer = TaskProducer(s)
    with pytest.raises(TopicError, match="taskstream topics create"):
        producer.submit("x")


def test_full_queue_raises_after_the_wait_and_drops_nothing(settings: Settings) -> None:
    tiny = settings.model_copy(update={"producer_queue_max": 5, "linger_ms": 3_000})
    producer = TaskProducer(tiny, queue_full_timeout_s=0.3)
    sent = [producer.submit("q", i) for i in range(5)]
    started = time.monotonic()
    with pytest.raises(ProducerQueueFullError, match="5 messages") as info:
        producer.submit("q", 5)
    assert 0.25 < time.monotonic() - started < 5
    assert info.value.retriable
    # a patient producer gets through once the linger passes: nothing was dropped
    patient = TaskProducer(tiny, queue_full_timeout_s=20)
    late = [patient.submit("q", i) for i in range(10)]
    producer.close()
    patient.close()
    assert all(h.done and h.failure is None for h in sent + late)
    assert len(read_all(settings, 15)) == 15


def test_submit_many_reports_handles_sent_before_the_queue_filled(settings: Settings) -> None:
    tiny = settings.model_copy(update={"producer_queue_max": 3, "linger_ms": 3_000})
    producer = TaskProducer(tiny, queue_full_timeout_s=0.2)
    with pytest.raises(ProducerQueueFullError) as info:
        producer.submit_many({"name": "q"} for _ in range(10))
    assert len(info.value.handles) == 3
    producer.close()
    assert all(h.failure is None for h in info.value.handles)


def test_submit_many_waits_for_room_and_loses_nothing(settings: Settings) -> None:
    """A batch larger than the local queue goes through as acks free it."""
    small = settings.model_copy(update={"producer_queue_max": 50})
    with TaskProducer(small, queue_full_timeout_s=30) as producer:
        handles = producer.submit_many({"name": "big", "payload": i} for i in range(600))
    assert all(h.done and h.failure is None for h in handles)
    records = read_all(settings, 600)
    assert Counter(k.decode() for _, k, _ in records) == Counter(h.task_id for h in handles)


def test_async_submit_many_waits_for_room(settings: Settings) -> None:
    small = settings.model_copy(update={"producer_queue_max": 40})

    async def go() -> list[str]:
        async with AsyncTaskProducer(small, queue_full_timeout_s=30) as producer:
            handles = await producer.submit_many({"name": "a", "payload": i} for i in range(300))
        return [h.task_id for h in handles]

    ids = asyncio.run(go())
    assert Counter(k.decode() for _, k, _ in read_all(settings, 300)) == Counter(ids)


def test_submit_many_record_refused_by_the_client_fails_only_that_task(
    settings: Settings,
) -> None:
    """A record the client refuses outright (here: over message.max.bytes) is a failed
    delivery of that one task, reported by flush; the others are delivered."""
    producer = TaskProducer(settings, kafka_config={"message.max.bytes": 4_000})
    items = [{"name": "s", "payload": i} for i in range(5)]
    items.insert(2, {"name": "s", "payload": "x" * 10_000})
    handles = producer.submit_many(items)
    with pytest.raises(DeliveryError, match="too large") as info:
        producer.close(timeout=20)
    assert info.value.task_ids == (handles[2].task_id,)
    assert handles[2].failure is not None and not handles[0].failure
    keys = {k.decode() for _, k, _ in read_all(settings, 5)}
    assert keys == {h.task_id for i, h in enumerate(handles) if i != 2}


def test_every_handle_knows_its_records_position_batches_too(settings: Settings) -> None:
    """Read-your-writes (D46) needs each handle's ``partition:offset``: a single submit's
    from its own delivery report, a ``submit_many`` handle's from the batch's (issue 21:
    they had none). On a fresh topic the handles' offsets in each partition are exactly
    0..end-1: each handle holds its own record's position, none another's."""
    with TaskProducer(settings) as producer:
        handles = producer.submit_many({"name": "bulk", "payload": i} for i in range(600))
        handles += [producer.submit("single", i) for i in range(50)]

    async def more() -> list[Any]:
        async with AsyncTaskProducer(settings) as aio:
            return list(await aio.submit_many({"name": "a", "payload": i} for i in range(300)))

    handles += asyncio.run(more())
    assert all(h.done and h.failure is None for h in handles)
    by_partition: dict[int, list[int]] = {}
    for h in handles:
        assert h.position == f"{h.partition}:{h.offset}"
        assert h.partition == java_partition(h.task_id.encode())
        by_partition.setdefault(h.partition, []).append(h.offset)
    consumer = Consumer({"bootstrap.servers": settings.bootstrap, "group.id": "ends"})
    try:
        for partition, offsets in by_partition.items():
            low, high = consumer.get_watermark_offsets(
                TopicPartition(events_topic(settings), partition), timeout=10)
            assert sorted(offsets) == list(range(low, high)), partition
    finally:
        consumer.close()
