"""The files a local KRaft broker needs: server.properties and a log4j2 config.

Ports: node ``i`` (0-based) of an ``n``-node cluster listens for clients on
``port + i`` and for the controller quorum on ``port + n + i``, all on
127.0.0.1. One node on 9092 therefore uses 9092 and 9093, as Kafka's own
quickstart does.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

HOST = "127.0.0.1"


@dataclass(frozen=True)
class NodeLayout:
    """Where one node lives: its id, ports and directory."""

    node_id: int
    port: int
    controller_port: int
    dir: Path

    @property
    def properties(self) -> Path:
        return self.dir / "server.properties"

    @property
    def log4j(self) -> Path:
        return self.dir / "log4j2.properties"

    @property
    def log(self) -> Path:
        return self.dir / "server.log"

    @property
    def stdout(self) -> Path:
        return self.dir / "stdout.log"

    @property
    def log_dirs(self) -> Path:
        return self.dir / "data"


def layout(data_dir: Path, nodes: int, port: int) -> list[NodeLayout]:
    return [
        NodeLayout(i + 1, port + i, port + nodes + i, data_dir / f"node-{i + 1}")
        for i in range(nodes)
    ]


def bootstrap_of(nodes: list[NodeLayout]) -> str:
    return ",".join(f"{HOST}:{n.port}" for n in nodes)


def server_properties(node: NodeLayout, cluster: list[NodeLayout]) -> str:
    rf = 3 if len(cluster) >= 3 else 1
    lines = {
        "process.roles": "broker,controller",
        "node.id": str(node.node_id),
        "listeners": f"PLAINTEXT://{HOST}:{node.port},CONTROLLER://{HOST}:{node.controller_port}",
        "advertised.listeners": f"PLAINTEXT://{HOST}:{node.port}",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
        "log.dirs": str(node.log_dirs),
        "auto.create.topics.enable": "false",
        "group.initial.rebalance.delay.ms": "0",
        # let a processor ask for a session shorter than the 6 s default minimum (faster
        # failover: TASKSTREAM_SESSION_TIMEOUT_S)
        "group.min.session.timeout.ms": "1000",
        "offsets.topic.replication.factor": str(rf),
        "transaction.state.log.replication.factor": str(rf),
        "transaction.state.log.min.isr": str(min(rf, 2)),
        "share.coordinator.state.topic.replication.factor": str(rf),
        "share.coordinator.state.topic.min.isr": str(min(rf, 2)),
        "default.replication.factor": str(rf),
        "min.insync.replicas": str(min(rf, 2)),
        "unclean.leader.election.enable": "false",
        "offsets.topic.num.partitions": "10",  # 50 by default: slow to create on 2 cores
    }
    if len(cluster) == 1:
        lines["controller.quorum.bootstrap.servers"] = f"{HOST}:{node.controller_port}"
    else:
        lines["controller.quorum.voters"] = ",".join(
            f"{n.node_id}@{HOST}:{n.controller_port}" for n in cluster
        )
    return "".join(f"{k}={v}\n" for k, v in lines.items())


def log4j2_properties(node: NodeLayout) -> str:
    return (
        "status = warn\n"
        "appender.file.type = File\n"
        "appender.file.name = FILE\n"
        f"appender.file.fileName = {node.log}\n"
        "appender.file.layout.type = PatternLayout\n"
        "appender.file.layout.pattern = [%d] %p %m (%c)%n\n"
        "rootLogger.level = INFO\n"
        "rootLogger.appenderRef.file.ref = FILE\n"
        # the state-change and request loggers are very chatty at INFO
        "logger.state.name = state.change.logger\n"
        "logger.state.level = WARN\n"
    )


def write_node_files(node: NodeLayout, cluster: list[NodeLayout]) -> None:
    node.dir.mkdir(parents=True, exist_ok=True)
    node.properties.write_text(server_properties(node, cluster))
    node.log4j.write_text(log4j2_properties(node))
