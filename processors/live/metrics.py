"""Prometheus metrics of one processor replica, in a registry of its own."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class ProcessorMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = r = registry or CollectorRegistry()
        self.applied = Counter(
            "taskstream_events_applied_total", "Events folded into task state", ["type"],
            registry=r)
        self.rejected = Counter(
            "taskstream_events_rejected_total",
            "Events that changed nothing: stale, fenced or for finished tasks", ["type"],
            registry=r)
        self.duplicates = Counter(
            "taskstream_duplicate_submissions_total", "Second submissions of a known task ID",
            ["conflict"], registry=r)
        self.quarantined = Counter(
            "taskstream_quarantined_total", "Records that could not be decoded", ["topic"],
            registry=r)
        self.dispatched = Counter(
            "taskstream_dispatched_total", "Attempts written to ready topics", ["queue"],
            registry=r)
        self.retries = Counter(
            "taskstream_retries_total", "Retries scheduled", ["queue"], registry=r)
        self.dead_letters = Counter(
            "taskstream_dead_letters_total", "Tasks dead-lettered", ["queue"], registry=r)
        self.timers_fired = Counter(
            "taskstream_timers_fired_total", "Timer events emitted", ["kind"], registry=r)
        self.timer_lag = Histogram(
            "taskstream_timer_lag_seconds", "How late a timer event was emitted after its due time",
            buckets=(0.005, 0.01, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 30), registry=r)
        self.dispatch_latency = Histogram(
            "taskstream_dispatch_latency_seconds",
            "From the triggering event's time to the dispatch being handed to the producer",
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5), registry=r)
        self.resent = Counter(
            "taskstream_records_resent_total",
            "Records the brokers did not acknowledge, sent again before the commit",
            registry=r)
        self.batch_retries = Counter(
            "taskstream_fold_batch_retries_total",
            "Batches that could not be made durable and were read again", registry=r)
        self.unregistered = Counter(
            "taskstream_unregistered_queue_cancels_total",
            "Tasks cancelled because their queue is not registered (no topic is made, D31)",
            registry=r)
        self.fenced = Counter(
            "taskstream_fold_fenced_total",
            "Rounds of the fold whose writes were refused after a pause longer than the "
            "group's lease (a zombie woken up, D43)", registry=r)
        self.stalls = Counter(
            "taskstream_fold_stalls_total",
            "Stalls the fold watchdog found (no progress with lag, or a blocked loop), by "
            "what it did: restart or exit (D43)", ["action"], registry=r)
        self.batch_size = Histogram(
            "taskstream_fold_batch_records", "Events-topic records folded per batch",
            buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000), registry=r)
        # event times held to the broker's clock (D44, processors/fold/clock.py)
        self.clock_clamped = Counter(
            "taskstream_event_times_clamped_total",
            "Events whose own time strayed from their record's broker timestamp by more than "
            "clock_tolerance_ms, by writer kind (worker, producer, api, processor): held to it",
            ["writer"], registry=r)
        self.clock_skew = Gauge(
            "taskstream_event_clock_skew_seconds",
            "The largest |event time - record broker timestamp| in the last folded batch "
            "(a writer's clock skew, plus its send latency)", registry=r)
        self.refolded = Counter(
            "taskstream_events_refolded_total",
            "Records read again at or before their entity's position: already folded, "
            "not applied again (D45)", registry=r)
        self.tasks = Gauge(
            "taskstream_tasks", "Tasks in this replica's active partitions, by queue and state",
            ["queue", "state"], registry=r)
