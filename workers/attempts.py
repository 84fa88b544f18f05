"""Running ready records on a worker: one attempt, or a batch, from start to outcome.

The order of durable steps for one record is the worker's (workers/worker.py,
steps 3-5): ``TaskStarted`` produced and the handler started at once, the record
settled when the broker acknowledges ``TaskStarted``, ``LeaseRenewed`` every
``lease_ms / 3`` (one timer sweeps every running attempt), then ``TaskSucceeded``
or ``TaskFailed``.

A record settles on the first acknowledged event of its attempt, not only its
``TaskStarted`` (D47): the fold takes a ``LeaseRenewed`` or an outcome from READY
as the start it missed, so once any of them is on the broker the attempt is
known and its record must not be read again. A ``TaskStarted`` that fails makes
the attempt's next ``LeaseRenewed`` due at once (the retry of the start); a short
attempt's outcome settles it. Before, a failed ``TaskStarted`` left its record
pending for ever: the partition's commit point stayed there, and the next
rebalance re-ran every later record of the partition, finished ones included. A
record none of whose events reached the broker stays unsettled on purpose: its
task is READY with no timer, and only reading the record again runs it.

A batch (D39) does the same per record around one handler call, in the batch's
own task. Cancellations are remembered here: a cancelled record is skipped, a
running attempt interrupted (a batch's call goes on for the other records; the
cancelled one is reported cancelled).

Each attempt carries its trace (D22, workers/tracing.py): a run span, current while
the handler runs, whose ``traceparent`` its events carry; in a batch each record
has its own run span and events, and the one handler call runs under none of
them. A sealed payload (D27) is opened before the handler sees it; one that does
not open fails its attempt alone. With object storage (D34, workers/blobs.py) an
offloaded payload is fetched (and opened) first and a large result stored after;
in a batch each record's fetch and store is its own, and a failed one fails that
record alone. Log lines of an attempt carry its task's fields (telemetry/logs.py);
a batch's carry none (they are many tasks).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from taskstream.objectstore.offload import Offloader
from taskstream.schemas.events import Envelope, TaskDispatched
from taskstream.telemetry.logs import TaskLogContext, set_task_context
from taskstream.workers.blobs import fetch_payload, store_result
from taskstream.workers.consumer import QueueConsumer, ReadyRecord
from taskstream.workers.context import TaskContext
from taskstream.workers.emitter import Delivered, EventEmitter, Headers
from taskstream.workers.metrics import WorkerMetrics
from taskstream.workers.outcome import (
    Failure,
    Outcome,
    cancelled_failure,
    open_payload,
    unknown_task_failure,
)
from taskstream.workers.progress import ProgressThrottle, expired, fencing_token
from taskstream.workers.registry import TaskDef, TaskRegistry
from taskstream.workers.runtime import Pool, execute, execute_batch
from taskstream.workers.tracing import AttemptTrace, AttemptTracing

log = logging.getLogger("taskstream.worker")

MIN_RENEW_S = 0.05


def lazy_progress(emitter: EventEmitter, envelope: Envelope) -> Callable[[float, str], object]:
    """``ctx.progress``'s sink: a throttle made on the first report (most handlers never
    report, and the worker's hot path makes one context per attempt)."""
    throttle: ProgressThrottle | None = None

    def report(fraction: float, note: str) -> object:
        nonlocal throttle
        if throttle is None:
            throttle = ProgressThrottle(lambda f, n: emitter.progress(envelope, f, n))
        return throttle.report(fraction, note)

    return report


@dataclass(slots=True)
class _Running:
    """An attempt whose handler runs: ``task`` is the asyncio task running it (the
    record's own task, or its batch's); its next LeaseRenewed is due at ``renew_at``
    (loop time)."""

    envelope: Envelope
    ctx: TaskContext
    task: asyncio.Task[None]
    renew_every_s: float
    renew_at: float
    cancel_requested: bool = False
    in_batch: bool = False  # a cancellation marks it; the batch's call goes on for the rest
    #: what its LeaseRenewed events carry (the run span's traceparent; None: tracing off)
    headers: Headers | None = None
    #: settles its record when one of its events is acknowledged (D47)
    on_acked: Delivered | None = None


Picked = tuple[QueueConsumer, ReadyRecord]


