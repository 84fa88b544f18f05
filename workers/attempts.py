"""Running ready records on a worker: one attempt, or a batch, from start to outcome.

The order of durable steps for one record is the worker's (workers/worker.py,
steps 3-5): ``TaskStarted`` produced and the handler started at once, the record
settled when the broker acknowledges ``TaskStarted``, ``LeaseRenewed`` every
``lease_ms / 3``, then ``TaskSucceeded`` or ``TaskFailed``. A batch (D39) does the
same per record around one handler call. Cancellations are remembered here: a
cancelled record is skipped, a running attempt interrupted (a batch's call goes
on for the other records).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from taskstream.schemas.events import Envelope, TaskDispatched
from taskstream.workers.consumer import QueueConsumer, ReadyRecord
from taskstream.workers.context import TaskContext
from taskstream.workers.emitter import EventEmitter
from taskstream.workers.metrics import WorkerMetrics
from taskstream.workers.outcome import (
    Failure,
    Outcome,
    cancelled_failure,
    unknown_task_failure,
)
from taskstream.workers.registry import TaskDef, TaskRegistry
from taskstream.workers.runtime import Pool, execute, execute_batch

log = logging.getLogger("taskstream.worker")

MIN_RENEW_S = 0.05


@dataclass
class _Running:
    envelope: Envelope
    ctx: TaskContext
    task: asyncio.Task[Any]
    cancel_requested: bool = False
    started_at: float = field(default_factory=time.monotonic)
    in_batch: bool = False  # a cancellation marks it; the batch's call goes on for the rest


Picked = tuple[QueueConsumer, ReadyRecord]


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
                 metrics: WorkerMetrics) -> None:
        self.app = app
        self.pool = pool
        self.emitter = emitter
        self.metrics = metrics
        self.cancelled: dict[str, int] = {}  # task_id -> attempt of the cancellation
        self.running: dict[str, _Running] = {}

    def on_cancel(self, task_id: str, attempt: int) -> None:
        """A cancellation arrived: remember it; interrupt the attempt if it runs here."""
        self.cancelled[task_id] = max(attempt, self.cancelled.get(task_id, 0))
        running = self.running.get(task_id)
        if running is not None and running.envelope.attempt <= self.cancelled[task_id]:
            running.cancel_requested = True
            running.ctx.mark_cancelled()
            if not running.in_batch:
                running.task.cancel()
            log.info("event=task.cancelling task_id=%s attempt=%d", task_id,
                     running.envelope.attempt)

    def is_cancelled(self, envelope: Envelope) -> bool:
        attempt = self.cancelled.get(envelope.task_id)
        return attempt is not None and envelope.attempt <= attempt

    async def run_record(self, consumer: QueueConsumer, record: ReadyRecord) -> None:
        envelope, dispatched = record.envelope, record.dispatched
        emitter = self.emitter
        if self.is_cancelled(envelope):
            consumer.settle(record.tp, record.offset)
            self.metrics.skipped.labels(consumer.queue).inc()
            log.info("event=task.skipped reason=cancelled task_id=%s attempt=%d",
                     envelope.task_id, envelope.attempt)
            return
        task = self.app.get(dispatched.name)

        def on_started(ok: bool) -> None:
            if ok:
                consumer.settle(record.tp, record.offset)

        emitter.started(envelope, on_delivered=on_started)
        started = time.monotonic()
        self.metrics.started.labels(dispatched.name).inc()
        self.metrics.queue_wait.labels(dispatched.queue).observe(
            max(0.0, time.time() - envelope.occurred_at_ms / 1000))
        log.info("event=task.started task_id=%s attempt=%d name=%s queue=%s",
                 envelope.task_id, envelope.attempt, dispatched.name, dispatched.queue)
        if task is None:
            outcome: Outcome | None = unknown_task_failure(dispatched.name, self.app.names())
        else:
            outcome = await self._execute(task, envelope, dispatched)
        self.metrics.run_seconds.labels(dispatched.name).observe(time.monotonic() - started)
        if outcome is None:
            return
        emitter.outcome(envelope, outcome)
        self._log_outcome(envelope, dispatched, outcome, time.monotonic() - started)

    async def run_batch(self, batch: Batch) -> None:
        """Start a batch's records, call the handler once, emit one outcome per record.

        Records of partitions revoked while they waited are dropped (their new owner reads
        them again); cancelled ones are settled and skipped, as single records are.
        """
        task, items = batch.task, self._startable(batch.items)
        if not items:
            return
        emitter = self.emitter
        ctxs = self._start_batch(task, items)
        self.metrics.batch_size.labels(task.name).observe(len(items))
        log.info("event=batch.started name=%s size=%d", task.name, len(items))
        started = time.monotonic()
        records = [r.dispatched for _, r in items]
        run = asyncio.create_task(execute_batch(task, records, ctxs, self.pool))
        running = [_Running(r.envelope, ctx, run, in_batch=True)
                   for (_, r), ctx in zip(items, ctxs, strict=True)]
        for entry in running:
            self.running[entry.envelope.task_id] = entry
        renew = self._renew_leases([r.envelope for _, r in items],
                                   min(d.lease_ms for d in records))
        lease = asyncio.create_task(renew)
        self.metrics.in_flight.inc(len(items))
        try:
            await asyncio.wait({run})
        except asyncio.CancelledError:  # stop without grace: no outcome, the leases recover
            run.cancel()
            raise
        finally:
            lease.cancel()
            self.metrics.in_flight.dec(len(items))
            for entry in running:
                if self.running.get(entry.envelope.task_id) is entry:
                    del self.running[entry.envelope.task_id]
        took = time.monotonic() - started
        outcomes = [cancelled_failure()] * len(items) if run.cancelled() else run.result()
        for entry, (_, record), outcome in zip(running, items, outcomes, strict=True):
            self.metrics.run_seconds.labels(task.name).observe(took)
            final = cancelled_failure() if entry.cancel_requested else outcome
            emitter.outcome(record.envelope, final)
            self._log_outcome(record.envelope, record.dispatched, final, took)

    def _startable(self, picked: list[Picked]) -> list[Picked]:
        """A batch's records that may start: not revoked while they waited (the new owner
        reads them again), not cancelled (settled and skipped, as single records are)."""
        items = []
        for consumer, record in picked:
            if not consumer.owns(record.tp):
                continue
            if self.is_cancelled(record.envelope):
                consumer.settle(record.tp, record.offset)
                self.metrics.skipped.labels(consumer.queue).inc()
                continue
            items.append((consumer, record))
        return items

    def _start_batch(self, task: TaskDef, items: list[Picked]) -> list[TaskContext]:
        """TaskStarted for each record (its offset settles on the ack); their contexts."""
        emitter = self.emitter
        ctxs = []
        for consumer, record in items:
            envelope = record.envelope

            def on_started(ok: bool, c: QueueConsumer = consumer, r: ReadyRecord = record
                           ) -> None:
                if ok:
                    c.settle(r.tp, r.offset)

            emitter.started(envelope, on_delivered=on_started)
            self.metrics.started.labels(task.name).inc()
            self.metrics.queue_wait.labels(record.dispatched.queue).observe(
                max(0.0, time.time() - envelope.occurred_at_ms / 1000))
            ctxs.append(TaskContext(
                task_id=envelope.task_id, attempt=envelope.attempt, name=task.name,
                idempotency_key=record.dispatched.idempotency_key,
                headers=record.dispatched.headers,
                heartbeat=functools.partial(emitter.lease_renewed, envelope)))
        return ctxs

    async def _execute(self, task: TaskDef, envelope: Envelope,
                       dispatched: TaskDispatched) -> Outcome | None:
        emitter = self.emitter
        ctx = TaskContext(task_id=envelope.task_id, attempt=envelope.attempt, name=task.name,
                          idempotency_key=dispatched.idempotency_key, headers=dispatched.headers,
                          heartbeat=lambda: emitter.lease_renewed(envelope))
        run = asyncio.create_task(execute(task, dispatched, ctx, self.pool))
        running = self.running[envelope.task_id] = _Running(envelope, ctx, run)
        lease = asyncio.create_task(self._renew_lease(envelope, dispatched.lease_ms))
        self.metrics.in_flight.inc()
        try:
            await asyncio.wait({run})
        except asyncio.CancelledError:  # stop without grace: no outcome, the lease recovers it
            run.cancel()
            raise
        finally:
            lease.cancel()
            self.metrics.in_flight.dec()
            if self.running.get(envelope.task_id) is running:
                del self.running[envelope.task_id]
        threaded = not task.is_coroutine and self.pool is not Pool.PROCESS
        if run.cancelled() or running.cancel_requested:
            if threaded and run.cancelled():
                self.metrics.abandoned_threads.inc()
            return cancelled_failure()
        outcome = run.result()
        if threaded and isinstance(outcome, Failure) and outcome.timed_out:
            self.metrics.abandoned_threads.inc()
        return outcome

    async def _renew_lease(self, envelope: Envelope, lease_ms: int) -> None:
        await self._renew_leases([envelope], lease_ms)

    async def _renew_leases(self, envelopes: Sequence[Envelope], lease_ms: int) -> None:
        emitter = self.emitter
        interval = max(lease_ms / 3000, MIN_RENEW_S)
        while True:
            await asyncio.sleep(interval)
            for envelope in envelopes:
                emitter.lease_renewed(envelope)

    def _log_outcome(self, envelope: Envelope, dispatched: TaskDispatched, outcome: Outcome,
                     took_s: float) -> None:
        if isinstance(outcome, Failure):
            self.metrics.failed.labels(dispatched.name, outcome.error_type).inc()
            event = "task.retry" if outcome.retryable else "task.failed"
            log.warning("event=%s task_id=%s attempt=%d name=%s error_type=%s timed_out=%s "
                        "took_ms=%d message=%r", event, envelope.task_id, envelope.attempt,
                        dispatched.name, outcome.error_type, outcome.timed_out,
                        took_s * 1000, outcome.message)
        else:
            self.metrics.succeeded.labels(dispatched.name).inc()
            log.info("event=task.succeeded task_id=%s attempt=%d name=%s took_ms=%d",
                     envelope.task_id, envelope.attempt, dispatched.name, took_s * 1000)
