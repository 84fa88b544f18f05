"""The secured broker (``kafka up --secure``): each role can do what it must and nothing
else, a wrong password or an unknown CA is refused clearly, and what a submitter
credential writes cannot pass for a worker's or a processor's event (D25, D26)."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest
from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Producer,
    TopicPartition,
)

from taskstream.acls import Role
from taskstream.admin import TopicSpec, create_topics, list_topics
from taskstream.errors import KafkaAuthError
from taskstream.kafka_config import consumer_config, producer_config
from taskstream.localkafka.certs import make_ca
from taskstream.processors.replay.history import task_history
from taskstream.producer import TaskProducer
from taskstream.schemas.events import (
    Envelope,
    TaskStarted,
    TaskSubmitted,
    TaskSucceeded,
    TimerFired,
    TimerKind,
)
from taskstream.schemas.ids import new_event_id
from taskstream.schemas.serde import decode_event, encode_event
from taskstream.settings import Settings
from taskstream.topics import (
    cancellations_topic,
    dlq_topic,
    events_topic,
    processor_app_id,
    quarantine_topic,
    queues_topic,
    ready_topic,
    registry_reader_group,
    worker_group,
)
from tests.conftest import Roles
from tests.harness import read_to_end

DENIED = {KafkaError.TOPIC_AUTHORIZATION_FAILED, KafkaError.GROUP_AUTHORIZATION_FAILED,
          KafkaError.CLUSTER_AUTHORIZATION_FAILED}


def produce(settings: Settings, topic: str, value: bytes = b"x", key: bytes = b"k",
            headers: list[tuple[str, bytes]] | None = None) -> KafkaError | None:
    """Write one record; None when acknowledged, else the error."""
    producer = Producer(producer_config(settings, {"message.timeout.ms": 15_000}))
    outcome: list[KafkaError | None] = []
    producer.produce(topic, value=value, key=key, headers=headers,
                     on_delivery=lambda err, _m: outcome.append(err))
    producer.flush(20)
    assert outcome, f"no delivery report for {topic}"
    return outcome[0]


def read(settings: Settings, topic: str, group: str) -> KafkaError | None:
    """Read ``topic``'s partition 0 from the start; None when the broker lets us, else the
    error (an empty topic reads as allowed once its end is reached)."""
    consumer = Consumer(consumer_config(settings, group, {"enable.partition.eof": True}))
    try:
        # a topic the principal may not even describe is refused in the metadata already
        meta = consumer.list_topics(topic, timeout=15).topics[topic]
        if meta.error is not None:
            return meta.error
        consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            error = msg.error()
            if error is None or error.code() == KafkaError._PARTITION_EOF:
                return None
            if error.code() in DENIED:
                return error
        raise AssertionError(f"no answer reading {topic} as {settings.sasl_username}")
    finally:
        consumer.close()


def group_refused(settings: Settings, topic: str, group: str, wait_s: float = 20) -> bool:
    """Whether the broker refuses ``group`` to this principal while it reads ``topic`` (a
    topic it may read). The refusal comes from the group's coordinator lookup, apart from
    the fetch: :func:`read` may reach the end of the partition first and answer allowed
    (a CI run under load did), and a commit fails locally, waiting for a coordinator it
    is never told of. So this waits for the refusal itself, ignoring records and ends."""
    consumer = Consumer(consumer_config(settings, group, {"enable.partition.eof": True}))
    try:
        consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            error = msg.error() if msg is not None else None
            if error is not None and error.code() == KafkaError.GROUP_AUTHORIZATION_FAILED:
                return True
        return False
    finally:
        consumer.close()


def commit(settings: Settings, topic: str, group: str) -> KafkaError | None:
    """Commit offset 0 of ``topic``'s partition 0 for ``group``; None when the broker lets
    us, else the error (a commit needs READ on the group, describing it does not)."""
    consumer = Consumer(consumer_config(settings, group, {"enable.auto.commit": False}))
    try:
        consumer.commit(offsets=[TopicPartition(topic, 0, 0)], asynchronous=False)
        return None
    except KafkaException as exc:
        error = exc.args[0]
        assert isinstance(error, KafkaError)
        return error
    finally:
        consumer.close()


def refused(error: KafkaError | None) -> bool:
    return error is not None and error.code() in DENIED


def creates(settings: Settings, name: str) -> bool:
    try:
        create_topics(settings, [TopicSpec(name, 1)])
    except KafkaAuthError:
        return False
    return True


def test_each_role_can_do_what_it_must_and_nothing_else(secure_roles: Roles) -> None:
    submitter, worker = secure_roles(Role.SUBMITTER), secure_roles(Role.WORKER)
    processor, admin = secure_roles(Role.PROCESSOR), secure_roles(Role.ADMIN)
    s = admin
    ready = ready_topic(s, "default", 0)
    me = uuid.uuid4().hex[:6]

    # the submitter: submits (writes events) and reads the queue registry, nothing more
    assert produce(submitter, events_topic(s)) is None
    assert read(submitter, queues_topic(s), registry_reader_group(s, me)) is None
    assert refused(read(submitter, ready, registry_reader_group(s, me)))
    assert refused(read(submitter, events_topic(s), registry_reader_group(s, me)))
    for topic in (ready, dlq_topic(s), cancellations_topic(s), queues_topic(s)):
        assert refused(produce(submitter, topic)), topic
    assert not creates(submitter, s.topic("anything"))

    # a worker: reads ready topics, cancellations and queues; writes events and quarantine
    assert read(worker, ready, worker_group(s, "default")) is None
    assert commit(worker, ready, worker_group(s, "default")) is None
    assert read(worker, cancellations_topic(s), worker_group(s, "control-x")) is None
    assert produce(worker, events_topic(s)) is None
    assert produce(worker, quarantine_topic(s)) is None
    assert refused(produce(worker, ready))
    assert refused(produce(worker, dlq_topic(s)))
    assert refused(read(worker, events_topic(s), worker_group(s, "default")))
    assert group_refused(worker, ready, processor_app_id(s))  # not the processors' group
    assert not group_refused(worker, ready, worker_group(s, "default"), wait_s=5)  # its own
    assert not creates(worker, s.topic("ready.new.p0"))

    # the processor: reads and writes events, writes what it derives, owns its topics
    assert read(processor, events_topic(s), processor_app_id(s)) is None
    for topic in (events_topic(s), ready, dlq_topic(s), cancellations_topic(s),
                  quarantine_topic(s), queues_topic(s)):
        assert produce(processor, topic) is None, topic
    assert refused(read(processor, ready, processor_app_id(s)))
    # the workers' groups: described for their lag (D24, D38), never joined or moved
    assert refused(commit(processor, ready, worker_group(s, "default")))
    assert creates(processor, ready_topic(s, "fresh", 0))
    assert creates(processor, f"{processor_app_id(s)}-extra-changelog")
    assert not creates(processor, s.topic("events2"))

    # the admin: the rest
    assert creates(admin, s.topic("events2"))
    assert read(admin, ready, s.topic("any-group")) is None
    assert s.topic("events2") in list_topics(admin)


def test_a_wrong_password_is_refused_with_what_to_check(secure_roles: Roles) -> None:
    wrong = secure_roles(Role.ADMIN, sasl_password="not-the-password", kafka_timeout_s=5)
    with pytest.raises(KafkaAuthError, match="SASL authentication") as info:
        list_topics(wrong)
    assert "TASKSTREAM_SASL_PASSWORD" in str(info.value)
    with TaskProducer(secure_roles(Role.SUBMITTER, sasl_password="nope", kafka_timeout_s=5)
                      ) as producer, pytest.raises(KafkaAuthError, match="refused this producer"):
        producer.submit("t.x", {"a": 1})


def test_an_unknown_ca_is_refused_with_what_to_check(secure_roles: Roles, tmp_path: Path
                                                     ) -> None:
    stranger = make_ca(tmp_path / "other")  # a CA that did not sign the brokers' certificate
    settings = secure_roles(Role.ADMIN, ssl_ca_file=stranger.cert, kafka_timeout_s=5)
    with pytest.raises(KafkaAuthError, match="certificate verify failed") as info:
        list_topics(settings)
    assert "TASKSTREAM_SSL_CA_FILE" in str(info.value)


def test_a_submitter_cannot_forge_worker_outcomes_or_processor_events(secure_roles: Roles
                                                                      ) -> None:
    """What the submitter can write to the events topic is refused by the fold's record
    checks when it poses as a worker or a processor, even with the right dispatch ID: here
    the fold run by replay, with the keyring every processor holds (the live engine runs the
    same ``check_record``)."""
    submitter, admin = secure_roles(Role.SUBMITTER), secure_roles(Role.ADMIN)
    with TaskProducer(submitter) as producer:
        task_id = producer.submit("t.victim", {"n": 1}).task_id
        producer.flush(20)
    # the worst case for the attacker's luck: it learned the real dispatch ID
    submit = next(e for e in (decode_event(m.value()) for m in read_to_end(
        admin, events_topic(admin))) if e.task_id == task_id)
    assert isinstance(submit.body, TaskSubmitted)
    from taskstream.processors.fold.steps import make_dispatch_id
    dispatch = make_dispatch_id(task_id, 1, submit.event_id)
    now = int(time.time() * 1000)
    forged = [TaskStarted(dispatch, "w-evil"), TaskSucceeded(dispatch, "w-evil", b'"owned"'),
              TimerFired(TimerKind.LEASE_EXPIRED, now, dispatch)]
    for body in forged:
        env = Envelope(new_event_id(), task_id, now, "worker:evil", 1, body)
        value = encode_event(env)
        # unsigned, then with a made-up signature header
        assert produce(submitter, events_topic(admin), value, task_id.encode()) is None
        assert produce(submitter, events_topic(admin), value, task_id.encode(),
                       [("ts-sig", b"worker-1.AAAAAAAAAAAAAAAAAAAAAA")]) is None
    history = task_history(admin, task_id)
    skipped = [h for h in history if h.envelope is None]
    assert len(skipped) == 2 * len(forged)
    assert all("only a" in (h.reason or "") for h in skipped), [h.reason for h in skipped]
    applied = [h for h in history if h.envelope is not None]
    assert [h.envelope.type_name for h in applied if h.envelope] == ["TaskSubmitted"]
    assert applied[-1].status_after == "READY"  # never SUCCEEDED
