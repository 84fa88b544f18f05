"""Prometheus metrics of one or more producers.

Nothing registers at import time. :func:`producer_metrics` builds a fresh set on
the registry you give it (a private one by default), so two producers never
collide; to expose several producers under one set of names, build the metrics
once and pass the same object to each producer.
"""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Histogram

#: produce() to broker ack, in seconds: linger and acks=all dominate.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@dataclass(frozen=True, slots=True)
class ProducerMetrics:
    registry: CollectorRegistry
    submitted: Counter  # events handed to the client, by event type
    delivered: Counter  # events the broker acknowledged
    failed: Counter  # events not delivered, by reason
    produce_latency: Histogram  # produce() to ack, sampled (see sample_every)
    sample_every: int  # one delivery in N is timed, to keep the hot path cheap

    def count_submitted(self, event: str, n: int = 1) -> None:
        self.submitted.labels(event=event).inc(n)


def producer_metrics(
    registry: CollectorRegistry | None = None, *, sample_every: int = 16
) -> ProducerMetrics:
    """Build producer metrics on ``registry`` (a new private registry when None)."""
    if sample_every < 1:
        raise ValueError("sample_every must be >= 1")
    reg = registry if registry is not None else CollectorRegistry(auto_describe=True)
    return ProducerMetrics(
        registry=reg,
        submitted=Counter(
            "taskstream_producer_submitted",
            "Task events handed to the Kafka client, by event type",
            ["event"],
            registry=reg,
        ),
        delivered=Counter(
            "taskstream_producer_delivered",
            "Task events acknowledged by Kafka (acks=all)",
            registry=reg,
        ),
        failed=Counter(
            "taskstream_producer_failed",
            "Task events that did not reach Kafka, by reason",
            ["reason"],
            registry=reg,
        ),
        produce_latency=Histogram(
            "taskstream_producer_produce_latency_seconds",
            "Time from produce() to the broker's acknowledgement (sampled)",
            buckets=LATENCY_BUCKETS,
            registry=reg,
        ),
        sample_every=sample_every,
    )
