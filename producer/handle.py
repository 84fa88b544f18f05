"""Handles: what submit() returns. One per event sent.

A handle learns its fate from the Kafka client's delivery callback, which runs
in whichever thread polls the client (the caller's thread for the sync
producer, the poll thread for the asyncio one). The state is written before any
waiter is looked at, and a waiter is registered before the state is checked, so
no wake-up is lost between the two threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from taskstream.producer.errors import DeliveryError, DeliveryTimeoutError, FailedDelivery

if TYPE_CHECKING:
    from taskstream.producer.core import ProducerCore
    from taskstream.producer.results import AsyncResultClient, ResultClient

PENDING, DELIVERED, FAILED = 0, 1, 2


class _Delivery:
    """Delivery state shared by the sync and asyncio handles."""

    __slots__ = ("_core", "_failure", "_reported", "_state", "_t0", "event_type", "offset",
                 "partition", "task_id")

    def __init__(self, task_id: str, event_type: str, core: ProducerCore) -> None:
        self.task_id = task_id
        self.event_type = event_type
        self._core = core
        self._state = PENDING
        self._failure: FailedDelivery | None = None
        self._reported = False
        self._t0 = 0.0  # set when this delivery's latency is sampled
        #: where the broker put the event (once delivered; None for the handles of a
        #: batch): result() passes it, so the API answers only once it has folded it (D46)
        self.partition: int | None = None
        self.offset: int | None = None

    @property
    def done(self) -> bool:
        """True once the broker acknowledged or rejected the event."""
        return self._state != PENDING

    @property
    def failure(self) -> FailedDelivery | None:
        return self._failure

    def _on_delivery(self, err: Any, msg: Any) -> None:
        # runs in the polling thread; keep it short
        if err is None:
            if msg is not None:
                self.partition, self.offset = msg.partition(), msg.offset()
            self._state = DELIVERED
            self._core.on_acked(self._t0)
        else:
            self._failure = FailedDelivery(
                self.task_id, self.event_type, err.str(), err.code(), err.retriable()
            )
            self._state = FAILED
            self._core.on_failed(self)
        self._wake()

    def _wake(self) -> None:
        """Tell a waiter (asyncio handles only)."""

    @property
    def position(self) -> str | None:
        """``<partition>:<offset>`` of the delivered event (a lookup's ``?after``), or None."""
        if self.partition is None or self.offset is None or self.offset < 0:
            return None
        return f"{self.partition}:{self.offset}"

    def _raise_if_failed(self) -> None:
        if self._failure is not None:
            self._reported = True
            raise DeliveryError([self._failure], self._core.bootstrap)

    def __repr__(self) -> str:
        state = ("pending", "delivered", "failed")[self._state]
        return f"<{type(self).__name__} {self.task_id} {self.event_type} {state}>"


class BatchDelivery:
    """One delivery callback for all the events of one ``submit_many`` call.

    A callback per event costs ~3 us (a bound method per handle, then a call
    that updates that handle); this one counts acks and touches a handle only
    when its event failed. The handles of the call turn delivered together,
    when every event of the call is acknowledged or failed (a failed one is
    marked failed at once). The produce-latency histogram gets one sample
    per call: from handing the first record over to the last report. Each
    acknowledged event's position is kept by its key and given to its handle
    when the call settles, so a batch's handles read their own writes as a
    single submit's do (D46).
    """

    __slots__ = (
        "_by_key",
        "_core",
        "_lock",
        "_positions",
        "_settled",
        "_t0",
        "acked",
        "failed",
        "handles",
        "size",
    )

    def __init__(self, core: ProducerCore, handles: list[Any]) -> None:
        self._core = core
        self.handles = handles
        self.size = len(handles)
        self.acked = 0
        self.failed = 0
        self._by_key: dict[bytes, list[_Delivery]] | None = None
        self._positions: dict[bytes, tuple[int, int]] = {}
        self._t0 = time.perf_counter()
        self._settled = False
        self._lock = threading.Lock()  # drop() may race the polling thread's last report

    def on_delivery(self, err: Any, msg: Any) -> None:
        # runs in the polling thread, once per event: keep the common case short
        if err is None:
            self.acked += 1
            if msg is not None:
                self._positions[msg.key()] = (msg.partition(), msg.offset())
        else:
            self._fail_key(msg.key(), err)
        if self.acked + self.failed >= self.size:
            self._settle()

    def fail(self, index: int, err: Any) -> None:
        """The client refused event ``index`` outright (produce_batch's ``_error``)."""
        self.failed += 1
        self.handles[index]._on_delivery(err, None)
        if self.acked + self.failed >= self.size:
            self._settle()

    def drop(self, unsent: list[int]) -> None:
        """The events at ``unsent`` were never handed over (the queue stayed full):
        their handles leave the batch and stay pending; the rest settle as usual."""
        skip = set(unsent)
        with self._lock:
            self.handles = [h for i, h in enumerate(self.handles) if i not in skip]
            self.size = len(self.handles)
        if self.acked + self.failed >= self.size:
            self._settle()

    def _fail_key(self, key: bytes, err: Any) -> None:
        if self._by_key is None:
            self._by_key = {}
            for handle in self.handles:
                self._by_key.setdefault(handle.task_id.encode(), []).append(handle)
        self.failed += 1
        for handle in self._by_key.get(key, ()):
            if handle._state == PENDING:
                handle._on_delivery(err, None)
                return

    def _settle(self) -> None:
        with self._lock:
            if self._settled:
                return
            self._settled = True
        core = self._core
        if self.acked:
            core.on_acked_many(self.acked, self._t0)
        positions = self._positions
        for handle in self.handles:
            if handle._state == PENDING:
                handle.partition, handle.offset = positions.get(
                    handle.task_id.encode(), (None, None))
                handle._state = DELIVERED
                handle._wake()


class TaskHandle(_Delivery):
    """The sync producer's handle: ``delivered()`` and ``result()`` block."""

    __slots__ = ()

    def delivered(self, timeout: float | None = None) -> None:
        """Wait until Kafka acknowledged the event; raise DeliveryError if it refused.

        ``timeout`` defaults to the delivery timeout plus a margin (the client
        fails the event by then anyway).
        """
        wait = self._core.default_wait_s if timeout is None else timeout
        deadline = time.monotonic() + wait
        while self._state == PENDING:
            left = deadline - time.monotonic()
            if left <= 0:
                raise DeliveryTimeoutError(
                    f"event {self.event_type} of task {self.task_id} not acknowledged by "
                    f"Kafka at {self._core.bootstrap} within {wait:g}s; it is still queued"
                )
            self._core.poll(min(left, 0.05))
        self._raise_if_failed()

    def result(self, timeout: float = 60.0) -> Any:
        """Wait for the task to finish and return its result.

        Raises TaskFailedError (DEAD), TaskCancelledError, ResultTimeoutError,
        ApiBusyError, TaskNotFoundError or ApiUnavailableError. Confirms delivery
        first, so a lost submit is never mistaken for a slow task, and passes the
        event's position, so a replica that has not folded it yet answers "pending",
        never "no such task" (D46).
        """
        started = time.monotonic()
        self.delivered(timeout)
        client: ResultClient = self._core.result_client()
        return client.wait(self.task_id, max(timeout - (time.monotonic() - started), 0.001),
                           after=self.position)


class AsyncTaskHandle(_Delivery):
    """The asyncio producer's handle: ``delivered()`` and ``result()`` are awaitable."""

    __slots__ = ("_loop", "_waiter")

    def __init__(
        self, task_id: str, event_type: str, core: ProducerCore, loop: asyncio.AbstractEventLoop
    ) -> None:
        super().__init__(task_id, event_type, core)
        self._loop = loop
        self._waiter: asyncio.Future[None] | None = None

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            # a closed loop means nobody is waiting any more
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(_resolve, waiter)

    async def delivered(self, timeout: float | None = None) -> None:
        """Await Kafka's acknowledgement; raise DeliveryError if it refused."""
        if self._state == PENDING:
            if self._waiter is None:
                self._waiter = self._loop.create_future()
            if self._state == PENDING:  # re-check: the callback may have run meanwhile
                wait = self._core.default_wait_s if timeout is None else timeout
                try:
                    await asyncio.wait_for(asyncio.shield(self._waiter), wait)
                except TimeoutError:
                    raise DeliveryTimeoutError(
                        f"event {self.event_type} of task {self.task_id} not acknowledged by "
                        f"Kafka at {self._core.bootstrap} within {wait:g}s; it is still queued"
                    ) from None
        self._raise_if_failed()

    async def result(self, timeout: float = 60.0) -> Any:
        """Await the task's outcome (see :meth:`TaskHandle.result`)."""
        started = self._loop.time()
        await self.delivered(timeout)
        client: AsyncResultClient = self._core.async_result_client()
        return await client.wait(self.task_id, max(timeout - (self._loop.time() - started), 0.001),
                                 after=self.position)


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


@dataclass(frozen=True, slots=True)
class GroupHandles:
    """What ``producer.group`` returns: the group's ID, its members' handles and the
    callback's (None without a callback)."""

    group_id: str
    members: list[Any]
    callback: Any | None
