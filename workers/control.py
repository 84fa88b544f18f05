"""Reads the compacted control topics every worker must see in full.

``cancellations`` (key task ID, value a TaskCancelled envelope, tombstones
allowed) and ``queues`` (see :mod:`taskstream.workers.queuectl`). No consumer
group: all partitions are assigned and read from the beginning at start, and
:meth:`ControlReader.wait_caught_up` lets the worker start only after it has
seen everything written before it started (bounded).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from taskstream.kafka_config import consumer_config
from taskstream.schemas.errors import DecodeError
from taskstream.schemas.ids import is_withdrawal
from taskstream.schemas.serde import decode_event
from taskstream.settings import Settings
from taskstream.topics import cancellations_topic, queues_topic, worker_control_group
from taskstream.workers.queuectl import QueueCommand, parse_command

log = logging.getLogger("taskstream.worker")

#: task_id, attempt, and whether the record withdraws that one ended attempt (D49)
#: rather than cancel the task
OnCancel = Callable[[str, int, bool], object]
OnQueue = Callable[[QueueCommand], object]
RETRY_METADATA_S = 5.0


class ControlReader:
    def __init__(self, settings: Settings, on_cancel: OnCancel, on_queue: OnQueue) -> None:
        self._cancellations = cancellations_topic(settings)
        self._queues = queues_topic(settings)
        self._timeout = settings.kafka_timeout_s
        self._on_cancel = on_cancel
        self._on_queue = on_queue
        self._consumer = Consumer(consumer_config(
            settings, worker_control_group(settings, uuid.uuid4().hex),
            {"enable.auto.offset.store": False, "auto.offset.reset": "earliest"}))
        self._assigned: set[str] = set()
        self._targets: dict[tuple[str, int], int] = {}  # high watermark at start
        self._caught_up = threading.Event()
        self._warned_missing = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="taskstream-control", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def wait_caught_up(self, timeout_s: float) -> bool:
        return self._caught_up.wait(timeout_s)

    @property
    def died(self) -> bool:
        """Its thread ended before :meth:`close`: cancellations and queue commands are read
        no more (the worker's watchdog asks, D47)."""
        return (self._thread.ident is not None and not self._thread.is_alive()
                and not self._stop.is_set())

    def close(self) -> None:
        self._stop.set()
        self._thread.join(self._timeout + 5)

    def _assign_missing(self) -> None:
        try:
            metadata = self._consumer.list_topics(timeout=self._timeout)
        except KafkaException as exc:
            log.warning("event=control.metadata.failed error=%s", exc)
            return
        for name in (self._cancellations, self._queues):
            meta = metadata.topics.get(name)
            if name in self._assigned or meta is None or meta.error is not None:
                continue
            new = [TopicPartition(name, pid, -2) for pid in meta.partitions]  # from the beginning
            try:
                marks = [self._consumer.get_watermark_offsets(tp, timeout=self._timeout)
                         for tp in new]
            except KafkaException as exc:  # e.g. a new topic without a leader yet: retry
                log.warning("event=control.watermarks.failed topic=%s error=%s", name, exc)
                continue
            for tp, (low, high) in zip(new, marks, strict=True):
                if high > low:
                    self._targets[(name, tp.partition)] = high
            self._consumer.incremental_assign(new)
            self._assigned.add(name)
        missing = {self._cancellations, self._queues} - self._assigned
        if missing and not self._warned_missing:
            self._warned_missing = True
            log.warning("event=control.topics.missing topics=%s (create them with "
                        "`taskstream topics create`)", sorted(missing))

    def _run(self) -> None:
        next_metadata = 0.0
        try:
            while not self._stop.is_set():
                if len(self._assigned) < 2 and _now() >= next_metadata:
                    self._assign_missing()
                    retry_s = RETRY_METADATA_S if self._caught_up.is_set() else 0.5
                    next_metadata = _now() + retry_s
                    if len(self._assigned) == 2 and not self._targets:
                        self._caught_up.set()
                try:
                    for msg in self._consumer.consume(num_messages=500, timeout=0.1):
                        self._handle(msg)
                except Exception:  # one bad record or callback must not stop the reader
                    log.exception("event=control.error (continuing)")
                    self._stop.wait(0.5)
        finally:
            self._consumer.close()

    def _handle(self, msg: Message) -> None:
        err = msg.error()
        if err is not None:
            if err.code() != KafkaError._PARTITION_EOF:
                log.warning("event=control.consume.error error=%s", err)
            return
        topic, partition, offset = msg.topic(), msg.partition(), msg.offset()
        if topic is None or partition is None or offset is None:
            return
        if topic == self._cancellations:
            value = msg.value()
            if value:  # a tombstone removes an old cancellation: nothing to do
                try:
                    envelope = decode_event(value)
                except DecodeError as exc:
                    log.warning("event=control.undecodable topic=%s offset=%d error=%s",
                                topic, offset, exc)
                else:
                    self._on_cancel(envelope.task_id, envelope.attempt,
                                    is_withdrawal(envelope.event_id))
        else:
            command = parse_command(msg.key(), msg.value())
            if command is not None:
                self._on_queue(command)
        target = self._targets.get((topic, partition))
        if target is not None and offset + 1 >= target:
            del self._targets[(topic, partition)]
            if not self._targets and len(self._assigned) == 2:
                self._caught_up.set()


def _now() -> float:
    return time.monotonic()
