"""The foundation without a broker: settings, the CLI's error handling, the local
Kafka runner's checks and files, the topic plan, the compose file."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from taskstream import admin
from taskstream.admin import choose_session_timeout, topic_specs
from taskstream.cli.main import main
from taskstream.errors import ConfigError, LocalKafkaError, TopicError
from taskstream.localkafka import cluster as localkafka
from taskstream.localkafka.config import layout, server_properties
from taskstream.localkafka.install import find_java, java_major_version
from taskstream.settings import load_settings, masked

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith("TASKSTREAM_"):
            monkeypatch.delenv(key)


def run(*args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args), env=env)
    assert not isinstance(result.exception, Exception) or isinstance(
        result.exception, SystemExit), f"traceback: {result.exception!r}"
    return result.exit_code, result.output


# settings ---------------------------------------------------------------------

def test_settings_come_from_env_over_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "ts.toml"
    config.write_text('bootstrap = "filehost:1"\npartitions = 12\n')
    monkeypatch.setenv("TASKSTREAM_CONFIG", str(config))
    monkeypatch.setenv("TASKSTREAM_BOOTSTRAP", "envhost:2")
    settings = load_settings()
    assert settings.bootstrap == "envhost:2"  # environment beats the file
    assert settings.partitions == 12  # the file beats the default


def test_bad_value_names_the_field(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TASKSTREAM_PARTITIONS", "many")
    with pytest.raises(ConfigError, match="partitions"):
        load_settings()


@pytest.mark.parametrize("argv", [["config", "show"], ["topics", "list"], ["kafka", "status"]])
def test_every_command_exits_cleanly_on_bad_settings(argv: list[str]) -> None:
    code, output = run(*argv, env={"TASKSTREAM_BOOTSTRAP": "no-port-here"})
    assert code == 1
    assert "bootstrap" in output and "host:port" in output
    assert "Traceback" not in output


def test_config_show_masks_secrets() -> None:
    code, output = run("config", "show", "--json",
                       env={"TASKSTREAM_API_TOKEN": "hunter2", "TASKSTREAM_QUEUES": '["a","b"]'})
    assert code == 0
    data = json.loads(output)
    assert data["api_token"] == "***"
    assert data["queues"] == ["a", "b"]
    assert "hunter2" not in output
    assert masked(load_settings(api_token="x"))["api_token"] == "***"


def test_config_show_text_lists_every_field() -> None:
    code, output = run("config", "show")
    assert code == 0
    keys = {line.split()[0] for line in output.splitlines()}
    assert set(masked(load_settings())) == keys


# the local Kafka runner's preconditions ----------------------------------------

def fake_tool(directory: Path, name: str, script: str) -> None:
    directory.mkdir(exist_ok=True)
    path = directory / name
    path.write_text("#!/bin/sh\n" + script)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


def test_missing_java_says_what_to_install(tmp_path: Path) -> None:
    empty = tmp_path / "bin"
    empty.mkdir()
    code, output = run("kafka", "up", "--data-dir", str(tmp_path / "run"),
                       env={"PATH": str(empty), "TASKSTREAM_KAFKA_HOME": str(tmp_path / "kh")})
    assert code == 1
    assert "java was not found" in output
    assert "apt-get install openjdk-17-jre-headless maven" in output
    assert "docker-compose.kafka.yml" in output


def test_old_java_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_tool(tmp_path / "bin", "java", 'echo \'java version "1.8.0_392"\' >&2\n')
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    with pytest.raises(LocalKafkaError, match="Java 8 but Kafka needs Java 17"):
        find_java()


def test_missing_maven_on_first_run_says_what_to_install(tmp_path: Path) -> None:
    fake_tool(tmp_path / "bin", "java", 'echo \'openjdk version "17.0.15" 2025-04-15\' >&2\n')
    code, output = run("kafka", "up", "--data-dir", str(tmp_path / "run"),
                       env={"PATH": str(tmp_path / "bin"),
                            "TASKSTREAM_KAFKA_HOME": str(tmp_path / "kh")})
    assert code == 1
    assert "mvn (Apache Maven) was not found" in output
    assert "apt-get install" in output


@pytest.mark.parametrize(("text", "major"), [
    ('openjdk version "17.0.15" 2025-04-15', 17),
    ('openjdk version "21" 2023-09-19', 21),
    ('java version "1.8.0_392"', 8),
    ("nonsense", None),
])
def test_java_version_is_parsed(text: str, major: int | None) -> None:
    assert java_major_version(text) == major


def test_status_and_down_without_a_cluster(tmp_path: Path) -> None:
    code, output = run("kafka", "status", "--data-dir", str(tmp_path))
    assert code == 1
    assert "No local Kafka recorded" in output
    code, output = run("kafka", "down", "--data-dir", str(tmp_path))
    assert code == 0
    assert "nothing to stop" in output


def test_a_busy_port_is_named(tmp_path: Path) -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        with pytest.raises(LocalKafkaError, match=f"port {port} on 127.0.0.1 is already in use"):
            localkafka._check_port_free(port)


def test_a_cluster_id_never_starts_with_a_dash(monkeypatch: pytest.MonkeyPatch) -> None:
    """Kafka's storage tool reads ``-t -xyz`` as an option: 1 in 64 random IDs broke ``up``."""
    import uuid

    dashed = uuid.UUID(bytes=bytes([0xF8]) + bytes(15))  # first base64 character: '-'
    plain = uuid.UUID(bytes=bytes([0x10]) + bytes(15))
    draws = iter([dashed, dashed, plain])
    monkeypatch.setattr(localkafka.uuid, "uuid4", lambda: next(draws))
    cluster_id = localkafka.new_cluster_id()
    assert cluster_id == "EAAAAAAAAAAAAAAAAAAAAA"
    assert len(cluster_id) == 22


