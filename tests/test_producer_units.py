"""Producer logic without Kafka: config, metrics, IDs used as keys, the fast encoder."""

from __future__ import annotations

import pytest
from confluent_kafka import KafkaError
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from taskstream.errors import ConfigError, KafkaUnavailableError, TaskstreamError
from taskstream.producer.build import EventBuilder, check_task_id, task_id_for
from taskstream.producer.config import kafka_config
from taskstream.producer.core import ProducerCore
from taskstream.producer.errors import (
    BrokerUnreachableError,
    DeliveryError,
    FailedDelivery,
    FlushTimeoutBrokerDownError,
    InvalidTaskError,
    ProducerQueueFullError,
    UndeliveredOnBrokerDownError,
)
from taskstream.producer.fastwire import avro_long
from taskstream.producer.handle import BatchDelivery, TaskHandle
from taskstream.producer.metrics import producer_metrics
from taskstream.schemas.ids import derived_task_id
from taskstream.schemas.models import SpecLimits, TaskSpec
from taskstream.schemas.serde import decode_event
from taskstream.settings import Settings

# --- librdkafka config --------------------------------------------------------------


def test_config_is_durable_and_uses_the_java_partitioner() -> None:
    s = Settings(
        bootstrap="k1:9092,k2:9092",
        linger_ms=7,
        compression="zstd",
        producer_queue_max=1234,
        delivery_timeout_s=12.5,
    )
    c = kafka_config(s)
    assert c["enable.idempotence"] is True
    assert c["acks"] == "all"
    assert c["partitioner"] == "murmur2_random"
    assert c["bootstrap.servers"] == "k1:9092,k2:9092"
    assert (c["linger.ms"], c["compression.type"]) == (7, "zstd")
    assert c["queue.buffering.max.messages"] == 1234
    assert c["message.timeout.ms"] == 12_500
    assert c["allow.auto.create.topics"] is False


@pytest.mark.parametrize("key", ["acks", "enable.idempotence", "partitioner"])
def test_guarantee_keys_cannot_be_overridden(key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        kafka_config(Settings(), {key: "x"})


def test_other_keys_can_be_added() -> None:
    assert kafka_config(Settings(), {"client.id": "me"})["client.id"] == "me"


# --- IDs used as Kafka keys ---------------------------------------------------------


def test_keyed_tasks_get_the_derived_id() -> None:
    assert task_id_for("charge", "order-1") == derived_task_id("charge", "order-1")
    assert task_id_for("charge", "order-1") != task_id_for("refund", "order-1")


def test_unkeyed_tasks_get_fresh_ids() -> None:
    ids = {task_id_for("x", None) for _ in range(1000)}
    assert len(ids) == 1000 and all(len(i) == 26 for i in ids)


@pytest.mark.parametrize("bad", ["", "short", "x" * 27, None, 17])
def test_cancel_rejects_what_is_not_a_task_id(bad: object) -> None:
    with pytest.raises(InvalidTaskError, match="task_id") as info:
        check_task_id(bad)  # type: ignore[arg-type]
    assert info.value.fields == ("task_id",)


# --- metrics ------------------------------------------------------------------------


def test_two_metric_sets_never_collide() -> None:
    a, b = producer_metrics(), producer_metrics()
    a.count_submitted("TaskSubmitted", 3)
    assert (
        a.registry.get_sample_value(
            "taskstream_producer_submitted_total", {"event": "TaskSubmitted"}
        )
        == 3
    )
    assert (
        b.registry.get_sample_value(
            "taskstream_producer_submitted_total", {"event": "TaskSubmitted"}
        )
        is None
    )


def test_metrics_go_on_the_given_registry() -> None:
    reg = CollectorRegistry()
    m = producer_metrics(reg)
    m.failed.labels(reason="queue_full").inc()
    assert reg.get_sample_value("taskstream_producer_failed_total", {"reason": "queue_full"}) == 1
    with pytest.raises(ValueError, match="sample_every"):
        producer_metrics(sample_every=0)


# --- errors say what happened and what to do -----------------------------------------


def test_errors_are_taskstream_errors_that_name_the_cause() -> None:
    f = FailedDelivery("T1", "TaskSubmitted", "Local: Message timed out", -192, True)
    d = DeliveryError([f] * 7, "k:9092")
    assert isinstance(d, TaskstreamError)
    assert d.task_ids == ("T1",) * 7 and "k:9092" in str(d) and "2 more" in str(d)
    assert d.retriable
    down = UndeliveredOnBrokerDownError([f], "k:9092")
    assert isinstance(down, DeliveryError) and isinstance(down, KafkaUnavailableError)
    b = BrokerUnreachableError("k:9092", 2.0)
    assert isinstance(b, KafkaUnavailableError) and "k:9092" in str(b) and "2s" in str(b)
    q = ProducerQueueFullError(10, 1.5, "k:9092")
    assert "10 messages" in str(q) and "Nothing was dropped" in str(q)
    t = FlushTimeoutBrokerDownError(3, 1.0, "k:9092", True)
    assert "unreachable" in str(t) and isinstance(t, KafkaUnavailableError)


# --- the fast TaskSubmitted encoder ----------------------------------------------------


@given(st.integers(min_value=-(2**63), max_value=2**63 - 1))
def test_avro_long_round_trips_like_fastavro(n: int) -> None:
    import io

    import fastavro

    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, "long", n)
    assert avro_long(n) == buf.getvalue()


