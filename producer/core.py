"""The Kafka side of the producer, shared by the sync and asyncio front ends.

It owns the confluent-kafka client and everything about delivery: waiting for
room when the local queue is full, noticing that the brokers are unreachable,
remembering failed deliveries until someone has been told, and counting.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from confluent_kafka import KafkaError, KafkaException, Producer

from taskstream.admin import check_event_budget
from taskstream.errors import KafkaAuthError, TopicError
from taskstream.kafka_config import ClientErrors
from taskstream.producer.config import kafka_config
from taskstream.producer.errors import (
    BrokerUnreachableError,
    DeliveryError,
    FailedDelivery,
    FlushTimeoutBrokerDownError,
    FlushTimeoutError,
    ProducerClosedError,
    ProducerError,
    ProducerQueueFullError,
    UndeliveredOnBrokerDownError,
)
from taskstream.producer.metrics import ProducerMetrics, producer_metrics
from taskstream.producer.tracing import SubmitTracing
from taskstream.security.sealing import payload_sealer
from taskstream.security.tls import client_context
from taskstream.settings import Settings
from taskstream.topics import events_topic

if TYPE_CHECKING:
    from taskstream.producer.handle import BatchDelivery, _Delivery
    from taskstream.producer.results import AsyncResultClient, ResultClient

DeliveryCallback = Callable[[Any, Any], None]
#: records per produce_batch call
BATCH = 10_000

_DOWN_CODES = frozenset({KafkaError._ALL_BROKERS_DOWN})
_BROKER_DOWN_ERRORS = frozenset(
    {KafkaError._MSG_TIMED_OUT, KafkaError._TIMED_OUT, KafkaError._TRANSPORT}
)


class ProducerCore:
    """One confluent-kafka Producer writing task events to the events topic."""

    def __init__(
        self,
        settings: Settings,
        *,
        metrics: ProducerMetrics | None = None,
        queue_full_timeout_s: float | None = None,
        connect_timeout_s: float | None = None,
        kafka_overrides: Mapping[str, Any] | None = None,
        tracing: SubmitTracing | None = None,
    ) -> None:
        self.settings = settings
        self.bootstrap = settings.bootstrap
        self.topic = events_topic(settings)
        #: spans and traceparent headers (off: one attribute check per send)
        self.tracing = tracing if tracing is not None else SubmitTracing(topic=self.topic)
        self.metrics = metrics if metrics is not None else producer_metrics()
        self.queue_capacity = settings.producer_queue_max
        self.queue_full_timeout_s = (
            settings.kafka_timeout_s if queue_full_timeout_s is None else queue_full_timeout_s
        )
        self.connect_timeout_s = (
            settings.kafka_timeout_s if connect_timeout_s is None else connect_timeout_s
        )
        #: the payload keyring's sealer (D27): the builder seals with it, results open with it
        self.sealer = payload_sealer(settings)
        #: how long a wait for an ack may last when the caller gives no timeout
        self.default_wait_s = settings.delivery_timeout_s + 5.0
        config = kafka_config(settings, kafka_overrides)
        self._errors = ClientErrors()
        config["error_cb"] = self._on_client_error
        self._producer = Producer(config)
        self._produce = self._producer.produce  # bound once: the hot path
        self._failures: list[_Delivery] = []
        self._failures_lock = threading.Lock()
        self._down_since: float | None = None
        self._fatal: KafkaError | None = None
        self._connected = False
        self._budget_checked = False
        self._closed = False
        self._acked = 0  # since the last metrics sync
        self._sample = 0
        self._result_client: ResultClient | None = None
        self._async_result_client: AsyncResultClient | None = None

    # --- callbacks (run in the polling thread) --------------------------------

    def _on_client_error(self, err: KafkaError) -> None:
        self._errors(err)
        if err.fatal():
            self._fatal = err
        elif err.code() in _DOWN_CODES and self._down_since is None:
            self._down_since = time.monotonic()

    def on_acked(self, t0: float) -> None:
        self._acked += 1
        self._down_since = None
        if t0:
            self.metrics.produce_latency.observe(time.perf_counter() - t0)

    def on_acked_many(self, n: int, t0: float) -> None:
        """``n`` events of one submit_many acknowledged; the last of them just now."""
        self._acked += n
        self._down_since = None
        self.metrics.produce_latency.observe(time.perf_counter() - t0)

    def on_failed(self, delivery: _Delivery) -> None:
        with self._failures_lock:
            self._failures.append(delivery)
        failure = delivery.failure
        reason = "timeout" if failure and failure.code == KafkaError._MSG_TIMED_OUT else "error"
        self.metrics.failed.labels(reason=reason).inc()

    # --- producing ------------------------------------------------------------

    def check_usable(self) -> None:
        """Raise unless this producer can take another event (cheap, every submit)."""
        if self._closed:
            raise ProducerClosedError("this producer is closed; create a new one")
        if self._fatal is not None:
            raise ProducerError(
                f"the Kafka client hit a fatal error and cannot produce any more: "
                f"{self._fatal.str()}. Close this producer and create a new one"
            )
        if not self._connected:
            self.connect()
        elif self._down_since is not None:
            self._check_still_down()

    @property
    def needs_probe(self) -> bool:
        """True when the next check_usable() may block on a metadata request."""
        return not self._connected or self._down_since is not None

    def connect(self) -> None:
        """Fetch the events topic's metadata, or raise within connect_timeout_s."""
        try:
            md = self._producer.list_topics(self.topic, timeout=self.connect_timeout_s)
        except KafkaException as exc:
            self._producer.poll(0)  # serve error_cb: a refused login says why
            hint = self._errors.hint()
            if hint:
                raise KafkaAuthError(f"Kafka at {self.bootstrap} refused this producer: {hint}"
                                     ) from None
            raise BrokerUnreachableError(
                self.bootstrap, self.connect_timeout_s, str(exc.args[0])
            ) from None
        topic = md.topics.get(self.topic)
        if topic is None or topic.error is not None or not topic.partitions:
            why = topic.error.str() if topic is not None and topic.error is not None else "missing"
            raise TopicError(
                f"the events topic {self.topic!r} is not usable on {self.bootstrap} ({why}); "
                "create the topics with `taskstream topics create`"
            )
        if not self._budget_checked:
            check_event_budget(self.settings)  # once: a budget the topic cannot take (D28)
            self._budget_checked = True
        self._connected = True
        self._down_since = None

    def _check_still_down(self) -> None:
        down_since = self._down_since
        if down_since is None or time.monotonic() - down_since < self.connect_timeout_s:
            return
        self.connect()  # raises BrokerUnreachableError if it still is

    def try_send(self, key: str, value: bytes, handle: _Delivery) -> bool:
        """Hand one event to the client; False when its queue is full."""
        self._sample += 1
        if self._sample >= self.metrics.sample_every:
            self._sample = 0
            handle._t0 = time.perf_counter()
        try:
            if self.tracing.enabled:
                self._produce(self.topic, value, key, on_delivery=handle._on_delivery,
                              headers=self.tracing.headers(key))
            else:
                self._produce(self.topic, value, key, on_delivery=handle._on_delivery)
        except BufferError:
            return False
        return True

    def send(self, key: str, value: bytes, handle: _Delivery) -> None:
        """Hand one event to the client; poll and retry while its queue is full."""
        if not self.try_send(key, value, handle):
            self._send_when_room(key, value, handle)

    def offer_many(
        self, keys: list[str], values: list[bytes], batch: BatchDelivery, todo: list[int] | None
    ) -> list[int]:
        """Queue event ``i`` (``keys[i]``, ``values[i]``) for each ``i`` in ``todo``
        (all when None) with ``produce_batch``, one C call per :data:`BATCH`
        events, ``batch`` hearing every report; return the indices refused
        because the local queue is full, in order. An event refused for any
        other reason fails its handle, so flush() reports it like any failed
        delivery.
        """
        topic, produce_batch = self.topic, self._producer.produce_batch
        on_delivery = batch.on_delivery
        indices = range(len(keys)) if todo is None else todo
        if self.tracing.enabled:  # produce_batch takes no headers: one call per event
            return self._offer_each(keys, values, batch, list(indices))
        for lo in range(0, len(indices), BATCH):
            part = indices[lo : lo + BATCH]
            if todo is None:
                messages: list[dict[str, Any]] = [
                    {"key": k, "value": v}
                    for k, v in zip(keys[lo : lo + BATCH], values[lo : lo + BATCH], strict=True)
                ]
            else:
                messages = [{"key": keys[i], "value": values[i]} for i in part]
            if produce_batch(topic, messages, on_delivery=on_delivery) == len(messages):
                continue
            refused = []
            for i, message in zip(part, messages, strict=True):
                err = message.get("_error")
                if err is None:
                    continue
                if err.code() == KafkaError._QUEUE_FULL:
                    refused.append(i)
                else:  # e.g. a record over message.max.bytes: that task's delivery failed
                    batch.fail(i, err)
            if refused:  # the queue is full: the rest waits for acks too
                return refused + list(indices[lo + BATCH :])
        return []

    def _offer_each(self, keys: list[str], values: list[bytes], batch: BatchDelivery,
                    indices: list[int]) -> list[int]:
        """offer_many with a traceparent header on each event (tracing on)."""
        produce, topic, headers = self._produce, self.topic, self.tracing.headers
        for n, i in enumerate(indices):
            try:
                produce(topic, values[i], keys[i], on_delivery=batch.on_delivery,
                        headers=headers(keys[i]))
            except BufferError:
                return indices[n:]
            except KafkaException as exc:  # e.g. a record over message.max.bytes
                batch.fail(i, exc.args[0])
        return []

    def queue_full_error(self) -> ProducerQueueFullError:
        self.metrics.failed.labels(reason="queue_full").inc()
        return ProducerQueueFullError(
            self.queue_capacity, self.queue_full_timeout_s, self.bootstrap
        )

    def _send_when_room(self, key: str, value: bytes, handle: _Delivery) -> None:
        deadline = time.monotonic() + self.queue_full_timeout_s
        while True:
            self._producer.poll(0.05)  # serve acks: that is what frees the queue
            try:
                if self.tracing.enabled:
                    self._produce(self.topic, value, key, on_delivery=handle._on_delivery,
                                  headers=self.tracing.headers(key))
                else:
                    self._produce(self.topic, value, key, on_delivery=handle._on_delivery)
                return
            except BufferError:
                if time.monotonic() >= deadline:
                    raise self.queue_full_error() from None

    def poll(self, timeout: float = 0.0) -> int:
        served: int = self._producer.poll(timeout)
        if self._acked:
            self.sync_metrics()
        return served

    def sync_metrics(self) -> None:
        acked, self._acked = self._acked, 0
        if acked:
            self.metrics.delivered.inc(acked)

    def pending(self) -> int:
        """Events handed to the client and not yet acknowledged or failed."""
        return len(self._producer)

    # --- flushing and failures ------------------------------------------------

    def take_failures(self) -> list[FailedDelivery]:
        """Failed deliveries nobody has been told about yet (and mark them told)."""
        with self._failures_lock:
            taken, self._failures = self._failures, []
        out = []
        for delivery in taken:
            if not delivery._reported and delivery.failure is not None:
                delivery._reported = True
                out.append(delivery.failure)
        return out

    def flush_wait(self, timeout: float | None) -> int:
        """Block until every queued event is acked or failed; return how many are left."""
        wait = self.default_wait_s if timeout is None else timeout
        left: int = self._producer.flush(wait)
        self.sync_metrics()
        return left

    def raise_for_outcome(self, left: int, timeout: float | None) -> None:
        """Raise DeliveryError for failures nobody heard of, or FlushTimeoutError."""
        failures = self.take_failures()
        if failures:
            down = self._down_since is not None or all(
                f.code in _BROKER_DOWN_ERRORS for f in failures
            )
            cls = UndeliveredOnBrokerDownError if down else DeliveryError
            raise cls(failures, self.bootstrap)
        if left:
            down = self._down_since is not None
            cls2 = FlushTimeoutBrokerDownError if down else FlushTimeoutError
            wait = self.default_wait_s if timeout is None else timeout
            raise cls2(left, wait, self.bootstrap, down)

    def flush(self, timeout: float | None = None) -> None:
        """Wait for every event's ack; raise if any failed or time ran out."""
        left = self.flush_wait(timeout)
        self.raise_for_outcome(left, timeout)

    # --- results and closing --------------------------------------------------

    def result_client(self) -> ResultClient:
        if self._result_client is None:
            from taskstream.producer.results import ResultClient

            token = self.settings.api_token
            self._result_client = ResultClient(
                self.settings.api_url, token.get_secret_value() if token else None,
                self.sealer, client_context(self.settings)
            )
        return self._result_client

    def async_result_client(self) -> AsyncResultClient:
        if self._async_result_client is None:
            from taskstream.producer.results import AsyncResultClient

            token = self.settings.api_token
            self._async_result_client = AsyncResultClient(
                self.settings.api_url, token.get_secret_value() if token else None,
                self.sealer, client_context(self.settings)
            )
        return self._async_result_client

    async def aclose_result_client(self) -> None:
        client, self._async_result_client = self._async_result_client, None
        if client is not None:
            await client.aclose()

    @property
    def closed(self) -> bool:
        return self._closed

    def mark_closed(self) -> None:
        self._closed = True
        if self._result_client is not None:
            self._result_client.close()
