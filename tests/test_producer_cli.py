"""``taskstream submit``: options checked with errors naming them; IDs printed."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from confluent_kafka.admin import AdminClient, NewTopic

from taskstream.cli.main import main
from taskstream.queue_registry import set_up_platform
from taskstream.schemas.ids import derived_task_id
from taskstream.settings import Settings


def run(*args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["submit", *args], env=env or {})
    return result.exit_code, result.output


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["t", "--payload", "{bad json"], "--payload"),
        (["t", "--payload", "@/nonexistent/file.json"], "--payload"),
        (["t", "--priority", "high"], "--priority"),
        (["t", "--count", "0"], "--count"),
        (["t", "--key", "k", "--count", "2"], "--key"),
    ],
)
def test_bad_options_exit_non_zero_naming_the_option(args: list[str], named: str) -> None:
    code, out = run(*args)
    assert code == 2, out
    assert named in out


@pytest.fixture
def env(kafka_bootstrap: str) -> Iterator[dict[str, str]]:
    prefix = f"t{uuid.uuid4().hex[:8]}."
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    topic = f"{prefix}events"
    for fut in admin.create_topics([NewTopic(topic, 3, 1)]).values():
        fut.result(timeout=30)
    deadline = time.monotonic() + 15
    while topic not in admin.list_topics(timeout=10).topics and time.monotonic() < deadline:
        time.sleep(0.1)
    # the queue registry: submissions go to registered queues only
    set_up_platform(Settings(bootstrap=kafka_bootstrap, topic_prefix=prefix, partitions=3))
    yield {"TASKSTREAM_BOOTSTRAP": kafka_bootstrap, "TASKSTREAM_TOPIC_PREFIX": prefix}
    for fut in admin.delete_topics([topic]).values():
        fut.result(timeout=30)


@pytest.mark.kafka
def test_invalid_spec_values_name_the_option(env: dict[str, str]) -> None:
    code, out = run("t", "--priority", "99", env=env)
    assert code == 2 and "--priority" in out
    code, out = run("t", "--queue", "bad queue", env=env)
    assert code == 2 and "--queue" in out


@pytest.mark.kafka
def test_submit_prints_ids(env: dict[str, str], tmp_path: Path) -> None:
    payload = tmp_path / "p.json"
    payload.write_text('{"to": "a@b.c"}')
    code, out = run("mail.send", "--payload", f"@{payload}", "--count", "3", env=env)
    assert code == 0, out
    ids = out.split()
    assert len(ids) == 3 and len(set(ids)) == 3 and all(len(i) == 26 for i in ids)
    code, out = run("mail.send", "--key", "k1", "--priority", "2", "--delay", "5", env=env)
    assert code == 0, out
    assert out.strip() == derived_task_id("mail.send", "k1")


@pytest.mark.kafka
def test_unreachable_broker_is_a_clean_error() -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {"TASKSTREAM_BOOTSTRAP": f"127.0.0.1:{port}", "TASKSTREAM_KAFKA_TIMEOUT_S": "1"}
    code, out = run("t", env=env)
    assert code == 1 and f"127.0.0.1:{port}" in out
