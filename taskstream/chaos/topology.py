"""The processes of a chaos run, and the hands the faults use on them (D42).

``local``: a 3-node Kafka cluster (replication factor 3, min ISR 2,
:mod:`taskstream.localkafka.cluster`), processor replicas with a standby each and
workers of :mod:`taskstream.chaos.tasks`, all children of this process on free ports
of 127.0.0.1 (:mod:`taskstream.dev.procs`). ``remote`` (a user's deployment, reached
through the settings' bootstrap): only the workers are ours, so only the faults on
workers and producers can be injected there.

Every process that ends (killed, stopped, or exited) is noted with the monotonic time
it ended: the checker ends an interrupted handler run there, and attributes the run
that follows to the fault that ended it.
"""

from __future__ import annotations

import os
import shutil
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

from confluent_kafka.admin import AdminClient

from taskstream.chaos.errors import ChaosError
from taskstream.chaos.tasks import QUEUE, RUNS_ENV
from taskstream.dev.errors import DevError
from taskstream.dev.procs import (
    HOST,
    Child,
    ChildSpec,
    free_port,
    settings_env,
    start_processor,
    stop_all,
    taskstream_argv,
)
from taskstream.errors import KafkaUnavailableError, LocalKafkaError
from taskstream.kafka_config import admin_config
from taskstream.localkafka import cluster as localkafka
from taskstream.queue_registry import register_queues, set_up_platform
from taskstream.settings import Settings
from taskstream.topics import events_topic

APP = "taskstream.chaos.tasks"
WORKER_CONCURRENCY = 8
ASSIGNED = "event=partitions.assigned"
KAFKA_START_ATTEMPTS = 3


SKEW_ENV = "TASKSTREAM_CHAOS_CLOCK_OFFSET_MS"
#: the clock-skew fault's worker starts with this ``sitecustomize`` first on its path: its
#: wall clock (time.time, time.time_ns: every event time a worker writes) is off by
#: ``TASKSTREAM_CHAOS_CLOCK_OFFSET_MS``; time.monotonic is left alone. Not libfaketime:
#: under it (Debian's faketime 0.9.10, with or without FAKETIME_DONT_FAKE_MONOTONIC or
#: FAKETIME_FORCE_MONOTONIC_FIX) librdkafka's metadata requests time out or hang, so the
#: worker never joins (D42). The Kafka record timestamps (librdkafka's own clock) stay true.
SKEWED_CLOCK = """\
import os
import time

_offset_ns = int(os.environ.get("TASKSTREAM_CHAOS_CLOCK_OFFSET_MS", "0")) * 1_000_000
_time_ns = time.time_ns
time.time_ns = lambda: _time_ns() + _offset_ns
time.time = lambda: (_time_ns() + _offset_ns) / 1e9
"""


@dataclass
class Replica:
    """One processor replica: its data dir and port stay; its process comes and goes."""

    index: int
    data_dir: Path
    web_port: int
    log: Path
    child: Child | None = None

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.web_port}"


