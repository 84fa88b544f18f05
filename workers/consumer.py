"""One consumer-group member per queue, reading that queue's ready topics.

A daemon thread owns the confluent-kafka Consumer (poll, pause, resume,
commit, close all happen there); the asyncio side only takes decoded records
from a lock-protected buffer and reports them settled. See
:mod:`taskstream.workers.flow` for the commit, pause and backpressure rules.

Group id ``<prefix>workers.<queue>``, manual commits, ``auto.offset.reset=earliest``.
A newly assigned partition stays paused until its lag is known, so a backlog in
a high level is never overtaken by a low one at start-up. A worker with tags
subscribes to the ready topics of every subset of its tags by pattern (D38,
:func:`taskstream.topics.ready_subscription`); workers of one queue with
different tags share the group, and the assignor gives each topic's partitions
only to the members subscribed to it.

Assignment is ``roundrobin`` (docs/decisions.md, D21): a queue's work sits
mostly in one level's topic, and ``cooperative-sticky`` balances only the
number of partitions per member across all levels: with two workers it gave
one of them every partition of ``p0`` and the other none, so adding a worker
moved the work instead of sharing it. Round robin over the sorted topic
partitions spreads each level's partitions evenly. It is an eager protocol
(every member gives up its partitions at each rebalance), so a revocation
waits, bounded, for the ``TaskStarted`` acknowledgements of the records this
member already started and commits them: nothing started is read again by the
next owner, which may be this same member.

Fetching: the broker answers a fetch as soon as one record is there
(``fetch.min.bytes`` 1) or after ``fetch.wait.max.ms``, which also bounds how
long a resumed partition waits for the next fetch request; librdkafka keeps
about ``queued.min.messages`` records per partition fetched ahead, so a busy
worker takes records in batches from memory while an idle one gets each record
one round trip after it is written.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from taskstream.faults import fault_point
from taskstream.kafka_config import consumer_config as kafka_consumer_config
from taskstream.schemas.errors import DecodeError
from taskstream.schemas.events import Envelope, TaskDispatched
from taskstream.schemas.serde import decode_event
from taskstream.settings import Settings
from taskstream.telemetry.context import TraceContext, from_headers
from taskstream.topics import ready_subscription, worker_group
from taskstream.workers.emitter import EventEmitter
from taskstream.workers.flow import (
    TP,
    Backpressure,
    OffsetTracker,
    desired_paused,
    level_of_topic,
    waiting_levels,
)
from taskstream.workers.metrics import WorkerMetrics

log = logging.getLogger("taskstream.worker")

POLL_S = 0.1
COMMIT_EVERY_S = 0.5
#: a buffer full for this long pauses fetching (flow.py, the backpressure rule)
STALL_S = 1.0
#: bound on waiting, at a revocation, for the acks of records already started
REVOKE_WAIT_S = 5.0
#: the pause rules are applied at least this often, and at once when something they
#: read changes (assignment, queue pause, backpressure); not on every fetch, whose
#: records arrive one by one on a lightly loaded worker
FLOW_EVERY_S = 0.01
_QUIET_ERRORS = {KafkaError._PARTITION_EOF, KafkaError.UNKNOWN_TOPIC_OR_PART}


@dataclass(frozen=True, slots=True)
class ReadyRecord:
    tp: TP
    offset: int
    level: int
    envelope: Envelope
    dispatched: TaskDispatched
    #: the ready record's traceparent (read only when the worker traces)
    trace: TraceContext | None = None


def consumer_config(settings: Settings, group_id: str, client_id: str,
                    prefetch: int) -> dict[str, Any]:
    """The ready-topic consumer (see the module doc for assignment and fetching)."""
    return kafka_consumer_config(settings, group_id, {
        "client.id": client_id,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
        "partition.assignment.strategy": "roundrobin",
        "session.timeout.ms": 10_000,
        # a member learns of a rebalance at its next heartbeat: a joining worker waits
        # for it, so keep it short
        "heartbeat.interval.ms": 1_000,
        "topic.metadata.refresh.interval.ms": 10_000,
        "fetch.wait.max.ms": 50,
        "queued.min.messages": max(prefetch, 100),
        # below queued.min.messages again: fetch at once, not after the 1 s default
        "fetch.queue.backoff.ms": 10,
    })


def _tp(p: TopicPartition) -> TP:
    return (p.topic, p.partition)


class QueueConsumer:
    """Reads one queue's ready topics for a worker."""

    def __init__(self, settings: Settings, queue: str, *, prefetch: int, client_id: str,
                 emitter: EventEmitter, metrics: WorkerMetrics,
                 on_records: Callable[[], object], tags: tuple[str, ...] = (),
                 trace_headers: bool = False) -> None:
        self.queue = queue
        self.tags = tags
        self._trace_headers = trace_headers
        self.group_id = worker_group(settings, queue)
        self._topics = ready_subscription(settings, queue, tags)
        self._timeout = settings.kafka_timeout_s
        self._prefetch = max(1, prefetch)
        self._emitter = emitter
        self._metrics = metrics
        self._on_records = on_records
        self._lock = threading.Lock()
        self._buffers: dict[int, deque[ReadyRecord]] = {}
        self._buffered = 0
        self._dropped: dict[TP, set[int]] = {}  # delivered, then dropped unstarted
        self._room = threading.Event()  # set by take() when the poll thread waits for room
        self._wants_room = False
        self._tracker = OffsetTracker()
        self._levels: dict[TP, int] = {}
        self._new: set[TP] = set()
        self._paused_now: set[TP] = set()
        self._next: dict[TP, int] = {}
        self._high: dict[TP, int] = {}
        self._backpressure = Backpressure(self._prefetch, STALL_S)
        self._stalled = False
        self._lag_total = 0
        self._flow_due = 0.0  # when the pause rules are next applied; 0: at once
        self._queue_paused = False
        self._draining = False
        self._stop = threading.Event()
        self._last_commit = 0.0
        conf = consumer_config(settings, self.group_id, client_id, self._prefetch)
        conf["on_commit"] = self._on_commit
        self._consumer = Consumer(conf)
        self._thread = threading.Thread(target=self._run, name=f"taskstream-queue-{queue}",
                                        daemon=True)

    # -- called from the asyncio side (any thread) --------------------------------

    def start(self) -> None:
        self._consumer.subscribe(self._topics, on_assign=self._on_assign,
                                 on_revoke=self._on_revoke, on_lost=self._on_lost)
        self._thread.start()

    def take(self) -> ReadyRecord | None:
        """The next record to start: highest level first; None when none or paused."""
        with self._lock:
            if self._queue_paused or self._draining or not self._buffered:
                return None
            for level in sorted(self._buffers, reverse=True):
                if self._buffers[level]:
                    self._buffered -= 1
                    if self._wants_room:
                        self._wants_room = False
                        self._room.set()
                    return self._buffers[level].popleft()
        return None

    def settle(self, tp: TP, offset: int) -> None:
        """The record was started (TaskStarted acknowledged) or needs no start."""
        with self._lock:
            self._tracker.settled(tp, offset)

    def owns(self, tp: TP) -> bool:
        """Is the partition still assigned here (a record of a revoked one must not start)?"""
        with self._lock:
            return tp in self._levels

    def backlog(self) -> int:
        """Records waiting for this worker: buffered here plus lag on its partitions (as of
        the poll thread's last look)."""
        with self._lock:
            return self._buffered + self._lag_total

    def set_prefetch(self, prefetch: int) -> None:
        """Buffer up to ``prefetch`` records (``--concurrency auto`` moves it)."""
        with self._lock:
            self._prefetch = max(1, prefetch)
            self._backpressure.prefetch = self._prefetch

    def set_paused(self, paused: bool) -> None:
        with self._lock:
            self._queue_paused = paused
            self._flow_due = 0.0

    @property
    def paused(self) -> bool:
        return self._queue_paused

    def assignment(self) -> set[TP]:
        with self._lock:
            return set(self._levels)

    def drain(self) -> None:
        """Stop fetching and starting; buffered records are dropped (re-read later)."""
        with self._lock:
            self._draining = True
            self._flow_due = 0.0
            self._drop_buffered(set(self._levels))

    @property
    def died(self) -> bool:
        """Its poll thread ended before :meth:`close`: the queue is read no more (the
        worker's watchdog asks, D47)."""
        return (self._thread.ident is not None and not self._thread.is_alive()
                and not self._stop.is_set())

    def close(self) -> None:
        """Final commit, leave the group, join the thread (bounded)."""
        self._stop.set()
        self._thread.join(self._timeout + 5)
        if self._thread.is_alive():
            log.warning("event=consumer.close.timeout queue=%s", self.queue)

    # -- rebalance callbacks (run in the poll thread) --------------------------

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        consumer.assign(partitions)
        if partitions:
            consumer.pause(partitions)  # until the lag is known (see the module doc)
        with self._lock:
            for p in partitions:
                tp = _tp(p)
                self._levels[tp] = level_of_topic(p.topic)
                self._new.add(tp)
                self._paused_now.add(tp)
            self._flow_due = 0.0
        log.info("event=partitions.assigned queue=%s partitions=%s", self.queue,
                 sorted(_tp(p) for p in partitions))

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Drop the records not started; wait (bounded) until the started ones are
        settled; commit; forget the partitions."""
        gone = {_tp(p) for p in partitions}
        with self._lock:
            self._drop_buffered(gone)
        self._wait_started(gone, REVOKE_WAIT_S)
        self._commit(only=gone, asynchronous=False)
        self._forget(partitions)
        log.info("event=partitions.revoked queue=%s partitions=%s", self.queue,
                 sorted(_tp(p) for p in partitions))

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._forget(partitions)
        log.warning("event=partitions.lost queue=%s partitions=%s", self.queue,
                    sorted(_tp(p) for p in partitions))

    def _drop_buffered(self, gone: set[TP]) -> None:
        """Remove the buffered records of ``gone`` partitions, never to be started here
        (they stay uncommitted); the caller holds the lock."""
        for level, buf in self._buffers.items():
            kept: deque[ReadyRecord] = deque()
            for record in buf:
                if record.tp in gone:
                    self._dropped.setdefault(record.tp, set()).add(record.offset)
                    self._buffered -= 1
                else:
                    kept.append(record)
            self._buffers[level] = kept

    def _wait_started(self, gone: set[TP], timeout: float) -> None:
        """Until every started record of ``gone`` is settled (its TaskStarted acknowledged),
        at most ``timeout`` seconds; a record still unsettled then is read again by the
        next owner (and fenced by the processor if both start it)."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                started = sum(self._tracker.pending(tp) - len(self._dropped.get(tp, ()))
                              for tp in gone)
            if started <= 0:
                return
            if time.monotonic() > deadline:
                log.warning("event=revoke.unsettled queue=%s started=%d (their records are "
                            "read again by the next owner)", self.queue, started)
                return
            time.sleep(0.005)

    def _forget(self, partitions: list[TopicPartition]) -> None:
        gone = {_tp(p) for p in partitions}
        with self._lock:
            self._drop_buffered(gone)
            self._tracker.forget(gone)
            for tp in gone:
                self._dropped.pop(tp, None)
            self._flow_due = 0.0
            for tp in gone:
                self._levels.pop(tp, None)
                self._new.discard(tp)
                self._paused_now.discard(tp)
                self._next.pop(tp, None)
                self._high.pop(tp, None)

    def _on_commit(self, err: KafkaError | None, partitions: list[TopicPartition]) -> None:
        if err is not None and err.code() != KafkaError._NO_OFFSET:
            log.warning("event=commit.failed queue=%s error=%s", self.queue, err)
            return
        with self._lock:
            for p in partitions:
                if p.error is None and p.offset >= 0:
                    self._tracker.mark_committed(_tp(p), p.offset)

    # -- the poll thread ---------------------------------------------------------

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                fault_point("worker.consumer_loop")
                self._init_new_partitions()
                stalled = self._apply_flow()
                room = self._prefetch - self._buffered
                if room > 0 or stalled:
                    # stalled: every partition is paused, so this serves the group's
                    # callbacks and takes at most what was in flight
                    self._handle(self._fetch(max(1, room)))
                else:
                    self._wait_for_room()
                if time.monotonic() - self._last_commit >= COMMIT_EVERY_S:
                    self._commit(asynchronous=True)
        except Exception:
            log.exception("event=consumer.crashed queue=%s (the worker's watchdog stops the "
                          "worker, D47; leases recover started tasks)", self.queue)
        finally:
            self._commit(asynchronous=False)
            try:
                self._consumer.close()
            except (KafkaException, RuntimeError) as exc:
                log.warning("event=consumer.close.failed queue=%s error=%s", self.queue, exc)

    def _fetch(self, room: int) -> list[Message]:
        """Up to ``room`` records, returned as soon as there is one.

        ``consume(n, timeout)`` would wait for all ``n`` (or the timeout): with a
        small ``room`` that caps a worker at ``room`` records per ``POLL_S`` and adds
        up to ``POLL_S`` to every task's wait. So: take what the client has already
        fetched; if nothing, wait for the first record only, then take the rest that
        came with it.
        """
        messages: list[Message] = self._consumer.consume(num_messages=room, timeout=0)
        if messages:
            return messages
        first = self._consumer.poll(POLL_S)
        if first is None:
            return []
        if room == 1:
            return [first]
        return [first, *self._consumer.consume(num_messages=room - 1, timeout=0)]

    def _wait_for_room(self) -> None:
        """The buffer is full: wait until take() frees a slot, at most POLL_S."""
        with self._lock:
            if self._buffered < self._prefetch:
                return
            self._room.clear()
            self._wants_room = True
        self._room.wait(POLL_S)

    def _init_new_partitions(self) -> None:
        with self._lock:
            new = sorted(self._new)
        if not new:
            return
        try:
            committed = self._consumer.committed([TopicPartition(t, p) for t, p in new],
                                                 timeout=self._timeout)
            marks = {tp: self._consumer.get_watermark_offsets(
                TopicPartition(*tp), timeout=self._timeout, cached=False) for tp in new}
        except KafkaException as exc:
            log.warning("event=lag.unknown queue=%s error=%s (retrying)", self.queue, exc)
            return
        with self._lock:
            for p in committed:
                tp = _tp(p)
                if tp not in self._levels:
                    continue
                low, high = marks[tp]
                self._next[tp] = p.offset if p.offset >= 0 else low
                self._high[tp] = high
                if p.offset >= 0:
                    self._tracker.mark_committed(tp, p.offset)
                self._new.discard(tp)
            self._flow_due = 0.0

    def _lag(self) -> dict[TP, int]:
        lag: dict[TP, int] = {}
        for tp in list(self._levels):
            try:
                _, high = self._consumer.get_watermark_offsets(TopicPartition(*tp),
                                                               cached=True)
            except KafkaException:
                high = -1
            if high is not None and high >= 0:
                self._high[tp] = max(high, self._high.get(tp, 0))
            if tp in self._next and tp in self._high:
                lag[tp] = self._high[tp] - self._next[tp]
        return lag

    def _apply_flow(self) -> bool:
        """Pause and resume partitions by the flow rules (when due, see FLOW_EVERY_S);
        True when stalled (all paused because the buffer stayed full)."""
        now = time.monotonic()
        with self._lock:
            stalled = self._backpressure.update(self._buffered, now)
            if stalled == self._stalled and now < self._flow_due:
                return stalled
            self._stalled = stalled
            self._flow_due = now + FLOW_EVERY_S
        lag = self._lag()
        with self._lock:
            self._lag_total = sum(max(0, n) for n in lag.values())
            buffered: dict[int, int] = {lvl: len(b) for lvl, b in self._buffers.items()}
            want = desired_paused(self._levels, waiting_levels(self._levels, buffered, lag),
                                  full=stalled,
                                  queue_paused=self._queue_paused or self._draining)
            want |= self._new
            to_pause = want - self._paused_now
            to_resume = (self._paused_now - want) & set(self._levels)
        if to_pause:
            self._consumer.pause([TopicPartition(*tp) for tp in sorted(to_pause)])
        if to_resume:
            self._consumer.resume([TopicPartition(*tp) for tp in sorted(to_resume)])
        with self._lock:
            self._paused_now = (self._paused_now | to_pause) - to_resume
        return stalled

    def _handle(self, messages: list[Message]) -> None:
        """Register the fetched records as delivered, decode them, buffer them (two
        lock round trips per batch, not per record)."""
        fetched: list[tuple[Message, TP, int, int]] = []
        with self._lock:
            for msg in messages:
                err = msg.error()
                if err is not None:
                    if err.code() not in _QUIET_ERRORS:
                        log.warning("event=consume.error queue=%s error=%s", self.queue, err)
                    continue
                topic, partition, offset = msg.topic(), msg.partition(), msg.offset()
                if topic is None or partition is None or offset is None:
                    continue
                tp = (topic, partition)
                if tp not in self._levels:
                    continue
                self._tracker.delivered(tp, offset)
                if offset >= self._next.get(tp, 0):
                    self._next[tp] = offset + 1
                fetched.append((msg, tp, offset, self._levels[tp]))
        records = [r for r in (self._decode(*f) for f in fetched) if r is not None]
        if not records:
            return
        with self._lock:
            for record in records:
                if self._draining:  # shutting down: never started, re-read later
                    self._dropped.setdefault(record.tp, set()).add(record.offset)
                    continue
                self._buffers.setdefault(record.level, deque()).append(record)
                self._buffered += 1
        self._on_records()

    def _decode(self, msg: Message, tp: TP, offset: int, level: int) -> ReadyRecord | None:
        value = msg.value() or b""
        try:
            envelope = decode_event(value)
            if not isinstance(envelope.body, TaskDispatched):
                raise DecodeError(f"{envelope.type_name} is not a ready-topic record")
        except DecodeError as exc:
            self._metrics.quarantined.labels(tp[0]).inc()
            log.warning("event=record.quarantined topic=%s partition=%d offset=%d reason=%s",
                        tp[0], tp[1], offset, exc)
            self._emitter.quarantine(
                tp[0], tp[1], offset, msg.key(), value, str(exc),
                on_delivered=lambda ok: self.settle(tp, offset) if ok else None)
            return None
        carried = from_headers(msg.headers()) if self._trace_headers else None
        return ReadyRecord(tp, offset, level, envelope, envelope.body, carried)

    def _commit(self, only: set[TP] | None = None, *, asynchronous: bool) -> None:
        self._last_commit = time.monotonic()
        with self._lock:
            targets = {tp: off for tp, off in self._tracker.to_commit().items()
                       if tp in self._levels and (only is None or tp in only)}
        if not targets:
            return
        fault_point("worker.commit")
        offsets = [TopicPartition(t, p, off) for (t, p), off in sorted(targets.items())]
        try:
            if asynchronous:
                self._consumer.commit(offsets=offsets, asynchronous=True)
            else:
                self._on_commit(None, self._consumer.commit(offsets=offsets, asynchronous=False))
        except KafkaException as exc:
            log.warning("event=commit.failed queue=%s error=%s", self.queue, exc)