#: how many settled attempts a worker remembers (about 100 bytes each): more than it
#: settles between two commits of a partition and a session timeout after them, the
#: span a record can be read again in at any rate this machine class reaches
SETTLED_REMEMBERED = 100_000


class AttemptMemory:
    """Attempts of tasks, newest last, bounded (oldest forgotten first).

    Two uses, each an instance. **Settled here**: the attempts whose records settled on
    this worker (an event of the attempt acknowledged, D47: the fold knows it, and this
    worker runs it or has run it). Its record can still be read again before its offset
    is committed: the group session times out when the coordinator's broker dies, the
    partitions are lost uncommitted and come back, or a rebalance hands them back. Such
    a repeat is skipped, however long ago its attempt finished (chaos full run 4 ran one
    again beside the concurrency key's next two holders). **Withdrawn**: ended attempts
    the fold withdrew on the cancellations topic (D49), skipped wherever their dispatch
    is read again. Both matter only while a copy of the attempt's record can still be
    read, so a bound fits; a cancellation of a task is kept for ever instead. Written
    from the emitter's (or the loop's) thread, read on the loop.

    The oldest is found in a deque, not as the first key of a dict: a dict that drops
    its first key on every add keeps the dropped slots until it is resized, and finding
    its first key walks over all of them. At 100,000 entries that cost 111 us per add
    against 2 us below the bound, in every task's settle, once a worker had settled
    100,000 attempts (issue 12)."""

    def __init__(self, capacity: int = SETTLED_REMEMBERED) -> None:
        self._capacity = capacity
        self._seen: set[tuple[str, int]] = set()
        self._order: deque[tuple[str, int]] = deque()
        self._lock = threading.Lock()

    def add(self, task_id: str, attempt: int) -> None:
        key = (task_id, attempt)
        with self._lock:
            if key in self._seen:
                return
            self._seen.add(key)
            self._order.append(key)
            if len(self._order) > self._capacity:
                self._seen.discard(self._order.popleft())

    def __contains__(self, envelope: Envelope) -> bool:
        return (envelope.task_id, envelope.attempt) in self._seen


def settler(consumer: QueueConsumer, record: ReadyRecord,
            settled: AttemptMemory) -> Delivered:
    """The delivery callback of every event of ``record``'s attempt: the first one
    acknowledged settles the record (D47) and remembers its attempt in ``settled``; the
    rest cost a flag check. Runs in the emitter's thread (or the sender's, for a
    refused send)."""
    done = False

    def on_delivered(ok: bool) -> None:
        nonlocal done
        if ok and not done:
            done = True
            settled.add(record.envelope.task_id, record.envelope.attempt)
            consumer.settle(record.tp, record.offset)

    return on_delivered


@dataclass(frozen=True, slots=True)
class Batch:
    """Records of one batch task, started together in one slot."""

    task: TaskDef
    items: list[Picked]


#: what the dispatcher hands a slot: one record, or a batch
Job = Picked | Batch


