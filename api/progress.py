"""Read-your-writes: how far this replica's fold has got, and what a miss means (D46).

A task Kafka has acknowledged is not in the owning replica's table until its fold has
passed the record; a replica that restarted with a backlog can be seconds behind. A
lookup that misses therefore does not answer 404 "no task is known" while the replica
lags:

* a lookup that carries the submit's position (``?after=<partition>:<offset>``: the
  REST submit answers it, the SDK's handle holds it) waits, up to
  ``api_read_wait_s``, until the fold has passed that offset, then answers the task,
  or 404 when the record was folded and left no task;
* one without it reads the partition's end (its high watermark) *before* it looks
  at the fold, waits up to ``api_read_wait_s`` for the fold to reach that end, and
  answers 404 only then: every record acknowledged before the lookup began is below
  that end, so none of them can be the missing task;
* otherwise the answer is 503 ``pending`` with Retry-After, the partition and how
  many records the replica is behind.

Where the fold is at: the engine's offset past its last durable batch
(``FoldEngine.folded_offset``); for a partition it has not folded a batch of yet in
this generation, the offset its group committed (everything below it is in the
restored table), else the log's start. The ends and the committed offsets are read
by a consumer of this module's own, on a thread of its own, never joined to a group.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from confluent_kafka import Consumer, KafkaException, TopicPartition

from taskstream.api.errors import ApiError
from taskstream.kafka_config import consumer_config
from taskstream.settings import Settings

#: how often a waiting lookup looks at the fold again
POLL_S = 0.02
#: a committed offset read from the broker is used this long before it is read again
COMMITTED_TTL_S = 0.5
#: what a pending answer asks the client to wait before it asks again
PENDING_RETRY_S = 1.0


@dataclass(frozen=True, slots=True)
class Position:
    """Where a record is: the ``after`` of a lookup."""

    partition: int
    offset: int


def parse_after(raw: str | None, partitions: int) -> Position | None:
    """``<partition>:<offset>`` (what a submit answered) as a Position; None when absent."""
    if raw is None or raw == "":
        return None
    part, sep, off = raw.strip().partition(":")
    if not (sep and part.isascii() and part.isdigit() and off.isascii() and off.isdigit()):
        raise ApiError(400, "invalid_parameter", "after must be <partition>:<offset>, as the "
                       "submit answered it", "after")
    position = Position(int(part), int(off))
    if position.partition >= partitions:
        raise ApiError(400, "invalid_parameter", f"after names partition {position.partition};"
                       f" the events topic has {partitions}", "after")
    return position


def check_partition(after: Position | None, partition: int, task_id: str) -> None:
    """A position must be on the task's own partition (400 otherwise)."""
    if after is not None and after.partition != partition:
        raise ApiError(400, "invalid_parameter", f"task {task_id} is on partition {partition}, "
                       f"not {after.partition}: pass the position its own submit answered",
                       "after")


def pending_error(task_id: str, partition: int, folded: int, end: int) -> ApiError:
    """The answer for a task the owning replica may not have folded yet."""
    behind = max(0, end - folded)
    return ApiError(
        503, "pending",
        f"task {task_id} is not known yet: the replica owning partition {partition} is "
        f"{behind} record(s) behind (folded to offset {folded} of {end}); retry, or pass "
        "?after=<partition>:<offset> from the submit to wait for it",
        retry_after_s=PENDING_RETRY_S,
        details={"partition": partition, "behind": behind, "folded_offset": folded,
                 "end_offset": end})


class FoldProgress:
    """The fold's position and the topic's ends, per partition of the events topic.

    ``folded(partition)``: the engine's offset past its last durable batch, or None."""

    def __init__(self, settings: Settings, topic: str, group: str,
                 folded: Callable[[int], int | None]) -> None:
        self.topic = topic
        self.timeout_s = settings.kafka_timeout_s
        self._config = consumer_config(settings, group, {"client.id": f"{group}.api-progress"})
        self._folded = folded
        self._consumer: Consumer | None = None
        self._io = ThreadPoolExecutor(1, thread_name_prefix="taskstream-api-progress")
        self._committed: dict[int, tuple[float, int]] = {}

    async def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        loop = asyncio.get_running_loop()
        try:
            return await asyncio.wait_for(loop.run_in_executor(self._io, fn, *args),
                                          self.timeout_s + 1)
        except (TimeoutError, KafkaException) as exc:
            raise ApiError(503, "unavailable", f"Kafka did not say how far the events topic "
                           f"goes ({exc or 'timed out'}); retry",
                           retry_after_s=PENDING_RETRY_S) from None

    def _client(self) -> Consumer:
        if self._consumer is None:
            self._consumer = Consumer(self._config)
        return self._consumer

    def _ends(self, partition: int) -> tuple[int, int]:
        low, high = self._client().get_watermark_offsets(
            TopicPartition(self.topic, partition), timeout=self.timeout_s)
        return int(low), int(high)

    def _read_committed(self, partition: int) -> int:
        tp = self._client().committed([TopicPartition(self.topic, partition)],
                                      timeout=self.timeout_s)[0]
        if tp.offset >= 0:
            return int(tp.offset)
        return self._ends(partition)[0]  # nothing committed: the fold starts at the log's start

    async def end(self, partition: int) -> int:
        """The partition's end now (its high watermark)."""
        _, high = await self._call(self._ends, partition)
        return int(high)

    async def folded(self, partition: int) -> int:
        """The offset below which this replica has folded every record of ``partition``."""
        offset = self._folded(partition)
        if offset is not None:
            return offset
        now = time.monotonic()
        cached = self._committed.get(partition)
        if cached is None or now - cached[0] > COMMITTED_TTL_S:
            cached = (now, int(await self._call(self._read_committed, partition)))
            self._committed[partition] = cached
        engine = self._folded(partition)  # a batch may have landed meanwhile
        return max(cached[1], engine) if engine is not None else cached[1]

    async def wait_folded(self, partition: int, target: int, wait_s: float) -> int:
        """The fold's offset once it reaches ``target``, or after ``wait_s``."""
        deadline = time.monotonic() + wait_s
        while True:
            folded = await self.folded(partition)
            left = deadline - time.monotonic()
            if folded >= target or left <= 0:
                return folded
            await asyncio.sleep(min(POLL_S, left))

    def close(self) -> None:
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            self._io.submit(consumer.close)
        self._io.shutdown(wait=False)