@dataclass
class Topology:
    settings: Settings
    workdir: Path
    local: bool
    runs_path: Path
    replicas: list[Replica] = field(default_factory=list)
    workers: list[Child] = field(default_factory=list)
    kafka_dir: Path | None = None
    ended: dict[int, float] = field(default_factory=dict)  # pid -> monotonic end time
    skewed: dict[int, int] = field(default_factory=dict)  # pid -> clock offset (ms)
    ready_timeout_s: float = 120.0
    _workers_started: int = 0

    # -- start ------------------------------------------------------------------------

    def start_kafka(self, timeout: float) -> None:
        """Three local Kafka nodes in ``workdir/kafka``; the settings point at them."""
        kafka_dir = (self.workdir / "kafka").resolve()
        for attempt in range(1, KAFKA_START_ATTEMPTS + 1):
            try:
                result = localkafka.up(self.settings, nodes=3,
                                       port=localkafka.free_port_block(6),
                                       data_dir=kafka_dir, timeout=timeout)
                break
            except LocalKafkaError:
                # a port found free was taken before the node bound it (other programs
                # start servers on this machine too): a fresh cluster on other ports
                localkafka.down(kafka_dir)
                if attempt == KAFKA_START_ATTEMPTS:
                    raise
        self.kafka_dir = kafka_dir
        self.settings = self.settings.model_copy(
            update={"bootstrap": result.cluster.bootstrap})

    def set_up_topics(self) -> None:
        """The platform's topics (local run) and the chaos queue; a fresh cluster may
        refuse writes for a while (its internal topics' leaders settle): retried, bounded."""
        deadline = time.monotonic() + self.ready_timeout_s
        while True:
            try:
                if self.local:
                    set_up_platform(self.settings)
                register_queues(self.settings, [QUEUE])
                return
            except KafkaUnavailableError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(2.0)

    def start_replicas(self, count: int) -> None:
        for i in range(count):
            replica = Replica(i, self.workdir / f"replica{i}", free_port(),
                              self.workdir / "logs" / f"replica{i}.log")
            self.replicas.append(replica)
            self.start_replica(replica)

    def start_replica(self, replica: Replica) -> None:
        replica.child = start_processor(self.settings, replica.data_dir, replica.web_port,
                                        replica.log, Path.cwd(),
                                        ready_timeout=self.ready_timeout_s, loglevel="info")

    def start_worker(self, skew_ms: int = 0, wait: bool = True) -> Child:
        """A worker of the chaos tasks; ``skew_ms``: its wall clock that far off
        (:data:`SKEWED_CLOCK`)."""
        self._workers_started += 1
        n = self._workers_started
        argv = taskstream_argv("worker", "-A", APP, "--queues", QUEUE, "--concurrency",
                               str(WORKER_CONCURRENCY), "--loglevel", "info", "--grace", "10")
        env = settings_env(self.settings, pythonpath=Path.cwd())
        env[RUNS_ENV] = str(self.runs_path)
        if skew_ms:
            clock_dir = self.workdir / "skewed-clock"
            clock_dir.mkdir(exist_ok=True)
            (clock_dir / "sitecustomize.py").write_text(SKEWED_CLOCK)
            env["PYTHONPATH"] = os.pathsep.join([str(clock_dir), env["PYTHONPATH"]])
            env[SKEW_ENV] = str(skew_ms)
        name = f"worker{n}" + (f" (clock {skew_ms / 3_600_000:+.0f} h)" if skew_ms else "")
        child = Child(ChildSpec(name, argv, self.workdir / "logs" / f"worker{n}.log", env,
                                Path.cwd()))
        if skew_ms:
            self.skewed[child.pid] = skew_ms
        self.workers.append(child)
        if wait:
            self.wait_assigned(child)
        return child

    def wait_assigned(self, child: Child) -> None:
        def assigned() -> bool:
            try:
                return ASSIGNED in child.spec.log.read_text(errors="replace")
            except OSError:
                return False

        try:
            child.wait_until("assigned its queue's partitions", assigned, self.ready_timeout_s)
        except DevError as exc:
            raise ChaosError(str(exc)) from None

    # -- faults' hands --------------------------------------------------------------------

    def live_workers(self) -> list[Child]:
        return [w for w in self.workers if w.alive() and w.pid not in self.skewed]

    def kill(self, child: Child) -> None:
        child.kill()
        self.ended[child.pid] = time.monotonic()

    def stop(self, child: Child, grace: float = 20.0) -> None:
        child.stop(grace)
        self.ended.setdefault(child.pid, time.monotonic())

    def signal_replica(self, replica: Replica, sig: int) -> None:
        if replica.child is None:
            raise ChaosError(f"replica {replica.index} is not running")
        os.kill(replica.child.pid, sig)

    def kill_replica(self, replica: Replica, wipe: bool = False) -> None:
        if replica.child is not None:
            self.kill(replica.child)
        if wipe:
            shutil.rmtree(replica.data_dir, ignore_errors=True)

    def busiest_broker(self) -> int:
        """The node ID that leads the most partitions of the events topic."""
        topic = events_topic(self.settings)
        client = AdminClient({**admin_config(self.settings), "log_level": 0})
        meta = client.list_topics(topic, timeout=self.settings.kafka_timeout_s)
        leaders: dict[int, int] = {}
        for part in meta.topics[topic].partitions.values():
            if part.leader >= 0:
                leaders[part.leader] = leaders.get(part.leader, 0) + 1
        if not leaders:
            raise ChaosError(f"no partition of {topic} has a leader")
        return max(sorted(leaders), key=lambda node: leaders[node])

    def kill_broker(self, node_id: int) -> int:
        """SIGKILL one Kafka node; its PID."""
        if self.kafka_dir is None:
            raise ChaosError("the Kafka nodes are not this run's: cannot kill one")
        state = localkafka.read_state(self.kafka_dir)
        node = next((n for n in state.nodes if n.node_id == node_id), None) if state else None
        if node is None or not localkafka.is_running(node):
            raise ChaosError(f"Kafka node {node_id} is not running")
        os.kill(node.pid, signal.SIGKILL)
        self.ended[node.pid] = time.monotonic()
        return node.pid

    def restart_broker(self, node_id: int) -> None:
        assert self.kafka_dir is not None
        localkafka.restart_node(self.settings, self.kafka_dir, node_id,
                                timeout=self.ready_timeout_s)

    def restart_dead_brokers(self) -> None:
        """Every Kafka node of this run that does not run is started again."""
        state = localkafka.read_state(self.kafka_dir) if self.kafka_dir else None
        for node in state.nodes if state else ():
            if not localkafka.is_running(node):
                self.restart_broker(node.node_id)

    # -- end --------------------------------------------------------------------------------

    def close(self, keep_kafka: bool = False) -> list[str]:
        """Stop every process this run started (workers, replicas, then Kafka)."""
        lines = stop_all([w for w in reversed(self.workers)], grace=15.0)
        for replica in self.replicas:
            if replica.child is not None:
                # a replica left stopped (SIGSTOP) must run again to take SIGTERM
                replica.child.signal(signal.SIGCONT)
                lines += stop_all([replica.child], grace=20.0)
        if self.kafka_dir is not None:
            pids = localkafka.down(self.kafka_dir, keep=keep_kafka) or []
            lines.append(f"Kafka (PID {', '.join(map(str, pids))}) stopped")
        return lines
