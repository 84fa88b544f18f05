"""The worker under injected faults (issue 21, D47): a thread of its that dies is noticed,
and a TaskStarted that never reaches the broker does not pin its partition's commits.

Each test runs ``taskstream worker`` as a process armed through ``TASKSTREAM_FAULTS``
(taskstream/faults.py), so the fault fires where it would in production.
"""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from confluent_kafka import Producer

import examples.tasks as example_tasks
from taskstream import faults
from taskstream.schemas.events import Envelope
from taskstream.schemas.serde import encode_event
from taskstream.settings import Settings
from taskstream.topics import ready_topic
from taskstream.workers.errors import WorkerThreadDied
from tests.harness import settings_env, stop_process, wait_for
from tests.test_worker_support import Events, committed, ready_envelope, running_worker

ROOT = Path(__file__).resolve().parent.parent
GROUP = "workers.default"


def start_worker(settings: Settings, log_path: Path, *args: str,
                 faults: str = "") -> subprocess.Popen[bytes]:
    env = settings_env(settings)
    if faults:
        env["TASKSTREAM_FAULTS"] = faults
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "taskstream", "worker", "-A", "examples.tasks",
             "--queues", "default", "--no-create-topics", *args],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)


def send_to_partition(settings: Settings, partition: int, envelopes: list[Envelope]) -> None:
    """Ready records all in one partition (in order), so later ones sit behind earlier ones."""
    producer = Producer({"bootstrap.servers": settings.bootstrap, "acks": "all",
                         "enable.idempotence": True})
    for env in envelopes:
        producer.produce(ready_topic(settings, "default", 0), key=env.task_id.encode(),
                         value=encode_event(env), partition=partition)
    assert producer.flush(10) == 0


@pytest.mark.kafka
def test_a_dead_consumer_thread_makes_the_worker_exit_non_zero(topics: Settings,
                                                               tmp_path: Path) -> None:
    """The queue's consumer thread raises in its loop: the worker stops (running attempts
    get their grace) and exits non-zero, so its supervisor restarts it; a task sent after
    the fault runs on the restarted worker."""
    events = Events(topics)
    log_path = tmp_path / "worker.log"
    proc = start_worker(topics, log_path,
                        faults="worker.consumer_loop=raise:builtins:RuntimeError@20")
    again: subprocess.Popen[bytes] | None = None
    try:
        wait_for("the injected fault", lambda: "taskstream fault: worker.consumer_loop"
                 in log_path.read_text(), timeout=60)
        late = ready_envelope("examples.noop")
        send_to_partition(topics, 0, [late])
        try:
            code = proc.wait(60)
        except subprocess.TimeoutExpired:
            raise AssertionError("the worker went on without its queue's consumer:\n"
                                 + log_path.read_text()) from None
        assert code != 0, log_path.read_text()
        text = log_path.read_text()
        assert "event=worker.thread_died thread=consumer queue=default" in text, text
        assert "event=worker.stopped" in text, text
        # its supervisor starts it again: the task sent after the fault runs
        again = start_worker(topics, tmp_path / "worker2.log")
        events.wait_type(late.task_id, "TaskSucceeded", timeout=60)
    finally:
        stop_process(proc)
        if again is not None:
            stop_process(again)
        events.close()


