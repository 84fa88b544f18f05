"""The files a local KRaft broker needs: server.properties and a log4j2 config.

Ports: node ``i`` (0-based) of an ``n``-node cluster listens for clients on
``port + i`` and for the controller quorum on ``port + n + i``, all on
127.0.0.1. One node on 9092 therefore uses 9092 and 9093, as Kafka's own
quickstart does.

A secured cluster (``--secure``, D25) has the same ports: clients and the
brokers among themselves speak SASL_SSL (SCRAM-SHA-512, the brokers as
``User:broker``) on the client port; the controller quorum speaks mutual TLS
(KRaft controllers cannot authenticate with SCRAM: its credentials live in the
metadata the quorum serves), the brokers' certificate mapping to
``User:broker`` too. The StandardAuthorizer denies whatever no ACL allows;
``User:broker`` is the only super user.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from taskstream.users import MECHANISM

#: the principal the brokers run as (inter-broker SCRAM user and certificate CN)
BROKER_USER = "broker"

#: what every secured broker sets, whatever its listeners: ``kafka up --secure`` here, the
#: compose stack's brokers in docker-compose.secure.yml (D25, D41; a test holds it to these).
#: The certificate's CN is the principal (CN=broker -> User:broker, the only super user);
#: the StandardAuthorizer denies whatever no ACL allows.
SECURE_BROKER: dict[str, str] = {
    "sasl.enabled.mechanisms": MECHANISM,
    "ssl.keystore.type": "PEM",
    "ssl.truststore.type": "PEM",
    "ssl.principal.mapping.rules": "RULE:^.*CN=([^,]+).*$/$1/,DEFAULT",
    "authorizer.class.name": "org.apache.kafka.metadata.authorizer.StandardAuthorizer",
    "super.users": f"User:{BROKER_USER}",
    "allow.everyone.if.no.acl.found": "false",
}
#: the JAAS line of a SCRAM listener that only accepts clients (no credential of its own)
SCRAM_SERVER_JAAS = "org.apache.kafka.common.security.scram.ScramLoginModule required;"

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


@dataclass(frozen=True)
class BrokerSecurity:
    """What a secured node needs: its key store (key + chain, PEM), the CA, and the
    password of the inter-broker SCRAM user."""

    keystore: Path
    truststore: Path
    broker_password: str


def _listener_lines(node: NodeLayout, security: BrokerSecurity | None) -> dict[str, str]:
    if security is None:
        return {
            "listeners": f"PLAINTEXT://{HOST}:{node.port},CONTROLLER://{HOST}:{node.controller_port}",
            "advertised.listeners": f"PLAINTEXT://{HOST}:{node.port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
        }
    jaas = ("org.apache.kafka.common.security.scram.ScramLoginModule required "
            f'username="{BROKER_USER}" password="{security.broker_password}";')
    return {
        "listeners": f"SASL_SSL://{HOST}:{node.port},CONTROLLER://{HOST}:{node.controller_port}",
        "advertised.listeners": f"SASL_SSL://{HOST}:{node.port}",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "SASL_SSL",
        "listener.security.protocol.map": "CONTROLLER:SSL,SASL_SSL:SASL_SSL",
        "sasl.mechanism.inter.broker.protocol": MECHANISM,
        f"listener.name.sasl_ssl.{MECHANISM.lower()}.sasl.jaas.config": jaas,
        "ssl.keystore.location": str(security.keystore),
        "ssl.truststore.location": str(security.truststore),
        "listener.name.controller.ssl.client.auth": "required",
        **SECURE_BROKER,
    }


def server_properties(node: NodeLayout, cluster: list[NodeLayout],
                      security: BrokerSecurity | None = None) -> str:
    rf = 3 if len(cluster) >= 3 else 1
    lines = {
        "process.roles": "broker,controller",
        "node.id": str(node.node_id),
        **_listener_lines(node, security),
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


def write_node_files(node: NodeLayout, cluster: list[NodeLayout],
                     security: BrokerSecurity | None = None) -> None:
    node.dir.mkdir(parents=True, exist_ok=True)
    # 0600 from the start: a secured node's properties hold the broker's password
    fd = os.open(node.properties, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(server_properties(node, cluster, security))
    node.log4j.write_text(log4j2_properties(node))
