"""``taskstream worker`` as a real process: graceful SIGTERM, second signal, bad -A."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from taskstream.schemas.events import TaskSucceeded
from taskstream.settings import Settings
from taskstream.topics import ready_topic
from tests.harness import settings_env
from tests.test_worker_support import Events, ReadyWriter, committed, ready_envelope

ROOT = Path(__file__).resolve().parent.parent


def start_worker(settings: Settings, log_path: Path, *args: str) -> subprocess.Popen[bytes]:
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "taskstream", "worker", "-A", "examples.tasks",
             "--queues", "default", *args],
            cwd=ROOT, env=settings_env(settings), stdout=log, stderr=subprocess.STDOUT)


@pytest.mark.kafka
def test_sigterm_lets_the_running_task_finish_and_commits(topics: Settings,
                                                          tmp_path: Path) -> None:
    events = Events(topics)
    env = ready_envelope("examples.slow", {"seconds": 3})
    ReadyWriter(topics).send(env)
    log_path = tmp_path / "worker.log"
    proc = start_worker(topics, log_path, "--grace", "20")
    try:
        events.wait_type(env.task_id, "TaskStarted", timeout=60)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, log_path.read_text()
        done = events.wait_type(env.task_id, "TaskSucceeded", timeout=5).body
        assert isinstance(done, TaskSucceeded)
        offsets = committed(topics, f"{topics.topic_prefix}workers.default",
                            ready_topic(topics, "default", 0), topics.ready_partitions)
        assert sum(offsets.values()) == 1
        text = log_path.read_text()
        assert "event=worker.stopping in_flight=1" in text and "event=worker.stopped" in text
    finally:
        proc.kill()
        proc.wait(10)
        events.close()


@pytest.mark.kafka
def test_second_signal_stops_at_once(topics: Settings, tmp_path: Path) -> None:
    events = Events(topics)
    env = ready_envelope("examples.slow", {"seconds": 120})
    ReadyWriter(topics).send(env)
    log_path = tmp_path / "worker.log"
    proc = start_worker(topics, log_path, "--grace", "60")
    try:
        events.wait_type(env.task_id, "TaskStarted", timeout=60)
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, log_path.read_text()
        assert time.monotonic() - started < 20
        events.refresh()
        assert not events.of(env.task_id, "TaskSucceeded")  # the lease recovers it
        # it was started, so its offset is committed: the lease, not a re-read, retries it
        offsets = committed(topics, f"{topics.topic_prefix}workers.default",
                            ready_topic(topics, "default", 0), topics.ready_partitions)
        assert sum(offsets.values()) == 1
    finally:
        proc.kill()
        proc.wait(10)
        events.close()


def test_missing_module_or_attribute_exits_non_zero(tmp_path: Path) -> None:
    for target, expected in (("no_such_module_xyz", "no module named"),
                             ("examples.tasks:missing", "has no attribute")):
        result = subprocess.run(
            [sys.executable, "-m", "taskstream", "worker", "-A", target],
            cwd=ROOT, capture_output=True, timeout=60,
            env={"PATH": "/usr/bin:/bin", "TASKSTREAM_BOOTSTRAP": "127.0.0.1:1"})
        assert result.returncode != 0
        assert expected in result.stderr.decode(), result.stderr.decode()
