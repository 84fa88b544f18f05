"""The foundation against real brokers: topic creation and the local runner's lifecycle."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from click.testing import CliRunner
from confluent_kafka.admin import AdminClient

from taskstream.admin import (
    SESSION_FLOOR_S,
    choose_session_timeout,
    ensure_queue_topics,
    ensure_topics,
    list_topics,
    session_timeout_bounds,
)
from taskstream.cli.main import main
from taskstream.errors import ConfigError
from taskstream.localkafka import cluster as localkafka
from taskstream.localkafka.config import layout, write_node_files
from taskstream.localkafka.install import ensure_kafka
from taskstream.settings import Settings, load_settings
from taskstream.topics import ready_topics
from tests.harness import wait_for

pytestmark = pytest.mark.kafka


def env_of(settings: Settings) -> dict[str, str]:
    return {"TASKSTREAM_BOOTSTRAP": settings.bootstrap,
            "TASKSTREAM_TOPIC_PREFIX": settings.topic_prefix,
            "TASKSTREAM_KAFKA_HOME": str(settings.kafka_home)}


def test_topics_create_twice_is_a_noop_the_second_time(settings: Settings) -> None:
    runner = CliRunner()
    first = runner.invoke(main, ["topics", "create", "--queues", "emails,reports",
                                 "--partitions", "4"], env=env_of(settings))
    assert first.exit_code == 0, first.output
    assert f"{settings.topic('events')}: created" in first.output
    assert f"{settings.topic('ready.reports.p2')}: created" in first.output
    second = runner.invoke(main, ["topics", "create", "--queues", "emails,reports"],
                           env=env_of(settings))
    assert second.exit_code == 0, second.output
    assert "created" not in second.output.replace("already", "")
    assert "All 12 topics already exist; nothing to do." in second.output
    found = list_topics(settings)
    assert found[settings.topic("events")] == 4
    assert found[settings.topic("queues")] == 1
    listed = runner.invoke(main, ["topics", "list"], env=env_of(settings))
    assert f"{settings.topic('dlq')}  (4 partitions)" in listed.output


def test_ensure_topics_reports_what_it_created(settings: Settings) -> None:
    created = ensure_topics(settings)
    assert all(created.values()) and len(created) == 6 + settings.priority_levels
    assert not any(ensure_topics(settings).values())
    new_queue = ensure_queue_topics(settings, "fresh")
    assert list(new_queue) == ready_topics(settings, "fresh")
    assert all(new_queue.values())
    assert not any(ensure_queue_topics(settings, "fresh").values())


def test_too_many_replicas_is_a_clear_error(settings: Settings) -> None:
    result = CliRunner().invoke(main, ["topics", "create", "--replication", "3"],
                                env=env_of(settings))
    assert result.exit_code == 1
    assert "with 3 replica(s)" in result.output
    assert "Traceback" not in result.output


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/cmdline").read_bytes() != b""


@pytest.mark.slow
def test_up_status_down_lifecycle(tmp_path: Path) -> None:
    """Its own broker: `up` twice, `status`, `down --keep`, `up` resumes, `down` cleans."""
    runner = CliRunner()
    data = tmp_path / "run"
    port = localkafka.free_port_block(2)
    env = {"TASKSTREAM_KAFKA_HOME": str(load_settings().kafka_home)}
    try:
        up = runner.invoke(main, ["kafka", "up", "--port", str(port), "--data-dir", str(data)],
                           env=env)
        assert up.exit_code == 0, up.output
        assert f"is up at 127.0.0.1:{port}" in up.output
        again = runner.invoke(main, ["kafka", "up", "--data-dir", str(data)], env=env)
        assert "already running" in again.output
        status = runner.invoke(main, ["kafka", "status", "--data-dir", str(data)], env=env)
        assert status.exit_code == 0, status.output
        assert "running" in status.output and "answers metadata requests" in status.output
        state = localkafka.read_state(data)
        assert state is not None
        (pid,) = [n.pid for n in state.nodes]

        kept = runner.invoke(main, ["kafka", "down", "--keep", "--data-dir", str(data)], env=env)
        assert f"stopped PIDs {pid}; data kept" in kept.output
        assert not _alive(pid)
        resumed = runner.invoke(main, ["kafka", "up", "--data-dir", str(data)], env=env)
        assert f"is up at 127.0.0.1:{port}" in resumed.output, resumed.output
    finally:
        down = runner.invoke(main, ["kafka", "down", "--data-dir", str(data)], env=env)
    assert down.exit_code == 0, down.output
    assert "data removed" in down.output
    assert localkafka.read_state(data) is None
    state_pids = [int(p) for p in down.output.split("PIDs ")[1].split(";")[0].split(", ")]
    assert not any(_alive(p) for p in state_pids)
    status = runner.invoke(main, ["kafka", "status", "--data-dir", str(data)], env=env)
    assert status.exit_code == 1


@pytest.mark.slow
def test_storage_formats_with_a_cluster_id_that_starts_with_a_dash(tmp_path: Path) -> None:
    """The real storage tool: an ID like ``-AbC...`` is a value, not an option (a CI failure)."""
    settings = load_settings()
    install = ensure_kafka(settings.kafka_home, settings.kafka_version, show_progress=False)
    nodes = layout(tmp_path, 3, localkafka.free_port_block(6))
    for node in nodes:
        write_node_files(node, nodes)
    localkafka._format(install, "-AbCdEfGhIjKlMnOpQrStU", nodes, [])
    for node in nodes:
        meta = (node.log_dirs / "meta.properties").read_text()
        assert "cluster.id=-AbCdEfGhIjKlMnOpQrStU" in meta


def test_three_nodes_replicate(tmp_path: Path) -> None:
    """`--nodes 3`: three brokers, topics with 3 in-sync replicas, all stopped by `down`."""
    data = tmp_path / "run3"
    base = load_settings(kafka_home=load_settings().kafka_home)
    started = localkafka.up(base, nodes=3, port=localkafka.free_port_block(6), data_dir=data,
                            timeout=180.0)
    try:
        assert len(started.cluster.nodes) == 3
        settings = load_settings(bootstrap=started.cluster.bootstrap, replication=3,
                                 topic_prefix="r3.", kafka_home=base.kafka_home)
        ensure_topics(settings, queues=[])
        admin = AdminClient({"bootstrap.servers": settings.bootstrap})
        # a broker other than the controller may not have the new topic's metadata yet
        metadata = wait_for("the events topic in every broker's metadata", lambda: (
            m if settings.topic("events") in (m := admin.list_topics(timeout=10)).topics
            else None), timeout=30)
        assert len(metadata.brokers) == 3
        for partition in metadata.topics[settings.topic("events")].partitions.values():
            assert sorted(partition.replicas) == [1, 2, 3]
            assert sorted(partition.isrs) == [1, 2, 3]
    finally:
        stopped = localkafka.down(data)
    assert stopped is not None and sorted(stopped) == sorted(n.pid for n in started.cluster.nodes)
    assert not any(_alive(pid) for pid in stopped)


def test_the_session_timeout_follows_what_the_brokers_accept(settings: Settings) -> None:
    """Faust only logs the broker's INVALID_SESSION_TIMEOUT and never gets a partition,
    so a refused value is named before the processor starts; unset, the shortest the
    brokers accept is taken, but never under 3 s."""
    assert session_timeout_bounds(settings) == (1000, 1_800_000)  # what `kafka up` configures
    assert settings.session_timeout_s is None
    assert choose_session_timeout(settings) == SESSION_FLOOR_S == 3.0
    assert choose_session_timeout(settings.model_copy(update={"session_timeout_s": 1.0})) == 1.0
    assert choose_session_timeout(settings.model_copy(update={"session_timeout_s": 45})) == 45
    too_short = settings.model_copy(update={"session_timeout_s": 0.5})
    with pytest.raises(ConfigError, match=r"session_timeout_s=0.5 \(500 ms\) is outside what "
                       r"the brokers .* accept \(group.min.session.timeout.ms=1000, "
                       r"group.max.session.timeout.ms=1800000\); set "
                       r"TASKSTREAM_SESSION_TIMEOUT_S between 1 and 1800"):
        choose_session_timeout(too_short)

