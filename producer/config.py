"""The librdkafka configuration of the task producer, derived from Settings.

The durability keys (idempotence, acks=all, murmur2_random) are fixed by
:func:`taskstream.kafka_config.producer_config`; this module adds the task
producer's own tuning (batching, compression, timeouts) and the caller's overrides.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping
from typing import Any

from taskstream.kafka_config import producer_config
from taskstream.settings import Settings


def default_source() -> str:
    """``producer:<host>:<pid>``, the envelope's ``source`` for this process."""
    return f"producer:{socket.gethostname()}:{os.getpid()}"


def kafka_config(settings: Settings, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """librdkafka settings for a durable, ordered, idempotent task producer."""
    delivery_ms = int(settings.delivery_timeout_s * 1000)
    return producer_config(settings, {
        "client.id": default_source(),
        "compression.type": settings.compression,
        "linger.ms": settings.linger_ms,
        "queue.buffering.max.messages": settings.producer_queue_max,
        "message.timeout.ms": delivery_ms,
        "request.timeout.ms": min(30_000, max(1_000, delivery_ms)),
        "batch.size": 1_000_000,
        "message.max.bytes": max(1_000_000, settings.max_payload_bytes + 64 * 1024),
        # topics are created by `taskstream topics create` with the right partition
        # count; a producer that auto-creates one would create it wrong
        "allow.auto.create.topics": False,
        "socket.connection.setup.timeout.ms": max(1_000, int(settings.kafka_timeout_s * 1000)),
        "reconnect.backoff.max.ms": 1_000,
        # librdkafka's own log lines go to Python logging, not raw to stderr
        "logger": logging.getLogger("taskstream.producer.kafka"),
    }, overrides)
