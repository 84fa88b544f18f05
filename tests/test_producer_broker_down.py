"""A broker that dies mid-run: the caller hears about every event, none is lost silently.

This test starts its OWN single-node Kafka (the shared development broker must
never be stopped), from the jars the suite's cluster runs on (resolved once
into ``kafka_home`` by :func:`ensure_kafka`), kills it with SIGKILL
while a producer is submitting, and checks: every handle ends delivered or
failed, failed ones are reported by flush() as a DeliveryError naming them,
and after a restart every event reported delivered is in the log.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from taskstream.localkafka.install import KafkaInstall, ensure_kafka
from taskstream.producer import (
    BrokerUnreachableError,
    DeliveryError,
    FlushTimeoutError,
    TaskHandle,
    TaskProducer,
)
from taskstream.queue_registry import set_up_platform
from taskstream.settings import Settings, load_settings
from taskstream.topics import events_topic

pytestmark = [pytest.mark.kafka, pytest.mark.slow]



def _kafka() -> KafkaInstall:
    """The jars the suite's own cluster runs on (resolved once by ``make kafka-jars``)."""
    settings = load_settings()
    return ensure_kafka(settings.kafka_home, settings.kafka_version, show_progress=False)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


@dataclass
class OwnBroker:
    """One KRaft broker+controller in a temp dir, ports of its own."""

    home: Path
    port: int
    cport: int
    proc: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def write_config(self) -> Path:
        props = self.home / "server.properties"
        props.write_text(
            "\n".join(
                [
                    "process.roles=broker,controller",
                    "node.id=1",
                    f"controller.quorum.bootstrap.servers=127.0.0.1:{self.cport}",
                    f"listeners=PLAINTEXT://127.0.0.1:{self.port},"
                    f"CONTROLLER://127.0.0.1:{self.cport}",
                    f"advertised.listeners=PLAINTEXT://127.0.0.1:{self.port}",
                    "controller.listener.names=CONTROLLER",
                    "inter.broker.listener.name=PLAINTEXT",
                    "listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
                    f"log.dirs={self.home / 'data'}",
                    "offsets.topic.replication.factor=1",
                    "transaction.state.log.replication.factor=1",
                    "transaction.state.log.min.isr=1",
                    "share.coordinator.state.topic.replication.factor=1",
                    "share.coordinator.state.topic.min.isr=1",
                    "group.initial.rebalance.delay.ms=0",
                ]
            )
            + "\n"
        )
        (self.home / "log4j2.properties").write_text(
            "status = warn\n"
            "appender.file.type = File\nappender.file.name = FILE\n"
            f"appender.file.fileName = {self.home / 'server.log'}\n"
            "appender.file.layout.type = PatternLayout\n"
            "appender.file.layout.pattern = [%d] %p %m (%c)%n\n"
            "rootLogger.level = INFO\nrootLogger.appenderRef.file.ref = FILE\n"
        )
        return props

    def _java(self, *args: str) -> list[str]:
        kafka = _kafka()
        return [
            kafka.java,
            "-Xmx512m",
            f"-Dlog4j2.configurationFile={self.home / 'log4j2.properties'}",
            "-cp",
            kafka.classpath,
            *args,
        ]

    def format(self) -> None:
        props = self.write_config()
        cluster = uuid.uuid4().bytes
        import base64

        cluster_id = base64.urlsafe_b64encode(cluster).decode().rstrip("=")
        subprocess.run(
            self._java(
                "kafka.tools.StorageTool",
                "format",
                "--standalone",
                "-t",
                cluster_id,
                "-c",
                str(props),
            ),
            check=True,
            capture_output=True,
            timeout=120,
        )

    def start(self, timeout: float = 90) -> None:
        out = (self.home / "broker.out").open("ab")
        self.proc = subprocess.Popen(
            self._java("kafka.Kafka", str(self.home / "server.properties")),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        out.close()
        admin = AdminClient({"bootstrap.servers": self.bootstrap})
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, (self.home / "broker.out").read_text()[-2000:]
            try:
                if admin.list_topics(timeout=2).brokers:
                    return
            except Exception:
                time.sleep(0.5)
        raise RuntimeError(f"own broker did not start within {timeout}s; see {self.home}")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(30)
        self.proc = None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()
        self.proc = None


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[OwnBroker]:
    broker = OwnBroker(tmp_path, _free_port(), _free_port())
    broker.format()
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


def _read_keys(bootstrap: str, topic: str, partitions: int, timeout: float = 60) -> set[str]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": uuid.uuid4().hex})
    consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    keys: set[str] = set()
    deadline = time.monotonic() + timeout
    quiet = 0
    try:
        while time.monotonic() < deadline and quiet < 4:
            batch = consumer.consume(10_000, timeout=0.5)
            quiet = 0 if batch else quiet + 1
            keys.update(m.key().decode() for m in batch if m.error() is None)
    finally:
        consumer.close()
    return keys


def test_broker_killed_mid_run_every_loss_is_reported(own_broker: OwnBroker) -> None:
    settings = Settings(
        bootstrap=own_broker.bootstrap,
        topic_prefix="down.",
        partitions=3,
        delivery_timeout_s=6,
        kafka_timeout_s=3,
        linger_ms=20,
    )
    topic = events_topic(settings)
    admin = AdminClient({"bootstrap.servers": own_broker.bootstrap})
    for fut in admin.create_topics([NewTopic(topic, 3, 1)]).values():
        fut.result(timeout=30)
    set_up_platform(settings)  # the queue registry: submissions go to registered queues only
    time.sleep(1)

    producer = TaskProducer(settings, queue_full_timeout_s=2)
    handles: list[TaskHandle] = []
    for i in range(3_000):
        handles.append(producer.submit("before", {"i": i}))
    producer.flush(30)  # these are durable

    # keep submitting while the broker dies under us
    reported: set[str] = set()
    own_broker.kill()
    raised: Exception | None = None
    try:
        for i in range(3_000):
            handles.append(producer.submit("during", {"i": i}))
            if i % 500 == 0:
                time.sleep(0.05)
    except (BrokerUnreachableError, FlushTimeoutError) as exc:
        raised = exc
    started = time.monotonic()
    with pytest.raises(DeliveryError) as info:
        producer.flush(30)
    # bounded: the events fail once delivery_timeout_s has passed
    assert time.monotonic() - started < 30
    err = info.value
    assert own_broker.bootstrap in str(err)
    reported.update(err.task_ids)

    # every handle has an outcome; every failure was reported by flush()
    assert all(h.done for h in handles)
    failed = {h.task_id for h in handles if h.failure is not None}
    delivered = {h.task_id for h in handles if h.failure is None}
    assert failed and failed == reported
    assert raised is None or isinstance(raised, BrokerUnreachableError | FlushTimeoutError)

    # and everything reported delivered is really in the log
    own_broker.start()
    in_log = _read_keys(own_broker.bootstrap, topic, 3)
    assert delivered <= in_log
