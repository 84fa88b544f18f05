"""Prometheus metrics of one worker, in its own registry (no global state).

Every task passes through several labelled series; ``labels()`` looks its child
up by building and hashing a tuple under a lock, a few microseconds each, so
the children a task needs are looked up once per task name and queue and kept
(:meth:`WorkerMetrics.of_task`, :meth:`WorkerMetrics.of_queue`). The in-flight
gauge is read from the worker when scraped, not moved twice per task.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

_RUN_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 1800)
_BATCH_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 10000)
_WAIT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5, 30, 300)


@dataclass(frozen=True, slots=True)
class TaskSeries:
    """The series of one task name."""

    started: Counter
    succeeded: Counter
    run_seconds: Histogram


class WorkerMetrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry(auto_describe=True)
        self.started = Counter("taskstream_worker_tasks_started", "attempts started",
                               ["task"], registry=r)
        self.succeeded = Counter("taskstream_worker_tasks_succeeded", "attempts that succeeded",
                                 ["task"], registry=r)
        self.failed = Counter("taskstream_worker_tasks_failed", "attempts that failed",
                              ["task", "error_type"], registry=r)
        self.run_seconds = Histogram("taskstream_worker_run_seconds", "handler run time",
                                     ["task"], buckets=_RUN_BUCKETS, registry=r)
        self.queue_wait = Histogram("taskstream_worker_queue_wait_seconds",
                                    "dispatch to start", ["queue"], buckets=_WAIT_BUCKETS,
                                    registry=r)
        self.concurrency = Gauge("taskstream_worker_concurrency",
                                 "slots: attempts (or batches) that may run at once",
                                 registry=r)
        self.batch_size = Histogram("taskstream_worker_batch_size", "tasks per batch call",
                                    ["task"], buckets=_BATCH_BUCKETS, registry=r)
        self.in_flight = Gauge("taskstream_worker_in_flight", "attempts running now", registry=r)
        self.heartbeats = Counter("taskstream_worker_heartbeats", "LeaseRenewed events emitted",
                                  registry=r)
        self.skipped = Counter("taskstream_worker_skipped", "ready records not run (cancelled)",
                               ["queue"], registry=r)
        self.quarantined = Counter("taskstream_worker_quarantined",
                                   "undecodable ready records moved to quarantine", ["topic"],
                                   registry=r)
        self.abandoned_threads = Counter("taskstream_worker_abandoned_threads",
                                         "thread handlers left running after a timeout or "
                                         "cancellation", registry=r)
        self.delivery_errors = Counter("taskstream_worker_delivery_errors",
                                       "events the broker did not acknowledge", ["type"],
                                       registry=r)
        # per worker (docs/observability.md): who it is, and that it is alive
        self.info = Gauge("taskstream_worker_info", "1 per worker process, its facts as labels",
                          ["worker_id", "host", "queues", "pool"], registry=r)
        self.last_heartbeat = Gauge("taskstream_worker_last_heartbeat_timestamp_seconds",
                                    "when it last announced itself on the workers topic",
                                    registry=r)
        # the watchdog (D47): a dead thread stops the worker, which exits non-zero
        self.thread_deaths = Counter("taskstream_worker_thread_deaths",
                                     "worker threads (consumer, emitter, control, dispatcher) "
                                     "that ended unexpectedly; the worker then stops and exits "
                                     "non-zero", ["thread"], registry=r)
        self.healthy = Gauge("taskstream_worker_healthy",
                             "1 while every thread of the worker runs; 0 once one died",
                             registry=r)
        self._tasks: dict[str, TaskSeries] = {}
        self._queues: dict[str, Histogram] = {}

    def of_task(self, name: str) -> TaskSeries:
        series = self._tasks.get(name)
        if series is None:
            series = self._tasks[name] = TaskSeries(
                self.started.labels(name), self.succeeded.labels(name),
                self.run_seconds.labels(name))
        return series

    def of_queue(self, queue: str) -> Histogram:
        """The queue-wait histogram of ``queue``."""
        wait = self._queues.get(queue)
        if wait is None:
            wait = self._queues[queue] = self.queue_wait.labels(queue)
        return wait

    def count_in_flight(self, count: Callable[[], float]) -> None:
        """Read the in-flight gauge from ``count`` when scraped."""
        self.in_flight.set_function(count)

    def totals(self) -> dict[str, int]:
        """Attempts started, succeeded and failed since start (all tasks), for heartbeats."""
        return {"tasks_started": _total(self.started), "tasks_succeeded": _total(self.succeeded),
                "tasks_failed": _total(self.failed)}

    def serve(self, port: int, addr: str = "127.0.0.1") -> tuple[WSGIServer, threading.Thread]:
        """Serve ``/metrics`` on ``port`` in a daemon thread; shut the server down to stop."""
        return start_http_server(port, addr=addr, registry=self.registry)


def _total(counter: Counter) -> int:
    return int(sum(sample.value for metric in counter.collect() for sample in metric.samples
                   if sample.name.endswith("_total")))
