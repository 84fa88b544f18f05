"""The live fold: records in batches, each batch made durable in one fixed order.

Faust stays the engine for what it does well: the app, consumer-group membership
and partition assignment, the task table in RocksDB with its changelog, standby
replicas, recovery and the web server. Its per-event path (stream iteration,
sensors, acks, a table write whose changelog record queues behind a 100-record
buffer) cost about 1.3 ms of CPU per task (issue 12). So the events topic is not
one of Faust's streams: Faust's group subscribes to the changelog topic only,
which gives each replica the same partition numbers as before, and this engine
reads the events topic with a confluent-kafka consumer assigned by hand to the
replica's active partitions, writes those partitions' RocksDBs directly and
sends changelog records and effects through one confluent-kafka producer
(docs/decisions.md, D19).

A batch is what the consumer holds when the loop asks (at most
``fold_batch_max`` records); :func:`~taskstream.processors.live.batch.fold_partition`
folds it per partition and :meth:`FoldEngine.persist` makes it durable (the order
of the durable steps, and why a crash between any two is safe, is written there).

The events offsets are committed under a group of their own (``fold_group``),
never joined: the engine assigns partitions itself, as Faust's assignor decided.
Where that group has no offset for a partition yet, the offset the Faust group
committed before D19 is used, so an upgrade resumes where the old fold stopped.

Tracing (docs/decisions.md, D22; processors/tracing.py): when it is on, each effect of
a batch gets its span under the trace context its cause's record carried, and the
dispatch, dlq and cancellation records carry the effect's context on, so the worker's
spans join the task's trace. Off, the engine checks one attribute per batch.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)

from taskstream.faults import fault_point
from taskstream.processors.fold.effects import (
    DeadLetter,
    Dispatch,
    Duplicate,
    Emit,
    ForgetCancel,
    PublishCancel,
    Rejected,
    RetryScheduled,
)
from taskstream.processors.fold.lifecycle import Limits
from taskstream.processors.fold.validate import Checks
from taskstream.processors.live.batch import PartitionFold, fold_partition
from taskstream.processors.live.guard import PauseFence, ReplicaFenced
from taskstream.processors.live.metrics import ProcessorMetrics
from taskstream.processors.tracing import FoldTracing, RecordHeaders
from taskstream.schemas.events import CancelRequested, Envelope, TaskDispatched
from taskstream.schemas.ids import new_event_id
from taskstream.schemas.quarantine import quarantine_headers
from taskstream.schemas.serde import encode_entity, encode_event
from taskstream.security.signing import Signer
from taskstream.statestore.tables import TaskTables
from taskstream.topics import parse_route

log = logging.getLogger("taskstream.processor")

#: first pause before undelivered records are sent again (doubles up to the cap)
RESEND_BACKOFF_S = 0.2
RESEND_BACKOFF_MAX_S = 5.0
#: one wait of the producer's flush; the loop around it decides how long to go on
FLUSH_SLICE_S = 1.0


#: record headers as the client takes and gives them back
Headers = dict[str, str | bytes | None] | list[tuple[str, str | bytes | None]]


class Outbound(NamedTuple):
    """One record a batch sends."""

    topic: str
    key: bytes | None
    value: bytes | None
    partition: int = -1  # -1: by key (murmur2_random, like every producer of ours)
    headers: Headers | None = None


class Deliveries:
    """The delivery reports of one batch (:meth:`report` runs on the producer's thread)."""

    __slots__ = ("changelog_offsets", "changelog_topic", "failed")

    def __init__(self, changelog_topic: str) -> None:
        self.changelog_topic = changelog_topic
        #: records to send again, as the failed report gave them back, and why
        self.failed: list[tuple[Outbound, KafkaError]] = []
        #: changelog partition -> highest acknowledged offset
        self.changelog_offsets: dict[int, int] = {}

    def report(self, err: KafkaError | None, msg: Message) -> None:
        topic, partition = msg.topic(), msg.partition()
        if topic is None or partition is None:
            return  # a report always names both
        if err is not None:
            self.failed.append((Outbound(topic, msg.key(), msg.value(), partition,
                                         msg.headers()), err))
        elif topic == self.changelog_topic:
            offset = msg.offset()
            if offset is not None and offset > self.changelog_offsets.get(partition, -1):
                self.changelog_offsets[partition] = offset


class HeadedRecord(Protocol):
    """What tracing needs of a consumed record (confluent_kafka.Message has it)."""

    def offset(self) -> int | None: ...
    def headers(self) -> RecordHeaders: ...


def trace_effects(tracing: FoldTracing, folds: Iterable[PartitionFold],
                  records: Mapping[int, Sequence[HeadedRecord]]) -> None:
    """A span per effect of a folded batch, under the trace context its cause's record
    carried; each effect keeps the context its outbound record carries on (D22).
    ``records``: the batch's records by partition."""
    effect = tracing.effect
    for fold in folds:
        if not fold.effects:
            continue
        by_offset = {record.offset(): record for record in records[fold.partition]}
        for caused in fold.effects:
            cause = by_offset.get(caused.offset)
            caused.headers = effect(caused.effect, caused.cause,
                                    cause.headers() if cause is not None else None)


@dataclass(frozen=True, slots=True)
class Topics:
    """Where the fold reads and writes (names from taskstream.topics)."""

    events: str
    changelog: str
    dlq: str
    cancellations: str
    quarantine: str
    #: (queue, level, tags) -> the ready topic of a dispatch (topics.dispatch_topic, D38)
    ready: Callable[[str, int, tuple[str, ...]], str]
    #: (queue, tags) -> the key its ready topics are set up under (topics.route_key):
    #: the queue's name when untagged
    route: Callable[[str, tuple[str, ...]], str]


class FoldEngine:
    """Folds this replica's active partitions of the events topic, batch by batch.

    ``start(partitions, is_current)`` begins a generation: the consumer is assigned
    the partitions at their committed offsets and the loop runs until ``stop()``
    (a rebalance revoked them, or the replica stops) or until ``is_current()`` turns
    false. ``stop()`` lets the batch in hand become durable first.
    """

    def __init__(
        self,
        tables: TaskTables,
        metrics: ProcessorMetrics,
        limits: Limits,
        topics: Topics,
        *,
        checks: Checks,
        consumer_config: dict[str, Any],
        producer: Producer,
        set_persisted_offset: Callable[[int, int], None],
        read_registry: Callable[[], Awaitable[set[str]]],
        make_route: Callable[[str], Awaitable[None]],
        queues_ready: Iterable[str],
        source: str,
        legacy_group: str | None,
        max_batch: int,
        poll_wait_s: float,
        flush_timeout_s: float,
        window_s: float = 0.0,
        round_s: float = 0.0,
        tracing: FoldTracing | None = None,
        signer: Signer | None = None,
        fence: PauseFence | None = None,
        fence_confirm_s: float = 0.0,
    ) -> None:
        self.tables = tables
        #: signs the events the fold emits to other entities: their folds verify (D26)
        self.signer = signer
        self.metrics = metrics
        self.limits = limits
        #: what every record must be before it is applied (D26, D28)
        self.checks = checks
        self.topics = topics
        self._consumer_config = consumer_config
        self.producer = producer
        self._set_persisted_offset = set_persisted_offset
        self._read_registry = read_registry
        #: makes the ready topics of a registered queue's tag set (a route key, D38)
        self._make_route = make_route
        #: routes (topics.route_key: a queue's name, or a queue and tag set, D38) whose
        #: ready topics exist: registered queues, and the tag sets made of them; routes
        #: whose queue the registry was just read for and does not hold; routes waiting
        #: for a read of the registry
        self._queues_ready: set[str] = set(queues_ready)
        self._queues_refused: set[str] = set()
        self._lookup_pending: set[str] = set()
        self._lookup: asyncio.Task[None] | None = None
        #: names this replica in the events it writes (cancellations of refused tasks)
        self.source = source
        #: dispatches to routes still being looked up or set up, in fold order (persist)
        self._parked: list[tuple[int, int, Outbound, str]] = []
        self._legacy_group = legacy_group
        self.max_batch = max_batch
        self.poll_wait_s = poll_wait_s
        self.flush_timeout_s = flush_timeout_s
        #: how long batches gather their changelog records before they are sent and the
        #: events offsets past them committed (0: every batch, D50)
        self.window_s = window_s
        #: the least time between the starts of two rounds of the loop (0: none, D51)
        self.round_s = round_s
        self._round_begun = 0.0
        #: the open window: changelog partition -> entity key -> its latest encoded state
        #: (None: a tombstone), written locally and not sent yet (D50)
        self._window: dict[int, dict[bytes, bytes | None]] = {}
        #: when the open window's first batch was folded (monotonic; None: no window)
        self._window_opened: float | None = None
        #: spans of the effects, trace context on their records (off: one check per batch)
        self.tracing = tracing or FoldTracing()
        self.partitions: frozenset[int] = frozenset()
        self._consumer: Consumer | None = None
        self._consumer_io = ThreadPoolExecutor(1, thread_name_prefix="taskstream-fold-consumer")
        self._producer_io = ThreadPoolExecutor(1, thread_name_prefix="taskstream-fold-producer")
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        #: partition -> the offset past its last batch folded into the local table, its
        #: effects acknowledged (what the API's read-your-writes waits for, D46)
        self._folded: dict[int, int] = {}
        #: partition -> the offset past its last batch whose changelog records are
        #: acknowledged too: what may be committed (D50); a window's close brings it up
        #: to ``_folded``
        self._durable: dict[int, int] = {}
        #: partition -> the offset to commit (the durable one, held back by parked dispatches)
        self._committing: dict[int, int] = {}
        #: called between batches (the timer scan); never raises (guard.timer_round)
        self.between_batches: Callable[[], Awaitable[None]] | None = None
        #: refuses writes after a pause longer than the group's lease (D43); after one, the
        #: fold waits ``fence_confirm_s`` for the group to take its partitions away
        self.fence = fence
        self.fence_confirm_s = fence_confirm_s
        #: partition -> the next offset the fold reads (the watchdog's view, D43)
        self.positions: dict[int, int] = {}
        #: set once a pause fenced this generation: its last commit must not be made
        self._fenced = False
        self._is_current: Callable[[], bool] = lambda: False

    def folded_offset(self, partition: int) -> int | None:
        """The offset past ``partition``'s last batch in this generation whose states are in
        the local table and whose effects are acknowledged (None: no batch yet): read-only,
        for the API's read-your-writes (api/progress.py, D46). Its changelog records may
        still wait in the open window (D50): a crash before they are sent folds the
        batch again before the replica serves its partition."""
        return self._folded.get(partition)

    # -- the two threads ---------------------------------------------------------------

    async def _consumer_call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Every consumer call runs on one thread: the client is not shared across threads."""
        return await asyncio.get_running_loop().run_in_executor(self._consumer_io, fn, *args)

    async def _producer_call(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._producer_io, fn, *args)

    # -- a generation ------------------------------------------------------------------

    async def start(self, partitions: Iterable[int], is_current: Callable[[], bool]) -> None:
        await self.stop()
        self.partitions = frozenset(partitions)
        self._stopping = asyncio.Event()
        if self._consumer is None:
            self._consumer = await self._consumer_call(Consumer, self._consumer_config)
        committed = await self._consumer_call(self._assign, sorted(self.partitions))
        self.positions = {p: max(0, offset) for p, offset in committed.items()}
        self._fenced = False
        self._is_current = is_current
        if self.fence is not None:
            self.fence.reset()
        log.info("folding partitions %s of %s", sorted(self.partitions), self.topics.events)
        self._task = asyncio.ensure_future(self._run(is_current))

    async def stop(self) -> None:
        """Stop folding: the batch in hand and the open window are made durable first
        (bounded by their flush)."""
        task, self._task = self._task, None
        if task is None:
            return
        self._stopping.set()
        try:
            await task
        except asyncio.CancelledError:
            pass
        finally:
            self.partitions = frozenset()
            if self._consumer is not None:
                await self._consumer_call(self._consumer.unassign)

    async def restart(self) -> None:
        """Start a stalled fold again at its committed offsets (the watchdog, D43).

        The generation's loop is asked to stop; one that does not within a second (it
        waits on a call that does not return: its consumer or producer thread hangs,
        or the brokers never acknowledge) is cancelled, and the threads
        are left to their call: the fold gets new ones and a new consumer (the old one
        is closed on its own thread once its call returns). What the stuck generation
        held is redone from the committed offsets like after a crash (D4)."""
        task = self._task
        if task is None:
            return
        partitions, is_current = self.partitions, self._is_current
        self._task = None
        self._stopping.set()
        for wait_s in (1.0, 1.0, 1.0):
            done, _ = await asyncio.wait({task}, timeout=wait_s)
            if done:
                break
            task.cancel()
        else:
            log.error("the stalled fold did not stop; its threads and consumer are left "
                      "to finish their call")
        stuck_consumer, stuck_io = self._consumer, self._consumer_io
        self._consumer = None
        self._consumer_io = ThreadPoolExecutor(1, thread_name_prefix="taskstream-fold-consumer")
        if stuck_consumer is not None:
            stuck_io.submit(stuck_consumer.close)  # runs once the stuck call returns
        stuck_io.shutdown(wait=False)
        self._producer_io.shutdown(wait=False)
        self._producer_io = ThreadPoolExecutor(1, thread_name_prefix="taskstream-fold-producer")
        self._forget()
        self.partitions = frozenset()
        if is_current():
            await self.start(partitions, is_current)

    async def close(self) -> None:
        await self.stop()
        if self._lookup is not None:
            self._lookup.cancel()  # a read of the registry in flight: nobody waits for it
        if self._consumer is not None:
            await self._consumer_call(self._consumer.close)
            self._consumer = None
        self._consumer_io.shutdown(wait=False)
        self._producer_io.shutdown(wait=False)

    def _assign(self, partitions: list[int]) -> dict[int, int]:
        """Assign ``partitions`` at their committed offsets; returns them (< 0: none)."""
        assert self._consumer is not None
        tps = [TopicPartition(self.topics.events, p) for p in partitions]
        timeout = self.flush_timeout_s
        committed = {tp.partition: tp.offset for tp in self._consumer.committed(tps, timeout)}
        missing = [p for p, offset in committed.items() if offset < 0]
        if missing and self._legacy_group:
            legacy = Consumer({**self._consumer_config, "group.id": self._legacy_group})
            try:
                for tp in legacy.committed([TopicPartition(self.topics.events, p)
                                            for p in missing], timeout):
                    if tp.offset >= 0:
                        committed[tp.partition] = tp.offset
            finally:
                legacy.close()
        self._consumer.assign([
            TopicPartition(self.topics.events, p, offset if offset >= 0 else OFFSET_BEGINNING)
            for p, offset in committed.items()])
        return committed

    async def _run(self, is_current: Callable[[], bool]) -> None:
        backoff = RESEND_BACKOFF_S
        try:
            while not self._stopping.is_set() and is_current():
                records: list[Message] = []
                try:
                    if self.fence is not None:
                        self.fence.beat()
                    # rounds under load begin no closer than ``round_s`` apart: what
                    # arrives meanwhile joins the next batch; an idle fold does not wait
                    # (D51)
                    wait = self._round_begun + self.round_s - time.monotonic()
                    if wait > 0:
                        await asyncio.sleep(wait)
                    self._round_begun = time.monotonic()
                    # what the client already holds is taken on this thread, without a
                    # wait; only an empty client is waited on, on the consumer's thread
                    records = self._take(0)
                    if not records:
                        # an open window is closed when it is due, records or not (D50)
                        records = await self._consumer_call(self._wait_take, self._wait_s())
                    try:
                        if records:
                            await self.fold(records)
                        elif self._window_due():
                            await self.close_window()
                        backoff = RESEND_BACKOFF_S
                    except ReplicaFenced:
                        raise
                    except Exception:  # never skip a record: read the batch again (D11)
                        log.exception("a batch of %d record(s) could not be made "
                                      "durable; it is read again in %.1fs",
                                      len(records), backoff)
                        self.metrics.batch_retries.inc()
                        await self._consumer_call(self._rewind, records)
                        await asyncio.sleep(backoff)
                        backoff = min(backoff * 2, RESEND_BACKOFF_MAX_S)
                    await self.release_parked()
                    if self.between_batches is not None:
                        await self.between_batches()
                except ReplicaFenced as fenced:
                    await self._wait_for_group(fenced, records, is_current)
        finally:
            if not self._fenced:
                await self._close_last_window()
                await self._consumer_call(self._commit_last)
            else:
                self._forget()

    async def _close_last_window(self) -> None:
        """A generation ends: its open window is sent and committed first; one that cannot
        be is left to the partitions' next owner, which folds its batches again (D50)."""
        try:
            await self.close_window()
        except Exception:
            log.exception("the open window could not be made durable as the fold stops; its "
                          "records will be folded again by the partitions' next owner")

    async def _wait_for_group(self, fenced: ReplicaFenced, records: list[Message],
                              is_current: Callable[[], bool]) -> None:
        """After a pause (D43): nothing of the batch in hand was written past the fence;
        it is read again if the group still gives this replica its partitions. The group
        answers within a heartbeat of the wake-up (a replica it dropped is told so and
        rejoins: its partitions are revoked and ``stop`` ends this generation); one that
        says nothing for ``fence_confirm_s`` left the partitions here."""
        self._fenced = True
        self.metrics.fenced.inc()
        log.warning("fenced: %s; the batch in hand (%d record(s)) is not written, and the "
                    "fold waits up to %.0fs for the group before it reads it again (D43)",
                    fenced, len(records), self.fence_confirm_s)
        if records:
            await self._consumer_call(self._rewind, records)
            # dispatches the batch parked are parked again when it is read again
            first: dict[int, int] = {}
            for msg in records:
                partition, offset = msg.partition(), msg.offset()
                if partition is not None and offset is not None:
                    first.setdefault(partition, offset)
            self._parked = [entry for entry in self._parked
                            if not (entry[0] in first and entry[1] >= first[entry[0]])]
        deadline = time.monotonic() + self.fence_confirm_s
        while time.monotonic() < deadline and not self._stopping.is_set() and is_current():
            await asyncio.sleep(0.1)
        if not self._stopping.is_set() and is_current():
            log.info("the group kept this replica's partitions after the pause; folding "
                     "again from the batch it held")
            self._fenced = False
        if self.fence is not None:
            self.fence.reset()

    def _rewind(self, records: list[Message]) -> None:
        """Seek each partition of a batch back to its first record: the next take reads
        the batch again. Folding it again is safe: what was applied is recognised (D4)."""
        assert self._consumer is not None
        first: dict[int, int] = {}
        for msg in records:
            partition, offset = msg.partition(), msg.offset()
            if partition is not None and offset is not None and partition not in first:
                first[partition] = offset
        for partition, offset in first.items():
            self._consumer.seek(TopicPartition(self.topics.events, partition, offset))

    def _wait_take(self, wait_s: float) -> list[Message]:
        """:meth:`_take` on the consumer's thread, waiting up to ``wait_s``."""
        fault_point("fold.consume")
        return self._take(wait_s)

    def _take(self, wait_s: float) -> list[Message]:
        """Up to ``max_batch`` records: what is there, or the first within ``wait_s``
        and what came with it."""
        assert self._consumer is not None
        batch = self._consumer.consume(self.max_batch, 0)
        if not batch and wait_s > 0:
            first = self._consumer.poll(wait_s)
            if first is None:
                return []
            batch = [first, *self._consumer.consume(self.max_batch - 1, 0)]
        good = []
        for msg in batch:
            err = msg.error()
            if err is None:
                good.append(msg)
            elif err.code() != KafkaError._PARTITION_EOF:
                log.warning("events consumer: %s", err)
        return good

    def _wait_s(self) -> float:
        """How long an empty client is waited on: no longer than the open window has left."""
        if self._window_opened is None:
            return self.poll_wait_s
        left = self._window_opened + self.window_s - time.monotonic()
        return max(0.0, min(self.poll_wait_s, left))

    def _window_due(self) -> bool:
        """The open window has lasted ``window_s`` (an empty one is never due)."""
        return (self._window_opened is not None
                and time.monotonic() - self._window_opened >= self.window_s)

    # -- one batch -----------------------------------------------------------------------

    async def fold(self, records: list[Message]) -> None:
        """Fold one batch of records and make it durable."""
        self.metrics.batch_size.observe(len(records))
        by_partition: dict[int, list[Message]] = {}
        for msg in records:
            partition = msg.partition()
            assert partition is not None  # a consumed record always has one
            by_partition.setdefault(partition, []).append(msg)
        folds = []
        for partition, msgs in by_partition.items():
            db = self.tables.partition_db(partition)
            folds.append(fold_partition(partition, msgs, db.get, self.limits, self.checks))
        if self.tracing.enabled:
            trace_effects(self.tracing, folds, by_partition)
        fault_point("fold.after_fold")
        await self.persist(folds)

    async def persist(self, folds: list[PartitionFold]) -> None:
        """Make a folded batch durable. The order of the steps, and why each crash is safe:

        1. **Local state.** Each partition's final states go to its RocksDB in one
           write batch, and the due and listing index entries move beside them
           (local, derived, rebuilt from the task table after any rebalance: D10).
           The changelog record of each entity the batch touched (tasks and the other
           kinds alike: ENTITIES.md) joins the open **window**: one record per entity,
           its latest state (D50).
        2. **Changelog records**, once the window has lasted ``window_s`` (every batch
           when it is 0): the window's records, to the table's changelog partition of
           the same number (:meth:`close_window`).
        3. **Effects** (dispatches, dlq copies, cancellations, and the events one
           entity emits to another: ``Emit``, to the events topic keyed by the
           target entity, D37, D32) and records set aside for the quarantine
           topic, every batch. A dispatch to a queue not registered yet is parked
           instead (:meth:`release_parked`): its queue is set up off the fold, and its
           partition commits no further than the record that caused it.
        4. **Flush**: every record of 2 and 3 is acknowledged by the brokers
           (acks=all, idempotent). A record that failed is sent again, with
           backoff, until it is acknowledged; nothing moves on before. A batch whose
           changelog records wait in the window ends here (``fold.window_open``).
        5. **Persisted changelog offset** of each partition (Faust's key in the
           partition's RocksDB): a restart on this data directory restores from the
           changelog only past it.
        6. **Commit** the events offsets past the window's batches.

        A crash before 6 reads the window's batches again. Their events are then
        already in the local state (after 1) or not (before 1): ``apply`` recognises a
        repeat by its log position (D45) and changes nothing, and the last applied
        event of a task returns the effects its state implies (D4), so records of 3
        that never left are sent now (an ``Emit`` redone carries the same derived event
        id, so its receiver drops the repeat). Every touched entity joins the window
        again (1) even when the repeat changed nothing, so a state that reached only
        the local RocksDB reaches the changelog too (issue 14, hole 1). Restoring this
        data directory after a crash between 1 and 5 applies the changelog past the
        persisted offset over the local state: records older than the local state
        may be applied, and the re-read batches bring the state forward again
        before the commit. A fresh replica restores from the changelog alone,
        which after 4 holds every state the commit covers.

        The fault points after 1, 2, 3, 4 and before 6 (``fold.after_state_write``,
        ``fold.after_changelog_send``, ``fold.after_effect_send``,
        ``fold.window_open``, ``commit.before``) are where tests/test_durability.py
        kills the replica to prove this.
        """
        if not folds:
            return
        deliveries = Deliveries(self.topics.changelog)
        routes = {self.topics.route(q, tags) for fold in folds for q, tags in fold.dispatch_queues}
        for route in routes - self._queues_ready:
            self._look_up(route)
        self._check_fence("the local write")
        if self._window_opened is None:
            self._window_opened = time.monotonic()
        for fold in folds:
            self._write_local(fold)
        fault_point("fold.after_state_write")
        self._check_fence("the changelog and effect sends")
        closing = self._window_due()
        if closing:
            self._send_window(deliveries)
        effects = [record for fold in folds for record in self._effect_records(fold)]
        self._send(effects, deliveries)
        fault_point("fold.after_effect_send")
        await self._deliver(deliveries)
        for fold in folds:
            if fold.next_offset >= 0:
                self._folded[fold.partition] = fold.next_offset
                self.positions[fold.partition] = fold.next_offset
        if closing:
            self._window_closed(deliveries)
        else:
            fault_point("fold.window_open")
        self._count(folds)

    async def close_window(self) -> None:
        """Steps 2 and 4 to 6 for the open window (:meth:`persist`), with no batch in hand."""
        if self._window_opened is None:
            return
        self._check_fence("the changelog send")
        deliveries = Deliveries(self.topics.changelog)
        self._send_window(deliveries)
        await self._deliver(deliveries)
        self._window_closed(deliveries)

    def _send_window(self, deliveries: Deliveries) -> None:
        """Step 2: hand the window's changelog records to the producer. The window stays
        open until they are acknowledged (:meth:`_window_closed`): a batch that fails
        before then is folded again, and the records of the window's earlier batches are
        still here to be sent."""
        topic = self.topics.changelog
        self._send((Outbound(topic, key, value, partition)
                    for partition, states in self._window.items()
                    for key, value in states.items()), deliveries)
        fault_point("fold.after_changelog_send")

    def _window_closed(self, deliveries: Deliveries) -> None:
        """Steps 5 and 6, once every record of the window is acknowledged: the commit
        covers every batch whose effects are acknowledged too (``_folded``: each one's
        changelog records joined this window or an earlier one; a batch that failed is
        not among them, it is read again)."""
        for partition, offset in deliveries.changelog_offsets.items():
            self._set_persisted_offset(partition, offset)
        self._check_fence("the offset commit")
        self._window.clear()
        self._window_opened = None
        for partition, offset in self._folded.items():
            self._durable[partition] = offset
            held = self._held(partition)
            if held is not None:
                self._committing[partition] = held
        fault_point("commit.before")
        self._commit(asynchronous=True)

    def _write_local(self, fold: PartitionFold) -> None:
        """Step 1 for one partition: its states to RocksDB, their changelog records to the
        open window (a later state of an entity replaces its earlier one there)."""
        partition = fold.partition
        writer = self.tables.writer(partition)
        window = self._window.setdefault(partition, {})
        for key, change in fold.changes.items():
            if change.after is None:
                writer.delete(key, change.before)
                window[key] = None  # a tombstone
                continue
            encoded = encode_entity(change.after)
            writer.put(key, encoded, change.before, change.after, change.fired_timers)
            window[key] = encoded
        writer.commit()

    def _effect_records(self, fold: PartitionFold) -> Iterable[Outbound]:
        for caused in fold.effects:
            effect = caused.effect
            match effect:
                case Dispatch(envelope=env, tags=tags):
                    body = env.body
                    assert isinstance(body, TaskDispatched)
                    record = Outbound(self.topics.ready(body.queue, body.priority, tags),
                                      env.task_id.encode(), encode_event(env),
                                      headers=caused.headers)
                    route = self.topics.route(body.queue, tags)
                    if route in self._queues_ready:
                        yield record
                    else:
                        self._parked.append((fold.partition, caused.offset, record, route))
                case DeadLetter(envelope=env):
                    yield Outbound(self.topics.dlq, env.task_id.encode(), encode_event(env),
                                   headers=caused.headers)
                case PublishCancel(envelope=env):
                    yield Outbound(self.topics.cancellations, env.task_id.encode(),
                                   encode_event(env), headers=caused.headers)
                case ForgetCancel(task_id=task_id):  # a settled cancellation's tombstone
                    yield Outbound(self.topics.cancellations, task_id.encode(), None)
                case Emit(envelope=env):  # to the entity that acts next (D37, D32)
                    key, value = env.task_id.encode(), encode_event(env)
                    yield Outbound(self.topics.events, key, value,
                                   headers=self.signed(caused.headers, key, value))
                case _:
                    pass
        for aside in fold.set_aside:
            log.warning("quarantined %s[%d]@%d: %s", self.topics.events, fold.partition,
                        aside.offset, aside.reason)
            headers = quarantine_headers(self.topics.events, fold.partition, aside.offset,
                                         aside.reason)
            yield Outbound(self.topics.quarantine, aside.key, aside.value,
                           headers=[(name, value) for name, value in headers])

    # -- queues met for the first time ---------------------------------------------------

    def _look_up(self, route: str) -> None:
        """Have the registry read for a route whose queue is not known registered, off
        the fold (D31); ``route`` is a queue's name, or a queue and tag set (D38).

        One read at a time answers every route asked for meanwhile. The fold never makes
        a queue's topics: a queue the registry holds becomes ready (its topics exist,
        D20); one it does not hold is refused, and :meth:`release_parked` cancels its
        parked tasks. A tag set of a registered queue is no new queue: its ready topics
        are made then, still off the fold (the same rule, the same ACL prefix), and
        one of an unregistered queue is refused like its queue."""
        if route in self._lookup_pending or route in self._queues_refused:
            return
        self._lookup_pending.add(route)
        if self._lookup is None or self._lookup.done():
            self._lookup = asyncio.ensure_future(self._read_pending())

    async def _read_pending(self) -> None:
        backoff = RESEND_BACKOFF_S
        while self._lookup_pending:
            asked = set(self._lookup_pending)
            try:
                registered = await self._read_registry()
                self._queues_ready |= registered
                for route in sorted(asked - self._queues_ready):
                    if parse_route(route)[0] in self._queues_ready:
                        await self._make_route(route)  # a tag set's topics (D38)
                        self._queues_ready.add(route)
            except Exception as exc:  # retried: the dispatches wait, nothing is lost
                log.warning("the ready topics of %s could not be looked up or made (%s); "
                            "trying again in %.1fs", sorted(asked), exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, RESEND_BACKOFF_MAX_S)
                continue
            refused = asked - self._queues_ready
            if refused:
                log.warning("queue(s) %s are not registered: their tasks are cancelled, no "
                            "topic is made (register a queue with `taskstream topics "
                            "create --queues` or POST /queues)",
                            sorted({parse_route(route)[0] for route in refused}))
            self._queues_refused |= refused
            self._lookup_pending -= asked

    def _held(self, partition: int) -> int | None:
        """The offset a partition may commit: past its last durable batch (its changelog
        records acknowledged), but not past its first parked dispatch; None before its
        first durable batch."""
        durable = self._durable.get(partition)
        if durable is None:
            return None
        return min([durable, *(o for p, o, _, _ in self._parked if p == partition)])

    async def release_parked(self) -> None:
        """Send the parked dispatches whose queues are ready now, in fold order, cancel
        the tasks of those whose queues the registry does not hold, and let their
        partitions commit past them once all that is acknowledged.

        A dispatch to a queue not known registered does not stall the fold: everything
        else of its batch is made durable, the dispatch waits here while the registry is
        read (:meth:`_look_up`), and its partition commits no further than the record
        that caused it. A crash meanwhile reads that record again and its task's last
        applied event redoes the dispatch (D4), so nothing waits only in memory.

        A queue nobody registered gets no topics (D31): its task is cancelled by a
        ``CancelRequested`` this replica writes to the events topic, with the reason, so
        the cancellation is a fact on the log that replay folds like the live fold. A
        crash before the commit redoes the dispatch and writes the cancellation again;
        the second one finds the task cancelled and changes nothing."""
        if self._parked:
            self._check_fence("sending parked dispatches")
        refused_queues, self._queues_refused = self._queues_refused, set()
        if not self._parked:
            return
        ready = [entry for entry in self._parked if entry[3] in self._queues_ready]
        refused = [entry for entry in self._parked if entry[3] in refused_queues]
        if not ready and not refused:
            return
        deliveries = Deliveries(self.topics.changelog)
        self._send((record for _, _, record, _ in ready), deliveries)
        self._send((self._cancellation(record, parse_route(route)[0])
                    for _, _, record, route in refused), deliveries)
        await self._deliver(deliveries)
        done = {id(entry) for entry in ready} | {id(entry) for entry in refused}
        self._parked = [entry for entry in self._parked if id(entry) not in done]
        for partition in {p for p, _, _, _ in ready} | {p for p, _, _, _ in refused}:
            held = self._held(partition)
            if held is not None:
                self._committing[partition] = held
        self._commit(asynchronous=True)
        if refused:
            self.metrics.unregistered.inc(len(refused))

    def _cancellation(self, dispatch: Outbound, queue: str) -> Outbound:
        """The CancelRequested that ends a task whose queue is not registered."""
        assert dispatch.key is not None  # a dispatch is keyed by its task
        envelope = Envelope(
            new_event_id(), dispatch.key.decode(), time.time_ns() // 1_000_000, self.source,
            0, CancelRequested(reason=(
                f"queue {queue!r} is not registered: no topic is made for it; register it "
                "(taskstream topics create --queues, POST /queues) and submit again")))
        return Outbound(self.topics.events, dispatch.key, encode_event(envelope))

    def signed(self, headers: Headers | None, key: bytes, value: bytes) -> Headers | None:
        """``headers`` plus this replica's signature of the record (with a signer)."""
        if self.signer is None:
            return headers
        signed = list(headers.items()) if isinstance(headers, dict) else list(headers or ())
        signed.append(self.signer.header(key, value))
        return signed

    def send(self, topic: str, key: bytes, value: bytes,
             headers: Headers | None = None) -> None:
        """Hand one record to the fold's producer, not waited for (timer events: a lost
        one is emitted again, D5)."""
        self._send([Outbound(topic, key, value, headers=headers)], None)

    def _send(self, records: Iterable[Outbound], deliveries: Deliveries | None) -> None:
        produce, poll = self.producer.produce, self.producer.poll
        report = deliveries.report if deliveries is not None else None
        for record in records:
            while True:
                try:
                    produce(record.topic, record.value, record.key,
                            partition=record.partition, on_delivery=report,
                            headers=record.headers)
                    break
                except BufferError:  # the client's queue is full: let it drain a little
                    poll(0.05)

    async def _deliver(self, deliveries: Deliveries) -> None:
        """Wait until every record sent is acknowledged; send the failed ones again."""
        backoff = RESEND_BACKOFF_S
        started = time.monotonic()
        while True:
            left = await self._producer_call(self.producer.flush, FLUSH_SLICE_S)
            if left == 0 and not deliveries.failed:
                return
            if deliveries.failed:
                failed, deliveries.failed = deliveries.failed, []
                log.warning("%d record(s) not acknowledged (first: %s to %s); sending them "
                            "again in %.1fs", len(failed), failed[0][1], failed[0][0].topic,
                            backoff)
                self.metrics.resent.inc(len(failed))
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, RESEND_BACKOFF_MAX_S)
                self._send((record for record, _ in failed), deliveries)
            elif time.monotonic() - started > self.flush_timeout_s:
                log.warning("the brokers have not acknowledged %d record(s) for %.0fs; "
                            "still waiting (the batch is not committed)", left,
                            time.monotonic() - started)
                started = time.monotonic()

    def _commit(self, *, asynchronous: bool) -> None:
        """Commit the offsets past every batch made durable so far. The fold does not
        wait for an asynchronous commit: one that is lost only reads records again,
        which are found applied (D4); the last one of a generation is waited for."""
        assert self._consumer is not None
        if not self._committing:
            return
        offsets = [TopicPartition(self.topics.events, p, o) for p, o in self._committing.items()]
        try:
            if asynchronous:
                self._consumer.commit(offsets=offsets, asynchronous=True)
            else:
                self._consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as exc:
            log.warning("events offsets not committed (%s); those records will be read "
                        "again and found applied", exc)

    def _check_fence(self, step: str) -> None:
        if self.fence is not None:
            self.fence.check(step)

    def _commit_last(self) -> None:
        """A generation ends: its last commit is waited for; what it held in memory goes
        (a parked dispatch is redone by whoever reads its record next, D4)."""
        self._commit(asynchronous=False)
        self._forget()

    def _forget(self) -> None:
        """What a generation held in memory goes (not committed: a fenced one's offsets
        may be behind the new owner's, D43)."""
        self._committing.clear()
        self._folded.clear()
        self._durable.clear()
        self._parked.clear()
        self._window.clear()
        self._window_opened = None

    def _count(self, folds: list[PartitionFold]) -> None:
        """The batch's metrics, added once per label (a labelled inc per record costs
        more than the record's own fold)."""
        m, now = self.metrics, time.time()
        applied: Counter[str] = Counter()
        outcomes: Counter[tuple[Any, str]] = Counter()
        quarantined = 0
        self._count_clock(folds)
        for fold in folds:
            applied.update(fold.applied)
            quarantined += len(fold.set_aside)
            for caused in fold.effects:
                kind = caused.effect.__class__
                if kind is Dispatch:
                    outcomes[(m.dispatched, caused.queue)] += 1
                    m.dispatch_latency.observe(max(0.0, now - caused.cause.occurred_at_ms / 1000))
                elif kind is DeadLetter:
                    outcomes[(m.dead_letters, caused.queue)] += 1
                elif kind is Rejected:
                    outcomes[(m.rejected, caused.cause.type_name)] += 1
                elif kind is RetryScheduled:
                    outcomes[(m.retries, caused.queue)] += 1
                elif isinstance(caused.effect, Duplicate):
                    outcomes[(m.duplicates, str(caused.effect.conflict).lower())] += 1
        for type_name, n in applied.items():
            m.applied.labels(type_name).inc(n)
        for (metric, label), n in outcomes.items():
            metric.labels(label).inc(n)
        if quarantined:
            m.quarantined.labels(self.topics.events).inc(quarantined)

    def _count_clock(self, folds: list[PartitionFold]) -> None:
        """The writers' clock skew (D44) and the records found already folded (D45)."""
        m, skew_ms = self.metrics, 0
        for fold in folds:
            skew_ms = max(skew_ms, fold.clamped.largest_ms)
            for writer, n in fold.clamped.by_writer.items():
                m.clock_clamped.labels(writer).inc(n)
            if fold.refolded:
                m.refolded.inc(fold.refolded)
        m.clock_skew.set(skew_ms / 1000)
