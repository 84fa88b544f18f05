"""The worker's producer: its events to the events topic, bad records to quarantine.

One confluent-kafka Producer per worker (acks=all, idempotent,
``murmur2_random`` so a task's events land where the processor expects them),
with a thread serving delivery callbacks. ``on_delivered(ok)`` callbacks run in
that thread.

With a signing keyring every event carries the worker's signature (D26); with a
payload keyring results and error texts are sealed for their task (D27). An
outcome whose event would be over the size budget (``max_event_bytes``, D28),
or a sealed result over ``max_result_bytes`` (the fold would cut it and it
would never open), is replaced by a non-retryable ``ResultTooLarge`` failure
that says so: the broker would refuse the event, the lease would lapse and the
task would be retried until DEAD without a word.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from taskstream.faults import fault_point
from taskstream.kafka_config import producer_config
from taskstream.schemas.events import (
    Envelope,
    EventBody,
    LeaseRenewed,
    TaskDispatched,
    TaskFailed,
    TaskProgress,
    TaskStarted,
    TaskSucceeded,
)
from taskstream.schemas.ids import new_event_id
from taskstream.schemas.quarantine import quarantine_headers
from taskstream.schemas.serde import encode_event
from taskstream.security.sealing import Sealer, payload_sealer
from taskstream.security.signing import signer_for
from taskstream.settings import Settings
from taskstream.topics import events_topic, quarantine_topic
from taskstream.workers.metrics import WorkerMetrics
from taskstream.workers.outcome import Failure, Outcome, Success

log = logging.getLogger("taskstream.worker")

Delivered = Callable[[bool], None]
Headers = list[tuple[str, str | bytes | None]]


def emitter_config(settings: Settings) -> dict[str, Any]:
    return producer_config(settings, {
        "linger.ms": settings.worker_linger_ms,
        # worker events are a few hundred bytes each: compression saves little, and a
        # consumer without the codec (aiokafka needs the lz4 package) could not read them
        "compression.type": "none",
        "delivery.timeout.ms": int(settings.delivery_timeout_s * 1000),
    })


#: error texts are cut to these lengths before sealing (the fold refuses texts over 64k)
MAX_MESSAGE_CHARS = 8_000


def sealed_outcome(outcome: Outcome, task_id: str, sealer: Sealer | None) -> Outcome:
    """The outcome with its result or error texts sealed for ``task_id`` (when sealing)."""
    if isinstance(outcome, Failure):
        message = outcome.message[:MAX_MESSAGE_CHARS]
        if sealer is None or not sealer.can_seal:
            return replace(outcome, message=message)
        return replace(outcome, message=sealer.seal_text(message, task_id),
                       traceback=sealer.seal_text(outcome.traceback, task_id)
                       if outcome.traceback else "")
    if sealer is None or not sealer.can_seal or outcome.result_ref is not None:
        return outcome  # an offloaded result was sealed before it was stored (workers/blobs.py)
    return replace(outcome, result=sealer.seal(outcome.result, task_id))


def result_too_large(size: int, limit: int, what: str) -> Failure:
    return Failure(
        "ResultTooLarge",
        f"the handler's result made {what} of {size} bytes, over the limit of {limit} "
        "bytes; return a reference to large data (an object store key) instead",
        retryable=False)


def outcome_body(outcome: Outcome, dispatch_id: str, worker_id: str) -> EventBody:
    if isinstance(outcome, Failure):
        return TaskFailed(
            dispatch_id=dispatch_id, worker_id=worker_id, error_type=outcome.error_type,
            message=outcome.message, traceback=outcome.traceback, retryable=outcome.retryable,
            timed_out=outcome.timed_out, retry_after_ms=outcome.retry_after_ms,
        )
    return TaskSucceeded(dispatch_id=dispatch_id, worker_id=worker_id, result=outcome.result,
                         result_content_type=outcome.content_type,
                         result_ref=outcome.result_ref)


class EventEmitter:
    """Produces the worker's events for ready records; thread-safe."""

    def __init__(self, settings: Settings, worker_id: str, metrics: WorkerMetrics) -> None:
        self.worker_id = worker_id
        self.source = f"worker:{worker_id}"
        self._metrics = metrics
        self._signer = signer_for(settings, "worker")
        self.sealer = payload_sealer(settings)
        self._max_event_bytes = settings.max_event_bytes
        self._max_result_bytes = settings.max_result_bytes
        self._events = events_topic(settings)
        self._quarantine = quarantine_topic(settings)
        self._producer = Producer(emitter_config(settings))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="taskstream-emitter",
                                        daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        """Serve delivery reports until closed. A callback that raises surfaces from
        ``poll``: it is logged and serving goes on (this thread dying would stop every
        settle and outcome report without a word; the worker's watchdog, D47, ends the
        process if it dies anyway)."""
        while not self._stop.is_set():
            try:
                self._producer.poll(0.1)
            except Exception:
                log.exception("event=emitter.callback_failed (serving delivery reports goes on)")

    @property
    def died(self) -> bool:
        """Its delivery thread ended before :meth:`close` (the watchdog's question)."""
        return not self._thread.is_alive() and not self._stop.is_set()

    def _envelope(self, ready: Envelope, body: EventBody) -> Envelope:
        return Envelope(event_id=new_event_id(), task_id=ready.task_id,
                        occurred_at_ms=time.time_ns() // 1_000_000, source=self.source,
                        attempt=ready.attempt, body=body)

    def _emit(self, ready: Envelope, body: EventBody, on_delivered: Delivered | None,
              value: bytes | None = None, headers: Headers | None = None,
              point: str | None = None) -> None:
        """Produce ``body`` about ``ready``'s attempt (``value``: already encoded;
        ``headers``: the trace context; ``point``: the fault point of the send), signed
        when the worker holds a key. A send the producer refuses is reported to
        ``on_delivered`` as not acknowledged, like a failed delivery."""
        if value is None:
            value = encode_event(self._envelope(ready, body))
        kind = type(body).__name__

        def report(err: KafkaError | None, _msg: Message | None) -> None:
            if err is not None:
                self._metrics.delivery_errors.labels(kind).inc()
                log.error("event=delivery.failed type=%s task_id=%s attempt=%d error=%s",
                          kind, ready.task_id, ready.attempt, err)
            if on_delivered is not None:
                on_delivered(err is None)

        key = ready.task_id.encode()
        out: list[tuple[str, str | bytes | None]] = list(headers or [])
        if self._signer is not None:
            out.append(self._signer.header(key, value))
        self._produce(self._events, key, value, report, headers=out or None, point=point)

    def _produce(self, topic: str, key: bytes | None, value: bytes | None,
                 report: Callable[[KafkaError | None, Message | None], None],
                 headers: Headers | None = None, point: str | None = None) -> None:
        """Hand one record to the producer; a refusal (``KafkaException``: a fatal
        producer error, an unknown topic, a record over the broker's size) goes to
        ``report`` as a failed delivery, never up into the attempt that sent it (an
        attempt whose TaskStarted raised here never ran and its record never settled)."""
        while True:
            try:
                if point is not None:
                    fault_point(point)
                self._producer.produce(topic, value=value, key=key, headers=headers,
                                       on_delivery=report)
                return
            except BufferError:
                # local queue full: wait for deliveries (bounded: librdkafka expires queued
                # messages after delivery.timeout.ms, which frees space)
                self._producer.poll(0.05)
            except KafkaException as exc:
                err = exc.args[0] if exc.args and isinstance(exc.args[0], KafkaError) \
                    else KafkaError(KafkaError._FAIL, str(exc))
                report(err, None)
                return

    @staticmethod
    def _dispatch_id(ready: Envelope) -> str:
        body = ready.body
        return body.dispatch_id if isinstance(body, TaskDispatched) else ""

    def started(self, ready: Envelope, on_delivered: Delivered | None = None,
                headers: Headers | None = None) -> None:
        self._emit(ready, TaskStarted(self._dispatch_id(ready), self.worker_id), on_delivered,
                   headers=headers, point="worker.started_send")

    def lease_renewed(self, ready: Envelope, headers: Headers | None = None,
                      on_delivered: Delivered | None = None) -> None:
        self._emit(ready, LeaseRenewed(self._dispatch_id(ready), self.worker_id), on_delivered,
                   headers=headers)
        self._metrics.heartbeats.inc()

    def progress(self, ready: Envelope, fraction: float, note: str) -> None:
        """A TaskProgress for this attempt (the caller throttles: workers/progress.py)."""
        self._emit(ready, TaskProgress(self._dispatch_id(ready), self.worker_id, fraction,
                                       note), None)

    def outcome(self, ready: Envelope, outcome: Outcome,
                on_delivered: Delivered | None = None, headers: Headers | None = None
                ) -> Outcome:
        """Send the attempt's outcome (sealed, held to the budget); returns what was sent."""
        sent = sealed_outcome(outcome, ready.task_id, self.sealer)
        if isinstance(sent, Success) and self.sealer is not None and self.sealer.can_seal and (
                len(sent.result) > self._max_result_bytes):
            sent = result_too_large(len(sent.result), self._max_result_bytes,
                                    "a sealed result (max_result_bytes)")
        body = outcome_body(sent, self._dispatch_id(ready), self.worker_id)
        value = encode_event(self._envelope(ready, body))
        if len(value) > self._max_event_bytes:
            sent = result_too_large(len(value), self._max_event_bytes,
                                    "an event (max_event_bytes)")
            body = outcome_body(sealed_outcome(sent, ready.task_id, self.sealer),
                                self._dispatch_id(ready), self.worker_id)
            value = encode_event(self._envelope(ready, body))
        self._emit(ready, body, on_delivered, value, headers)
        return sent

    def announce(self, topic: str, key: bytes, value: bytes | None) -> None:
        """A record of the worker's own (its presence on the workers topic); a failed
        delivery is counted and logged, the next heartbeat replaces it."""

        def report(err: KafkaError | None, _msg: Message | None) -> None:
            if err is not None:
                self._metrics.delivery_errors.labels("presence").inc()
                log.warning("event=presence.failed topic=%s error=%s", topic, err)

        self._produce(topic, key, value, report)

    def quarantine(self, topic: str, partition: int, offset: int, key: bytes | None,
                   value: bytes, reason: str, on_delivered: Delivered) -> None:
        """Copy a record byte for byte to the quarantine topic, the reason in its headers."""

        def report(err: KafkaError | None, _msg: Message | None) -> None:
            if err is not None:
                self._metrics.delivery_errors.labels("quarantine").inc()
                log.error("event=quarantine.failed topic=%s partition=%d offset=%d error=%s",
                          topic, partition, offset, err)
            on_delivered(err is None)

        headers: list[tuple[str, str | bytes | None]] = list(
            quarantine_headers(topic, partition, offset, reason))
        self._produce(self._quarantine, key, value, report, headers=headers)

    def flush(self, timeout_s: float) -> int:
        """Wait for outstanding deliveries; returns how many are still undelivered."""
        return int(self._producer.flush(timeout_s))

    def close(self, timeout_s: float) -> None:
        remaining = self.flush(timeout_s)
        if remaining:
            log.warning("event=emitter.close undelivered=%d (leases recover those attempts)",
                        remaining)
        self._stop.set()
        self._thread.join(timeout_s)
