"""Queue commands on the compacted ``queues`` topic (key = queue name).

The value is JSON: ``{"paused": true|false, "updated_at_ms": ...}``. Every
worker reads the topic from the beginning and pauses or resumes its consumer
of that queue; the latest record per queue wins, a tombstone means "running".
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

from confluent_kafka import Producer

from taskstream.errors import KafkaUnavailableError
from taskstream.kafka_config import producer_config
from taskstream.settings import Settings
from taskstream.topics import QUEUE_NAME, queues_topic


@dataclass(frozen=True, slots=True)
class QueueCommand:
    queue: str
    paused: bool
    updated_at_ms: int = 0


def encode_command(paused: bool, updated_at_ms: int) -> bytes:
    return json.dumps({"paused": paused, "updated_at_ms": updated_at_ms}).encode()


def parse_command(key: bytes | None, value: bytes | None) -> QueueCommand | None:
    """A queues-topic record as a command; None when it is not one we understand (a
    registry record, ``registered/<queue>``, is not: no queue name holds a ``/``)."""
    if not key or b"/" in key:
        return None
    queue = key.decode("utf-8", "replace")
    if value is None:
        return QueueCommand(queue, paused=False)  # tombstone: settings removed
    try:
        data = json.loads(value)
    except ValueError:
        return None
    if not isinstance(data, dict) or not isinstance(data.get("paused"), bool):
        return None
    updated = data.get("updated_at_ms")
    return QueueCommand(queue, data["paused"], updated if isinstance(updated, int) else 0)


def set_paused(settings: Settings, queue: str, paused: bool) -> QueueCommand:
    """Pause or resume ``queue`` on every worker: produce the command and wait for its ack."""
    if not QUEUE_NAME.match(queue):
        raise ValueError(f"{queue!r} is not a legal queue name (1-64 letters, digits, '_' or '-')")
    command = QueueCommand(queue, paused, time.time_ns() // 1_000_000)
    producer = Producer(producer_config(settings))
    errors: list[str] = []
    producer.produce(queues_topic(settings), key=queue.encode(),
                     value=encode_command(paused, command.updated_at_ms),
                     on_delivery=lambda err, _msg: errors.append(str(err)) if err else None)
    if producer.flush(settings.kafka_timeout_s) or errors:
        raise KafkaUnavailableError(
            f"could not write the {'pause' if paused else 'resume'} command for queue {queue!r} "
            f"to {queues_topic(settings)} within {settings.kafka_timeout_s}s "
            f"({'; '.join(errors) or 'no acknowledgement'}); check that Kafka is up and retry"
        )
    return command
