"""The asyncio producer: ``AsyncTaskProducer``.

A daemon poll thread serves the Kafka client's delivery callbacks; a handle
whose ``delivered()`` is awaited gets its future resolved from that thread
with ``loop.call_soon_threadsafe`` (futures are made only when awaited, so a
burst of submits costs no cross-thread wake-ups). Blocking steps (the first
metadata request, flush) run in a worker thread, so the event loop never
stalls; a full local queue is waited out with ``asyncio.sleep``.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Iterable, Mapping
from types import TracebackType
from typing import Any, Self

from taskstream.producer.base import ProducerBase, queue_of, queues_of
from taskstream.producer.build import now_ms
from taskstream.producer.handle import AsyncTaskHandle, BatchDelivery
from taskstream.schemas.models import TaskSpec

log = logging.getLogger(__name__)

POLL_INTERVAL_S = 0.05


class AsyncTaskProducer(ProducerBase):
    """The asyncio twin of :class:`~taskstream.producer.sync.TaskProducer`.

    Use ``async with AsyncTaskProducer(settings) as producer:``; leaving the
    block flushes and raises DeliveryError if any event failed.
    """

    def _init_flavour(self) -> None:
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None

    def _poll_forever(self) -> None:
        while not self._stop.is_set():
            try:
                self._core.poll(POLL_INTERVAL_S)
            except Exception:  # a callback bug must not kill delivery for everyone
                log.exception("producer poll thread: delivery callback failed")

    async def _ready(self) -> asyncio.AbstractEventLoop:
        core = self._core
        if core.needs_probe or core.closed:
            await asyncio.to_thread(core.check_usable)
        else:
            core.check_usable()
        if self._poller is None:
            self._poller = threading.Thread(
                target=self._poll_forever, name="taskstream-producer-poll", daemon=True
            )
            self._poller.start()
        return asyncio.get_running_loop()

    async def start(self) -> None:
        """Connect now (else the first submit does): raises if Kafka is unreachable."""
        await self._ready()

    async def _send(self, task_id: str, data: bytes, handle: AsyncTaskHandle) -> None:
        core = self._core
        if core.try_send(task_id, data, handle):
            return
        deadline = time.monotonic() + core.queue_full_timeout_s
        while not core.try_send(task_id, data, handle):
            if time.monotonic() >= deadline:
                raise core.queue_full_error()
            await asyncio.sleep(0.01)  # the poll thread frees the queue

    async def submit(self, name: str, payload: Any = None, **options: Any) -> AsyncTaskHandle:
        """Submit one task; ``options`` are TaskSpec fields."""
        loop = await self._ready()
        start_ns = time.time_ns() if self._core.tracing.enabled else 0
        task_id, data = self._build.from_call(name, payload, options, now_ms())
        queue = queue_of(options)
        if queue not in self.known_queues:
            await asyncio.to_thread(self.known_queues.require, (queue,))
        handle = AsyncTaskHandle(task_id, "TaskSubmitted", self._core, loop)
        await self._send(task_id, data, handle)
        if start_ns:
            self._traced(task_id, name, options, start_ns)
        self._submitted.inc()
        return handle

    async def submit_many(
        self, specs: Iterable[TaskSpec | Mapping[str, Any]]
    ) -> list[AsyncTaskHandle]:
        """Submit many tasks; every spec is validated before any is sent."""
        loop = await self._ready()
        core = self._core
        start_ns = time.time_ns() if core.tracing.enabled else 0
        items = list(specs)
        task_ids, values = self._build.many(items, now_ms())
        queues = queues_of(items)
        if self._unknown_queues(queues):
            await asyncio.to_thread(self.known_queues.require, queues)
        handles = [AsyncTaskHandle(task_id, "TaskSubmitted", core, loop) for task_id in task_ids]
        batch = BatchDelivery(core, handles)
        todo = core.offer_many(task_ids, values, batch, None)
        if todo:
            deadline = time.monotonic() + core.queue_full_timeout_s
            while todo:
                await asyncio.sleep(0.01)  # the poll thread frees the queue
                todo = core.offer_many(task_ids, values, batch, todo)
                if todo and time.monotonic() >= deadline:
                    raise self._queue_stayed_full(handles, batch, todo)
        if start_ns:
            core.tracing.submitted_many(task_ids, start_ns)
        self._submitted.inc(len(handles))
        return handles

    async def cancel(self, task_id: str, reason: str = "") -> AsyncTaskHandle:
        """Ask for a task to be cancelled."""
        loop = await self._ready()
        start_ns = time.time_ns() if self._core.tracing.enabled else 0
        data = self._build.cancel(task_id, reason, now_ms())
        handle = AsyncTaskHandle(task_id, "CancelRequested", self._core, loop)
        await self._send(task_id, data, handle)
        if start_ns:
            self._core.tracing.requested(task_id, "CancelRequested", start_ns)
        self._core.metrics.count_submitted("CancelRequested")
        return handle

    async def redrive(
        self, task_id: str, max_attempts: int | None = None, reason: str = ""
    ) -> AsyncTaskHandle:
        """Give a DEAD task a fresh budget of attempts."""
        loop = await self._ready()
        start_ns = time.time_ns() if self._core.tracing.enabled else 0
        data = self._build.redrive(task_id, max_attempts, reason, now_ms())
        handle = AsyncTaskHandle(task_id, "RedriveRequested", self._core, loop)
        await self._send(task_id, data, handle)
        if start_ns:
            self._core.tracing.requested(task_id, "RedriveRequested", start_ns)
        self._core.metrics.count_submitted("RedriveRequested")
        return handle

    def pending(self) -> int:
        return self._core.pending()

    async def flush(self, timeout: float | None = None) -> None:
        """Wait for every event's ack; raise DeliveryError / FlushTimeoutError."""
        left = await asyncio.to_thread(self._core.flush_wait, timeout)
        self._core.raise_for_outcome(left, timeout)

    async def close(self, timeout: float | None = None) -> None:
        """Flush, stop the poll thread, release the clients. Raises like flush()."""
        if self._core.closed:
            return
        try:
            await self.flush(timeout)
        finally:
            self._stop.set()
            if self._poller is not None:
                await asyncio.to_thread(self._poller.join, 5.0)
            await self._core.aclose_result_client()
            self._core.mark_closed()
            self._close_telemetry()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is None:
            await self.close()
            return
        try:
            await self.close()
        except Exception as flush_exc:  # the body's error wins; do not hide this one
            log.error("while closing after %r: %s", exc, flush_exc)
            exc.add_note(f"also, closing the producer failed: {flush_exc}")
