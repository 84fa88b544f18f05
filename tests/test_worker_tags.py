"""Routing by tags against the real broker (D38): tagged ready records only ever start on a
worker whose tags include theirs; untagged ones go to any worker of the queue.

Given a worker started with tags ``gpu`` and a worker without tags, in one consumer group,
when records are written to the ``gpu`` ready topic, the ``gpu,ssd`` ready topic and the
untagged one, then every ``gpu`` record starts on the gpu worker, the ``gpu,ssd`` ones on
no worker at all (neither has ``ssd``), and the untagged ones start (on either).
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import pytest

from taskstream.admin import TopicSpec, create_topics
from taskstream.schemas.events import Backoff, FlowControl, TaskSubmitted
from taskstream.schemas.ids import new_task_id
from taskstream.schemas.state import TaskStatus
from taskstream.settings import Settings
from taskstream.topics import ready_topic
from taskstream.workers import TaskApp
from tests.harness import EventWriter, ProcessorProcess, StateReader, read_to_end, wait_for
from tests.test_worker_support import Events, ReadyWriter, ready_envelope, running_worker

pytestmark = [pytest.mark.kafka]


def _app() -> TaskApp:
    app = TaskApp("tags")

    @app.task(name="tags.work")
    def work(payload: object) -> object:
        time.sleep(0.01)  # long enough that one worker cannot take everything at once
        return payload

    return app


def test_gpu_tagged_tasks_start_only_on_the_gpu_worker(topics: Settings) -> None:
    gpu_topic = ready_topic(topics, "default", 0, ["gpu"])
    both_topic = ready_topic(topics, "default", 0, ["ssd", "gpu"])
    assert gpu_topic.endswith("ready.default.t.gpu.p0")
    assert both_topic.endswith("ready.default.t.gpu.ssd.p0")
    create_topics(topics, [TopicSpec(t, topics.ready_partitions) for t in (gpu_topic,
                                                                           both_topic)])
    writer, events = ReadyWriter(topics), Events(topics)
    app = _app()
    with running_worker(app, topics, tags=["gpu"], concurrency=4) as gpu, \
            running_worker(app, topics, concurrency=4) as plain:
        gpu_envs = [ready_envelope("tags.work", i) for i in range(30)]
        both_envs = [ready_envelope("tags.work", i) for i in range(5)]
        plain_envs = [ready_envelope("tags.work", i) for i in range(30)]
        for env in gpu_envs:
            writer.send_to(gpu_topic, env)
        for env in both_envs:
            writer.send_to(both_topic, env)
        writer.send(*plain_envs)
        wanted = {e.task_id for e in gpu_envs + plain_envs}

        def all_started(seen: list[object]) -> bool:
            return wanted <= {e.task_id for e in events.seen if e.type_name == "TaskStarted"}

        events.wait("every gpu and untagged record to start", all_started, timeout=90)
        time.sleep(1.0)  # give a wrong start of a gpu,ssd record the chance to show
        events.refresh()
        starts = {e.task_id: e.body.worker_id for e in events.seen  # type: ignore[union-attr]
                  if e.type_name == "TaskStarted"}
        assert {starts[e.task_id] for e in gpu_envs} == {gpu.worker_id}
        assert not {e.task_id for e in both_envs} & set(starts), "no worker has gpu+ssd"
        assert {starts[e.task_id] for e in plain_envs} <= {gpu.worker_id, plain.worker_id}
        assert gpu.assignment()["default"] >= {(gpu_topic, p)
                                              for p in range(topics.ready_partitions)}
        assert not any(t == gpu_topic for t, _ in plain.assignment()["default"])
    events.close()


def test_the_processor_routes_tagged_tasks_to_their_topic(topics: Settings,
                                                           tmp_path: Path) -> None:
    """End to end: tasks submitted with tags ``gpu`` go through the fold to the ``gpu`` ready
    topic (made when first met) and run only on the gpu worker; untagged ones run too. So
    do tagged tasks that first wait for a slot of a concurrency key (D32): the dispatch
    the key's grant causes is routed by their tags as well."""
    replica = ProcessorProcess(topics, tmp_path / "replica0").start()
    app = _app()
    try:
        writer, states = EventWriter(topics), StateReader(topics)
        gpu_ids = [new_task_id() for _ in range(20)]
        plain_ids = [new_task_id() for _ in range(20)]
        keyed_ids = [new_task_id() for _ in range(5)]
        with running_worker(app, topics, tags=["gpu"], concurrency=4) as gpu, \
                running_worker(app, topics, concurrency=4) as plain:
            for task_id in gpu_ids:
                writer.send(task_id, _submitted(["gpu"]))
            for task_id in plain_ids:
                writer.send(task_id, _submitted([]))
            for task_id in keyed_ids:
                writer.send(task_id, dataclasses.replace(_submitted(["gpu"]), flow=FlowControl(
                    concurrency_key="render-farm", max_concurrency=2)))
            wait_for("every task to succeed", lambda: all(
                (s := states.refresh().get(t)) is not None and s.status is TaskStatus.SUCCEEDED
                for t in gpu_ids + plain_ids + keyed_ids), timeout=120, interval=0.5)
        final = states.refresh()
        assert {final[t].worker_id for t in gpu_ids + keyed_ids} == {gpu.worker_id}
        assert {final[t].worker_id for t in plain_ids} <= {gpu.worker_id, plain.worker_id}
        assert {tuple(final[t].tags) for t in gpu_ids} == {("gpu",)}
        routed = {m.key() for level in range(topics.priority_levels)
                  for m in read_to_end(topics, ready_topic(topics, "default", level, ["gpu"]))}
        assert {t.encode() for t in gpu_ids + keyed_ids} <= routed
    finally:
        replica.stop()


def _submitted(tags: list[str]) -> TaskSubmitted:
    return TaskSubmitted(
        name="tags.work", queue="default", priority=0, payload=b"1",
        content_type="application/json", eta_ms=None, max_attempts=3, backoff=Backoff(),
        timeout_ms=None, lease_ms=30_000, tags=tags)
