"""The outbox's rules without a broker (processors/live/outbox.py): acks wait for every
acknowledgement and go in offset order per partition, refusals are sent again, an
older generation is never acked, the fold is held back beyond the limit."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from aiokafka.errors import KafkaTimeoutError, NotLeaderForPartitionError
from faust.exceptions import ProducerSendError
from faust.types import TP

from taskstream.processors.live.outbox import Outbox, Record


@dataclass
class Message:
    tp: TP
    offset: int
    generation_id: int


@dataclass
class Event:
    message: Message


@dataclass
class Broker:
    """Hands out one future per send; the test decides each one's fate."""

    refuse_sends: int = 0  # this many sends raise at send time first
    sent: list[Record] = field(default_factory=list)
    futures: list[asyncio.Future[Any]] = field(default_factory=list)

    async def send(self, record: Record) -> Awaitable[Any]:
        if self.refuse_sends:
            self.refuse_sends -= 1
            raise ProducerSendError("Error while sending: KafkaTimeoutError()")
        self.sent.append(record)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.futures.append(future)
        return future


class Rig:
    def __init__(self, limit: int = 100) -> None:
        self.broker = Broker()
        self.acked: list[tuple[int, int]] = []
        self.generation = 1
        self.stopping = False
        self.retries: list[tuple[str, str]] = []
        self.outbox = Outbox(self.broker.send, self._ack, lambda: self.generation,
                             lambda: self.stopping, lambda *k: self.retries.append(k),
                             limit=limit, first_backoff_s=0.001, max_backoff_s=0.002)

    def _ack(self, event: Any) -> None:
        self.acked.append((event.message.tp.partition, event.message.offset))

    async def fold(self, partition: int, offset: int, *values: bytes) -> None:
        """One events record whose fold sends one record per value."""
        event = Event(Message(TP("events", partition), offset, self.generation))
        pending = self.outbox.open(event)
        for value in values:
            await self.outbox.send(pending, Record("ready", "ready.q.p0", b"k", value))
        self.outbox.close(pending)


def in_loop(test: Callable[[], Coroutine[Any, Any, None]]) -> Callable[[], None]:
    """``test`` run in an event loop of its own."""

    @functools.wraps(test)
    def run() -> None:
        asyncio.run(test())

    return run


async def settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0.005)


@in_loop
async def test_acks_wait_for_every_acknowledgement_in_offset_order() -> None:
    rig = Rig()
    await rig.fold(0, 10, b"a", b"b")
    await rig.fold(0, 11, b"c")
    await rig.fold(1, 5)  # sent nothing: acked at once
    assert rig.acked == [(1, 5)]
    rig.broker.futures[2].set_result("md")  # offset 11 is acknowledged first
    await settle()
    assert rig.acked == [(1, 5)]  # 10 still waits, so 11 waits behind it
    rig.broker.futures[0].set_result("md")
    rig.broker.futures[1].set_result("md")
    await settle()
    assert rig.acked == [(1, 5), (0, 10), (0, 11)]


@in_loop
async def test_a_failed_delivery_is_sent_again_until_taken() -> None:
    rig = Rig()
    await rig.fold(0, 0, b"dispatch")
    rig.broker.futures[0].set_exception(KafkaTimeoutError())
    await settle()
    assert [r.value for r in rig.broker.sent] == [b"dispatch", b"dispatch"]
    assert rig.acked == []
    rig.broker.futures[1].set_exception(NotLeaderForPartitionError())
    await settle()
    rig.broker.futures[2].set_result("md")
    await settle()
    assert rig.acked == [(0, 0)]
    assert rig.retries == [("ready", "delivery"), ("ready", "delivery")]


@in_loop
async def test_a_refresh_rebuilds_the_record_it_sends_again() -> None:
    rig = Rig()
    current = [b"state-2"]
    event = Event(Message(TP("events", 0), 7, 1))
    pending = rig.outbox.open(event)
    offsets: list[str] = []
    await rig.outbox.send(pending, Record("changelog", "cl", b"t", b"state-1", 0),
                          refresh=lambda: Record("changelog", "cl", b"t", current[0], 0),
                          delivered=offsets.append)
    rig.outbox.close(pending)
    rig.broker.futures[0].set_exception(KafkaTimeoutError())
    await settle()
    rig.broker.futures[1].set_result("offset-9")
    await settle()
    assert [r.value for r in rig.broker.sent] == [b"state-1", b"state-2"]
    assert offsets == ["offset-9"] and rig.acked == [(0, 7)]


@in_loop
async def test_a_refusal_at_send_time_is_retried_before_the_fold_goes_on() -> None:
    rig = Rig()
    rig.broker.refuse_sends = 3
    await rig.fold(0, 0, b"x")
    assert len(rig.broker.sent) == 1 and rig.retries == [("ready", "send")] * 3
    rig.broker.futures[0].set_result("md")
    await settle()
    assert rig.acked == [(0, 0)]


@in_loop
async def test_an_older_generation_is_never_acked() -> None:
    rig = Rig()
    await rig.fold(0, 0, b"x")
    rig.generation = 2  # a rebalance: partition 0 is read again from its committed offset
    rig.broker.futures[0].set_result("md")
    await settle()
    await rig.fold(0, 0, b"x")
    rig.broker.futures[1].set_result("md")
    await settle()
    assert rig.acked == [(0, 0)]  # once: by the new generation's fold


@in_loop
async def test_a_failing_record_of_an_older_generation_is_given_up() -> None:
    rig = Rig()
    await rig.fold(0, 0, b"x")
    rig.generation = 2
    rig.broker.futures[0].set_exception(KafkaTimeoutError())
    await settle()
    assert len(rig.broker.sent) == 1 and rig.acked == []


@in_loop
async def test_the_fold_waits_while_the_limit_is_reached() -> None:
    rig = Rig(limit=2)
    await rig.fold(0, 0, b"a")
    await rig.fold(0, 1, b"b")
    waiting = asyncio.ensure_future(rig.outbox.room())
    await settle()
    assert not waiting.done()
    rig.broker.futures[0].set_result("md")
    await settle()
    assert waiting.done() and rig.acked == [(0, 0)]