# --- options validation names the field -------------------------------------------


@pytest.fixture
def build() -> EventBuilder:
    return EventBuilder("producer:test", 1024, limits=SpecLimits(max_payload_bytes=1024))


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"priority": 7}, "priority"),
        ({"queue": "no spaces"}, "queue"),
        ({"max_attempts": 0}, "max_attempts"),
        ({"timeout": -1}, "timeout"),
        ({"delay": "soon"}, "delay"),
        ({"colour": "red"}, "colour"),
        ({"depends_on": ["nope"]}, "depends_on"),
    ],
)
def test_bad_option_names_the_field(
    build: EventBuilder, options: dict[str, object], field: str
) -> None:
    with pytest.raises(InvalidTaskError, match=field) as info:
        build.spec("ok.name", None, options)
    assert field in info.value.fields[0]


def test_bad_name_and_oversized_payload_are_named(build: EventBuilder) -> None:
    with pytest.raises(InvalidTaskError, match="name") as info:
        build.spec("9 bad", None, {})
    assert info.value.fields == ("name",)
    with pytest.raises(InvalidTaskError, match="payload"):
        build.spec("ok", b"x" * 2000, {})


def test_submit_many_item_errors_name_the_index(build: EventBuilder) -> None:
    with pytest.raises(InvalidTaskError, match="#3"):
        build.spec_from({"name": "x", "priority": 99}, 3)
    with pytest.raises(InvalidTaskError, match="mapping"):
        build.spec_from(["x"], 0)  # type: ignore[arg-type]


def test_built_event_is_the_spec_under_its_key(build: EventBuilder) -> None:
    spec = build.spec("charge", {"amount": 5}, {"idempotency_key": "o-1", "queue": "pay"})
    task_id, data = build.submitted(spec, 1_700_000_000_000)
    env = decode_event(data)
    assert task_id == env.task_id == derived_task_id("charge", "o-1")
    assert env.body == spec.to_submitted(1_700_000_000_000)
    assert (env.source, env.attempt, env.occurred_at_ms) == ("producer:test", 0, 1_700_000_000_000)
    assert len(env.event_id) == 26
    assert isinstance(TaskSpec.model_validate({"name": "x"}), TaskSpec)


def test_cancel_and_redrive_events_are_built(build: EventBuilder) -> None:
    tid = "01ARZ3NDEKTSV4RRFFQ69G5FAV"
    env = decode_event(build.cancel(tid, "why", 5))
    assert env.task_id == tid and env.body.reason == "why"  # type: ignore[union-attr]
    env = decode_event(build.redrive(tid, 4, "", 5))
    assert env.body.max_attempts == 4  # type: ignore[union-attr]
    with pytest.raises(InvalidTaskError, match="max_attempts"):
        build.redrive(tid, 0, "", 5)


# --- BatchDelivery: one callback for a whole submit_many ---------------------------


class _Msg:
    def __init__(self, key: bytes) -> None:
        self._key = key

    def key(self) -> bytes:
        return self._key


def _batch(
    n: int, ids: list[str] | None = None
) -> tuple[ProducerCore, list[TaskHandle], BatchDelivery]:
    core = ProducerCore(
        Settings(bootstrap="127.0.0.1:1"), metrics=producer_metrics(CollectorRegistry())
    )
    ids = ids or [f"{i:026d}" for i in range(n)]
    handles = [TaskHandle(t, "TaskSubmitted", core) for t in ids]
    return core, handles, BatchDelivery(core, handles)


def test_batch_handles_turn_delivered_together_when_every_report_is_in() -> None:
    core, handles, batch = _batch(4)
    batch.on_delivery(None, None)
    batch.on_delivery(KafkaError(KafkaError._MSG_TIMED_OUT), _Msg(b"2".zfill(26)))
    batch.on_delivery(None, None)
    assert handles[2].failure is not None
    assert not any(h.done for i, h in enumerate(handles) if i != 2)
    batch.on_delivery(None, None)
    assert all(h.done for h in handles)
    assert [h.failure is None for h in handles] == [True, True, False, True]
    failures = core.take_failures()
    assert [f.task_id for f in failures] == [handles[2].task_id]
    assert core.metrics.produce_latency.collect()[0].samples


def test_batch_failure_of_a_repeated_task_id_fails_one_handle() -> None:
    same = "7" * 26
    _core, handles, batch = _batch(2, [same, same])
    batch.on_delivery(KafkaError(KafkaError._MSG_TIMED_OUT), _Msg(same.encode()))
    batch.on_delivery(None, None)
    assert sorted(h.failure is None for h in handles) == [False, True]


def test_batch_refused_and_unsent_events_still_settle_the_rest() -> None:
    _core, handles, batch = _batch(4)
    batch.fail(0, KafkaError(KafkaError.MSG_SIZE_TOO_LARGE))
    batch.on_delivery(None, None)
    assert not handles[1].done
    batch.drop([2, 3])  # the last two never left the full queue
    assert handles[0].failure is not None and handles[1].done
    assert handles[1].failure is None
    assert not handles[2].done and not handles[3].done  # never sent: never "delivered"
