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
from collections.abc import Iterable, Mapping, Sequence
from types import TracebackType
from typing import Any, Self

from taskstream.producer.base import ProducerBase, queue_of, queues_of
from taskstream.producer.build import now_ms
from taskstream.producer.graphs import chain_records, group_records
from taskstream.producer.handle import AsyncTaskHandle, BatchDelivery, GroupHandles
from taskstream.schemas.events import ScheduleOp
from taskstream.schemas.ids import new_task_id
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
        await self._ready()
        start_ns = time.time_ns() if self._core.tracing.enabled else 0
        items = list(specs)
        task_ids, values = self._build.many(items, now_ms())
        await self._require_queues(queues_of(items))
        return await self._send_many(task_ids, values, None, start_ns)

    async def _require_queues(self, queues: set[str]) -> None:
        """Registered queues only (D31): a queue not in the cached registry is looked up."""
        if self._unknown_queues(queues):
            await asyncio.to_thread(self.known_queues.require, queues)

    async def _send_many(self, task_ids: list[str], values: list[bytes],
                         event_types: list[str] | None, start_ns: int = 0
                         ) -> list[AsyncTaskHandle]:
        """One batch of encoded events (submit_many's, or a graph's), one handle each."""
        loop = asyncio.get_running_loop()
        core = self._core
        handles = [AsyncTaskHandle(task_id, event_types[i] if event_types else "TaskSubmitted",
                                   core, loop) for i, task_id in enumerate(task_ids)]
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

    # -- graphs and schedules (D37; TaskProducer has the same, documented there) ---------

    async def chain(self, steps: Sequence[TaskSpec | Mapping[str, Any]]
                    ) -> list[AsyncTaskHandle]:
        """Submit A, then B, then C... in one batch (see TaskProducer.chain)."""
        await self._ready()
        steps = list(steps)
        records = chain_records(self._build, steps, now_ms())
        await self._require_queues(queues_of(steps))
        return await self._send_many(records.keys, records.values, records.event_types)

    async def group(self, members: Sequence[TaskSpec | Mapping[str, Any]],
                    callback: TaskSpec | Mapping[str, Any] | None = None, *,
                    group_id: str | None = None) -> GroupHandles:
        """Fan out, then fan in to ``callback``, in one batch (see TaskProducer.group)."""
        await self._ready()
        gid = group_id or new_task_id()
        records = group_records(self._build, list(members), callback, gid, now_ms())
        await self._require_queues(queues_of([*members, *([callback] if callback else [])]))
        handles = await self._send_many(records.keys, records.values, records.event_types)
        n = len(members)
        return GroupHandles(gid, handles[1 : n + 1], handles[n + 1] if callback else None)

    async def schedule(self, schedule_id: str, task_name: str, payload: Any = None, *,
                       cron: str | None = None, every: float | None = None, tz: str = "UTC",
                       queue: str = "default", misfire: str = "run_once",
                       **options: Any) -> AsyncTaskHandle:
        """Create or replace a schedule (see TaskProducer.schedule)."""
        loop = await self._ready()
        request = self._build.schedule_request({
            "schedule_id": schedule_id, "task_name": task_name, "payload": payload,
            "cron": cron, "every": every, "tz": tz, "queue": queue, "misfire": misfire,
            **options})
        key, data = self._build.schedule_set(request, now_ms())
        await self._require_queues({request.queue})
        return await self._send_one(key, data, "ScheduleSet", loop)

    async def unschedule(self, schedule_id: str, reason: str = "") -> AsyncTaskHandle:
        """Delete a schedule (see TaskProducer.unschedule)."""
        loop = await self._ready()
        key, data = self._build.schedule_command(schedule_id, ScheduleOp.DELETE, reason,
                                                 now_ms())
        return await self._send_one(key, data, "ScheduleCommand", loop)

    async def _send_one(self, key: str, data: bytes, event_type: str,
                        loop: asyncio.AbstractEventLoop) -> AsyncTaskHandle:
        handle = AsyncTaskHandle(key, event_type, self._core, loop)
        await self._send(key, data, handle)
        self._core.metrics.count_submitted(event_type)
        return handle

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

    async def set_limit(self, name: str, rate: str, burst: int = 1,
                        timeout: float | None = None) -> None:
        """Set the rate limit ``name`` (see ``TaskProducer.set_limit``); returns once Kafka
        has the event."""
        loop = await self._ready()
        key, data = self._build.limit_set(name, rate, burst, now_ms())
        handle = AsyncTaskHandle(key, "LimitSet", self._core, loop)
        await self._send(key, data, handle)
        self._core.metrics.count_submitted("LimitSet")
        await handle.delivered(timeout)

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
