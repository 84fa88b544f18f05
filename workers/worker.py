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

Steps 3-5 are :class:`~taskstream.workers.attempts.AttemptRunner`'s; this module
owns the consumers, the slots, the dispatcher and the shutdown.

A batch task's records (workers/batch.py, D39) wait in a :class:`Batcher`
between steps 2 and 3, unstarted and unsettled, until their batch is full or
its wait has passed; the batch then takes one slot and goes through steps 3-5
record by record around a single handler call.

Concurrency is a fixed number of slots, or ``auto`` (workers/autoscale.py, D40):
a controller moves the number every second within bounds. A worker with tags
reads the ready topics of every subset of them (D38).

Shutdown (first SIGTERM/SIGINT, or :meth:`Worker.request_stop`): stop fetching
and starting, let running attempts finish for up to ``grace_s`` and emit their
outcomes, interrupt the rest without an outcome (their leases expire and the
processor retries them), flush the producer, commit, leave the groups. A second
signal (``immediate=True``) ends the grace period at once. Every wait is bounded.

A watchdog (D47) looks every WATCH_S at the threads the worker cannot do without:
each queue's consumer thread, the producer's delivery thread, the control reader,
and the dispatcher task. One that ended unexpectedly would stop its part without
a word (a dead consumer thread: its queue is read no more while the worker looks
alive). The worker then logs ``event=worker.thread_died``, counts it
(``taskstream_worker_thread_deaths``, ``taskstream_worker_healthy`` 0), shuts
down as on SIGTERM and :meth:`Worker.run` raises :class:`WorkerThreadDied` (the
CLI exits 70) for its supervisor to start a fresh process. It does not restart
the thread in place: see D47.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any
from wsgiref.simple_server import WSGIServer

from taskstream.objectstore.offload import Offloader
from taskstream.settings import Settings, load_settings
from taskstream.telemetry.tracing import Telemetry
from taskstream.topics import MAX_WORKER_TAGS, canonical_tags
from taskstream.workers.attempts import AttemptRunner, Batch, Job, Picked
from taskstream.workers.autoscale import TICK_S, AutoConcurrency, Bounds, Sample
from taskstream.workers.batch import Batcher
from taskstream.workers.consumer import QueueConsumer
from taskstream.workers.control import ControlReader
from taskstream.workers.emitter import EventEmitter
from taskstream.workers.errors import WorkerError, WorkerThreadDied
from taskstream.workers.machine import MachineLoad
from taskstream.workers.metrics import WorkerMetrics
from taskstream.workers.presence import Presence
from taskstream.workers.queuectl import QueueCommand
from taskstream.workers.registry import TaskRegistry
from taskstream.workers.runtime import Pool
from taskstream.workers.slots import Slots
from taskstream.workers.tracing import AttemptTracing

log = logging.getLogger("taskstream.worker")

WAKEUP_S = 0.5
#: how often the watchdog looks at the worker's threads (D47)
WATCH_S = 0.5


