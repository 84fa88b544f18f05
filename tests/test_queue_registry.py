"""The queue registry's cache (taskstream/queue_registry.py, D31) without a broker: a known
queue costs no read, a miss reads the registry again before refusing, misses at the same
time share one read, and the refusal says how to register. The reads themselves run
against the real broker in test_producer_kafka.py and test_api_integration.py."""

from __future__ import annotations

import threading
import time

import pytest
from confluent_kafka import KafkaError, KafkaException

from taskstream import queue_registry
from taskstream.errors import KafkaUnavailableError, UnknownQueueError
from taskstream.queue_registry import KnownQueues, registered_queue, registration_key
from taskstream.settings import Settings
from taskstream.topics import registry_reader_group
from taskstream.workers.queuectl import parse_command


class Registry:
    """What the registry holds, and the reads made of it."""

    def __init__(self, *queues: str, pause_s: float = 0.0) -> None:
        self.queues = set(queues)
        self.reads = 0
        self.pause_s = pause_s
        self.groups: list[str] = []

    def read(self, settings: Settings, timeout_s: float, group: str) -> set[str]:
        self.reads += 1
        self.groups.append(group)
        time.sleep(self.pause_s)
        return set(self.queues)


@pytest.fixture
def registry(monkeypatch: pytest.MonkeyPatch) -> Registry:
    held = Registry("default")
    monkeypatch.setattr(queue_registry, "read_registered", held.read)
    return held


def test_a_known_queue_costs_one_read_and_a_miss_reads_again(registry: Registry) -> None:
    known = KnownQueues(Settings(), registry_reader_group)
    known.require(["default"])
    known.require(["default"])
    assert registry.reads == 1
    assert registry.groups[0].startswith(Settings().topic("registry."))  # the client's ACL
    registry.queues.add("emails")  # registered meanwhile (topics create, POST /queues)
    known.require(["default", "emails"])
    assert registry.reads == 2
    assert "emails" in known


def test_an_unknown_queue_is_refused_with_how_to_register_it(registry: Registry) -> None:
    known = KnownQueues(Settings(), registry_reader_group)
    with pytest.raises(UnknownQueueError) as refused:
        known.require(["reports", "default", "images"])
    assert refused.value.queues == ["images", "reports"]
    assert not refused.value.retriable
    message = str(refused.value)
    assert "'images', 'reports' are not registered" in message
    assert "taskstream topics create --queues images,reports" in message
    assert "POST /queues" in message
    assert known.missing(["default"]) == []


def test_misses_at_the_same_time_share_one_read(monkeypatch: pytest.MonkeyPatch) -> None:
    slow = Registry("default", pause_s=0.3)
    monkeypatch.setattr(queue_registry, "read_registered", slow.read)
    known = KnownQueues(Settings(), registry_reader_group)
    known.require(["default"])  # one read
    slow.queues.add("late")
    errors: list[Exception] = []

    def submit() -> None:
        try:
            known.require(["late"])
        except Exception as exc:  # collected, checked below
            errors.append(exc)

    threads = [threading.Thread(target=submit) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert not errors
    assert slow.reads <= 3  # one read answered the misses waiting for it (not six reads)


def test_a_registry_that_cannot_be_read_is_a_retriable_error(
        monkeypatch: pytest.MonkeyPatch) -> None:
    def down(settings: Settings, timeout_s: float, group: str) -> set[str]:
        raise KafkaException(KafkaError(KafkaError._TRANSPORT))

    monkeypatch.setattr(queue_registry, "read_registered", down)
    with pytest.raises(KafkaUnavailableError, match="queue registry") as failed:
        KnownQueues(Settings(), registry_reader_group).require(["default"])
    assert failed.value.retriable


def test_registry_records_and_pause_commands_never_share_a_key() -> None:
    key = registration_key("emails")
    assert registered_queue(key) == "emails"
    assert registered_queue(b"emails") is None  # a pause command's key
    assert parse_command(key, b'{"registered_at_ms": 1}') is None
    assert parse_command(key, None) is None  # not "resume a queue named registered/emails"
