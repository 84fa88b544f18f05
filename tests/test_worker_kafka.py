"""The worker against the real broker: ready records in, worker events out."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from typing import Any

import pytest

import examples.tasks as example_tasks
from taskstream.schemas.events import (
    Envelope,
    TaskCancelled,
    TaskDispatched,
    TaskFailed,
    TaskSucceeded,
)
from taskstream.schemas.ids import new_event_id
from taskstream.schemas.quarantine import TOPIC as Q_TOPIC
from taskstream.schemas.serde import encode_event
from taskstream.settings import Settings
from taskstream.topics import cancellations_topic, quarantine_topic, ready_topic
from taskstream.workers import TaskContext, TaskRegistry
from taskstream.workers.flow import level_of_topic
from taskstream.workers.queuectl import set_paused
from tests.harness import TopicReader, wait_for
from tests.test_worker_support import (
    Events,
    ReadyWriter,
    committed,
    ready_envelope,
    running_worker,
    wait_assigned,
)

pytestmark = pytest.mark.kafka


@pytest.fixture
def events(topics: Settings) -> Any:
    reader = Events(topics)
    yield reader
    reader.close()


def test_success_path_events_in_order(topics: Settings, events: Events) -> None:
    writer = ReadyWriter(topics)
    env = ready_envelope("examples.slow", {"seconds": 0.5}, attempt=2, lease_ms=300)
    with running_worker(example_tasks.app, topics, concurrency=2) as worker:
        writer.send(env)
        events.wait_type(env.task_id, "TaskSucceeded")
        mine = events.of(env.task_id)
        assert mine[0].type_name == "TaskStarted"
        assert mine[-1].type_name == "TaskSucceeded"
        assert any(e.type_name == "LeaseRenewed" for e in mine[1:-1])  # every lease_ms/3
        dispatch_id = env.body.dispatch_id  # type: ignore[union-attr]
        for e in mine:
            assert e.attempt == 2 and e.source == f"worker:{worker.worker_id}"
            assert e.body.dispatch_id == dispatch_id  # type: ignore[union-attr]
            assert e.body.worker_id == worker.worker_id  # type: ignore[union-attr]
        done = mine[-1].body
        assert isinstance(done, TaskSucceeded) and json.loads(done.result) == {"slept": 0.5}
        body = env.body
        assert isinstance(body, TaskDispatched)
        topic = ready_topic(topics, "default", 0)
        wait_for("the ready offset to be committed",
                 lambda: sum(committed(topics, f"{topics.topic_prefix}workers.default", topic,
                                       topics.ready_partitions).values()) == 1)


def test_concurrency_bound_holds(topics: Settings, events: Events) -> None:
    app = TaskRegistry()
    lock = threading.Lock()
    now = {"in": 0, "max": 0}

    @app.task(name="count")
    async def count(payload: Any) -> None:
        with lock:
            now["in"] += 1
            now["max"] = max(now["max"], now["in"])
        await asyncio.sleep(0.2)
        with lock:
            now["in"] -= 1

    envs = [ready_envelope("count") for _ in range(12)]
    ReadyWriter(topics).send(*envs)
    with running_worker(app, topics, concurrency=3):
        events.wait("12 successes", lambda seen: sum(
            e.type_name == "TaskSucceeded" for e in seen) == 12)
    assert now["max"] == 3


def test_failures_timeout_retry_unknown(topics: Settings, events: Events) -> None:
    timeout = ready_envelope("examples.slow", {"seconds": 30}, timeout_ms=300)
    retry = ready_envelope("examples.flaky", None, attempt=1)
    unknown = ready_envelope("no.such.task", None)
    poison = ready_envelope("examples.poison", None)
    ReadyWriter(topics).send(timeout, retry, unknown, poison)
    with running_worker(example_tasks.app, topics, concurrency=4):
        failed = {e.task_id: e.body for e in (
            events.wait_type(x.task_id, "TaskFailed") for x in (timeout, retry, unknown, poison))}
    t = failed[timeout.task_id]
    assert isinstance(t, TaskFailed)
    assert (t.error_type, t.timed_out, t.retryable) == ("TaskTimeout", True, True)
    r = failed[retry.task_id]
    assert isinstance(r, TaskFailed) and r.retryable and r.retry_after_ms == 200
    u = failed[unknown.task_id]
    assert isinstance(u, TaskFailed) and u.error_type == "UnknownTask" and not u.retryable
    assert "no.such.task" in u.message
    p = failed[poison.task_id]
    assert isinstance(p, TaskFailed) and p.error_type == "PoisonError" and p.retryable
    assert "this task always fails" in p.traceback


def test_undecodable_record_is_quarantined_and_passed(topics: Settings, events: Events) -> None:
    writer = ReadyWriter(topics)
    topic = ready_topic(topics, "default", 0)
    garbage = b"\xc3\x01not an envelope at all"
    writer.send_raw(topic, b"same-key", garbage)
    after = ready_envelope("examples.noop", None)
    writer.send_to(topic, after)  # a different partition, maybe: the key is its task id
    quarantine = TopicReader(topics, quarantine_topic(topics))
    try:
        with running_worker(example_tasks.app, topics) as worker:
            events.wait_type(after.task_id, "TaskSucceeded")
            found = wait_for("the quarantined copy", lambda: [
                r for r in quarantine.consumer.consume(10, 0.5) if not r.error()])
            assert worker.metrics.quarantined.labels(topic)._value.get() == 1
        msg = found[0]
        assert msg.value() == garbage and msg.key() == b"same-key"
        headers = dict(msg.headers() or [])
        assert headers[Q_TOPIC] == topic.encode()
        group = f"{topics.topic_prefix}workers.default"
        assert sum(committed(topics, group, topic, topics.ready_partitions).values()) == 2
    finally:
        quarantine.close()


def cancellation(task_id: str, attempt: int = 1) -> Envelope:
    return Envelope(event_id=new_event_id(), task_id=task_id,
                    occurred_at_ms=int(time.time() * 1000), source="test", attempt=attempt,
                    body=TaskCancelled(reason="test"))


def test_cancellation_stops_a_running_coroutine_and_skips_a_waiting_task(
        topics: Settings, events: Events) -> None:
    writer = ReadyWriter(topics)
    cancelled_before = ready_envelope("examples.slow", {"seconds": 0.1})
    writer.send_to(cancellations_topic(topics), cancellation(cancelled_before.task_id))
    running = ready_envelope("examples.slow", {"seconds": 60})
    with running_worker(example_tasks.app, topics, concurrency=2):
        writer.send(running)
        events.wait_type(running.task_id, "TaskStarted")
        started = time.monotonic()
        writer.send_to(cancellations_topic(topics), cancellation(running.task_id))
        failed = events.wait_type(running.task_id, "TaskFailed").body
        assert time.monotonic() - started < 10
        assert isinstance(failed, TaskFailed) and failed.error_type == "Cancelled"
        assert not failed.retryable
        barrier = ready_envelope("examples.noop", None)
        writer.send(cancelled_before, barrier)
        events.wait_type(barrier.task_id, "TaskSucceeded")
        events.refresh()
    assert events.of(cancelled_before.task_id) == []


def test_higher_priority_starts_first(topics: Settings, events: Events) -> None:
    """The handler records the order it runs in (concurrency 1: the start order); the
    events topic cannot tell it: TaskStarted events of different tasks sit on different
    partitions, and a reader sees partitions in any order."""
    app = TaskRegistry()
    ran: list[str] = []

    @app.task(name="mark")
    async def mark(payload: Any, ctx: TaskContext) -> None:
        ran.append(ctx.task_id)

    low = [ready_envelope("mark", None, priority=0) for _ in range(5)]
    high = [ready_envelope("mark", None, priority=2) for _ in range(5)]
    ReadyWriter(topics).send(*low, *high)
    with running_worker(app, topics, concurrency=1):
        events.wait("10 successes", lambda seen: sum(
            e.type_name == "TaskSucceeded" for e in seen) == 10)
    assert set(ran[:5]) == {e.task_id for e in high}
    assert set(ran[5:]) == {e.task_id for e in low}


def test_two_workers_in_one_group_share_the_work(topics: Settings, events: Events) -> None:
    app = TaskRegistry()

    @app.task(name="work")
    async def work(payload: Any, ctx: TaskContext) -> None:
        await asyncio.sleep(0.05)

    with running_worker(app, topics) as one, running_worker(app, topics) as two:
        wait_for("both workers to hold partitions", lambda: all(
            any(w.assignment().values()) for w in (one, two)), timeout=30)
        envs = [ready_envelope("work", priority=i % 3) for i in range(30)]
        ReadyWriter(topics).send(*envs)
        events.wait("30 successes", lambda seen: sum(
            e.type_name == "TaskSucceeded" for e in seen) == 30)
        owners = {e.body.worker_id for e in events.seen  # type: ignore[union-attr]
                  if e.type_name == "TaskStarted"}
        assert owners == {one.worker_id, two.worker_id}


def test_a_second_worker_shares_the_level_all_tasks_use(topics: Settings,
                                                        events: Events) -> None:
    """Every level's partitions are spread over the workers (roundrobin, D21): with
    cooperative-sticky, a second worker got 4 of the 9 ready partitions, none of them
    p0's, so tasks of one priority all ran on one worker and adding it cut nothing
    but the rebalance."""
    app = TaskRegistry()

    @app.task(name="work")
    async def work(payload: Any) -> None:
        await asyncio.sleep(0.05)

    p0 = ready_topic(topics, "default", 0)
    with running_worker(app, topics, concurrency=4) as one:
        wait_assigned(one)
        with running_worker(app, topics, concurrency=4) as two:
            wait_for("both workers to hold partitions of every level", lambda: all(
                {level_of_topic(t) for t, _ in w.assignment()["default"]} == {0, 1, 2}
                for w in (one, two)), timeout=30)
            writer = ReadyWriter(topics)
            envs = [ready_envelope("work") for _ in range(4 * topics.ready_partitions)]
            for i, env in enumerate(envs):  # as many on every partition of p0
                writer.producer.produce(p0, key=env.task_id.encode(), value=encode_event(env),
                                        partition=i % topics.ready_partitions)
            assert writer.producer.flush(10) == 0
            events.wait(f"{len(envs)} successes", lambda seen: sum(
                e.type_name == "TaskSucceeded" for e in seen) == len(envs))
    owners = {e.body.worker_id for e in events.seen  # type: ignore[union-attr]
              if e.type_name == "TaskStarted"}
    assert owners == {one.worker_id, two.worker_id}


def test_paused_queue_starts_nothing_until_resumed(topics: Settings, events: Events) -> None:
    with running_worker(example_tasks.app, topics) as worker:
        wait_assigned(worker)
        set_paused(topics, "default", True)
        wait_for("the pause to reach the worker",
                 lambda: all(c.paused for c in worker._consumers))
        env = ready_envelope("examples.noop", None)
        ReadyWriter(topics).send(env)
        time.sleep(2)
        events.refresh()
        assert events.of(env.task_id) == []
        set_paused(topics, "default", False)
        events.wait_type(env.task_id, "TaskSucceeded")


def test_metrics_are_served(topics: Settings, events: Events) -> None:
    import urllib.request

    from tests.harness import free_port

    port = free_port()
    env = ready_envelope("examples.slow", {"seconds": 0.3}, lease_ms=300)
    with running_worker(example_tasks.app, topics, metrics_port=port):
        ReadyWriter(topics).send(env)
        events.wait_type(env.task_id, "TaskSucceeded")
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
            text = resp.read().decode()
    assert 'taskstream_worker_tasks_started_total{task="examples.slow"} 1.0' in text
    assert 'taskstream_worker_tasks_succeeded_total{task="examples.slow"} 1.0' in text
    assert 'taskstream_worker_queue_wait_seconds_count{queue="default"} 1.0' in text
    assert "taskstream_worker_in_flight 0.0" in text
    beats = [line for line in text.splitlines()
             if line.startswith("taskstream_worker_heartbeats_total")]
    assert beats and float(beats[0].split()[-1]) >= 1