class AttemptRunner:
    """Starts records and reports their outcomes, for one worker."""

    def __init__(self, app: TaskRegistry, pool: Pool, emitter: EventEmitter,
                 metrics: WorkerMetrics, loop: asyncio.AbstractEventLoop,
                 tracing: AttemptTracing | None = None,
                 fetch_result: Callable[[str], Any] | None = None,
                 offloader: Offloader | None = None) -> None:
        self.app = app
        #: object storage for large payloads and results (D34; None: everything inline)
        self.offloader = offloader
        self.tracing = tracing or AttemptTracing()
        #: reads a parent's result for ctx.parent_results (None: the context refuses)
        self.fetch_result = fetch_result
        self.pool = pool
        self.emitter = emitter
        self.metrics = metrics
        self.loop = loop
        self.cancelled: dict[str, int] = {}  # task_id -> attempt of the cancellation
        self.settled = AttemptMemory()
        self.withdrawn = AttemptMemory()
        self.running: dict[str, _Running] = {}
        self._lease_sweep: asyncio.TimerHandle | None = None

    def on_cancel(self, task_id: str, attempt: int, *, withdrawn: bool = False) -> None:
        """A cancellation arrived: remember it; interrupt the attempt if it runs here. A
        withdrawal (D49) names one ended attempt: that one is remembered, in a bounded
        memory, and interrupted if a copy of it runs here."""
        if withdrawn:
            self.withdrawn.add(task_id, attempt)
            limit = attempt
        else:
            limit = self.cancelled[task_id] = max(attempt, self.cancelled.get(task_id, 0))
        running = self.running.get(task_id)
        if running is not None and (running.envelope.attempt == attempt if withdrawn
                                    else running.envelope.attempt <= limit):
            running.cancel_requested = True
            running.ctx.mark_cancelled()
            if not running.in_batch:
                running.task.cancel()
            log.info("event=task.cancelling task_id=%s attempt=%d", task_id,
                     running.envelope.attempt)

    def skip_reason(self, record: ReadyRecord) -> str | None:
        """Why ``record`` must not start here (it is settled and skipped), or None: its task
        or attempt was cancelled or withdrawn; its attempt settled here before (read again:
        it ran, or runs, here); or its task's expiry has come (never started: the
        processor's expiry timer ends the task)."""
        envelope = record.envelope
        if self.is_cancelled(envelope):
            return "cancelled"
        if envelope in self.settled:
            return "settled_here"
        if expired(record.dispatched):
            return "expired"
        return None

    def is_cancelled(self, envelope: Envelope) -> bool:
        attempt = self.cancelled.get(envelope.task_id)
        return (attempt is not None and envelope.attempt <= attempt) or envelope in self.withdrawn

    async def run_record(self, consumer: QueueConsumer, record: ReadyRecord) -> None:
        envelope, dispatched = record.envelope, record.dispatched
        emitter = self.emitter
        set_task_context(TaskLogContext(envelope.task_id, envelope.attempt, dispatched.queue,
                                        dispatched.name))  # this record's own asyncio task
        skip = self.skip_reason(record)
        if skip is not None:
            consumer.settle(record.tp, record.offset)
            self.metrics.skipped.labels(consumer.queue).inc()
            log.info("event=task.skipped reason=%s task_id=%s attempt=%d", skip,
                     envelope.task_id, envelope.attempt)
            return
        task = self.app.get(dispatched.name)
        settle = settler(consumer, record, self.settled)
        trace = self._begin(record)
        headers = trace.headers if trace is not None else None
        emitter.started(envelope, on_delivered=self._on_started(envelope, settle),
                        headers=headers)
        started = time.monotonic()
        series = self.metrics.of_task(dispatched.name)
        series.started.inc()
        self.metrics.of_queue(dispatched.queue).observe(
            max(0.0, time.time() - envelope.occurred_at_ms / 1000))
        log.info("event=task.started task_id=%s attempt=%d name=%s queue=%s",
                 envelope.task_id, envelope.attempt, dispatched.name, dispatched.queue)
        opened = open_payload(dispatched, envelope.task_id, emitter.sealer)
        if task is None:
            outcome: Outcome | None = unknown_task_failure(dispatched.name, self.app.names())
        elif isinstance(opened, Failure):
            outcome = opened
        else:
            try:
                outcome = await self._execute(task, envelope, opened, trace, settle)
            except asyncio.CancelledError:  # stopped without grace: no outcome
                if trace is not None:
                    self.tracing.end(trace, None)
                raise
        took = time.monotonic() - started
        series.run_seconds.observe(took)
        if trace is not None:
            self.tracing.end(trace, outcome)
        if outcome is None:
            return
        outcome = self._send_outcome(envelope, outcome, headers, settle)
        if isinstance(outcome, Failure):
            self._log_failure(envelope, dispatched, outcome, took)
        else:
            series.succeeded.inc()
            log.info("event=task.succeeded task_id=%s attempt=%d name=%s took_ms=%d",
                     envelope.task_id, envelope.attempt, dispatched.name, took * 1000)

    def _on_started(self, envelope: Envelope, settle: Delivered) -> Delivered:
        """TaskStarted's delivery callback: settle on the ack; on a failure make the
        attempt's next LeaseRenewed due now (the fold starts it on that, D47)."""
        loop = self.loop

        def on_started(ok: bool) -> None:
            if ok:
                settle(True)
            else:
                loop.call_soon_threadsafe(self._start_unacked, envelope)

        return on_started

    def _start_unacked(self, envelope: Envelope) -> None:
        running = self.running.get(envelope.task_id)
        here = running is not None and running.envelope.attempt == envelope.attempt
        log.warning("event=task.start_unacked task_id=%s attempt=%d (its record settles "
                    "when %s of the attempt is acknowledged)", envelope.task_id,
                    envelope.attempt, "a LeaseRenewed sent now, or the outcome," if here
                    else "the outcome")
        if running is not None and here:
            running.renew_at = self.loop.time()
            self._sweep_leases_by(running.renew_at)

    def _context(self, task: TaskDef, envelope: Envelope, dispatched: TaskDispatched,
                 headers: Headers | None, settle: Delivered | None = None) -> TaskContext:
        """The handler's context of one attempt (its heartbeats carry ``headers``; their
        acks settle its record)."""
        emitter = self.emitter
        return TaskContext(
            task_id=envelope.task_id, attempt=envelope.attempt, name=task.name,
            idempotency_key=dispatched.idempotency_key, headers=dispatched.headers,
            heartbeat=functools.partial(emitter.lease_renewed, envelope, headers, settle),
            parents=dispatched.parents, fetch_result=self.fetch_result,
            dispatch_id=dispatched.dispatch_id,
            fencing_token=None if dispatched.concurrency_key is None
            else fencing_token(envelope.attempt, dispatched),
            progress=lazy_progress(emitter, envelope), queue=dispatched.queue)

    def _begin(self, record: ReadyRecord) -> AttemptTrace | None:
        """The attempt's run span (its queue wait recorded); None with tracing off."""
        if not self.tracing.enabled:
            return None
        return self.tracing.begin(record.envelope, record.dispatched, record.tp[0],
                                  record.trace)

    def _send_outcome(self, envelope: Envelope, outcome: Outcome,
                      headers: Headers | None, settle: Delivered | None = None) -> Outcome:
        """Send the attempt's outcome (its ack settles the record); returns what to log
        (the result-too-large failure sent instead of a result; a sealed error text kept
        out of the logs)."""
        emitter = self.emitter
        sent = emitter.outcome(envelope, outcome, on_delivered=settle, headers=headers)
        if isinstance(sent, Failure) and sent.error_type == "ResultTooLarge":
            return sent  # what the task got instead of its result
        if emitter.sealer is not None and isinstance(outcome, Failure):
            return replace(outcome, message="<sealed>")  # error texts stay out of logs
        return outcome

    async def _execute(self, task: TaskDef, envelope: Envelope, dispatched: TaskDispatched,
                       trace: AttemptTrace | None = None, settle: Delivered | None = None
                       ) -> Outcome | None:
        """Run the handler in this record's own task; None when the worker stops it
        without grace (no outcome: the lease recovers the attempt).

        A cancellation of the task (``on_cancel``) reaches the handler as
        ``CancelledError`` and is reported as ``Cancelled``; a handler that raises
        ``CancelledError`` of its own ends the same way. With tracing on, the run span
        is current while the handler runs (its own spans are the run's children) and
        the attempt's events carry its ``traceparent``.
        """
        loop = self.loop
        headers = trace.headers if trace is not None else None
        ctx = self._context(task, envelope, dispatched, headers, settle)
        me = asyncio.current_task()
        assert me is not None
        every = max(dispatched.lease_ms / 3000, MIN_RENEW_S)
        running = _Running(envelope, ctx, me, every, loop.time() + every, headers=headers,
                           on_acked=settle)
        self.running[envelope.task_id] = running
        self._sweep_leases_by(running.renew_at)
        threaded = not task.is_coroutine and self.pool is not Pool.PROCESS
        try:
            offloader, sealer = self.offloader, self.emitter.sealer
            if trace is None:
                outcome = await execute(task, dispatched, ctx, self.pool,
                                        offloader=offloader, sealer=sealer)
            else:
                with self.tracing.telemetry.current(trace.span):
                    outcome = await execute(task, dispatched, ctx, self.pool,
                                            offloader=offloader, sealer=sealer)
        except asyncio.CancelledError:
            if me.cancelling() and not running.cancel_requested:
                raise  # stop without grace
            if running.cancel_requested:
                me.uncancel()
            if threaded:
                self.metrics.abandoned_threads.inc()
            return cancelled_failure()
        finally:
            if self.running.get(envelope.task_id) is running:
                del self.running[envelope.task_id]
        if running.cancel_requested:  # the handler swallowed the cancellation
            me.uncancel()
            return cancelled_failure()
        if threaded and isinstance(outcome, Failure) and outcome.timed_out:
            self.metrics.abandoned_threads.inc()
        return outcome

    def _sweep_leases_by(self, when: float) -> None:
        """Make sure the lease sweep runs by ``when`` (loop time). One timer serves every
        running attempt: a timer per attempt cost more than a no-op task's handler."""
        loop = self.loop
        sweep = self._lease_sweep
        if sweep is None or when < sweep.when():
            if sweep is not None:
                sweep.cancel()
            self._lease_sweep = loop.call_at(when, self._renew_leases)

    def _renew_leases(self) -> None:
        """Emit LeaseRenewed for every attempt that is due; schedule the next sweep. A
        send that raises is logged and skips that attempt this turn only: the sweep is
        the one timer of every lease, so it must never stop (D47)."""
        emitter, loop = self.emitter, self.loop
        self._lease_sweep = None
        now = loop.time()
        due: float | None = None
        for running in list(self.running.values()):
            if running.renew_at <= now:
                running.renew_at = now + running.renew_every_s
                try:
                    emitter.lease_renewed(running.envelope, running.headers, running.on_acked)
                except Exception:
                    log.exception("event=lease.renew_failed task_id=%s attempt=%d",
                                  running.envelope.task_id, running.envelope.attempt)
            due = running.renew_at if due is None else min(due, running.renew_at)
        if due is not None:
            self._sweep_leases_by(due)

    def _log_failure(self, envelope: Envelope, dispatched: TaskDispatched, outcome: Failure,
                     took_s: float) -> None:
        self.metrics.failed.labels(dispatched.name, outcome.error_type).inc()
        event = "task.retry" if outcome.retryable else "task.failed"
        log.warning("event=%s task_id=%s attempt=%d name=%s error_type=%s timed_out=%s "
                    "took_ms=%d message=%r", event, envelope.task_id, envelope.attempt,
                    dispatched.name, outcome.error_type, outcome.timed_out,
                    took_s * 1000, outcome.message)

    async def run_batch(self, batch: Batch) -> None:
        """Start a batch's records, call the handler once in this task over those whose
        payload opens, emit one outcome per record. Stopped without grace: no outcome (the
        leases recover them)."""
        task, items = batch.task, self._startable(batch.items)
        if not items:
            return
        loop = self.loop
        me = asyncio.current_task()
        assert me is not None
        begun, settles = self._start_batch(task, items)
        self.metrics.batch_size.labels(task.name).observe(len(items))
        log.info("event=batch.started name=%s size=%d", task.name, len(items))
        started = time.monotonic()
        outcomes, records = self._open_batch(items)
        chosen = sorted(records)
        running: dict[int, _Running] = {}
        for i in chosen:
            record, (ctx, trace) = items[i][1], begun[i]
            every = max(record.dispatched.lease_ms / 3000, MIN_RENEW_S)
            entry = _Running(record.envelope, ctx, me, every, loop.time() + every, in_batch=True,
                             headers=trace.headers if trace is not None else None,
                             on_acked=settles[i])
            self.running[record.envelope.task_id] = entry
            self._sweep_leases_by(entry.renew_at)
            running[i] = entry
        try:
            await self._call_batch(task, chosen, items, records,
                                   [ctx for ctx, _ in begun], outcomes)
        except asyncio.CancelledError:  # stopped without grace: no outcomes
            for _, trace in begun:
                if trace is not None:
                    self.tracing.end(trace, None)
            raise
        finally:
            for entry in running.values():
                if self.running.get(entry.envelope.task_id) is entry:
                    del self.running[entry.envelope.task_id]
        took = time.monotonic() - started
        for i, entry in running.items():
            if entry.cancel_requested:
                outcomes[i] = cancelled_failure()
        self._report_batch(task, items, [trace for _, trace in begun], outcomes, took,
                           settles)

    def _open_batch(self, items: list[Picked]
                    ) -> tuple[dict[int, Outcome], dict[int, TaskDispatched]]:
        """Each record's payload opened (D27): (index -> the failure of a record whose
        payload does not open: it fails alone, like one that does not decode; index -> the
        record to call the handler with)."""
        failed: dict[int, Outcome] = {}
        opened: dict[int, TaskDispatched] = {}
        for i, (_, record) in enumerate(items):
            one = open_payload(record.dispatched, record.envelope.task_id, self.emitter.sealer)
            if isinstance(one, Failure):
                failed[i] = one
            else:
                opened[i] = one
        return failed, opened

    async def _call_batch(self, task: TaskDef, chosen: list[int], items: list[Picked],
                          records: dict[int, TaskDispatched], ctxs: list[TaskContext],
                          outcomes: dict[int, Outcome]) -> None:
        """The one handler call over the records at ``chosen``, their outcomes into
        ``outcomes``; with object storage, payloads fetched before and large results
        stored after (D34)."""
        if self.offloader is not None:
            chosen = await self._fetch_batch(chosen, items, records, outcomes)
        if not chosen:
            return
        results = await execute_batch(task, [records[i] for i in chosen],
                                      [ctxs[i] for i in chosen], self.pool)
        outcomes.update(zip(chosen, results, strict=True))
        if self.offloader is not None:
            await self._store_batch(chosen, items, records, outcomes)

    async def _fetch_batch(self, chosen: list[int], items: list[Picked],
                           records: dict[int, TaskDispatched],
                           outcomes: dict[int, Outcome]) -> list[int]:
        """The offloaded payloads of a batch's records fetched (and opened) in place; a
        record whose fetch fails gets that failure and leaves the call (D34)."""
        kept = []
        for i in chosen:
            record = records[i]
            if record.payload_ref is None:
                kept.append(i)
                continue
            raw = await fetch_payload(self.offloader, record, items[i][1].envelope.task_id,
                                      self.emitter.sealer)
            if isinstance(raw, Failure):
                outcomes[i] = raw
            else:
                records[i] = replace(record, payload=bytes(raw), payload_ref=None)
                kept.append(i)
        return kept

    async def _store_batch(self, chosen: list[int], items: list[Picked],
                           records: dict[int, TaskDispatched],
                           outcomes: dict[int, Outcome]) -> None:
        """A batch's large results moved to object storage, each under its own run's key."""
        for i in chosen:
            envelope = items[i][1].envelope
            outcomes[i] = await store_result(self.offloader, envelope.task_id,
                                             envelope.attempt, records[i], outcomes[i],
                                             self.emitter.sealer)

    def _report_batch(self, task: TaskDef, items: list[Picked],
                      traces: list[AttemptTrace | None], outcomes: dict[int, Outcome],
                      took: float, settles: list[Delivered]) -> None:
        """One outcome per record of a batch, each under its own run span (its ack
        settles the record)."""
        series = self.metrics.of_task(task.name)
        for i, (_, record) in enumerate(items):
            series.run_seconds.observe(took)
            final, trace = outcomes[i], traces[i]
            if trace is not None:
                self.tracing.end(trace, final)
            sent = self._send_outcome(record.envelope, final,
                                      trace.headers if trace is not None else None,
                                      settles[i])
            if isinstance(sent, Failure):
                self._log_failure(record.envelope, record.dispatched, sent, took)
            else:
                series.succeeded.inc()

    def _startable(self, picked: list[Picked]) -> list[Picked]:
        """A batch's records that may start: not revoked while they waited (the new owner
        reads them again), not cancelled or expired, and not an attempt settled here before
        (settled and skipped, as single records are)."""
        items = []
        for consumer, record in picked:
            if not consumer.owns(record.tp):
                continue
            if self.skip_reason(record) is not None:
                consumer.settle(record.tp, record.offset)
                self.metrics.skipped.labels(consumer.queue).inc()
                continue
            items.append((consumer, record))
        return items

    def _start_batch(self, task: TaskDef, items: list[Picked]
                     ) -> tuple[list[tuple[TaskContext, AttemptTrace | None]], list[Delivered]]:
        """TaskStarted for each record (its offset settles on the first ack of an event of
        its attempt, D47); their contexts and run spans (None with tracing off), and their
        settlers."""
        emitter = self.emitter
        series = self.metrics.of_task(task.name)
        begun = []
        settles = []
        for consumer, record in items:
            envelope = record.envelope
            settle = settler(consumer, record, self.settled)
            settles.append(settle)
            trace = self._begin(record)
            headers = trace.headers if trace is not None else None
            emitter.started(envelope, on_delivered=self._on_started(envelope, settle),
                            headers=headers)
            series.started.inc()
            self.metrics.of_queue(record.dispatched.queue).observe(
                max(0.0, time.time() - envelope.occurred_at_ms / 1000))
            begun.append((self._context(task, envelope, record.dispatched, headers, settle),
                          trace))
        return begun, settles
