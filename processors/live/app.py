"""The processor: a Faust app that folds the events topic into task state.

One agent reads the events topic. For each record it decodes the envelope,
reads the task's state from the ``tasks`` table, calls the pure
:func:`~taskstream.processors.fold.lifecycle.apply`, writes the new state and its
index entries, and performs the effects (dispatch, DLQ copy, cancellation).

The order of durable steps for one record, and why it is safe:

1. the task state goes to the partition's local RocksDB and is queued for the
   changelog; the due and listing index entries go to local RocksDBs derived
   from the task table (no changelog: rebuilt from it, statestore/indexes.py);
2. effects are queued on the same producer (ready, dlq, cancellations topics);
3. at commit time Faust flushes the producer (changelog and effects both
   acknowledged by the broker) and only then commits the events offset.

A crash before 3 re-reads the record. If the local RocksDB already holds the new
state, ``apply`` sees the event id as its last applied event and returns the
"redo" effects, so nothing that had not left is lost (docs/decisions.md, D4).

Timers: Faust tables can only be written inside stream iteration, so a timer
scans the due index of the partitions this replica owns (every
``timer_interval_s``) and *emits* ``TimerFired`` events keyed by task; the
agent applies them like any other event, and ``apply`` re-checks that they
still fit.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from functools import partial
from typing import Any

import faust
from faust.tables.manager import TableManager
from faust.types import EventT, StreamT, TopicT

from taskstream.admin import STOCK_SESSION_MIN_S, ensure_queue_topics
from taskstream.processors.fold.effects import (
    DeadLetter,
    Dispatch,
    Duplicate,
    Effect,
    PublishCancel,
    Rejected,
    RetryScheduled,
)
from taskstream.processors.fold.lifecycle import Limits, apply
from taskstream.processors.live.guard import guarded, timer_round
from taskstream.processors.live.metrics import ProcessorMetrics
from taskstream.schemas.errors import DecodeError
from taskstream.schemas.events import (
    Envelope,
    TaskCancelled,
    TaskDeadLettered,
    TaskDispatched,
    TimerFired,
)
from taskstream.schemas.ids import new_event_id
from taskstream.schemas.quarantine import quarantine_headers
from taskstream.schemas.serde import decode_event, decode_state, encode_event, encode_state
from taskstream.schemas.state import TaskState
from taskstream.settings import Settings, advertised_url
from taskstream.statestore import keys
from taskstream.statestore.errors import IndexNotReady
from taskstream.statestore.tables import TaskTables
from taskstream.topics import (
    cancellations_topic,
    dlq_topic,
    events_topic,
    processor_app_id,
    quarantine_topic,
    ready_topic,
)

log = logging.getLogger("taskstream.processor")

_DERIVED = (TaskDispatched, TaskDeadLettered, TaskCancelled)
#: how long an emitted timer is not emitted again while its event is in flight
TIMER_REEMIT_S = 5.0

def _raw_topic(app: faust.App, name: str, partitions: int | None = None) -> TopicT:
    return app.topic(
        name,
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
        partitions=partitions,
    )


def build_faust_app(settings: Settings) -> faust.App:
    host, port = settings.web_host, settings.web_port
    session_s = settings.session_timeout_s or STOCK_SESSION_MIN_S
    return faust.App(
        processor_app_id(settings),
        broker=[f"kafka://{server.strip()}" for server in settings.bootstrap.split(",")],
        store="rocksdb://",
        datadir=str(settings.data_dir),
        autodiscover=False,
        web_enabled=True,
        # Faust's own pages would expose raw tables beside our API: ours only
        web_stats_enabled=False,
        web_graph_enabled=False,
        web_router_enabled=False,
        web_tables_enabled=False,
        web_metrics_enabled=False,
        web_host=host,
        web_port=port,
        web_bind=host,
        # what peers route to: never the bind address (0.0.0.0 in a container), D17
        canonical_url=advertised_url(settings),
        topic_partitions=settings.partitions,
        topic_replication_factor=settings.replication,
        table_standby_replicas=settings.standby_replicas,
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,
        broker_commit_interval=1.0,
        # batch the changelog and dispatch sends of many events into one request
        producer_linger=0.002,
        # a SIGKILLed replica is noticed after the session timeout; Faust's 60 s
        # default would leave its partitions unserved for a minute (failover target: 5 s).
        # run_processor sets it from the brokers' bounds (admin.choose_session_timeout);
        # 6 s is the least a stock broker accepts.
        broker_session_timeout=session_s,
        broker_heartbeat_interval=session_s / 4,
        key_serializer="raw",
        value_serializer="raw",
        web_cors_options=None,
    )


class Processor:
    """A processor replica: the Faust app, its tables, its topics and its metrics."""

    def __init__(self, settings: Settings, limits: Limits | None = None) -> None:
        self.settings = settings
        self.limits = limits or Limits(max_result_bytes=settings.max_result_bytes)
        self.metrics = ProcessorMetrics()
        self.source = f"processor:{socket.gethostname()}:{os.getpid()}"
        self.app = app = build_faust_app(settings)
        self.events = _raw_topic(app, events_topic(settings), settings.partitions)
        self.tables = TaskTables(app, settings.partitions, settings.data_dir / "indexes",
                                 can_build=self._restored)
        self._ready: dict[tuple[str, int], TopicT] = {}
        self._known_queues: set[str] = set()
        self._dlq = _raw_topic(app, dlq_topic(settings))
        self._cancellations = _raw_topic(app, cancellations_topic(settings))
        self._quarantine = _raw_topic(app, quarantine_topic(settings))
        self._emitted: dict[bytes, float] = {}
        app.agent(self.events, name="taskstream.fold")(self._fold)
        # a rebalance may begin while a scan awaits a send: the indexes then refuse
        # (IndexNotReady) and the scan resumes once the partitions are restored
        app.timer(settings.timer_interval_s, name="taskstream.timers")(
            timer_round(self._scan_timers, "taskstream.timers", skip=(IndexNotReady,)))

    # -- the fold ------------------------------------------------------------

    async def _fold(self, stream: StreamT[bytes]) -> None:
        async for event in stream.events():
            m = event.message
            await guarded(partial(self.handle, event), partial(self._quarantine_event, event),
                          where=f"{m.topic}[{m.partition}]@{m.offset}")

    async def _quarantine_event(self, event: EventT[bytes], reason: str) -> None:
        m = event.message
        value = event.value if isinstance(event.value, bytes) else b""
        await self.quarantine(m.topic, m.partition, m.offset, event.key, value, reason)

    async def handle(self, event: EventT[bytes]) -> None:
        value = event.value if isinstance(event.value, bytes) else b""
        try:
            envelope = decode_event(value)
        except DecodeError as exc:
            await self._quarantine_event(event, str(exc))
            return
        if isinstance(envelope.body, _DERIVED):
            await self._quarantine_event(
                event, f"{envelope.type_name} is not an events-topic record")
            return
        await self.fold_one(envelope, event.message.partition)

    async def fold_one(self, envelope: Envelope, partition: int) -> None:
        raw = self.tables.tasks.get(envelope.task_id.encode())
        before = decode_state(raw) if raw is not None else None
        after, effects = apply(before, envelope, self.limits)
        if after is not None and after != before:
            self.tables.put(partition, before, after, encode_state(after))
        if isinstance(envelope.body, TimerFired):
            # a timer that no longer fits leaves its index entry behind: drop it
            self.tables.drop_stale_timer(partition, envelope.task_id,
                                         envelope.body.due_at_ms, after)
        self.metrics.applied.labels(envelope.type_name).inc()
        state = after or before
        queue = state.queue if state is not None else ""
        for effect in effects:
            await self._perform(effect, envelope, queue)

    async def _perform(self, effect: Effect, cause: Envelope, queue: str) -> None:
        match effect:
            case Dispatch(envelope=env):
                body = env.body
                assert isinstance(body, TaskDispatched)
                topic = await self._ready_topic(body.queue, body.priority)
                await topic.send(key=env.task_id.encode(), value=encode_event(env))
                self.metrics.dispatched.labels(body.queue).inc()
                self.metrics.dispatch_latency.observe(
                    max(0.0, time.time() - cause.occurred_at_ms / 1000))
            case DeadLetter(envelope=env):
                await self._dlq.send(key=env.task_id.encode(), value=encode_event(env))
                assert isinstance(env.body, TaskDeadLettered)
                self.metrics.dead_letters.labels(env.body.queue).inc()
            case PublishCancel(envelope=env):
                await self._cancellations.send(key=env.task_id.encode(), value=encode_event(env))
            case Rejected():
                self.metrics.rejected.labels(cause.type_name).inc()
            case Duplicate(conflict=conflict):
                self.metrics.duplicates.labels(str(conflict).lower()).inc()
            case RetryScheduled():
                self.metrics.retries.labels(queue).inc()
            case _:
                pass  # SetTimer/ClearTimer: the due index follows the state itself

    async def _ready_topic(self, queue: str, level: int) -> TopicT:
        topic = self._ready.get((queue, level))
        if topic is None:
            if queue not in self._known_queues:
                # a queue seen for the first time gets its ready topics made
                await asyncio.to_thread(ensure_queue_topics, self.settings, queue)
                self._known_queues.add(queue)
            topic = self._ready[(queue, level)] = _raw_topic(
                self.app, ready_topic(self.settings, queue, level))
        return topic

    async def quarantine(
        self, topic: str, partition: int, offset: int, key: Any, value: bytes, reason: str
    ) -> None:
        log.warning("quarantined %s[%d]@%d: %s", topic, partition, offset, reason)
        self.metrics.quarantined.labels(topic).inc()
        await self._quarantine.send(
            key=key if isinstance(key, bytes) else None,
            value=value,
            headers=quarantine_headers(topic, partition, offset, reason),
        )

    # -- timers --------------------------------------------------------------

    def active_partitions(self) -> list[int]:
        name = self.events.get_topic_name()
        return sorted(tp.partition for tp in self.app.assignor.assigned_actives()
                      if tp.topic == name)

    def _restored(self) -> bool:
        """True when no recovery or rebalance is under way (the task table is whole)."""
        return not (self.app.in_recovery or self.app.rebalancing)

    async def _scan_timers(self) -> None:
        if not self._restored():
            return  # timers wait for the task table to be whole again
        now_ms = int(time.time() * 1000)
        now = time.monotonic()
        seen: dict[bytes, float] = {}
        for partition in self.active_partitions():
            for entry_key, entry in self.tables.due_entries(partition, now_ms):
                emitted = self._emitted.get(entry_key)
                if emitted is not None and now - emitted < TIMER_REEMIT_S:
                    seen[entry_key] = emitted
                    continue
                await self._emit_timer(entry, now_ms)
                seen[entry_key] = now
        self._emitted = seen

    async def _emit_timer(self, entry: keys.DueEntry, now_ms: int) -> None:
        envelope = Envelope(
            event_id=new_event_id(),
            task_id=entry.task_id,
            occurred_at_ms=now_ms,
            source=self.source,
            attempt=entry.attempt,
            body=TimerFired(entry.kind, entry.due_at_ms, entry.dispatch_id),
        )
        await self.events.send(key=entry.task_id.encode(), value=encode_event(envelope))
        self.metrics.timers_fired.labels(entry.kind.value).inc()
        self.metrics.timer_lag.observe(max(0.0, (now_ms - entry.due_at_ms) / 1000))

    # -- state for the API -----------------------------------------------------

    def is_ready(self) -> bool:
        """True once the tables have been restored and the fold is running."""
        manager = self.app.tables
        assert isinstance(manager, TableManager)  # the interface type does not declare recovery
        return bool(manager.recovery.completed.is_set())

    def get_local(self, task_id: str) -> TaskState | None:
        raw = self.tables.get_any(task_id.encode())
        return decode_state(raw) if raw is not None else None
