"""What a replica says about itself and the platform: readiness, health, lag, workers.

Readiness (``/readyz``) is about restoration and partition ownership only: a
replica is ready once its tables have been restored after it joined, and not
while it restores partitions it was just given. Lag never makes a replica
unready: under load every replica lags, and taking them all out of service
would turn a slow platform into a stopped one (docs/decisions.md, D24). Lag is
a metric and part of ``/healthz?verbose``.

Measured here, on every replica (``/metrics``):

* ownership, read from the replica at each scrape: which events partitions it
  folds (``taskstream_processor_partition_active``, 1 or 0 for *every*
  partition, so "no replica has partition 3" is a query), active and standby
  counts, readiness, partitions gained (a failover or a rebalance moved them
  here);
* lag, sampled from Kafka every :data:`SAMPLE_S` by a timer (two admin calls):
  the events partitions this replica folds, as records past the fold's
  committed offset; and every queue's depth by priority, as records past its
  worker group's committed offset on each ready topic (the same figure on
  every replica: dashboards take the max);
* workers, from the workers topic (workers/roster.py): how many per queue and
  status, each one's heartbeat age and whether it is lost.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from confluent_kafka import KafkaException
from prometheus_client import CollectorRegistry, Counter, Gauge

from taskstream.admin import Admin, admin_client, cluster_metadata, group_lag
from taskstream.errors import KafkaUnavailableError
from taskstream.topics import parse_ready_topic, worker_group
from taskstream.workers.presence import now_ms
from taskstream.workers.roster import Roster, RosterReader

if TYPE_CHECKING:
    from taskstream.processors.live.app import Processor

log = logging.getLogger("taskstream.api")

#: how often lag and queue depth are read from Kafka
SAMPLE_S = 10.0


class ApiMetrics:
    """The replica's ownership, lag and worker gauges, on the processor's registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.partition_active = Gauge(
            "taskstream_processor_partition_active",
            "1 for each events partition this replica folds now, 0 for every other one",
            ["partition"], registry=r)
        self.partitions = Gauge(
            "taskstream_processor_partitions", "events partitions this replica holds, by role",
            ["role"], registry=r)
        self.events_partitions = Gauge(
            "taskstream_events_partitions", "partitions of the events topic", registry=r)
        self.ready = Gauge(
            "taskstream_processor_ready", "1 when the replica's tables are restored (/readyz)",
            registry=r)
        self.gained = Counter(
            "taskstream_processor_partitions_gained", "events partitions this replica took "
            "over since it started (its first assignment, failovers, rebalances)", registry=r)
        self.lag = Gauge(
            "taskstream_processor_lag_records", "events not yet folded and committed, per "
            "events partition this replica folds (sampled)", ["partition"], registry=r)
        self.queue_depth = Gauge(
            "taskstream_queue_depth", "dispatched attempts no worker has taken yet: records "
            "past the queue's worker group on each ready topic (sampled)",
            ["queue", "priority"], registry=r)
        self.lag_sampled = Gauge(
            "taskstream_lag_sample_timestamp_seconds", "when lag and queue depth were last "
            "read from Kafka", registry=r)
        self.workers = Gauge(
            "taskstream_workers", "workers announced on the workers topic, by queue and status "
            "(running, stopping, lost)", ["queue", "status"], registry=r)
        self.worker_heartbeat_age = Gauge(
            "taskstream_worker_heartbeat_age_seconds", "seconds since each worker's last "
            "heartbeat on the workers topic", ["worker_id", "host"], registry=r)
        self.worker_lost = Gauge(
            "taskstream_worker_lost", "1 for a worker that missed 3 heartbeats (crashed, hung "
            "or cut off from Kafka), 0 for a live one", ["worker_id", "host"], registry=r)


@dataclass
class KafkaSample:
    """Lag and queue depth as last read from Kafka."""

    at: float = 0.0
    events_lag: dict[int, int] = field(default_factory=dict)
    queue_depth: dict[tuple[str, int], int] = field(default_factory=dict)
    error: str | None = None


