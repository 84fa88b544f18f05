"""Helpers for integration tests: run processor replicas as real processes, write
events, read topics and task state back. Everything talks to the real broker.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    Message,
    Producer,
    TopicPartition,
)

from taskstream.dev.procs import free_port, settings_env
from taskstream.kafka_config import consumer_config
from taskstream.schemas.events import Envelope, EventBody
from taskstream.schemas.ids import new_event_id
from taskstream.schemas.serde import decode_entity, decode_event, encode_event
from taskstream.schemas.state import EntityState, TaskState
from taskstream.settings import Settings

T = TypeVar("T")


def wait_for(what: str, check: Callable[[], T | None], timeout: float = 30.0,
             interval: float = 0.1) -> T:
    """Poll ``check`` until it returns something truthy; fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


class ProcessorProcess:
    """One ``taskstream processor`` replica in a child process."""

    def __init__(self, settings: Settings, data_dir: Path, web_port: int | None = None,
                 env: Mapping[str, str] | None = None) -> None:
        self.settings = settings
        self.data_dir = data_dir
        self.env = dict(env or {})  # added to the settings' environment (fault points, ...)
        self.web_port = web_port or free_port()
        self.url = f"http://127.0.0.1:{self.web_port}"
        self.log_path = data_dir.parent / f"processor-{self.web_port}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, ready_timeout: float = 60.0) -> ProcessorProcess:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "taskstream", "processor",
                 "--web-port", str(self.web_port), "--data-dir", str(self.data_dir)],
                env={**settings_env(self.settings), **self.env},
                stdout=log, stderr=subprocess.STDOUT,
            )
        wait_for(f"processor on :{self.web_port} to be ready (log {self.log_path})",
                 self._ready, timeout=ready_timeout, interval=0.2)
        return self

    def _ready(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"processor exited with {self.proc.returncode}:\n{self.log()}")
        return "Worker]: Ready" in self.log()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)

    def kill(self) -> None:
        self.stop(signal.SIGKILL)


@contextmanager
def processors(settings: Settings, base: Path, count: int = 1) -> Iterator[list[ProcessorProcess]]:
    procs = [ProcessorProcess(settings, base / f"replica{i}") for i in range(count)]
    try:
        for p in procs:
            p.start()
        yield procs
    finally:
        for p in procs:
            p.stop()


class EventWriter:
    """Writes envelopes to the events topic the way every client must."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.producer = Producer({
            "bootstrap.servers": settings.bootstrap,
            "partitioner": "murmur2_random",
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 1,
        })

    def send(self, task_id: str, body: EventBody, attempt: int = 0,
             occurred_at_ms: int | None = None, source: str = "test") -> Envelope:
        if occurred_at_ms is None:
            occurred_at_ms = int(time.time() * 1000)
        env = Envelope(
            event_id=new_event_id(),
            task_id=task_id,
            occurred_at_ms=occurred_at_ms,
            source=source,
            attempt=attempt,
            body=body,
        )
        self.send_envelope(env)
        return env

    def send_envelope(self, env: Envelope) -> None:
        self.producer.produce(self.settings.topic("events"), key=env.task_id.encode(),
                              value=encode_event(env))
        remaining = self.producer.flush(10)
        assert remaining == 0, "event not delivered within 10 s"


class TopicReader:
    """Reads a topic from the beginning, keeping its position between calls."""

    def __init__(self, settings: Settings, topic: str) -> None:
        self.topic = topic
        self.consumer = Consumer({
            "bootstrap.servers": settings.bootstrap,
            "group.id": f"test-reader-{new_event_id()}",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
        })
        meta = self.consumer.list_topics(topic, timeout=10).topics[topic]
        self.consumer.assign([TopicPartition(topic, p, 0) for p in meta.partitions])

    def messages(self, timeout: float = 0.5) -> list[Message]:
        return [msg for msg in self.consumer.consume(1000, timeout) if not msg.error()]

    def poll_raw(self, timeout: float = 0.5) -> list[tuple[bytes | None, bytes | None, int, int]]:
        return [(m.key(), m.value(), m.partition(), m.offset()) for m in self.messages(timeout)]

    def envelopes(self, timeout: float = 0.5) -> list[Envelope]:
        return [decode_event(v) for _, v, _, _ in self.poll_raw(timeout) if v is not None]

    def close(self) -> None:
        self.consumer.close()


def read_to_end(settings: Settings, topic: str) -> list[Message]:
    """Every record of ``topic`` up to its end now (with the settings' credentials; the group
    is under the topic prefix, which the admin role may use)."""
    consumer = Consumer(consumer_config(settings, settings.topic(f"reader.{new_event_id()}"),
                                        {"enable.partition.eof": True}))
    try:
        parts = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in parts])
        found: list[Message] = []
        ends: set[int] = set()
        deadline = time.monotonic() + 30
        while len(ends) < len(parts) and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            error = msg.error()
            if error is None:
                found.append(msg)
            elif error.code() == KafkaError._PARTITION_EOF:
                ends.add(msg.partition())
        assert len(ends) == len(parts), f"{topic} not read to its end in 30 s"
        return found
    finally:
        consumer.close()


class StateReader:
    """The latest state of every task (``states``) and of every other entity
    (``entities``: schedules, groups, limits, keys), read from the processor's task
    changelog.

    Every task state read is kept too (``history``): one poll can bring a task's
    SCHEDULED and READY records together, and a test looking for a passing
    state must not miss it because the next one arrived in the same poll.
    """

    def __init__(self, settings: Settings) -> None:
        self.reader = TopicReader(settings, f"{settings.topic_prefix}processor-tasks-changelog")
        self.states: dict[str, TaskState] = {}
        self.history: dict[str, list[TaskState]] = {}
        self.entities: dict[str, EntityState] = {}

    def refresh(self) -> dict[str, TaskState]:
        for key, value, _, _ in self.reader.poll_raw(0.2):
            if key is not None and value is not None:
                state = decode_entity(value)
                if isinstance(state, TaskState):
                    self.states[key.decode()] = state
                    self.history.setdefault(key.decode(), []).append(state)
                else:
                    self.entities[key.decode()] = state
        return self.states

    def refresh_entities(self) -> dict[str, EntityState]:
        self.refresh()
        return self.entities

    def wait_passed(self, task_id: str, predicate: Callable[[TaskState], bool], what: str,
                    timeout: float = 30.0) -> TaskState:
        """The first state of ``task_id`` that met ``predicate``, even if a later one followed."""
        def check() -> TaskState | None:
            self.refresh()
            return next((s for s in self.history.get(task_id, ()) if predicate(s)), None)

        return wait_for(f"task {task_id}: {what}", check, timeout=timeout, interval=0.05)

    def wait(self, task_id: str, predicate: Callable[[TaskState], bool], what: str,
             timeout: float = 30.0) -> TaskState:
        def check() -> TaskState | None:
            state = self.refresh().get(task_id)
            return state if state is not None and predicate(state) else None

        return wait_for(f"task {task_id}: {what}", check, timeout=timeout, interval=0.05)


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM a process the test started, SIGKILL it after 30 s (a bounded wait)."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
