"""Reading the workers topic: who is there, and who is lost (workers/presence.py writes it).

:class:`Roster` keeps the last record of every worker. :class:`RosterReader`
feeds one from the topic in a daemon thread: every partition assigned (no group
is joined), read from the beginning and then followed, so an API replica always
has the current list (``GET /workers``, the per-worker metrics).
:func:`read_workers` reads the topic once to its end (``taskstream doctor``).
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Iterable
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition

from taskstream.kafka_config import consumer_config
from taskstream.settings import Settings
from taskstream.topics import roster_group, workers_topic
from taskstream.workers import presence
from taskstream.workers.presence import WorkerRecord

log = logging.getLogger("taskstream.workers.roster")

POLL_S = 0.2
#: how often the reader looks for the topic again when it is missing
RETRY_S = 5.0


class Roster:
    """The last record of each worker; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._records: dict[str, WorkerRecord] = {}

    def apply(self, key: bytes | None, value: bytes | None) -> None:
        """One record of the workers topic (a tombstone removes the worker)."""
        if key is None:
            return
        worker_id = key.decode("utf-8", "replace")
        if value is None:
            with self._lock:
                self._records.pop(worker_id, None)
            return
        try:
            record = WorkerRecord.decode(value)
        except ValueError as exc:
            log.warning("workers topic: record of %s skipped: %s", worker_id, exc)
            return
        with self._lock:
            self._records[worker_id] = record

    def records(self) -> list[WorkerRecord]:
        with self._lock:
            return sorted(self._records.values(), key=lambda r: r.worker_id)

    def views(self, at_ms: int | None = None, *, include_stopped: bool = False
              ) -> list[dict[str, Any]]:
        """Each worker as the API shows it; stopped ones only when asked."""
        now = presence.now_ms() if at_ms is None else at_ms
        return [r.view(now) for r in self.records()
                if include_stopped or r.status(now) != "stopped"]


def live_by_queue(records: Iterable[WorkerRecord], now_ms: int) -> dict[str, int]:
    """Queue -> workers consuming it that are running now (not lost, not stopping)."""
    counts: dict[str, int] = {}
    for record in records:
        if record.status(now_ms) == "running":
            for queue in record.queues:
                counts[queue] = counts.get(queue, 0) + 1
    return counts


class RosterReader:
    """Follows the workers topic into a :class:`Roster` (a daemon thread)."""

    def __init__(self, settings: Settings, roster: Roster | None = None) -> None:
        self.roster = roster or Roster()
        self._topic = workers_topic(settings)
        self._timeout = settings.kafka_timeout_s
        self._consumer = Consumer(consumer_config(settings, roster_group(uuid.uuid4().hex), {
            "enable.partition.eof": True,
            "socket.connection.setup.timeout.ms": max(1000, int(self._timeout * 1000))}))
        self._ends: dict[int, int] | None = None  # high watermarks when first assigned
        self._caught_up = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="taskstream-roster", daemon=True)

    def start(self) -> RosterReader:
        self._thread.start()
        return self

    def wait_caught_up(self, timeout_s: float) -> bool:
        """True once every record written before the reader started has been read."""
        return self._caught_up.wait(timeout_s)

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(self._timeout + 5)

    def _assign(self) -> bool:
        try:
            meta = self._consumer.list_topics(self._topic, timeout=self._timeout)
        except KafkaException as exc:
            log.warning("workers topic %s: metadata not read (%s); retrying", self._topic, exc)
            return False
        topic = meta.topics.get(self._topic)
        if topic is None or topic.error is not None or not topic.partitions:
            log.warning("workers topic %s does not exist; create it with `taskstream topics "
                        "create` (retrying every %gs)", self._topic, RETRY_S)
            return False
        ends = {}
        for p in topic.partitions:
            low, high = self._consumer.get_watermark_offsets(
                TopicPartition(self._topic, p), timeout=self._timeout)
            if high > low:
                ends[p] = high
        self._ends = ends
        if not ends:
            self._caught_up.set()
        self._consumer.assign([TopicPartition(self._topic, p, OFFSET_BEGINNING)
                               for p in topic.partitions])
        return True

    def _run(self) -> None:
        try:
            while not self._stop.is_set() and not self._assign():
                self._stop.wait(RETRY_S)
            while not self._stop.is_set():
                msg = self._consumer.poll(POLL_S)
                if msg is None:
                    continue
                err = msg.error()
                if err is not None:
                    if err.code() != KafkaError._PARTITION_EOF:
                        log.warning("workers topic: %s", err)
                    continue
                self.roster.apply(msg.key(), msg.value())
                self._note_progress(msg.partition(), msg.offset())
        except Exception:
            log.exception("the workers topic reader stopped; GET /workers is stale from now")
        finally:
            self._consumer.close()

    def _note_progress(self, partition: int | None, offset: int | None) -> None:
        ends = self._ends
        if ends is None or self._caught_up.is_set() or partition is None or offset is None:
            return
        if offset + 1 >= ends.get(partition, 0):
            ends.pop(partition, None)
        if not ends:
            self._caught_up.set()


def read_workers(settings: Settings, timeout_s: float | None = None) -> list[WorkerRecord]:
    """Every worker's last record, the topic read once to its end (bounded by the timeout).

    Raises TimeoutError when the topic could not be read to its end in time.
    """
    timeout = settings.kafka_timeout_s if timeout_s is None else timeout_s
    reader = RosterReader(settings).start()
    try:
        if not reader.wait_caught_up(timeout):
            raise TimeoutError(f"the workers topic {workers_topic(settings)} was not read to "
                               f"its end in {timeout:g} s")
        return reader.roster.records()
    finally:
        reader.close()
