"""The librdkafka configuration of the task producer, derived from Settings.

Durability is not negotiable here: idempotence on, acks=all, so a broker ack
means the event is on every in-sync replica and a client retry never writes it
twice. ``partitioner=murmur2_random`` puts a key on the same partition as the
Java client, aiokafka and Faust do (DESIGN.md, "Topics").
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from typing import Any

from taskstream.errors import ConfigError
from taskstream.settings import Settings

#: Keys the caller may not override: they carry the delivery guarantee.
FIXED_KEYS = frozenset({"enable.idempotence", "acks", "partitioner"})


def default_source() -> str:
    """``producer:<host>:<pid>``, the envelope's ``source`` for this process."""
    return f"producer:{socket.gethostname()}:{os.getpid()}"


def kafka_config(settings: Settings, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """librdkafka settings for a durable, ordered, idempotent task producer."""
    delivery_ms = int(settings.delivery_timeout_s * 1000)
    config: dict[str, Any] = {
        "bootstrap.servers": settings.bootstrap,
        "client.id": default_source(),
        "enable.idempotence": True,
        "acks": "all",
        "partitioner": "murmur2_random",
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
    }
    for key, value in (overrides or {}).items():
        if key in FIXED_KEYS:
            raise ConfigError(
                f"producer config {key!r} cannot be overridden: the task producer always runs "
                "idempotent with acks=all and the murmur2_random partitioner"
            )
        config[key] = value
    return config
