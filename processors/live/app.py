"""The processor replica: Faust for membership, tables and the web; the fold beside it.

Faust runs the app: consumer-group membership and partition assignment, the task
table in RocksDB with its changelog, standby replicas, recovery and the web
server. Its group subscribes to the table's changelog topic only (no agent reads
the events topic), so the assignor still gives each replica the same partition
numbers of the events topic and the table. Once a generation's recovery is
complete, :class:`~taskstream.processors.live.engine.FoldEngine` folds the events
topic's partitions of the same numbers in batches (docs/decisions.md, D19); when a
rebalance revokes them, the engine makes its batch in hand durable first, and
when the replica stops, the engine stops before Faust leaves the group
(:class:`FoldService`).

Timers: the due index of the partitions this replica folds is scanned between
batches (every ``timer_interval_s``) and a ``TimerFired`` event keyed by the task
is *emitted* to the events topic; the fold applies it like any other event, and
``apply`` re-checks that it still fits (D5). With tracing on, a timer event carries
the trace context of the span it continues (a retry's, a dispatch's: D22), so the
dispatch it causes hangs in the task's trace where it belongs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import sys
import time
import uuid
from functools import partial
from typing import Any

import faust
from confluent_kafka import Consumer, Producer, TopicPartition
from faust.tables.manager import TableManager
from faust.types import TP, TopicT
from mode import Service

from taskstream.admin import STOCK_SESSION_MIN_S
from taskstream.errors import ConfigError
from taskstream.faults import fault_point
from taskstream.kafka_config import consumer_config, producer_config
from taskstream.processors.fold.kinds import timer_of
from taskstream.processors.fold.lifecycle import Limits
from taskstream.processors.fold.retention import RetentionPolicy, removal_timer
from taskstream.processors.fold.validate import Checks
from taskstream.processors.live.engine import FoldEngine, Topics
from taskstream.processors.live.guard import (
    EXIT_STALLED,
    FoldWatchdog,
    PauseFence,
    timer_round,
)
from taskstream.processors.live.metrics import ProcessorMetrics
from taskstream.processors.live.standby import StandbyFollower, standby_partitions
from taskstream.processors.tracing import FoldTracing
from taskstream.queue_registry import make_route_topics, read_registered
from taskstream.schemas.events import Envelope, TimerFired
from taskstream.schemas.ids import new_event_id
from taskstream.schemas.serde import decode_state, encode_event
from taskstream.schemas.state import EntityState, TaskState
from taskstream.security.signing import signer_for
from taskstream.settings import Settings, advertised_url
from taskstream.statestore import keys
from taskstream.statestore.errors import IndexNotReady
from taskstream.statestore.indexes import TimerOf
from taskstream.statestore.tables import TaskTables
from taskstream.telemetry.tracing import OFF, Telemetry
from taskstream.topics import (
    api_reader_group,
    cancellations_topic,
    dispatch_topic,
    dlq_topic,
    events_topic,
    fold_group,
    parse_route,
    processor_app_id,
    quarantine_topic,
    route_key,
    standby_group,
    task_changelog_topic,
)

log = logging.getLogger("taskstream.processor")

#: how long an emitted timer is not emitted again while its event is in flight
TIMER_REEMIT_S = 5.0
#: the longest the fold waits for records before it looks at its timers again
POLL_WAIT_S = 0.05
#: how often a generation waiting for its recovery checks it is still current
RESTORE_CHECK_S = 1.0

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
        # standby copies are kept by the fold's own follower (live/standby.py, D19)
        table_standby_replicas=0,
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


def _registered_queues(settings: Settings) -> set[str]:
    """Read the queue registry (blocking: run off the fold)."""
    fault_point("queue.look_up")
    return read_registered(settings, settings.kafka_timeout_s,
                           api_reader_group(settings, uuid.uuid4().hex))


def _make_route_topics(settings: Settings, route: str) -> None:
    """Make the ready topics of a registered queue's tag set (blocking: run off the fold,
    D38)."""
    queue, tags = parse_route(route)
    make_route_topics(settings, queue, tags)


def retention_policy(settings: Settings) -> RetentionPolicy:
    """The replica's retention of finished tasks (D35): read when it sets their timers."""
    return RetentionPolicy.from_seconds(settings.retention_s, settings.retention_by_queue)


def due_entry_of(state: EntityState | None) -> keys.DueEntry | None:
    """The due index entry of any entity's state: its kind's ``timer_of`` (D5; D37, D32)."""
    timer = timer_of(state)
    return None if timer is None else keys.DueEntry(*timer)


