"""Faust (kafka:// driver, rocksdb:// store) works against our Kafka 4.3.1.

A Faust app in a child process folds events into a RocksDB-backed table and
writes the table to a JSON snapshot file every 0.2 s once recovery is done.
1. Run it, produce events, see the sums.
2. Delete its data dir and restart: the table comes back from the changelog.
3. Empty the changelog topic (delete its records) and restart on the same data
   dir: the table comes back from local RocksDB, the only place left holding it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import (
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    ResourceType,
)

from taskstream.admin import TopicSpec, create_topics
from taskstream.localkafka.cluster import free_port_block
from taskstream.settings import Settings

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

APP = '''
import json, os, sys
import faust

app_id, bootstrap, topic, datadir, port, snapshot = os.environ["SMOKE_ARGS"].split("|")
app = faust.App(app_id, broker=f"kafka://{bootstrap}", store="rocksdb://", datadir=datadir,
                web_host="127.0.0.1", web_port=int(port), topic_partitions=3,
                topic_replication_factor=1, table_standby_replicas=0)
source = app.topic(topic, key_serializer="raw", value_serializer="raw")
sums = app.Table("sums", default=int, partitions=3, key_type=str, value_type=int)

@app.agent(source)
async def fold(stream):
    async for key, value in stream.items():
        sums[key.decode()] += int(value)

@app.timer(0.2)
async def write_snapshot():
    if app.in_recovery or app.rebalancing or not app.tables.recovery.completed.is_set():
        return
    tmp = snapshot + ".tmp"
    with open(tmp, "w") as f:
        json.dump(dict(sums.items()), f)
    os.replace(tmp, snapshot)

if __name__ == "__main__":
    app.main()
'''


class FaustApp:
    def __init__(self, settings: Settings, base: Path, topic: str) -> None:
        self.settings, self.base, self.topic = settings, base, topic
        self.app_id = f"smoke-{uuid.uuid4().hex[:8]}"
        self.script = base / "smoke_app.py"
        self.script.write_text(APP)
        self.datadir = base / "faust-data"
        self.snapshot = base / "snapshot.json"
        self.log = base / "faust.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def changelog(self) -> str:
        return f"{self.app_id}-sums-changelog"

    def start(self) -> None:
        self.snapshot.unlink(missing_ok=True)
        port = str(free_port_block(1))
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, str(self.script), "worker", "--loglevel", "info"],
                env={**os.environ, "SMOKE_ARGS": "|".join([
                    self.app_id, self.settings.bootstrap, self.topic, str(self.datadir), port,
                    str(self.snapshot)])},
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=self.base)

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.proc = None

    def wait_for_sums(self, expected: dict[str, int], timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            assert self.proc is not None and self.proc.poll() is None, self.tail()
            try:
                last = json.loads(self.snapshot.read_text())
            except (FileNotFoundError, json.JSONDecodeError):
                last = None
            if last == expected:
                return
            time.sleep(0.2)
        raise AssertionError(f"table is {last}, expected {expected} after {timeout}s\n"
                             + self.tail())

    def tail(self) -> str:
        return "faust log tail:\n" + "\n".join(self.log.read_text().splitlines()[-40:])


def produce(settings: Settings, topic: str, events: list[tuple[str, int]]) -> None:
    producer = Producer({"bootstrap.servers": settings.bootstrap,
                         "partitioner": "murmur2_random", "acks": "all"})
    for key, value in events:
        producer.produce(topic, key=key.encode(), value=str(value).encode())
    assert producer.flush(settings.kafka_timeout_s) == 0


def empty_topic(settings: Settings, topic: str) -> int:
    """Delete every record of ``topic``; returns how many partitions had records."""
    admin = AdminClient({"bootstrap.servers": settings.bootstrap})
    # a compacted topic refuses DeleteRecords (POLICY_VIOLATION) unless delete is in its policy
    policy = ConfigEntry("cleanup.policy", "compact,delete",
                         incremental_operation=AlterConfigOpType.SET)
    for future in admin.incremental_alter_configs(
            [ConfigResource(ResourceType.TOPIC, topic, incremental_configs=[policy])]).values():
        future.result(timeout=settings.kafka_timeout_s)
    partitions = admin.list_topics(topic, timeout=10).topics[topic].partitions
    # the new policy reaches the partition leader a moment after the alter returns:
    # until then DeleteRecords is still refused, so retry that refusal (bounded)
    deadline = time.monotonic() + settings.kafka_timeout_s
    while True:
        # OFFSET_END (-1) deletes up to the high watermark
        futures = admin.delete_records([TopicPartition(topic, p, -1) for p in partitions])
        try:
            deleted = [f.result(timeout=settings.kafka_timeout_s) for f in futures.values()]
        except KafkaException as exc:
            refused = exc.args[0].code() == KafkaError.POLICY_VIOLATION
            if not refused or time.monotonic() > deadline:
                raise
            time.sleep(0.2)
            continue
        return sum(1 for d in deleted if d.low_watermark > 0)


def test_table_survives_restarts_from_disk_and_from_changelog(
        settings: Settings, tmp_path: Path) -> None:
    topic = settings.topic("smoke")
    create_topics(settings, [TopicSpec(topic, 3)])
    app = FaustApp(settings, tmp_path, topic)
    keys = [f"k{i}" for i in range(12)]
    try:
        app.start()
        produce(settings, topic, [(k, i + 1) for i, k in enumerate(keys)] * 2)
        expected = {k: 2 * (i + 1) for i, k in enumerate(keys)}
        app.wait_for_sums(expected)
        app.stop()

        # 2. no local state at all: everything must come from the changelog
        shutil.rmtree(app.datadir)
        app.start()
        app.wait_for_sums(expected)
        produce(settings, topic, [(k, 100) for k in keys])  # and it keeps folding
        expected = {k: v + 100 for k, v in expected.items()}
        app.wait_for_sums(expected)
        app.stop()

        # 3. no changelog records: everything must come from local RocksDB
        assert empty_topic(settings, app.changelog) > 0
        app.start()
        app.wait_for_sums(expected)
    finally:
        app.stop()
