"""The processor's outbox: what the fold of one record sends, retried until Kafka takes
it, and that record acked only once all of it is acknowledged (docs/decisions.md, D19).

Faust's own paths lose records when the broker pushes back (issue 14):

* a table write queues its changelog record in Faust's producer buffer; before a commit
  Faust flushes that buffer, but the flush gives up after 0.1 s without progress and
  returns with records still queued, and a record whose delivery fails is only logged.
  The commit goes ahead either way, and a crash then loses the state;
* an agent acks a record when it takes the next one, so Faust may commit the offset of
  a record whose sends are still in flight, or failed.

So the fold sends its records through :class:`Outbox` and reads the events topic
without automatic acks:

1. :meth:`Outbox.send` hands a record to the producer. A Kafka error at send time is
   retried with backoff (the fold waits: that is its back-pressure) as long as the
   events record is still this replica's (its consumer generation is current);
2. the acknowledgement comes later. A failure at delivery time sends again: a record
   with a ``refresh`` is rebuilt by it first (a changelog record from the task's current
   state, so a late resend never leaves an older state last for its key); any other
   record goes again as it was;
3. once every record of an events record is acknowledged, that record is acked, in
   offset order per partition. Faust commits past a single unacked offset when the
   offsets after it are acked (its gap check allows a distance of one), so an ack out
   of order could commit past a record still failing. A record of an older consumer
   generation is never acked: after a rebalance its partition is read again from the
   committed offset, here or by another replica.

At most ``limit`` events records wait for acknowledgements; :meth:`Outbox.room` holds
the fold back beyond that, so a broker that refuses for long bounds memory and the
work a crash makes the next owner redo.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from aiokafka.errors import KafkaError
from faust.exceptions import ProducerSendError
from faust.types import TP, EventT

log = logging.getLogger("taskstream.processor")

#: what the producer raises, at send time or through the delivery future, for a Kafka refusal
KAFKA_ERRORS: tuple[type[BaseException], ...] = (ProducerSendError, KafkaError)
LIMIT = 10_000
FIRST_BACKOFF_S = 0.05
MAX_BACKOFF_S = 2.0


@dataclass(frozen=True, slots=True)
class Record:
    """One record to send. ``kind`` names its role in logs and metrics."""

    kind: str
    topic: str
    key: bytes | None
    value: bytes | None
    partition: int | None = None
    headers: Sequence[tuple[str, bytes]] | None = None


#: hands a record to the producer; returns the future of its acknowledgement
Send = Callable[[Record], Awaitable[Awaitable[Any]]]
#: a record to send again after a failed delivery (None: nothing is left to send)
Refresh = Callable[[], Record | None]
#: told the acknowledgement of a record (its RecordMetadata)
Delivered = Callable[[Any], None]


class Pending:
    """The records one events record sent, until all are acknowledged."""

    __slots__ = ("closed", "done", "dropped", "event", "generation", "tp", "waiting")

    def __init__(self, event: EventT[Any], generation: int) -> None:
        self.event = event
        self.tp: TP = event.message.tp
        self.generation = generation
        self.waiting = 0  # records handed over and not acknowledged yet
        self.closed = False  # the fold sends nothing more for it
        self.done = False  # closed and every record acknowledged
        self.dropped = False  # an older generation's: never acked


class Outbox:
    def __init__(self, send: Send, ack: Callable[[EventT[Any]], None],
                 generation: Callable[[], int], stopping: Callable[[], bool],
                 retried: Callable[[str, str], None], *,
                 limit: int = LIMIT, first_backoff_s: float = FIRST_BACKOFF_S,
                 max_backoff_s: float = MAX_BACKOFF_S) -> None:
        self._send = send
        self._ack = ack
        self._generation = generation
        self._stopping = stopping
        self._retried = retried  # (kind, "send" | "delivery") -> count it
        self._limit = limit
        self._first_backoff_s = first_backoff_s
        self._max_backoff_s = max_backoff_s
        self._queues: dict[TP, deque[Pending]] = {}
        self._queued_generation = 0
        self._count = 0
        self._room = asyncio.Event()
        self._room.set()
        self._tasks: set[asyncio.Task[None]] = set()

    # -- the fold's side -------------------------------------------------------------

    async def room(self) -> None:
        """Wait while ``limit`` events records wait for acknowledgements."""
        await self._room.wait()

    def open(self, event: EventT[Any]) -> Pending:
        generation = event.message.generation_id or 0
        if generation != self._queued_generation:
            self._drop_all()  # a rebalance: what is queued will be read again
            self._queued_generation = generation
        pending = Pending(event, generation)
        self._queues.setdefault(pending.tp, deque()).append(pending)
        self._count += 1
        if self._count >= self._limit:
            self._room.clear()
        return pending

    async def send(self, pending: Pending, record: Record, refresh: Refresh | None = None,
                   delivered: Delivered | None = None) -> None:
        """Hand ``record`` to the producer (retrying a refusal) and count it as awaited by
        ``pending``. Returns once the producer holds it, or once the events record is no
        longer this replica's to finish (then it is never acked)."""
        future = await self._hand_over(pending, record)
        if future is not None:
            pending.waiting += 1
            self._watch(pending, record, future, refresh, delivered)

    def hold(self, pending: Pending) -> None:
        """Never ack ``pending``: its record is read again by the next owner of its
        partition (after a restart or a rebalance); the partition's acks stop at it."""
        pending.dropped = True

    def close(self, pending: Pending) -> None:
        """Nothing more will be sent for ``pending``: ack it once all is acknowledged."""
        pending.closed = True
        self._settle(pending)

    # -- sending and resending ---------------------------------------------------------

    def _current(self, pending: Pending) -> bool:
        return pending.generation == self._generation() and not self._stopping()

    async def _hand_over(self, pending: Pending, record: Record) -> Awaitable[Any] | None:
        """The producer's future for ``record``; None (and ``pending`` dropped) once the
        events record is no longer this replica's."""
        backoff = self._first_backoff_s
        while True:
            if not self._current(pending):
                pending.dropped = True
                return None
            try:
                return await self._send(record)
            except KAFKA_ERRORS as exc:
                self._retried(record.kind, "send")
                log.warning("%s record to %s refused at send time (%s: %s); retry in %.2fs",
                            record.kind, record.topic, type(exc).__name__, exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self._max_backoff_s)

    def _watch(self, pending: Pending, record: Record, future: Awaitable[Any],
               refresh: Refresh | None, delivered: Delivered | None) -> None:
        def done(fut: asyncio.Future[Any]) -> None:
            error = asyncio.CancelledError() if fut.cancelled() else fut.exception()
            if error is not None:
                self._spawn(self._redeliver(pending, record, error, refresh, delivered))
                return
            if delivered is not None and self._current(pending):
                delivered(fut.result())
            pending.waiting -= 1
            self._settle(pending)

        asyncio.ensure_future(future).add_done_callback(done)

    async def _redeliver(self, pending: Pending, record: Record, error: BaseException,
                         refresh: Refresh | None, delivered: Delivered | None) -> None:
        backoff = self._first_backoff_s
        while True:
            if not self._current(pending):
                pending.dropped = True
                return
            self._retried(record.kind, "delivery")
            log.warning("%s record to %s failed at delivery time (%s: %s); sending it again "
                        "in %.2fs", record.kind, record.topic, type(error).__name__, error,
                        backoff)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self._max_backoff_s)
            try:
                again = refresh() if refresh is not None else record
                if again is None:
                    break  # nothing is left to send (the key is gone)
                future = await self._hand_over(pending, again)
                if future is None:
                    return
                metadata = await future
            except Exception as exc:  # any failure of a resend is retried, never lost
                error = exc
                continue
            if delivered is not None and self._current(pending):
                delivered(metadata)
            break
        pending.waiting -= 1
        self._settle(pending)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- acks, in offset order per partition ---------------------------------------------

    def _settle(self, pending: Pending) -> None:
        if pending.dropped or not pending.closed or pending.waiting > 0:
            return
        pending.done = True
        queue = self._queues.get(pending.tp)
        while queue and queue[0].done:
            head = queue.popleft()
            self._count -= 1
            if head.generation != self._generation():
                self._drop(queue)  # a rebalance: this partition is read again
                break
            self._ack(head.event)
        if self._count < self._limit:
            self._room.set()

    def _drop(self, queue: deque[Pending]) -> None:
        for pending in queue:
            pending.dropped = True
        self._count -= len(queue)
        queue.clear()

    def _drop_all(self) -> None:
        for queue in self._queues.values():
            self._drop(queue)
        self._queues.clear()
        self._room.set()