def test_three_node_properties_replicate() -> None:
    nodes = layout(Path("/d"), 3, 9092)
    assert [(n.port, n.controller_port) for n in nodes] == [(9092, 9095), (9093, 9096),
                                                            (9094, 9097)]
    props = dict(line.split("=", 1) for line in server_properties(nodes[1], nodes).splitlines())
    assert props["controller.quorum.voters"] == (
        "1@127.0.0.1:9095,2@127.0.0.1:9096,3@127.0.0.1:9097")
    assert props["default.replication.factor"] == "3"
    assert props["offsets.topic.replication.factor"] == "3"
    assert props["min.insync.replicas"] == "2"
    assert props["unclean.leader.election.enable"] == "false"
    assert props["auto.create.topics.enable"] == "false"
    assert props["listeners"] == "PLAINTEXT://127.0.0.1:9093,CONTROLLER://127.0.0.1:9096"


def test_one_node_properties_bootstrap_their_own_quorum() -> None:
    nodes = layout(Path("/d"), 1, 9092)
    props = dict(line.split("=", 1) for line in server_properties(nodes[0], nodes).splitlines())
    assert props["controller.quorum.bootstrap.servers"] == "127.0.0.1:9093"
    assert props["offsets.topic.replication.factor"] == "1"
    assert props["group.initial.rebalance.delay.ms"] == "0"
    assert props["group.min.session.timeout.ms"] == "1000"  # a processor may fail over faster
    assert "controller.quorum.voters" not in props


# the topic plan -------------------------------------------------------------------

def test_topic_plan_follows_the_design() -> None:
    settings = load_settings(topic_prefix="x.", queues=["q1", "q2"], priority_levels=2,
                             events_retention_ms=1234)
    specs = {s.name: s for s in topic_specs(settings)}
    assert set(specs) == {"x.events", "x.queues", "x.cancellations", "x.dlq", "x.quarantine",
                          "x.workers", "x.ready.q1.p0", "x.ready.q1.p1", "x.ready.q2.p0",
                          "x.ready.q2.p1"}
    assert specs["x.events"].config["retention.ms"] == "1234"
    assert specs["x.queues"].config["cleanup.policy"] == "compact"
    assert specs["x.cancellations"].config["cleanup.policy"] == "compact"
    assert specs["x.workers"].config["cleanup.policy"] == "compact,delete"
    assert specs["x.workers"].partitions == 1
    for name in ("x.events", "x.dlq", "x.quarantine", "x.ready.q1.p0"):
        assert specs[name].config["cleanup.policy"] == "delete"
    assert specs["x.ready.q2.p1"].partitions == settings.ready_partitions
    assert specs["x.events"].partitions == settings.partitions


def test_a_bad_queue_name_is_refused() -> None:
    with pytest.raises(TopicError, match="queue name 'a b' is not valid"):
        topic_specs(load_settings(), queues=["a b"])


# docker-compose.kafka.yml -------------------------------------------------------------

def test_compose_file_runs_a_loopback_kraft_broker_of_our_version() -> None:
    """A structural check: neither Docker Compose nor its JSON schema is available offline."""
    compose = yaml.safe_load((ROOT / "docker-compose.kafka.yml").read_text())
    assert set(compose) <= {"services", "volumes", "name", "networks"}
    (service,) = compose["services"].values()
    assert service["image"] == f"apache/kafka:{load_settings().kafka_version}"
    env = service["environment"]
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
    assert env["KAFKA_GROUP_MIN_SESSION_TIMEOUT_MS"] == "1000"  # as `taskstream kafka up`
    assert "PLAINTEXT://127.0.0.1:9092" in env["KAFKA_ADVERTISED_LISTENERS"]
    for port in service["ports"]:
        assert str(port).startswith("127.0.0.1:"), f"{port} is not bound to loopback"
    assert all(isinstance(v, str) for v in env.values()), "compose wants strings"