def due_entries(policy: RetentionPolicy) -> TimerOf:
    """:func:`due_entry_of`, and for a finished task the removal time of the replica's
    retention ``policy`` (D35)."""
    if not policy.enabled:
        return due_entry_of

    def with_retention(state: EntityState | None) -> keys.DueEntry | None:
        timer = timer_of(state)
        if timer is None and isinstance(state, TaskState):
            timer = removal_timer(state, policy)
        return None if timer is None else keys.DueEntry(*timer)

    return with_retention


class Processor:
    """A processor replica: the Faust app, its tables, the fold engine and its metrics."""

    def __init__(self, settings: Settings, limits: Limits | None = None,
                 telemetry: Telemetry = OFF) -> None:
        self.settings = settings
        self.limits = limits or Limits.from_settings(settings)
        self.metrics = ProcessorMetrics()
        #: the processor's spans (dispatch, retry, dead letter, ...; processors/tracing.py)
        self.tracing = FoldTracing(telemetry)
        self.source = f"processor:{socket.gethostname()}:{os.getpid()}"
        self.app = app = build_faust_app(settings)
        #: the API's admin events go out through Faust's producer (not the fold's)
        self.events = _raw_topic(app, events_topic(settings), settings.partitions)
        self.retention = retention_policy(settings)
        self.tables = TaskTables(app, settings.partitions, settings.data_dir / "indexes",
                                 can_build=self._restored,
                                 timer_of=due_entries(self.retention))
        self._changelog = task_changelog_topic(settings)
        self.producer = Producer(producer_config(settings, {
            "client.id": self.source,
            "linger.ms": settings.processor_linger_ms,
            "compression.type": settings.compression,
            "message.timeout.ms": int(settings.delivery_timeout_s * 1000),
            "queue.buffering.max.messages": settings.producer_queue_max,
            "allow.auto.create.topics": False,
        }))
        checks = Checks.from_settings(settings)
        session_s = settings.session_timeout_s or STOCK_SESSION_MIN_S
        #: a pause past half the session refuses the fold's writes (a zombie's, D43)
        self.fence = PauseFence(session_s / 2)
        #: signs the timer and entity events this replica emits: folds verify them (D26)
        self.signer = signer_for(settings, "processor")
        if checks.keyring is not None and self.signer is None:
            raise ConfigError(
                "this processor's signing keyring verifies events but has no current "
                "processor key to sign its own timer events with (its fold would refuse "
                "them); add one: taskstream keys new processor --kid <id> --keyring <file> "
                "--current (docs/security.md)")
        self.engine = FoldEngine(
            self.tables, self.metrics, self.limits,
            Topics(events=events_topic(settings), changelog=self._changelog,
                   dlq=dlq_topic(settings), cancellations=cancellations_topic(settings),
                   quarantine=quarantine_topic(settings),
                   ready=partial(dispatch_topic, settings),
                   route=partial(route_key, settings)),
            checks=checks,
            consumer_config=consumer_config(settings, fold_group(settings), {
                "client.id": self.source,
                "auto.offset.reset": "earliest",
                "enable.auto.offset.store": False,
                "enable.partition.eof": False,
            }),
            producer=self.producer,
            set_persisted_offset=self._set_persisted_offset,
            read_registry=self._read_registry,
            make_route=self._make_route,
            # the runner registered the configured queues before the app started
            queues_ready=settings.queues,
            source=self.source,
            legacy_group=processor_app_id(settings),
            max_batch=settings.fold_batch_max,
            poll_wait_s=min(POLL_WAIT_S, settings.timer_interval_s),
            flush_timeout_s=settings.kafka_timeout_s,
            window_s=settings.changelog_window_ms / 1000,
            round_s=settings.fold_round_ms / 1000,
            tracing=self.tracing,
            signer=self.signer,
            fence=self.fence,
            fence_confirm_s=session_s,
        )
        self.standby = StandbyFollower(
            consumer_config(settings, standby_group(settings), {
                "client.id": f"{self.source}:standby",
                "enable.auto.offset.store": False,
                "enable.partition.eof": False,
            }),
            self._changelog, self.tables.tasks.data.offset_key, self._persisted_offset)
        # a rebalance may begin between two batches: the indexes then refuse
        # (IndexNotReady) and the scan resumes once the partitions are restored
        self.engine.between_batches = timer_round(
            self._timers_if_due, "taskstream.timers", skip=(IndexNotReady,))
        #: restarts a fold that stalls with lag; ends a replica whose loop is blocked (D43)
        self.watchdog = FoldWatchdog(settings.fold_stall_s, self._fold_positions,
                                     self._partition_ends, self._restart_fold_soon,
                                     self._exit_stalled)
        #: what the loop last told the watchdog: partition -> the fold's next offset, and
        #: the partitions assigned here that the fold is not folding (yet)
        self._positions: dict[int, int] = {}
        self._waiting: list[int] = []
        self._watermarks: Consumer | None = None
        self._restarting = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._emitted: dict[bytes, float] = {}
        self._last_scan = 0.0
        self._folding_generation: int | None = None
        self._starting: asyncio.Future[None] | None = None
        app.on_partitions_revoked.connect(self._on_partitions_revoked)
        app.on_rebalance_complete.connect(self._on_rebalance_complete)

    # -- the fold follows the assignment -------------------------------------------

    async def _on_partitions_revoked(self, sender: Any, /, *args: Any, signal: Any,
                                     **kwargs: Any) -> None:
        """Faust awaits this before it rejoins: the batch in hand is made durable now."""
        self._folding_generation = None
        await asyncio.to_thread(self.standby.stop)
        await self.engine.stop()

    async def _on_rebalance_complete(self, sender: Any, /, *args: Any, signal: Any,
                                     **kwargs: Any) -> None:
        generation = self.app.consumer_generation_id
        if self._starting is not None:
            self._starting.cancel()  # an older generation's wait: it can only give up
        self._starting = asyncio.ensure_future(self._fold_when_restored(generation))

    async def _fold_when_restored(self, generation: int) -> None:
        """Start folding this generation's active partitions once their tables are whole."""
        completed = self._recovery().completed
        while not completed.is_set():
            if self.app.consumer_generation_id != generation:
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(completed.wait(), RESTORE_CHECK_S)
        if (self.app.consumer_generation_id != generation
                or self._folding_generation == generation):
            return
        self._folding_generation = generation
        await asyncio.to_thread(fault_point, "fold.start")
        await self.engine.start(self.active_partitions(),
                                lambda: self.app.consumer_generation_id == generation)
        self._keep_standbys()

    def _keep_standbys(self) -> None:
        """Start following the partitions whose standby copy this replica keeps."""
        owners = {p: str(url)
                  for url, topics in self.app.assignor.tables_metadata().items()
                  for p in topics.get(self._changelog, ())}
        me = str(self.app.conf.canonical_url)
        mine = standby_partitions(owners, me, self.settings.standby_replicas)
        self.standby.start({p: self.tables.partition_db(p) for p in sorted(mine)})

    def _set_persisted_offset(self, partition: int, offset: int) -> None:
        self.tables.tasks.data.set_persisted_offset(TP(self._changelog, partition), offset)

    def _persisted_offset(self, partition: int) -> int | None:
        offset = self.tables.tasks.data.persisted_offset(TP(self._changelog, partition))
        return offset if isinstance(offset, int) else None

    async def _read_registry(self) -> set[str]:
        """The registered queues (taskstream/queue_registry.py), read off the fold for a
        queue it has not seen registered (D31)."""
        return await asyncio.to_thread(_registered_queues, self.settings)

    async def _make_route(self, route: str) -> None:
        """Make a registered queue's tag-set topics (D38), off the fold."""
        await asyncio.to_thread(_make_route_topics, self.settings, route)

    # -- liveness (D43) ----------------------------------------------------------------

    async def watch(self) -> None:
        """Beat for the watchdog every round, with where the fold is (on the loop: a
        blocked loop stops beating, and the watchdog sees that too)."""
        self._loop = asyncio.get_running_loop()
        self.fence.start()
        self.watchdog.start()
        try:
            while True:
                folding = self.engine.partitions
                self._positions = dict(self.engine.positions) if folding else {}
                self._waiting = ([] if self.app.rebalancing else
                                 [p for p in self.active_partitions() if p not in folding])
                self.watchdog.beat()
                await asyncio.sleep(self.watchdog.round_s)
        finally:
            self.watchdog.stop()
            self.fence.stop()
            if self._watermarks is not None:
                self._watermarks.close()

    def _watchdog_consumer(self) -> Consumer:
        """The watchdog's own client (its thread): the fold's may be the part that hangs."""
        if self._watermarks is None:
            self._watermarks = Consumer(consumer_config(
                self.settings, fold_group(self.settings),
                {"client.id": f"{self.source}:watchdog"}))
        return self._watermarks

    def _fold_positions(self) -> dict[int, int]:
        """Where the fold is; a partition assigned here but not folded stands at its
        committed offset (the watchdog's thread)."""
        positions, waiting = dict(self._positions), list(self._waiting)
        if waiting:
            topic = self.engine.topics.events
            committed = self._watchdog_consumer().committed(
                [TopicPartition(topic, p) for p in waiting], self.settings.kafka_timeout_s)
            positions.update({tp.partition: max(0, tp.offset) for tp in committed})
        return positions

    def _partition_ends(self, partitions: list[int]) -> dict[int, int]:
        """The end offsets of the events partitions (the watchdog's thread)."""
        consumer, topic = self._watchdog_consumer(), self.engine.topics.events
        timeout = self.settings.kafka_timeout_s
        return {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout)[1]
                for p in partitions}

    def _restart_fold_soon(self) -> None:
        """The watchdog found the fold stalled: restart it on the loop."""
        self.metrics.stalls.labels("restart").inc()
        if self._loop is not None:
            asyncio.run_coroutine_threadsafe(self._restart_fold(), self._loop)

    async def _restart_fold(self) -> None:
        """A stalled fold starts again at its committed offsets; one that never started
        for this generation waits for its recovery again and starts (D43)."""
        if self._restarting:
            return  # one restart at a time: the watchdog judges again after it
        if self.engine.partitions:
            self._restarting = True
            try:
                await self.engine.restart()
            finally:
                self._restarting = False
            return
        generation = self.app.consumer_generation_id
        self._folding_generation = None
        if self._starting is not None:
            self._starting.cancel()
        self._starting = asyncio.ensure_future(self._fold_when_restored(generation))

    def _exit_stalled(self) -> None:
        """The loop does not answer: end the process for its supervisor (D43)."""
        self.metrics.stalls.labels("exit").inc()
        sys.stderr.flush()
        os._exit(EXIT_STALLED)

    # -- timers --------------------------------------------------------------

    def active_partitions(self) -> list[int]:
        return sorted(tp.partition for tp in self.app.assignor.assigned_actives()
                      if tp.topic == self._changelog)

    def _restored(self) -> bool:
        """True when no recovery or rebalance is under way (the task table is whole)."""
        return not (self.app.in_recovery or self.app.rebalancing)

    async def _timers_if_due(self) -> None:
        now = time.monotonic()
        if now - self._last_scan >= self.settings.timer_interval_s:
            self._last_scan = now
            self.scan_timers()

    def scan_timers(self) -> None:
        """Emit a ``TimerFired`` for every due entry of the partitions being folded."""
        if not self._restored():
            return  # timers wait for the task table to be whole again
        now_ms = int(time.time() * 1000)
        now = time.monotonic()
        seen: dict[bytes, float] = {}
        for partition in sorted(self.engine.partitions):
            for entry_key, entry in self.tables.due_entries(partition, now_ms):
                emitted = self._emitted.get(entry_key)
                if emitted is not None and now - emitted < TIMER_REEMIT_S:
                    seen[entry_key] = emitted
                    continue
                self._emit_timer(entry, now_ms)
                seen[entry_key] = now
        self._emitted = seen

    def _emit_timer(self, entry: keys.DueEntry, now_ms: int) -> None:
        """Hand a timer event to the fold's producer; a lost one is emitted again
        after ``TIMER_REEMIT_S`` (its entry stays due until the fold drops it)."""
        envelope = Envelope(
            event_id=new_event_id(),
            task_id=entry.task_id,
            occurred_at_ms=now_ms,
            source=self.source,
            attempt=entry.attempt,
            body=TimerFired(entry.kind, entry.due_at_ms, entry.dispatch_id),
        )
        key, value = entry.task_id.encode(), encode_event(envelope)
        traced = (self.tracing.timer_headers(entry.task_id, entry.kind, entry.attempt,
                                             entry.dispatch_id)
                  if self.tracing.enabled else None)
        self.engine.send(self.engine.topics.events, key, value,
                         self.engine.signed(traced, key, value) or None)
        self.metrics.timers_fired.labels(entry.kind.value).inc()
        self.metrics.timer_lag.observe(max(0.0, (now_ms - entry.due_at_ms) / 1000))

    # -- state for the API -----------------------------------------------------

    def _recovery(self) -> Any:
        manager = self.app.tables
        assert isinstance(manager, TableManager)  # the interface type does not declare recovery
        return manager.recovery

    def is_ready(self) -> bool:
        """True once the tables have been restored and the fold is running."""
        return bool(self._recovery().completed.is_set())

    def get_local(self, task_id: str) -> TaskState | None:
        raw = self.tables.get_any(task_id.encode())
        return decode_state(raw) if raw is not None else None

    def service(self) -> FoldService:
        """The fold as a service for ``faust.Worker``: stopped before the app leaves its group."""
        return FoldService(self)


class FoldService(Service):
    """Stops the fold engine first when the worker stops (it starts after the app, so it
    stops before it: ``runners.processor.ProcessorWorker``);
    runs the fold's watchdog (D43) while the worker runs."""

    def __init__(self, processor: Processor) -> None:
        super().__init__()
        self.processor = processor

    async def on_started(self) -> None:
        self.add_future(self.processor.watch())

    async def on_stop(self) -> None:
        await asyncio.to_thread(self.processor.watchdog.stop)
        await asyncio.to_thread(self.processor.standby.stop)
        await self.processor.engine.close()
