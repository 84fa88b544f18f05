"""The worker: consumers per queue, a bounded number of attempts at once, clean shutdown.

Life of one ready record (the order of durable steps matters):

1. the queue's consumer thread decodes it into the buffer (undecodable ones go
   to quarantine and are settled once the copy is acknowledged);
2. when a slot is free the dispatcher takes the highest-priority record;
3. a cancelled task is skipped (settled, nothing emitted); otherwise
   ``TaskStarted`` is produced and the handler starts at once; the record is
   settled when the broker acknowledges ``TaskStarted`` and only then can its
   offset be committed;
4. ``LeaseRenewed`` every ``lease_ms / 3`` while the handler runs;
5. ``TaskSucceeded`` or ``TaskFailed`` is produced; the slot is freed.

Shutdown (first SIGTERM/SIGINT, or :meth:`Worker.request_stop`): stop fetching
and starting, let running attempts finish for up to ``grace_s`` and emit their
outcomes, interrupt the rest without an outcome (their leases expire and the
processor retries them), flush the producer, commit, leave the groups. A second
signal (``immediate=True``) ends the grace period at once. Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any
from wsgiref.simple_server import WSGIServer

from taskstream.objectstore.offload import Offloader
from taskstream.schemas.events import Envelope, TaskDispatched
from taskstream.settings import Settings, load_settings
from taskstream.telemetry.logs import TaskLogContext, set_task_context
from taskstream.telemetry.tracing import Telemetry
from taskstream.workers.consumer import QueueConsumer, ReadyRecord
from taskstream.workers.context import TaskContext
from taskstream.workers.control import ControlReader
from taskstream.workers.emitter import EventEmitter, Headers
from taskstream.workers.errors import WorkerError
from taskstream.workers.metrics import WorkerMetrics
from taskstream.workers.outcome import (
    Failure,
    Outcome,
    cancelled_failure,
    open_payload,
    unknown_task_failure,
)
from taskstream.workers.presence import Presence
from taskstream.workers.progress import ProgressThrottle, expired, fencing_token
from taskstream.workers.queuectl import QueueCommand
from taskstream.workers.registry import TaskDef, TaskRegistry
from taskstream.workers.runtime import Pool, execute
from taskstream.workers.tracing import AttemptTrace, AttemptTracing

log = logging.getLogger("taskstream.worker")

WAKEUP_S = 0.5
MIN_RENEW_S = 0.05


def new_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


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
    record's own task); its next LeaseRenewed is due at ``renew_at`` (loop time)."""

    envelope: Envelope
    ctx: TaskContext
    task: asyncio.Task[None]
    renew_every_s: float
    renew_at: float
    cancel_requested: bool = False
    #: what its LeaseRenewed events carry (the run span's traceparent; None: tracing off)
    headers: list[tuple[str, str | bytes | None]] | None = None


