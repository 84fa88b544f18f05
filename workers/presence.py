"""Live workers: each worker announces itself on the compacted workers topic.

One record per worker (key = worker id, value = JSON, :class:`WorkerRecord`):
id, host, pid, queues, tags, concurrency, pool, attempts in flight, counts of
attempts started/succeeded/failed, when it started, its last heartbeat and how
often it beats, and its state (``running``, ``stopping`` while it drains,
``stopped`` once it left cleanly). It is written at start, every
``worker_heartbeat_s`` and on the way out.

A reader (:mod:`~taskstream.workers.roster`, the API's ``GET /workers``,
``taskstream doctor``) calls a worker **lost** when its last heartbeat is older
than :data:`LOST_AFTER_BEATS` of its own intervals: it crashed, hangs, or
cannot reach Kafka. Its record stays (compaction keeps the last one) until the
topic's retention drops it (a day, taskstream/admin.py), so a lost worker stays
visible long enough to be noticed (docs/decisions.md, D23).

Heartbeats go through the worker's own producer (the emitter); one small record
every few seconds.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from taskstream.settings import Settings
from taskstream.topics import workers_topic
from taskstream.workers.emitter import EventEmitter
from taskstream.workers.metrics import WorkerMetrics

log = logging.getLogger("taskstream.worker")

#: a worker is lost after this many heartbeat intervals without one
LOST_AFTER_BEATS = 3
RECORD_VERSION = 1
STATES = ("running", "stopping", "stopped")


@dataclass(frozen=True, slots=True)
class WorkerRecord:
    """What one worker says about itself on the workers topic."""

    worker_id: str
    host: str
    pid: int
    queues: list[str]
    concurrency: int
    started_at_ms: int
    heartbeat_at_ms: int
    heartbeat_interval_ms: int
    tags: list[str] = field(default_factory=list)
    pool: str = "thread"
    in_flight: int = 0
    tasks_started: int = 0
    tasks_succeeded: int = 0
    tasks_failed: int = 0
    state: str = "running"
    version: int = RECORD_VERSION

    def encode(self) -> bytes:
        return json.dumps(asdict(self), separators=(",", ":"), sort_keys=True).encode()

    @classmethod
    def decode(cls, value: bytes) -> WorkerRecord:
        """Raise ValueError for a value that is not a worker record."""
        try:
            data = json.loads(value)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"not JSON: {exc}") from None
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        try:
            record = cls(**known)
        except TypeError as exc:
            raise ValueError(f"not a worker record: {exc}") from None
        if record.state not in STATES:
            raise ValueError(f"unknown worker state {record.state!r}")
        return record

    def status(self, now_ms: int) -> str:
        """``running``, ``stopping``, ``stopped`` or ``lost`` (no heartbeat for too long)."""
        if self.state == "stopped":
            return "stopped"
        if now_ms - self.heartbeat_at_ms > LOST_AFTER_BEATS * max(self.heartbeat_interval_ms, 1):
            return "lost"
        return self.state

    def view(self, now_ms: int) -> dict[str, Any]:
        """The record as the API and the CLI show it: plus status and heartbeat age."""
        return {**asdict(self), "status": self.status(now_ms),
                "heartbeat_age_s": round(max(0, now_ms - self.heartbeat_at_ms) / 1000, 3)}


#: what a heartbeat reads from the worker: in_flight, the counts, and concurrency (its
#: slots now: they move with ``--concurrency auto``, D40)
Snapshot = Callable[[], dict[str, int]]


class Presence:
    """Announces one worker on the workers topic until it stops (an asyncio task)."""

    def __init__(self, settings: Settings, emitter: EventEmitter, *, worker_id: str,
                 queues: Sequence[str], concurrency: int, pool: str,
                 tags: Sequence[str] = (), snapshot: Snapshot | None = None,
                 metrics: WorkerMetrics | None = None) -> None:
        self._emitter = emitter
        self._topic = workers_topic(settings)
        self._interval_s = settings.worker_heartbeat_s
        self._snapshot = snapshot or dict
        now = now_ms()
        self.record = WorkerRecord(
            worker_id=worker_id, host=socket.gethostname(), pid=os.getpid(),
            queues=list(queues), tags=list(tags), concurrency=concurrency, pool=pool,
            started_at_ms=now, heartbeat_at_ms=now,
            heartbeat_interval_ms=int(self._interval_s * 1000))
        self._task: asyncio.Task[None] | None = None
        self._metrics = metrics

    def beat(self, state: str = "running") -> WorkerRecord:
        """Write the worker's record now."""
        counts = self._snapshot()
        self.record = replace(
            self.record, heartbeat_at_ms=now_ms(), state=state,
            concurrency=counts.get("concurrency", self.record.concurrency),
            in_flight=counts.get("in_flight", 0), tasks_started=counts.get("tasks_started", 0),
            tasks_succeeded=counts.get("tasks_succeeded", 0),
            tasks_failed=counts.get("tasks_failed", 0))
        self._emitter.announce(self._topic, self.record.worker_id.encode(), self.record.encode())
        if self._metrics is not None:
            self._count(self._metrics, self.record)
        return self.record

    @staticmethod
    def _count(metrics: WorkerMetrics, record: WorkerRecord) -> None:
        """The per-worker gauges follow the record just sent."""
        metrics.info.clear()
        metrics.info.labels(record.worker_id, record.host, ",".join(record.queues),
                            record.pool).set(1)
        metrics.concurrency.set(record.concurrency)
        metrics.last_heartbeat.set(record.heartbeat_at_ms / 1000)

    def start(self) -> None:
        self.beat()
        self._task = asyncio.create_task(self._run(), name="taskstream-presence")

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval_s)
            try:
                self.beat(self.record.state)
            except Exception:  # a heartbeat must never stop the worker
                log.exception("event=presence.failed worker_id=%s", self.record.worker_id)

    def stopping(self) -> None:
        """The worker drains: say so (its heartbeats go on until :meth:`stopped`)."""
        self.beat("stopping")

    def stopped(self) -> None:
        """The last record: the worker left cleanly (the emitter's close flushes it)."""
        if self._task is not None:
            self._task.cancel()
            self._task = None
        self.beat("stopped")


def now_ms() -> int:
    return time.time_ns() // 1_000_000
