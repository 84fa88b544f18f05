"""Helpers for the worker integration tests: ready records in, worker events out."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from confluent_kafka import Consumer, Producer, TopicPartition

from taskstream.schemas.events import Envelope, TaskDispatched
from taskstream.schemas.ids import new_event_id, new_task_id
from taskstream.schemas.serde import encode_event
from taskstream.settings import Settings
from taskstream.topics import events_topic, ready_topic
from taskstream.workers import TaskRegistry, Worker
from tests.harness import TopicReader


def ready_envelope(name: str, payload: Any = None, *, priority: int = 0, attempt: int = 1,
                   timeout_ms: int | None = None, lease_ms: int = 30_000,
                   task_id: str | None = None, queue: str = "default") -> Envelope:
    task_id = task_id or new_task_id()
    body = TaskDispatched(
        dispatch_id=f"{task_id}:{attempt}", name=name, queue=queue, priority=priority,
        payload=json.dumps(payload).encode(), content_type="application/json",
        timeout_ms=timeout_ms, lease_ms=lease_ms, max_attempts=3,
        submitted_at_ms=int(time.time() * 1000), idempotency_key=None, headers={},
    )
    return Envelope(event_id=new_event_id(), task_id=task_id,
                    occurred_at_ms=int(time.time() * 1000), source="test", attempt=attempt,
                    body=body)


class ReadyWriter:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.producer = Producer({"bootstrap.servers": settings.bootstrap, "acks": "all",
                                  "enable.idempotence": True, "partitioner": "murmur2_random",
                                  "linger.ms": 1})

    def send(self, *envelopes: Envelope) -> None:
        for env in envelopes:
            body = env.body
            assert isinstance(body, TaskDispatched)
            self.producer.produce(ready_topic(self.settings, body.queue, body.priority),
                                  key=env.task_id.encode(), value=encode_event(env))
        assert self.producer.flush(10) == 0

    def send_raw(self, topic: str, key: bytes, value: bytes) -> None:
        self.producer.produce(topic, key=key, value=value)
        assert self.producer.flush(10) == 0

    def send_to(self, topic: str, env: Envelope) -> None:
        self.send_raw(topic, env.task_id.encode(), encode_event(env))


class Events:
    """The events topic as the worker wrote it, accumulated across reads."""

    def __init__(self, settings: Settings) -> None:
        self.reader = TopicReader(settings, events_topic(settings))
        self.seen: list[Envelope] = []

    def refresh(self) -> list[Envelope]:
        self.seen.extend(self.reader.envelopes(0.2))
        return self.seen

    def of(self, task_id: str, type_name: str | None = None) -> list[Envelope]:
        return [e for e in self.seen if e.task_id == task_id
                and (type_name is None or e.type_name == type_name)]

    def wait(self, what: str, check: Callable[[list[Envelope]], bool],
             timeout: float = 30.0) -> list[Envelope]:
        deadline = time.monotonic() + timeout
        while True:
            if check(self.refresh()):
                return self.seen
            if time.monotonic() > deadline:
                kinds = [(e.task_id[-6:], e.type_name) for e in self.seen]
                raise AssertionError(f"timed out after {timeout}s waiting for {what}; "
                                     f"events: {kinds}")

    def wait_type(self, task_id: str, type_name: str, timeout: float = 30.0) -> Envelope:
        self.wait(f"{type_name} of {task_id}", lambda _: bool(self.of(task_id, type_name)),
                  timeout)
        return self.of(task_id, type_name)[0]

    def close(self) -> None:
        self.reader.close()


@contextmanager
def running_worker(app: TaskRegistry, settings: Settings, **kwargs: Any) -> Iterator[Worker]:
    """A Worker running in a background thread with its own event loop."""
    worker = Worker(app, settings, **kwargs)
    errors: list[BaseException] = []
    started = threading.Event()

    def main() -> None:
        async def go() -> None:
            task = asyncio.create_task(worker.run())
            await worker.wait_started(60)
            started.set()
            await task

        try:
            asyncio.run(go())
        except BaseException as exc:
            errors.append(exc)
            started.set()

    thread = threading.Thread(target=main, name="test-worker", daemon=True)
    thread.start()
    assert started.wait(60), "the worker did not start within 60 s"
    if errors:
        raise errors[0]
    try:
        yield worker
    finally:
        worker.request_stop()
        thread.join(60)
        assert not thread.is_alive(), "the worker did not stop within 60 s"
        if errors:
            raise errors[0]


def wait_assigned(worker: Worker, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not any(worker.assignment().values()):
        assert time.monotonic() < deadline, "the worker got no partitions"
        time.sleep(0.05)


def committed(settings: Settings, group_id: str, topic: str, partitions: int) -> dict[int, int]:
    consumer = Consumer({"bootstrap.servers": settings.bootstrap, "group.id": group_id,
                         "enable.auto.commit": False})
    try:
        parts = consumer.committed([TopicPartition(topic, p) for p in range(partitions)],
                                   timeout=10)
        return {p.partition: p.offset for p in parts if p.offset >= 0}
    finally:
        consumer.close()