class Observer:
    """Readiness, health and the observability metrics of one replica."""

    def __init__(self, processor: Processor, registry: CollectorRegistry,
                 events_group: str) -> None:
        self.processor = processor
        self.settings = processor.settings
        self.events_group = events_group
        self.metrics = ApiMetrics(registry)
        self.sample = KafkaSample()
        self._reader: RosterReader | None = None
        self._admin: Admin | None = None
        self._active: set[int] = set()

    # -- the replica itself ----------------------------------------------------

    def ownership(self) -> dict[str, Any]:
        """Active and standby events partitions, restoration and rebalance state."""
        app = self.processor.app
        # standby copies are kept by the fold's own follower, not by Faust (D19)
        standbys = sorted(self.processor.standby.partitions)
        return {"active": self.processor.active_partitions(), "standby": standbys,
                "restored": self.processor.is_ready(), "restoring": bool(app.in_recovery),
                "rebalancing": bool(app.rebalancing)}

    def readiness(self) -> tuple[bool, str]:
        """(ready, why not): restored, and not restoring partitions it was just given."""
        if not self.processor.is_ready():
            return False, "state is still being restored after start; retry"
        if self.processor.app.in_recovery:
            return False, "restoring partitions this replica was just given; retry"
        return True, "ready"

    def health(self, verbose: bool) -> dict[str, Any]:
        """``/healthz``: alive; with ``verbose``, ownership, lag, workers and the last sample."""
        ready, why = self.readiness()
        body: dict[str, Any] = {"status": "ok", "ready": ready}
        if not verbose:
            return body
        own = self.ownership()
        sample = self.sample
        roster = self.roster()
        body.update({
            "reason": why,
            "partitions": {"total": self.settings.partitions, **own},
            "lag": {
                "events": {str(p): n for p, n in sorted(sample.events_lag.items())},
                "queues": [{"queue": q, "priority": lvl, "depth": n}
                           for (q, lvl), n in sorted(sample.queue_depth.items())],
                "sampled_at": sample.at or None, "error": sample.error},
            "workers": _count_statuses(roster),
        })
        return body

    # -- the workers topic -------------------------------------------------------

    def roster(self) -> Roster:
        """The workers topic as read so far (the reader starts on first use)."""
        if self._reader is None:
            self._reader = RosterReader(self.settings).start()
        return self._reader.roster

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()

    # -- sampling Kafka (blocking: run it in a thread) ------------------------------

    def sample_kafka(self) -> KafkaSample:
        """Read the fold's lag on this replica's partitions and every queue's depth."""
        settings = self.settings
        if self._admin is None:
            self._admin = admin_client(settings)
        admin = self._admin
        client = admin.client
        events = self.processor.events.get_topic_name()
        try:
            lag = group_lag(settings, client, self.events_group,
                            [(events, p) for p in self.processor.active_partitions()])
            depth: dict[tuple[str, int], int] = {}
            by_queue: dict[str, list[tuple[str, int]]] = {}
            for name, meta in cluster_metadata(settings, admin).topics.items():
                ready = parse_ready_topic(settings, name)
                if ready is not None:
                    by_queue.setdefault(ready.queue, []).extend((name, p) for p in meta.partitions)
            for queue, tps in by_queue.items():
                for (topic, _), n in group_lag(settings, client, worker_group(settings, queue),
                                               tps).items():
                    ready = parse_ready_topic(settings, topic)
                    assert ready is not None
                    depth[(queue, ready.level)] = depth.get((queue, ready.level), 0) + n
        except (KafkaException, KafkaUnavailableError, TimeoutError) as exc:
            log.warning("lag not sampled: %s", exc)
            self.sample.error = str(exc)
            return self.sample
        self.sample = KafkaSample(time.time(), {p: n for (_, p), n in lag.items()}, depth)
        return self.sample

    # -- the gauges, refreshed at each scrape -------------------------------------------

    def refresh(self) -> None:
        m = self.metrics
        own = self.ownership()
        active = set(own["active"])
        m.events_partitions.set(self.settings.partitions)
        for p in range(self.settings.partitions):
            m.partition_active.labels(str(p)).set(1 if p in active else 0)
        m.partitions.labels("active").set(len(active))
        m.partitions.labels("standby").set(len(own["standby"]))
        m.ready.set(1 if self.readiness()[0] else 0)
        gained = active - self._active
        if gained:
            m.gained.inc(len(gained))
        self._active = active
        sample = self.sample
        m.lag.clear()
        for p, n in sample.events_lag.items():
            if p in active:
                m.lag.labels(str(p)).set(n)
        m.queue_depth.clear()
        for (queue, level), n in sample.queue_depth.items():
            m.queue_depth.labels(queue, str(level)).set(n)
        if sample.at:
            m.lag_sampled.set(sample.at)
        self._refresh_workers()

    def _refresh_workers(self) -> None:
        m = self.metrics
        now = now_ms()
        m.workers.clear()
        m.worker_heartbeat_age.clear()
        m.worker_lost.clear()
        # every known queue gets every status, 0 included: "no running worker" is a query
        records = self.roster().records()
        queues = set(self.settings.queues) | {q for r in records for q in r.queues}
        counts = {(q, status): 0 for q in queues for status in ("running", "stopping", "lost")}
        for record in records:
            status = record.status(now)
            if status == "stopped":
                continue
            for queue in record.queues:
                counts[(queue, status)] = counts.get((queue, status), 0) + 1
            m.worker_heartbeat_age.labels(record.worker_id, record.host).set(
                max(0, now - record.heartbeat_at_ms) / 1000)
            m.worker_lost.labels(record.worker_id, record.host).set(
                1 if status == "lost" else 0)
        for (queue, status), n in counts.items():
            m.workers.labels(queue, status).set(n)


def _count_statuses(roster: Roster) -> dict[str, int]:
    now = now_ms()
    counts: dict[str, int] = {}
    for record in roster.records():
        status = record.status(now)
        counts[status] = counts.get(status, 0) + 1
    return counts
