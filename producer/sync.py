"""The blocking producer: ``TaskProducer``.

Delivery callbacks run in the caller's thread: every submit polls the client
now and then, and flush(), close() and TaskHandle.delivered() poll until done.
The class is safe to share between threads (the Kafka client is).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from types import TracebackType
from typing import Any, Self

from taskstream.producer.base import ProducerBase, queue_of, queues_of
from taskstream.producer.build import now_ms
from taskstream.producer.graphs import chain_records, group_records
from taskstream.producer.handle import BatchDelivery, GroupHandles, TaskHandle
from taskstream.schemas.events import ScheduleOp
from taskstream.schemas.ids import new_task_id
from taskstream.schemas.models import TaskSpec

log = logging.getLogger(__name__)

#: Serve delivery callbacks once per this many sends (poll(0) costs ~1 us).
POLL_EVERY = 64


class TaskProducer(ProducerBase):
    """Submit tasks and send cancel/redrive requests to the events topic.

    ``settings`` defaults to :func:`load_settings` (environment and file).
    ``source`` names this producer in every event (default
    ``producer:<host>:<pid>``). ``queue_full_timeout_s`` bounds how long a
    submit waits for room in a full local queue and ``connect_timeout_s`` how
    long it waits for an unreachable broker (both default to
    ``settings.kafka_timeout_s``). ``kafka_config`` adds librdkafka settings
    (not acks, idempotence or partitioner).
    """

    def _init_flavour(self) -> None:
        self._unpolled = 0

    def _after_send(self, n: int = 1) -> None:
        self._unpolled += n
        if self._unpolled >= POLL_EVERY:
            self._unpolled = 0
            self._core.poll(0)

    def submit(self, name: str, payload: Any = None, **options: Any) -> TaskHandle:
        """Submit one task. ``options`` are TaskSpec fields (queue, priority, ...). The
        queue must be registered (else UnknownQueueError, before anything is sent).

        Returns at once with a handle; the event is durable when
        ``handle.delivered()`` returns or ``flush()`` does.
        """
        core = self._core
        core.check_usable()
        start_ns = time.time_ns() if core.tracing.enabled else 0
        task_id, data = self._build.from_call(name, payload, options, now_ms())
        queue = queue_of(options)
        if queue not in self.known_queues:
            self.known_queues.require((queue,))
        handle = TaskHandle(task_id, "TaskSubmitted", core)
        core.send(task_id, data, handle)
        if start_ns:
            self._traced(task_id, name, options, start_ns)
        self._submitted.inc()
        self._after_send()
        return handle

    def submit_many(self, specs: Iterable[TaskSpec | Mapping[str, Any]]) -> list[TaskHandle]:
        """Submit many tasks; every spec is validated before any is sent.

        If the local queue stays full, raises ProducerQueueFullError whose
        ``handles`` are the tasks already sent.
        """
        core = self._core
        core.check_usable()
        start_ns = time.time_ns() if core.tracing.enabled else 0
        items = list(specs)
        task_ids, values = self._build.many(items, now_ms())
        self._require_queues(queues_of(items))
        return self._send_many(task_ids, values, None, start_ns)

    def _require_queues(self, queues: set[str]) -> None:
        """Registered queues only (D31): a queue not in the cached registry is looked up."""
        if self._unknown_queues(queues):
            self.known_queues.require(queues)

    def _send_many(self, task_ids: list[str], values: list[bytes],
                   event_types: list[str] | None, start_ns: int = 0) -> list[TaskHandle]:
        """One batch of encoded events (submit_many's, or a graph's), one handle each."""
        core = self._core
        handles = [TaskHandle(task_id, event_types[i] if event_types else "TaskSubmitted", core)
                   for i, task_id in enumerate(task_ids)]
        batch = BatchDelivery(core, handles)
        todo = core.offer_many(task_ids, values, batch, None)
        if todo:
            deadline = time.monotonic() + core.queue_full_timeout_s
            while todo:
                core.poll(0.05)  # serve acks: that is what frees the queue
                todo = core.offer_many(task_ids, values, batch, todo)
                if todo and time.monotonic() >= deadline:
                    raise self._queue_stayed_full(handles, batch, todo)
        if start_ns:
            core.tracing.submitted_many(task_ids, start_ns)
        self._submitted.inc(len(handles))
        self._after_send(len(handles))
        return handles

    # -- graphs and schedules (D37) -----------------------------------------------------

    def chain(self, steps: Sequence[TaskSpec | Mapping[str, Any]]) -> list[TaskHandle]:
        """Submit A, then B, then C...: each step waits for the one before and reads its
        result as ``ctx.parent_results[previous_id]``. The whole chain is one batch."""
        self._core.check_usable()
        steps = list(steps)
        records = chain_records(self._build, steps, now_ms())
        self._require_queues(queues_of(steps))
        return self._send_many(records.keys, records.values, records.event_types)

    def group(self, members: Sequence[TaskSpec | Mapping[str, Any]],
              callback: TaskSpec | Mapping[str, Any] | None = None, *,
              group_id: str | None = None) -> GroupHandles:
        """Fan out ``members`` and, once every one has succeeded, run ``callback`` (a
        chord): its ``ctx.parent_results`` holds every member's result. One batch."""
        self._core.check_usable()
        gid = group_id or new_task_id()
        records = group_records(self._build, list(members), callback, gid, now_ms())
        self._require_queues(queues_of([*members, *([callback] if callback else [])]))
        handles = self._send_many(records.keys, records.values, records.event_types)
        n = len(members)
        return GroupHandles(gid, handles[1 : n + 1], handles[n + 1] if callback else None)

    def schedule(self, schedule_id: str, task_name: str, payload: Any = None, *,
                 cron: str | None = None, every: float | None = None, tz: str = "UTC",
                 queue: str = "default", misfire: str = "run_once",
                 **options: Any) -> TaskHandle:
        """Create or replace a schedule that submits ``task_name`` at each fire time
        (``cron``: 5 fields and an optional 6th, seconds; or ``every`` seconds). Options:
        the task's (priority, max_attempts, timeout, ...) and the schedule's (start_at,
        end_at, jitter, catch_up_max, misfire_grace). See docs/schedules-and-dependencies.md."""
        core = self._core
        core.check_usable()
        request = self._build.schedule_request({
            "schedule_id": schedule_id, "task_name": task_name, "payload": payload,
            "cron": cron, "every": every, "tz": tz, "queue": queue, "misfire": misfire,
            **options})
        key, data = self._build.schedule_set(request, now_ms())
        self._require_queues({request.queue})
        return self._send_one(key, data, "ScheduleSet")

    def unschedule(self, schedule_id: str, reason: str = "") -> TaskHandle:
        """Delete a schedule: it fires no more (tasks already submitted are not touched)."""
        self._core.check_usable()
        key, data = self._build.schedule_command(schedule_id, ScheduleOp.DELETE, reason,
                                                 now_ms())
        return self._send_one(key, data, "ScheduleCommand")

    def _send_one(self, key: str, data: bytes, event_type: str) -> TaskHandle:
        handle = TaskHandle(key, event_type, self._core)
        self._core.send(key, data, handle)
        self._core.metrics.count_submitted(event_type)
        self._after_send()
        return handle

    def cancel(self, task_id: str, reason: str = "") -> TaskHandle:
        """Ask for a task to be cancelled (a CancelRequested event)."""
        core = self._core
        core.check_usable()
        start_ns = time.time_ns() if core.tracing.enabled else 0
        data = self._build.cancel(task_id, reason, now_ms())
        handle = TaskHandle(task_id, "CancelRequested", core)
        core.send(task_id, data, handle)
        if start_ns:
            core.tracing.requested(task_id, "CancelRequested", start_ns)
        core.metrics.count_submitted("CancelRequested")
        self._after_send()
        return handle

    def redrive(
        self, task_id: str, max_attempts: int | None = None, reason: str = ""
    ) -> TaskHandle:
        """Give a DEAD task a fresh budget of attempts (a RedriveRequested event)."""
        core = self._core
        core.check_usable()
        start_ns = time.time_ns() if core.tracing.enabled else 0
        data = self._build.redrive(task_id, max_attempts, reason, now_ms())
        handle = TaskHandle(task_id, "RedriveRequested", core)
        core.send(task_id, data, handle)
        if start_ns:
            core.tracing.requested(task_id, "RedriveRequested", start_ns)
        core.metrics.count_submitted("RedriveRequested")
        self._after_send()
        return handle

    def set_limit(self, name: str, rate: str, burst: int = 1,
                  timeout: float | None = None) -> None:
        """Set the rate limit ``name``: ``rate`` tokens per period (``"100/s"``, ``"5/min"``),
        a bucket holding ``burst`` at most (docs/flow-control.md). Returns once Kafka has
        the ``LimitSet`` event; tasks name it with ``rate_limit=name``."""
        core = self._core
        core.check_usable()
        key, data = self._build.limit_set(name, rate, burst, now_ms())
        handle = TaskHandle(key, "LimitSet", core)
        core.send(key, data, handle)
        core.metrics.count_submitted("LimitSet")
        handle.delivered(timeout)

    def poll(self, timeout: float = 0.0) -> int:
        """Serve delivery callbacks; returns how many ran."""
        return self._core.poll(timeout)

    def pending(self) -> int:
        """Events sent and not yet acknowledged or failed."""
        return self._core.pending()

    def flush(self, timeout: float | None = None) -> None:
        """Wait until every event sent so far is acknowledged.

        Raises DeliveryError naming every task whose event failed (and that
        nobody was told about yet), or FlushTimeoutError when time runs out.
        """
        self._core.flush(timeout)

    def close(self, timeout: float | None = None) -> None:
        """Flush, then release the client. Raises like flush()."""
        if self._core.closed:
            return
        try:
            self._core.flush(timeout)
        finally:
            self._core.mark_closed()
            self._close_telemetry()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is None:
            self.close()
            return
        try:
            self.close()
        except Exception as flush_exc:  # the body's error wins; do not hide this one
            log.error("while closing after %r: %s", exc, flush_exc)
            exc.add_note(f"also, closing the producer failed: {flush_exc}")
