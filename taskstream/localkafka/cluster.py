"""Run a real Apache Kafka (KRaft, combined mode) on this machine without Docker.

``up`` resolves the jars once (:mod:`taskstream.localkafka.install`), formats
each node's storage, starts ``java kafka.Kafka`` per node in its own session (it
outlives the command that started it) and waits until the cluster answers a
metadata request. It records what it started in ``<data_dir>/cluster.json``;
``status`` and ``down`` read that file and only ever touch those PIDs, and only
while the process there is still the broker started with that node's
properties file (a PID reused by something else is left alone).

``up(secure=True)`` starts a secured cluster instead (SASL_SSL, SCRAM users per
role, ACLs; :mod:`taskstream.localkafka.secure`, D25).

Used by ``taskstream kafka``, the test suite's session fixtures and CI.
"""

from __future__ import annotations

import base64
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from taskstream.errors import LocalKafkaError
from taskstream.kafka_config import client_config
from taskstream.localkafka import secure as security
from taskstream.localkafka.config import (
    BROKER_USER,
    HOST,
    NodeLayout,
    bootstrap_of,
    layout,
    write_node_files,
)
from taskstream.localkafka.install import KafkaInstall, ensure_kafka
from taskstream.settings import Settings, load_settings

STATE_FILE = "cluster.json"
HEAP = "-Xmx512m"


@dataclass(frozen=True)
class NodeProcess:
    node_id: int
    port: int
    controller_port: int
    pid: int
    dir: Path

    @property
    def log(self) -> Path:
        return self.dir / "server.log"

    @property
    def properties(self) -> Path:
        return self.dir / "server.properties"


@dataclass(frozen=True)
class Cluster:
    """What ``up`` started, as recorded in the state file."""

    data_dir: Path
    bootstrap: str
    cluster_id: str
    version: str
    nodes: tuple[NodeProcess, ...]
    secure: bool = False

    @property
    def security_dir(self) -> Path | None:
        return self.data_dir / security.SECURITY_DIR if self.secure else None

    def client(self) -> dict[str, Any]:
        """A librdkafka config that reaches this cluster (as its super user when secured)."""
        if not self.secure:
            return {"bootstrap.servers": self.bootstrap}
        files = security.prepare(self.data_dir)
        owner = load_settings(**security.role_overrides(files, BROKER_USER, self.bootstrap,
                                                         "taskstream."))
        return client_config(owner)

    def to_json(self) -> dict[str, Any]:
        return {
            "data_dir": str(self.data_dir),
            "bootstrap": self.bootstrap,
            "cluster_id": self.cluster_id,
            "version": self.version,
            "secure": self.secure,
            "nodes": [
                {"node_id": n.node_id, "port": n.port, "controller_port": n.controller_port,
                 "pid": n.pid, "dir": str(n.dir), "log": str(n.log)}
                for n in self.nodes
            ],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Cluster:
        nodes = tuple(
            NodeProcess(int(n["node_id"]), int(n["port"]), int(n["controller_port"]),
                        int(n["pid"]), Path(n["dir"]))
            for n in data["nodes"]
        )
        return cls(Path(data["data_dir"]), str(data["bootstrap"]), str(data["cluster_id"]),
                   str(data["version"]), nodes, bool(data.get("secure", False)))


@dataclass(frozen=True)
class UpResult:
    cluster: Cluster
    already_running: bool


@dataclass(frozen=True)
class Status:
    cluster: Cluster | None
    alive: dict[int, bool]  # node id -> its recorded PID is still our broker
    answering: bool
    topics: tuple[str, ...]


def default_data_dir(settings: Settings) -> Path:
    return settings.kafka_home / "run"


def default_port(settings: Settings) -> int:
    return int(settings.bootstrap.split(",")[0].rpartition(":")[2])


def read_state(data_dir: Path) -> Cluster | None:
    path = data_dir / STATE_FILE
    try:
        return Cluster.from_json(json.loads(path.read_text()))
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError) as exc:
        raise LocalKafkaError(f"state file {path} is damaged ({exc}); stop any broker it "
                              "started by hand and delete the file") from None


def _write_state(cluster: Cluster) -> None:
    path = cluster.data_dir / STATE_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(cluster.to_json(), indent=2))
    tmp.replace(path)