@pytest.mark.kafka
def test_a_dead_consumer_thread_shows_in_the_metrics_and_run_raises(
        topics: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """In process (the fault armed by hand): the watchdog counts the death, the health
    gauge drops to 0, and ``Worker.run`` raises ``WorkerThreadDied`` after a clean stop."""
    monkeypatch.setattr(faults, "_ARMED",
                        faults.parse("worker.consumer_loop=raise:builtins:RuntimeError@5"))
    with (pytest.raises(WorkerThreadDied, match="consumer queue=default"),
          running_worker(example_tasks.app, topics, queues=["default"]) as worker):
        wait_for("the watchdog", lambda: worker.died, timeout=60)
    registry = worker.metrics.registry
    assert registry.get_sample_value("taskstream_worker_healthy") == 0
    assert registry.get_sample_value("taskstream_worker_thread_deaths_total",
                                     {"thread": "consumer"}) == 1


@pytest.mark.kafka
def test_a_failed_task_started_does_not_rerun_later_tasks_after_a_rebalance(
        topics: Settings, tmp_path: Path) -> None:
    """The first TaskStarted is refused by the producer; the tasks behind it in its
    partition run and succeed. A second worker joins (a rebalance: every partition is
    revoked and assigned again, read from its committed offset): the partition is
    committed past every task, and no task ran twice."""
    events = Events(topics)
    tasks = [ready_envelope("examples.noop") for _ in range(12)]
    ids = {t.task_id for t in tasks}
    first_log, second_log = tmp_path / "worker1.log", tmp_path / "worker2.log"
    first = start_worker(topics, first_log, "--concurrency", "4",
                         faults="worker.started_send=raise:confluent_kafka:KafkaException@1")
    second: subprocess.Popen[bytes] | None = None
    topic = ready_topic(topics, "default", 0)
    group = f"{topics.topic_prefix}{GROUP}"

    def succeeded() -> Counter[str]:
        return Counter(e.task_id for e in events.refresh()
                       if e.type_name == "TaskSucceeded" and e.task_id in ids)

    try:
        send_to_partition(topics, 0, tasks)
        # the tasks behind the refused one run (before D47 the refused one did not: its
        # attempt ended at the refusal, its record pending)
        events.wait("the tasks behind the refused start succeeded",
                    lambda _: len(succeeded()) >= len(tasks) - 1, timeout=90)
        assert "taskstream fault: worker.started_send hit 1" in first_log.read_text()
        second = start_worker(topics, second_log)
        wait_for("the rebalance", lambda: "event=partitions.revoked"
                 in first_log.read_text(), timeout=60)
        wait_for("the partition committed past every task",
                 lambda: committed(topics, group, topic, topics.ready_partitions).get(0)
                 == len(tasks), timeout=60)
        for proc in (second, first):
            proc.terminate()
            assert proc.wait(60) == 0
        runs = succeeded()
        assert set(runs) == ids
        again = {task_id: n for task_id, n in runs.items() if n > 1}
        assert not again, f"{len(again)} tasks ran again after the rebalance: {again}"
    finally:
        stop_process(first)
        if second is not None:
            stop_process(second)
        events.close()


@pytest.mark.kafka
def test_a_failed_task_started_is_made_good_by_a_lease_renewal_while_the_task_runs(
        topics: Settings, tmp_path: Path) -> None:
    """A long attempt whose TaskStarted was refused: a LeaseRenewed goes out (the fold
    starts the task on it) and its ack settles the record, so the partition is committed
    while the handler still runs, not only after its outcome."""
    events = Events(topics)
    env = ready_envelope("examples.slow", {"seconds": 120}, lease_ms=600_000)
    log_path = tmp_path / "worker.log"
    proc = start_worker(topics, log_path, "--grace", "0",
                        faults="worker.started_send=raise:confluent_kafka:KafkaException@1")
    group = f"{topics.topic_prefix}{GROUP}"
    topic = ready_topic(topics, "default", 0)
    try:
        send_to_partition(topics, 0, [env])
        events.wait_type(env.task_id, "LeaseRenewed", timeout=60)
        wait_for("the record committed while its task runs",
                 lambda: committed(topics, group, topic, topics.ready_partitions).get(0) == 1,
                 timeout=60)
        events.refresh()
        assert not events.of(env.task_id, "TaskStarted")  # the refused start never went out
        assert not events.of(env.task_id, "TaskSucceeded")  # it still runs
        assert "event=task.start_unacked" in log_path.read_text()
    finally:
        stop_process(proc)
        events.close()


@pytest.mark.kafka
def test_a_record_read_again_after_its_attempt_finished_here_is_not_run_again(
        topics: Settings) -> None:
    """A worker whose group session times out (its coordinator's broker died: chaos full
    run 4, broker-kill #22) loses its partitions before it can commit, gets them back
    and reads again what it had run: here the same dispatch record delivered twice. The
    attempt finished here (its outcome acknowledged), so the repeat must be skipped; it
    ran again beside the concurrency key's next holders, 3 runs of 2."""
    events = Events(topics)
    first, after = ready_envelope("examples.noop"), ready_envelope("examples.noop")
    try:
        with running_worker(example_tasks.app, topics, queues=["default"], concurrency=1):
            send_to_partition(topics, 0, [first])
            events.wait_type(first.task_id, "TaskSucceeded", timeout=60)
            send_to_partition(topics, 0, [first, after])  # the repeat, then a later task
            events.wait_type(after.task_id, "TaskSucceeded", timeout=60)
        starts = [e.attempt for e in events.refresh()
                  if e.task_id == first.task_id and e.type_name == "TaskStarted"]
        assert starts == [1], f"attempt 1 started {len(starts)} times"
    finally:
        events.close()