# start-up failures name the broker's log ------------------------------------------------

FAKE_JAVA = """case "$*" in
  *-version*) echo 'openjdk version "17.0.1"' >&2 ;;
  *StorageTool*) exit 0 ;;
  *) %s ;;
esac
"""


def fake_install(tmp_path: Path, broker_behaviour: str) -> dict[str, str]:
    """A kafka_home whose jars count as resolved and a java that only pretends."""
    home = tmp_path / "kh"
    (home / "4.3.1" / "libs").mkdir(parents=True)
    (home / "4.3.1" / ".complete").write_text("fake\n")
    fake_tool(tmp_path / "bin", "java", FAKE_JAVA % broker_behaviour)
    return {"PATH": f"{tmp_path / 'bin'}:/usr/bin:/bin", "TASKSTREAM_KAFKA_HOME": str(home)}


def test_a_broker_that_exits_at_start_names_its_log(tmp_path: Path) -> None:
    env = fake_install(tmp_path, "echo boom; exit 3")
    port = str(localkafka.free_port_block(2))
    code, output = run("kafka", "up", "--port", port, "--data-dir", str(tmp_path / "run"),
                       env=env)
    assert code == 1
    assert "exited during start-up" in output
    assert str(tmp_path / "run" / "node-1" / "server.log") in output
    assert "boom" in (tmp_path / "run" / "node-1" / "stdout.log").read_text()


def test_a_broker_that_never_answers_times_out_and_is_stopped(tmp_path: Path) -> None:
    env = fake_install(tmp_path, "while :; do sleep 0.1; done")
    port = str(localkafka.free_port_block(2))
    code, output = run("kafka", "up", "--port", port, "--timeout", "3",
                       "--data-dir", str(tmp_path / "run"), env=env)
    assert code == 1
    assert "did not answer within 3s" in output
    assert str(tmp_path / "run" / "node-1" / "server.log") in output
    state = localkafka.read_state(tmp_path / "run")
    assert state is not None
    assert not any(localkafka.is_running(n) for n in state.nodes), "up left its broker running"


def test_token_hashes_are_shown_by_prefix_only_and_each_kept() -> None:
    a, b = "a" * 64, "b" * 64
    shown = masked(load_settings(api_tokens={a: ["read"], b: ["admin"]}))["api_tokens"]
    assert shown == {"aaaaaaaa***": ["read"], "bbbbbbbb***": ["admin"]}


def test_a_stock_brokers_minimum_is_taken_when_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    """A broker that keeps the stock 6 s minimum (or whose configs cannot be read)."""
    settings = load_settings()
    monkeypatch.setattr(admin, "session_timeout_bounds", lambda s: (6000, 1_800_000))
    assert choose_session_timeout(settings) == 6.0
    with pytest.raises(ConfigError, match="between 6 and 1800"):
        choose_session_timeout(settings.model_copy(update={"session_timeout_s": 3.0}))
    monkeypatch.setattr(admin, "session_timeout_bounds", lambda s: None)
    assert choose_session_timeout(settings) == 6.0
    assert choose_session_timeout(settings.model_copy(update={"session_timeout_s": 2.0})) == 2.0


@pytest.mark.parametrize("ephemeral", [(32768, 60999), (1024, 65535), (10000, 40000),
                                       (40000, 65000)])
def test_local_ports_stay_out_of_the_ephemeral_range(ephemeral: tuple[int, int]) -> None:
    """A killed node's port must not be taken as a reconnecting client's source port (a
    TCP self-connect held node 2's port and it never came back: chaos full run 5)."""
    low, high = localkafka.port_candidates(6, ephemeral)
    first, last = ephemeral
    assert low < high
    if (first, last) == (1024, 65535):  # no room on either side: any port, as before
        assert (low, high) == (localkafka.LOWEST_PORT, 65530)
        return
    for base in (low, high - 1):
        block = range(base, base + 6)
        assert block.stop <= 65536
        assert not any(first <= port <= last for port in block), (base, ephemeral)


def test_a_free_port_block_is_free_and_outside_the_ephemeral_range() -> None:
    first, last = localkafka._ephemeral_range()
    base = localkafka.free_port_block(3)
    assert not any(first <= p <= last for p in range(base, base + 3))