def is_running(node: NodeProcess) -> bool:
    """True while ``node.pid`` is the broker we started with that node's properties."""
    try:
        pid, _ = os.waitpid(node.pid, os.WNOHANG)  # reap it if it is our child and exited
        if pid == node.pid:
            return False
    except ChildProcessError:
        pass
    cmdline = Path(f"/proc/{node.pid}/cmdline")
    if Path("/proc/self/cmdline").exists():
        try:
            args = cmdline.read_bytes().split(b"\0")
        except OSError:
            return False
        # an empty cmdline means the process is exec-ing (the java launcher re-execs
        # itself) or exiting: then only the PID can tell
        if args != [b""]:
            return b"kafka.Kafka" in args and str(node.properties).encode() in args
    try:
        os.kill(node.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def cluster_answers(client_conf: Mapping[str, Any], timeout: float, brokers: int = 1
                    ) -> tuple[str, ...] | None:
    """The topic names if ``brokers`` brokers answer a metadata request in time, else None.
    ``client_conf`` is a librdkafka config (``kafka_config.client_config(settings)``)."""
    client = AdminClient({**client_conf, "log_level": 0})
    try:
        metadata = client.list_topics(timeout=timeout)
    except KafkaException:
        return None
    if len(metadata.brokers) < brokers:
        return None
    return tuple(sorted(t for t in metadata.topics if not t.startswith("__")))


def status(data_dir: Path, timeout: float = 5.0) -> Status:
    cluster = read_state(data_dir)
    if cluster is None:
        return Status(None, {}, False, ())
    alive = {n.node_id: is_running(n) for n in cluster.nodes}
    topics = cluster_answers(cluster.client(), timeout) if any(alive.values()) else None
    return Status(cluster, alive, topics is not None, topics or ())


def up(settings: Settings, *, nodes: int = 1, port: int | None = None,
       data_dir: Path | None = None, timeout: float = 120.0,
       show_progress: bool = False, secure: bool = False) -> UpResult:
    """Start a local cluster (or find the one already running in ``data_dir``).

    ``secure``: SASL_SSL listeners, a CA and certificates, a SCRAM user per role and
    their ACLs under ``settings.topic_prefix`` (:mod:`taskstream.localkafka.secure`).
    """
    if nodes not in (1, 3):
        raise LocalKafkaError(f"--nodes must be 1 or 3, not {nodes}")
    data_dir = (data_dir or default_data_dir(settings)).resolve()
    previous = read_state(data_dir)
    if previous is not None and previous.secure != secure:
        flag = "with" if previous.secure else "without"
        raise LocalKafkaError(f"{data_dir} holds a cluster started {flag} --secure; start it "
                              f"the same way, or remove it with `taskstream kafka down`")
    if previous is not None and any(is_running(n) for n in previous.nodes):
        return UpResult(previous, already_running=True)
    install = ensure_kafka(settings.kafka_home, settings.kafka_version,
                           show_progress=show_progress)
    cluster_id, nodes_layout = _plan(previous, data_dir, nodes, port or default_port(settings))
    files = security.prepare(data_dir) if secure else None
    for node in nodes_layout:
        _check_port_free(node.port)
        _check_port_free(node.controller_port)
        write_node_files(node, nodes_layout, files.broker if files else None)
    _format(install, cluster_id, nodes_layout,
            security.scram_arguments(files) if files else [])
    started = tuple(
        NodeProcess(n.node_id, n.port, n.controller_port, _spawn(install, n), n.dir)
        for n in nodes_layout
    )
    cluster = Cluster(data_dir, bootstrap_of(nodes_layout), cluster_id, install.version, started,
                      secure)
    _write_state(cluster)
    try:
        _wait_until_ready(cluster, timeout)
        if files is not None:
            security.set_up_acls(settings, files, cluster.bootstrap)
            security.write_role_configs(files, cluster.bootstrap, settings.topic_prefix)
    except BaseException:  # a timeout, a dead node or Ctrl-C: leave nothing running
        _stop(cluster.nodes, timeout=30.0)
        raise
    return UpResult(cluster, already_running=False)


def _plan(previous: Cluster | None, data_dir: Path, nodes: int,
          port: int) -> tuple[str, list[NodeLayout]]:
    """Reuse a cluster kept by ``down --keep``, or lay out a fresh one."""
    if previous is not None:
        if len(previous.nodes) != nodes:
            raise LocalKafkaError(
                f"{data_dir} holds a stopped {len(previous.nodes)}-node cluster; start it with "
                f"--nodes {len(previous.nodes)}, remove it with `taskstream kafka down`, "
                "or use another --data-dir")
        first = previous.nodes[0].port
        return previous.cluster_id, layout(data_dir, nodes, first)
    for stale in data_dir.glob("node-*"):
        shutil.rmtree(stale)  # left by an interrupted run: there is no state file for it
    return new_cluster_id(), layout(data_dir, nodes, port)


def new_cluster_id() -> str:
    """A Kafka cluster ID: a random UUID in URL-safe base64 without padding.

    Like Kafka's own ``Uuid.randomUuid``, never one that starts with ``-``: the storage tool's
    argument parser would read it as an option (1 in 64 IDs would fail to format)."""
    while True:
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not text.startswith("-"):
            return text


def _check_port_free(port: int) -> None:
    with socket.socket() as sock:
        try:
            sock.bind((HOST, port))
        except OSError:
            raise LocalKafkaError(f"port {port} on {HOST} is already in use (another Kafka?); "
                                  "pass another --port or stop what listens there") from None


def _java(install: KafkaInstall, node: NodeLayout, main: str) -> list[str]:
    return [install.java, HEAP, f"-Dlog4j2.configurationFile={node.log4j}",
            "-cp", install.classpath, main]


def _format(install: KafkaInstall, cluster_id: str, nodes: list[NodeLayout],
            extra: list[str]) -> None:
    """Format every node's storage at once (one JVM each), skipping formatted ones.
    ``extra``: more arguments of ``format`` (the SCRAM users of a secured cluster)."""
    jobs: list[tuple[NodeLayout, subprocess.Popen[bytes]]] = []
    for node in nodes:
        if (node.log_dirs / "meta.properties").exists():
            continue
        # one node bootstraps its own quorum; three use the static controller.quorum.voters
        verb = ["format", "--standalone"] if len(nodes) == 1 else ["format"]
        cmd = [*_java(install, node, "kafka.tools.StorageTool"), *verb,
               f"--cluster-id={cluster_id}", "-c", str(node.properties), *extra]
        jobs.append((node, subprocess.Popen(cmd, stdout=subprocess.PIPE,
                                            stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL)))
    failures = []
    for node, proc in jobs:
        try:
            out, _ = proc.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate(timeout=10)
        if proc.returncode != 0:
            text = out.decode(errors="replace").strip()
            # the tool echoes the SCRAM records it writes: keep credentials out of the error
            text = "\n".join(line for line in text.splitlines() if "Scram" not in line)
            failures.append(f"node {node.node_id}: {text}")
    if failures:
        raise LocalKafkaError("formatting Kafka storage failed; " + " | ".join(failures))


def _spawn(install: KafkaInstall, node: NodeLayout) -> int:
    """Start one broker in a session of its own, so Ctrl-C here never reaches it."""
    actions = [
        (os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDONLY, 0),
        (os.POSIX_SPAWN_OPEN, 1, str(node.stdout), os.O_WRONLY | os.O_CREAT | os.O_APPEND,
         0o644),
        (os.POSIX_SPAWN_DUP2, 1, 2),
    ]
    args = [*_java(install, node, "kafka.Kafka"), str(node.properties)]
    return os.posix_spawn(install.java, args, dict(os.environ), file_actions=actions,
                          setsid=True)


def _wait_until_ready(cluster: Cluster, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    logs = ", ".join(str(n.log) for n in cluster.nodes)
    while True:
        for node in cluster.nodes:
            if not is_running(node):
                raise LocalKafkaError(f"Kafka node {node.node_id} exited during start-up; "
                                      f"see {node.log} (and {node.dir / 'stdout.log'})")
        if cluster_answers(cluster.client(), 2.0, brokers=len(cluster.nodes)) is not None:
            return
        if time.monotonic() > deadline:
            raise LocalKafkaError(f"Kafka at {cluster.bootstrap} did not answer within "
                                  f"{timeout:.0f}s; see {logs}")
        time.sleep(0.5)


def _stop(nodes: tuple[NodeProcess, ...], timeout: float) -> list[int]:
    """SIGTERM, wait up to ``timeout``, then SIGKILL. Returns the PIDs that were stopped."""
    running = [n for n in nodes if is_running(n)]
    for node in running:
        os.kill(node.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while any(is_running(n) for n in running) and time.monotonic() < deadline:
        time.sleep(0.2)
    for node in running:
        if is_running(node):
            os.kill(node.pid, signal.SIGKILL)
    deadline = time.monotonic() + 10.0
    while any(is_running(n) for n in running):
        if time.monotonic() > deadline:
            pids = [n.pid for n in running if is_running(n)]
            raise LocalKafkaError(f"Kafka PIDs {pids} survived SIGKILL for 10s; check them "
                                  "with `ps` and stop them by hand")
        time.sleep(0.1)
    return [n.pid for n in running]


def down(data_dir: Path, *, keep: bool = False, timeout: float = 30.0) -> list[int] | None:
    """Stop the brokers recorded in ``data_dir``; remove their data unless ``keep``.

    Returns the PIDs stopped, or None when ``data_dir`` records no cluster.
    """
    data_dir = data_dir.resolve()
    cluster = read_state(data_dir)
    if cluster is None:
        return None
    stopped = _stop(cluster.nodes, timeout)
    if not keep:
        for node in cluster.nodes:
            shutil.rmtree(node.dir, ignore_errors=True)
        (data_dir / STATE_FILE).unlink(missing_ok=True)
        if data_dir.exists() and not any(data_dir.iterdir()):
            data_dir.rmdir()
    return stopped


def restart_node(settings: Settings, data_dir: Path, node_id: int,
                 timeout: float = 120.0) -> Cluster:
    """Start again one node of the cluster recorded in ``data_dir`` that no longer runs
    (the fault harness kills one with SIGKILL, D42), with its own properties and data;
    returns the cluster as now recorded, once every node answers again."""
    cluster = read_state(data_dir.resolve())
    if cluster is None:
        raise LocalKafkaError(f"{data_dir} records no cluster to restart a node of")
    node = next((n for n in cluster.nodes if n.node_id == node_id), None)
    if node is None:
        raise LocalKafkaError(f"the cluster in {data_dir} has no node {node_id}")
    if not is_running(node):
        install = ensure_kafka(settings.kafka_home, settings.kafka_version)
        first = min(n.port for n in cluster.nodes)
        spec = next(n for n in layout(cluster.data_dir, len(cluster.nodes), first)
                    if n.node_id == node_id)
        pid = _spawn(install, spec)
        cluster = replace(cluster, nodes=tuple(replace(n, pid=pid) if n.node_id == node_id
                                               else n for n in cluster.nodes))
        _write_state(cluster)
    _wait_until_ready(cluster, timeout)
    return cluster


#: where the kernel picks the source ports of outgoing connections
EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
#: the lowest port a local cluster takes (below: well-known and registered services)
LOWEST_PORT = 20_000


def port_candidates(count: int, ephemeral: tuple[int, int]) -> tuple[int, int]:
    """The range ``[low, high)`` a block of ``count`` ports starts in: below the kernel's
    ephemeral range if there is room, else above it.

    Never inside it. A node killed by the fault harness (D42) leaves its port free, and
    the kernel may hand it out as the source port of any new outgoing connection on the
    machine (busy during a fault: every client reconnects; one reconnecting to that very
    port can even connect to itself, a TCP self-connect). While such a socket holds the
    port, the node started again fails with "Address already in use": two broker kills
    in each of chaos full runs 3 and 5 did, leaving the cluster a node short. A kernel
    whose ephemeral range leaves no room on either side gets any port, as before."""
    first, last = ephemeral
    if first - LOWEST_PORT > count:
        return LOWEST_PORT, first - count
    if 65536 - count > last + 1:
        return last + 1, 65536 - count
    return LOWEST_PORT, 65536 - count  # the kernel lends out every port: no way around it


def _ephemeral_range() -> tuple[int, int]:
    try:
        first, last = EPHEMERAL_RANGE.read_text().split()
        return int(first), int(last)
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default


def free_port_block(count: int, attempts: int = 50) -> int:
    """A port P such that P..P+count-1 are all free on 127.0.0.1 right now, outside the
    ephemeral range (:func:`port_candidates` says why)."""
    low, high = port_candidates(count, _ephemeral_range())
    rng = random.Random()
    for _ in range(attempts):
        base = rng.randrange(low, high)
        try:
            for port in range(base, base + count):
                _check_port_free(port)
        except LocalKafkaError:
            continue
        return base
    raise LocalKafkaError(f"found no {count} consecutive free ports on {HOST}")