def new_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class Worker:
    """Runs the tasks of ``app`` from the ready topics of ``queues``."""

    def __init__(
        self,
        app: TaskRegistry,
        settings: Settings | None = None,
        *,
        queues: Sequence[str] | None = None,
        concurrency: int | None = 16,
        pool: Pool | str = Pool.THREAD,
        grace_s: float = 30.0,
        metrics_port: int | None = None,
        worker_id: str | None = None,
        tags: Sequence[str] = (),
        auto_bounds: Bounds | None = None,
        fetch_result: Callable[[str], Any] | None = None,
        telemetry: Telemetry | None = None,
    ) -> None:
        """``concurrency=None`` is ``--concurrency auto`` within ``auto_bounds``."""
        if concurrency is not None and concurrency < 1:
            raise WorkerError(f"concurrency must be >= 1 (or None for auto); got {concurrency}")
        try:
            self.tags = canonical_tags(tags, most=MAX_WORKER_TAGS)
        except ValueError as exc:
            raise WorkerError(f"--tags: {exc}") from None
        self.app = app
        self.settings = settings or load_settings()
        self.queues = list(queues or app.queues() or ["default"])
        self.auto: AutoConcurrency | None = None
        if concurrency is None:
            self.auto = AutoConcurrency(auto_bounds or Bounds())
            concurrency = self.auto.bounds.high
        self.concurrency: int = concurrency
        self._slots: Slots | None = None
        self._batcher: Batcher[Picked] = Batcher()
        self._batch_max = max((t.batch_size or 1 for t in app), default=1)
        self._has_batches = any(t.is_batch for t in app)
        self.pool = Pool(pool)
        self.grace_s = grace_s
        self.metrics_port = metrics_port
        self.worker_id = worker_id or new_worker_id()
        #: reads a parent's result for ctx.parent_results (the CLI passes the SDK's API client)
        self.fetch_result = fetch_result
        self.metrics = WorkerMetrics()
        self.metrics.count_in_flight(lambda: self.in_flight)
        #: tracing (default: the settings' otlp_endpoint; off without one); run() owns it
        self._owns_telemetry = telemetry is None
        self.tracing = AttemptTracing(
            telemetry or Telemetry.from_settings(self.settings, "taskstream-worker",
                                                 self.worker_id), self.worker_id)
        self._presence: Presence | None = None
        self._paused: dict[str, bool] = {}
        self._attempts: AttemptRunner | None = None
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
        #: what the watchdog found dead (D47); run() raises WorkerThreadDied after shutdown
        self.died: list[str] = []

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
        self._attempts = AttemptRunner(self.app, self.pool, self._emitter, self.metrics, loop,
                                       self.tracing, self.fetch_result,
                                       Offloader.from_settings(self.settings))
        self._control = ControlReader(
            self.settings,
            on_cancel=lambda tid, att, withdrawn: loop.call_soon_threadsafe(
                self._on_cancel, tid, att, withdrawn),
            on_queue=lambda cmd: loop.call_soon_threadsafe(self._on_queue, cmd),
        )
        self._control.start()
        if not await asyncio.to_thread(self._control.wait_caught_up, self.settings.kafka_timeout_s):
            log.warning("event=control.slow (starting before all cancellations were read)")
        if self.metrics_port is not None:
            self._metrics_server, _ = self.metrics.serve(self.metrics_port)
        self.tracing.telemetry.install_global()
        self._slots = Slots(self.concurrency if self.auto is None else self.auto.limit)
        for queue in self.queues:
            consumer = QueueConsumer(
                self.settings, queue, prefetch=self._prefetch(self._slots.limit),
                client_id=self.worker_id, emitter=self._emitter, metrics=self.metrics,
                on_records=lambda: loop.call_soon_threadsafe(self._wakeup.set),
                tags=self.tags, trace_headers=self.tracing.enabled)
            consumer.set_paused(self._paused.get(queue, False))
            consumer.start()
            self._consumers.append(consumer)
        log.info("event=worker.started worker_id=%s queues=%s concurrency=%s pool=%s tasks=%d "
                 "tags=%s", self.worker_id, ",".join(self.queues),
                 self.concurrency if self.auto is None else
                 f"auto({self.auto.bounds.low}-{self.auto.bounds.high})",
                 self.pool.value, len(self.app), ",".join(self.tags) or "-")
        self.metrics.concurrency.set(self._slots.limit)
        self._presence = Presence(self.settings, self._emitter, worker_id=self.worker_id,
                                  queues=self.queues, tags=self.tags,
                                  concurrency=self._slots.limit, pool=self.pool.value,
                                  snapshot=self._presence_snapshot, metrics=self.metrics)
        self._presence.start()
        self._started.set()
        loop.call_later(WAKEUP_S, self._nudge)
        dispatcher = asyncio.create_task(self._dispatch(), name="taskstream-dispatch")
        sizer = asyncio.create_task(self._autoscale(), name="taskstream-autoscale") \
            if self.auto is not None else None
        self.metrics.healthy.set(1)
        watchdog = asyncio.create_task(self._watch(dispatcher), name="taskstream-watchdog")
        await self._stop.wait()
        watchdog.cancel()
        if sizer is not None:
            sizer.cancel()
        await self._shutdown(dispatcher)
        if self.died:
            raise WorkerThreadDied(
                f"the worker stopped because {'; '.join(self.died)} ended unexpectedly (see "
                "event=worker.thread_died in its log); start it again")

    @property
    def in_flight(self) -> int:
        return len(self._attempts.running) if self._attempts is not None else 0

    @property
    def concurrency_limit(self) -> int:
        """Slots now (moves with ``--concurrency auto``)."""
        return self._slots.limit if self._slots is not None else self.concurrency

    def _prefetch(self, limit: int) -> int:
        return max(2 * limit, 8, self._batch_max)

    def _presence_snapshot(self) -> dict[str, int]:
        """What each heartbeat reports besides the fixed facts (slots move with auto)."""
        return {"in_flight": self.in_flight, "concurrency": self.concurrency_limit,
                **self.metrics.totals()}

    def assignment(self) -> dict[str, set[tuple[str, int]]]:
        return {c.queue: c.assignment() for c in self._consumers}

    # -- control -------------------------------------------------------------

    def _on_signal(self, sig: signal.Signals) -> None:
        self._signals += 1
        immediate = self._signals > 1
        log.info("event=worker.signal signal=%s action=%s", sig.name,
                 "stop-now" if immediate else "graceful-stop")
        self.request_stop(immediate=immediate)

    def _on_cancel(self, task_id: str, attempt: int, withdrawn: bool) -> None:
        if self._attempts is not None:
            self._attempts.on_cancel(task_id, attempt, withdrawn=withdrawn)

    def _on_queue(self, command: QueueCommand) -> None:
        self._paused[command.queue] = command.paused
        for consumer in self._consumers:
            if consumer.queue == command.queue:
                consumer.set_paused(command.paused)
        log.info("event=queue.%s queue=%s", "paused" if command.paused else "resumed",
                 command.queue)
        self._wakeup.set()

    # -- the watchdog (D47) ----------------------------------------------------

    def _dead(self, dispatcher: asyncio.Task[None]) -> list[tuple[str, str]]:
        """(thread, detail) of every part that ended while the worker runs."""
        dead = [("consumer", f"queue={c.queue}") for c in self._consumers if c.died]
        if self._emitter is not None and self._emitter.died:
            dead.append(("emitter", "(delivery reports: no record settles, no outcome "
                                    "is confirmed)"))
        if self._control is not None and self._control.died:
            dead.append(("control", "(cancellations and queue pauses are read no more)"))
        if dispatcher.done() and not self._stopping:
            error = None if dispatcher.cancelled() else dispatcher.exception()
            dead.append(("dispatcher", f"error={error!r}"))
        return dead

    async def _watch(self, dispatcher: asyncio.Task[None]) -> None:
        """Every WATCH_S: a part that died stops the worker (it exits non-zero)."""
        while not self._stopping:
            await asyncio.sleep(WATCH_S)
            dead = self._dead(dispatcher)
            if not dead:
                continue
            self.metrics.healthy.set(0)
            for thread, detail in dead:
                self.metrics.thread_deaths.labels(thread).inc()
                log.error("event=worker.thread_died thread=%s %s action=stop exit=%d (its "
                          "supervisor starts the worker again)", thread, detail,
                          WorkerThreadDied.exit_code)
                self.died.append(f"the {thread} {detail}".strip())
            self.request_stop()
            return

    # -- dispatch ------------------------------------------------------------

    async def _dispatch(self) -> None:
        slots, attempts = self._slots, self._attempts
        assert slots is not None and attempts is not None

        def done(task: asyncio.Task[None]) -> None:
            self._record_tasks.discard(task)
            slots.release()

        while not self._stopping:
            await slots.acquire()
            job = self._take_job() or await self._wait_for_job()
            if job is None:
                slots.release()
                return
            task = asyncio.create_task(attempts.run_batch(job) if isinstance(job, Batch)
                                       else attempts.run_record(*job))
            self._record_tasks.add(task)
            task.add_done_callback(done)

    def _take_job(self) -> Job | None:
        """A batch that is full or due, else the next buffered record (the queues taken in
        turn); records of batch tasks go to the batcher on the way. None when none."""
        if not self._has_batches:
            return self._take()
        while True:
            now = time.monotonic()
            due = self._batcher.pop_due(now) if self._batcher else None
            if due is not None:
                task = self.app.get(due[0])
                assert task is not None
                return Batch(task, due[1])
            picked = self._take()
            if picked is None:
                return None
            task = self.app.get(picked[1].dispatched.name)
            if task is None or task.batch_size is None:
                return picked
            self._batcher.add(task.name, picked, now, size=task.batch_size,
                              wait_s=task.batch_wait_s)

    def _take(self) -> Picked | None:
        n = len(self._consumers)
        for i in range(n):
            consumer = self._consumers[(self._rr + i) % n]
            record = consumer.take()
            if record is not None:
                self._rr = (self._rr + i + 1) % n
                return consumer, record
        return None

    async def _wait_for_job(self) -> Job | None:
        """Wait for the consumers' wake-up (records buffered, a queue resumed) or the next
        batch to fall due; a timer also sets the wake-up every WAKEUP_S (``_nudge``), a
        safety net that costs no ``wait_for`` per wait."""
        while not self._stopping:
            self._wakeup.clear()
            job = self._take_job()
            if job is not None:
                return job
            wait = self._batcher.seconds_to_due(time.monotonic())
            if wait is None:
                await self._wakeup.wait()
            else:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wakeup.wait(), min(WAKEUP_S, wait))
        return None

    def _nudge(self) -> None:
        assert self._loop is not None
        self._wakeup.set()
        if not self._stopping:
            self._loop.call_later(WAKEUP_S, self._nudge)

    async def _autoscale(self) -> None:
        """Every TICK_S: sample, let the controller decide, resize slots and prefetch."""
        auto, slots = self.auto, self._slots
        assert auto is not None and slots is not None
        machine = MachineLoad()
        while True:
            await asyncio.sleep(TICK_S)
            waiting = sum(c.backlog() for c in self._consumers) + len(self._batcher)
            before = slots.limit
            limit = auto.step(Sample(waiting=waiting, in_use=slots.in_use,
                                     cpu_busy=machine.cpu_busy(),
                                     mem_available=machine.mem_available()))
            if limit != before:
                slots.set_limit(limit)
                for consumer in self._consumers:
                    consumer.set_prefetch(self._prefetch(limit))
                self.metrics.concurrency.set(limit)
                log.info("event=concurrency.%s from=%d to=%d waiting=%d in_use=%d",
                         "grow" if limit > before else "shrink", before, limit, waiting,
                         slots.in_use)

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
        held = self._batcher.drain()  # never started: their offsets stay uncommitted
        if held:
            log.info("event=batch.dropped records=%d (read again by the next worker)",
                     len(held))
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