class Worker:
    """Runs the tasks of ``app`` from the ready topics of ``queues``."""

    def __init__(
        self,
        app: TaskRegistry,
        settings: Settings | None = None,
        *,
        queues: Sequence[str] | None = None,
        concurrency: int = 16,
        pool: Pool | str = Pool.THREAD,
        grace_s: float = 30.0,
        metrics_port: int | None = None,
        worker_id: str | None = None,
        fetch_result: Callable[[str], Any] | None = None,
        telemetry: Telemetry | None = None,
    ) -> None:
        if concurrency < 1:
            raise WorkerError(f"concurrency must be >= 1; got {concurrency}")
        self.app = app
        self.settings = settings or load_settings()
        self.queues = list(queues or app.queues() or ["default"])
        self.concurrency = concurrency
        self.pool = Pool(pool)
        self.grace_s = grace_s
        self.metrics_port = metrics_port
        self.worker_id = worker_id or new_worker_id()
        #: reads a parent's result for ctx.parent_results (the CLI passes the SDK's API client)
        self.fetch_result = fetch_result
        self.metrics = WorkerMetrics()
        self._offloader = Offloader.from_settings(self.settings)
        self.metrics.count_in_flight(lambda: len(self._running))
        #: tracing (default: the settings' otlp_endpoint; off without one); run() owns it
        self._owns_telemetry = telemetry is None
        self.tracing = AttemptTracing(
            telemetry or Telemetry.from_settings(self.settings, "taskstream-worker",
                                                 self.worker_id), self.worker_id)
        self._presence: Presence | None = None
        self._cancelled: dict[str, int] = {}  # task_id -> attempt of the cancellation
        self._paused: dict[str, bool] = {}
        self._running: dict[str, _Running] = {}
        self._lease_sweep: asyncio.TimerHandle | None = None
        self._record_tasks: set[asyncio.Task[None]] = set()
        self._consumers: list[QueueConsumer] = []
        self._rr = 0
        self._stopping = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._emitter: EventEmitter | None = None
        self._control: ControlReader | None = None
        self._metrics_server: WSGIServer | None = None
        self._started = asyncio.Event()
        self._stop = asyncio.Event()
        self._hard_stop = asyncio.Event()
        self._wakeup = asyncio.Event()
        self._signals = 0

    # -- public ----------------------------------------------------------------

    async def wait_started(self, timeout_s: float) -> None:
        await asyncio.wait_for(self._started.wait(), timeout_s)

    def request_stop(self, immediate: bool = False) -> None:
        """Graceful stop; ``immediate`` ends the grace period now. Thread-safe."""
        loop = self._loop
        if loop is None:
            self._stopping = True
            return

        def stop() -> None:
            self._stop.set()
            if immediate:
                self._hard_stop.set()

        if _in_loop(loop):
            stop()
        else:
            loop.call_soon_threadsafe(stop)

    def run_sync(self) -> None:
        """Run until SIGTERM/SIGINT (a second signal stops at once)."""

        async def main() -> None:
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self._on_signal, sig)
            await self.run()

        asyncio.run(main())

    async def run(self) -> None:
        """Start, serve until asked to stop, then shut down cleanly."""
        self._loop = loop = asyncio.get_running_loop()
        if self._stopping:
            return
        self._emitter = EventEmitter(self.settings, self.worker_id, self.metrics)
        self._control = ControlReader(
            self.settings,
            on_cancel=lambda tid, att: loop.call_soon_threadsafe(self._on_cancel, tid, att),
            on_queue=lambda cmd: loop.call_soon_threadsafe(self._on_queue, cmd),
        )
        self._control.start()
        if not await asyncio.to_thread(self._control.wait_caught_up, self.settings.kafka_timeout_s):
            log.warning("event=control.slow (starting before all cancellations were read)")
        if self.metrics_port is not None:
            self._metrics_server, _ = self.metrics.serve(self.metrics_port)
        self.tracing.telemetry.install_global()
        for queue in self.queues:
            consumer = QueueConsumer(
                self.settings, queue, prefetch=max(2 * self.concurrency, 8),
                client_id=self.worker_id, emitter=self._emitter, metrics=self.metrics,
                on_records=lambda: loop.call_soon_threadsafe(self._wakeup.set),
                trace_headers=self.tracing.enabled)
            consumer.set_paused(self._paused.get(queue, False))
            consumer.start()
            self._consumers.append(consumer)
        log.info("event=worker.started worker_id=%s queues=%s concurrency=%d pool=%s tasks=%d",
                 self.worker_id, ",".join(self.queues), self.concurrency, self.pool.value,
                 len(self.app))
        # tags: issue 16 gives workers tags; until then the record carries none
        self._presence = Presence(self.settings, self._emitter, worker_id=self.worker_id,
                                  queues=self.queues, concurrency=self.concurrency,
                                  pool=self.pool.value, snapshot=self._presence_snapshot,
                                  metrics=self.metrics)
        self._presence.start()
        self._started.set()
        loop.call_later(WAKEUP_S, self._nudge)
        dispatcher = asyncio.create_task(self._dispatch(), name="taskstream-dispatch")
        await self._stop.wait()
        await self._shutdown(dispatcher)

    @property
    def in_flight(self) -> int:
        return len(self._running)

    def _presence_snapshot(self) -> dict[str, int]:
        """What each heartbeat reports besides the fixed facts."""
        return {"in_flight": self.in_flight, **self.metrics.totals()}

    def assignment(self) -> dict[str, set[tuple[str, int]]]:
        return {c.queue: c.assignment() for c in self._consumers}

    # -- control -------------------------------------------------------------

    def _on_signal(self, sig: signal.Signals) -> None:
        self._signals += 1
        immediate = self._signals > 1
        log.info("event=worker.signal signal=%s action=%s", sig.name,
                 "stop-now" if immediate else "graceful-stop")
        self.request_stop(immediate=immediate)

    def _on_cancel(self, task_id: str, attempt: int) -> None:
        self._cancelled[task_id] = max(attempt, self._cancelled.get(task_id, 0))
        running = self._running.get(task_id)
        if running is not None and running.envelope.attempt <= self._cancelled[task_id]:
            running.cancel_requested = True
            running.ctx.mark_cancelled()
            running.task.cancel()
            log.info("event=task.cancelling task_id=%s attempt=%d", task_id,
                     running.envelope.attempt)

    def _on_queue(self, command: QueueCommand) -> None:
        self._paused[command.queue] = command.paused
        for consumer in self._consumers:
            if consumer.queue == command.queue:
                consumer.set_paused(command.paused)
        log.info("event=queue.%s queue=%s", "paused" if command.paused else "resumed",
                 command.queue)
        self._wakeup.set()

    def _is_cancelled(self, envelope: Envelope) -> bool:
        attempt = self._cancelled.get(envelope.task_id)
        return attempt is not None and envelope.attempt <= attempt

    # -- dispatch ------------------------------------------------------------

    async def _dispatch(self) -> None:
        slots = asyncio.Semaphore(self.concurrency)

        def done(task: asyncio.Task[None]) -> None:
            self._record_tasks.discard(task)
            slots.release()

        while not self._stopping:
            await slots.acquire()
            picked = self._take() or await self._wait_for_record()
            if picked is None:
                slots.release()
                return
            task = asyncio.create_task(self._run_record(*picked))
            self._record_tasks.add(task)
            task.add_done_callback(done)

    def _take(self) -> tuple[QueueConsumer, ReadyRecord] | None:
        """The next buffered record, the queues taken in turn; None when none."""
        n = len(self._consumers)
        for i in range(n):
            consumer = self._consumers[(self._rr + i) % n]
            record = consumer.take()
            if record is not None:
                self._rr = (self._rr + i + 1) % n
                return consumer, record
        return None

    async def _wait_for_record(self) -> tuple[QueueConsumer, ReadyRecord] | None:
        """Wait for the consumers' wake-up (records buffered, a queue resumed); a timer
        also sets it every WAKEUP_S (``_nudge``), a safety net that costs no
        ``wait_for`` per wait."""
        while not self._stopping:
            self._wakeup.clear()
            picked = self._take()
            if picked is not None:
                return picked
            await self._wakeup.wait()
        return None

    def _nudge(self) -> None:
        assert self._loop is not None
        self._wakeup.set()
        if not self._stopping:
            self._loop.call_later(WAKEUP_S, self._nudge)

    async def _run_record(self, consumer: QueueConsumer, record: ReadyRecord) -> None:
        envelope, dispatched = record.envelope, record.dispatched
        emitter = self._emitter
        assert emitter is not None
        set_task_context(TaskLogContext(envelope.task_id, envelope.attempt, dispatched.queue,
                                        dispatched.name))  # this record's own asyncio task
        if self._is_cancelled(envelope):
            consumer.settle(record.tp, record.offset)
            self.metrics.skipped.labels(consumer.queue).inc()
            log.info("event=task.skipped reason=cancelled task_id=%s attempt=%d",
                     envelope.task_id, envelope.attempt)
            return
        if expired(dispatched):  # never started; the processor's expiry timer ends the task
            consumer.settle(record.tp, record.offset)
            self.metrics.skipped.labels(consumer.queue).inc()
            log.info("event=task.skipped reason=expired task_id=%s attempt=%d",
                     envelope.task_id, envelope.attempt)
            return
        task = self.app.get(dispatched.name)

        def on_started(ok: bool) -> None:
            if ok:
                consumer.settle(record.tp, record.offset)

        trace = (self.tracing.begin(envelope, dispatched, record.tp[0], record.trace)
                 if self.tracing.enabled else None)
        headers = trace.headers if trace is not None else None
        emitter.started(envelope, on_delivered=on_started, headers=headers)
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
                outcome = await self._execute(task, envelope, opened, trace)
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
        outcome = self._send_outcome(emitter, envelope, outcome, headers)
        if isinstance(outcome, Failure):
            self._log_failure(envelope, dispatched, outcome, took)
        else:
            series.succeeded.inc()
            log.info("event=task.succeeded task_id=%s attempt=%d name=%s took_ms=%d",
                     envelope.task_id, envelope.attempt, dispatched.name, took * 1000)

    @staticmethod
    def _send_outcome(emitter: EventEmitter, envelope: Envelope, outcome: Outcome,
                      headers: Headers | None) -> Outcome:
        """Send the attempt's outcome; returns what to log (the result-too-large failure
        sent instead of a result; a sealed error text kept out of the logs)."""
        sent = emitter.outcome(envelope, outcome, headers=headers)
        if isinstance(sent, Failure) and sent.error_type == "ResultTooLarge":
            return sent  # what the task got instead of its result
        if emitter.sealer is not None and isinstance(outcome, Failure):
            return replace(outcome, message="<sealed>")  # error texts stay out of logs
        return outcome

    async def _execute(self, task: TaskDef, envelope: Envelope, dispatched: TaskDispatched,
                       trace: AttemptTrace | None = None) -> Outcome | None:
        """Run the handler in this record's own task; None when the worker stops it
        without grace (no outcome: the lease recovers the attempt).

        A cancellation of the task (``_on_cancel``) reaches the handler as
        ``CancelledError`` and is reported as ``Cancelled``; a handler that raises
        ``CancelledError`` of its own ends the same way. With tracing on, the run span
        is current while the handler runs (its own spans are the run's children) and
        the attempt's events carry its ``traceparent``.
        """
        emitter = self._emitter
        loop = self._loop
        assert emitter is not None and loop is not None
        headers = trace.headers if trace is not None else None
        ctx = TaskContext(task_id=envelope.task_id, attempt=envelope.attempt, name=task.name,
                          idempotency_key=dispatched.idempotency_key, headers=dispatched.headers,
                          heartbeat=lambda: emitter.lease_renewed(envelope, headers),
                          parents=dispatched.parents, fetch_result=self.fetch_result,
                          dispatch_id=dispatched.dispatch_id,
                          fencing_token=None if dispatched.concurrency_key is None
                          else fencing_token(envelope.attempt, dispatched),
                          progress=lazy_progress(emitter, envelope),
                          queue=dispatched.queue)
        me = asyncio.current_task()
        assert me is not None
        every = max(dispatched.lease_ms / 3000, MIN_RENEW_S)
        running = _Running(envelope, ctx, me, every, loop.time() + every, headers=headers)
        self._running[envelope.task_id] = running
        self._sweep_leases_by(running.renew_at)
        threaded = not task.is_coroutine and self.pool is not Pool.PROCESS
        try:
            if trace is None:
                outcome = await execute(task, dispatched, ctx, self.pool,
                                        offloader=self._offloader, sealer=emitter.sealer)
            else:
                with self.tracing.telemetry.current(trace.span):
                    outcome = await execute(task, dispatched, ctx, self.pool,
                                            offloader=self._offloader, sealer=emitter.sealer)
        except asyncio.CancelledError:
            if me.cancelling() and not running.cancel_requested:
                raise  # stop without grace
            if running.cancel_requested:
                me.uncancel()
            if threaded:
                self.metrics.abandoned_threads.inc()
            return cancelled_failure()
        finally:
            if self._running.get(envelope.task_id) is running:
                del self._running[envelope.task_id]
        if running.cancel_requested:  # the handler swallowed the cancellation
            me.uncancel()
            return cancelled_failure()
        if threaded and isinstance(outcome, Failure) and outcome.timed_out:
            self.metrics.abandoned_threads.inc()
        return outcome

    def _sweep_leases_by(self, when: float) -> None:
        """Make sure the lease sweep runs by ``when`` (loop time). One timer serves every
        running attempt: a timer per attempt cost more than a no-op task's handler."""
        loop = self._loop
        assert loop is not None
        sweep = self._lease_sweep
        if sweep is None or when < sweep.when():
            if sweep is not None:
                sweep.cancel()
            self._lease_sweep = loop.call_at(when, self._renew_leases)

    def _renew_leases(self) -> None:
        """Emit LeaseRenewed for every attempt that is due; schedule the next sweep."""
        emitter, loop = self._emitter, self._loop
        assert emitter is not None and loop is not None
        self._lease_sweep = None
        now = loop.time()
        due: float | None = None
        for running in list(self._running.values()):
            if running.renew_at <= now:
                running.renew_at = now + running.renew_every_s
                emitter.lease_renewed(running.envelope, running.headers)
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

    # -- shutdown ------------------------------------------------------------

    async def _shutdown(self, dispatcher: asyncio.Task[None]) -> None:
        """Order: stop starting; wait for running attempts (bounded by the grace period);
        interrupt the rest; flush events (TaskStarted acks settle offsets); commit and
        leave the groups; stop the control reader and the producer."""
        self._stopping = True
        if self._presence is not None:
            self._presence.stopping()
        dispatcher.cancel()
        await asyncio.wait({dispatcher}, timeout=5)
        for consumer in self._consumers:
            consumer.drain()
        pending = set(self._record_tasks)
        log.info("event=worker.stopping in_flight=%d grace_s=%g", len(pending), self.grace_s)
        deadline = time.monotonic() + self.grace_s
        while pending and not self._hard_stop.is_set() and time.monotonic() < deadline:
            _, pending = await asyncio.wait(pending, timeout=min(0.2, self.grace_s))
        for task in pending:
            task.cancel()
        if pending:
            log.warning("event=worker.abandoned in_flight=%d (their leases will expire and the "
                        "processor retries them)", len(pending))
            await asyncio.wait(pending, timeout=5)
        flush_s = 1.0 if self._hard_stop.is_set() else self.settings.kafka_timeout_s
        assert self._emitter is not None and self._control is not None
        await asyncio.to_thread(self._emitter.flush, flush_s)
        await asyncio.gather(*(asyncio.to_thread(c.close) for c in self._consumers))
        await asyncio.to_thread(self._control.close)
        if self._presence is not None:
            self._presence.stopped()
        await asyncio.to_thread(self._emitter.close, flush_s)
        if self._owns_telemetry:
            await asyncio.to_thread(self.tracing.telemetry.shutdown)
        if self._metrics_server is not None:
            self._metrics_server.shutdown()
            self._metrics_server.server_close()
        log.info("event=worker.stopped worker_id=%s", self.worker_id)


def _in_loop(loop: asyncio.AbstractEventLoop) -> bool:
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False
