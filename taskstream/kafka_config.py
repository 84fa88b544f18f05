"""The confluent-kafka client configurations of every part, built in one place.

Durability is not negotiable for a producer: idempotence on, ``acks=all``, so a
broker ack means the record is on every in-sync replica and a client retry never
writes it twice; ``partitioner=murmur2_random`` puts a key on the same partition
as the Java client, aiokafka and Faust do (DESIGN.md, "Topics"). Those keys are
fixed here; each role (the SDK's task producer, the worker's emitter, queue
commands) passes only its own tuning (linger, compression, timeouts), and a
caller may never override the fixed keys.

Consumers never auto-commit: a part that commits does so itself, after the
work is done (workers), or never (replay, the API's reads).

Every client logs through Python's ``logging`` (logger ``taskstream.kafka``, unless
a role passes its own ``logger``), never straight to stderr: its lines then take
the process's log format, JSON lines included (docs/observability.md, "Logs").
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from taskstream.errors import ConfigError
from taskstream.settings import Settings

#: Keys a role may not override: they carry the delivery guarantee.
DURABLE_PRODUCER: Mapping[str, Any] = {
    "enable.idempotence": True,
    "acks": "all",
    "partitioner": "murmur2_random",
}
FIXED_KEYS = frozenset(DURABLE_PRODUCER)

#: where librdkafka's own lines go (a role may pass another ``logger``)
KAFKA_LOGGER = logging.getLogger("taskstream.kafka")


def producer_config(settings: Settings, *overrides: Mapping[str, Any] | None) -> dict[str, Any]:
    """A durable producer's librdkafka settings: the fixed keys, then each mapping of overrides.

    Raises :class:`ConfigError` when an override names a fixed key.
    """
    config: dict[str, Any] = {"bootstrap.servers": settings.bootstrap, "logger": KAFKA_LOGGER,
                              **DURABLE_PRODUCER}
    for layer in overrides:
        for key, value in (layer or {}).items():
            if key in FIXED_KEYS:
                raise ConfigError(
                    f"producer config {key!r} cannot be overridden: every taskstream producer "
                    "runs idempotent with acks=all and the murmur2_random partitioner"
                )
            config[key] = value
    return config


def consumer_config(settings: Settings, group_id: str, overrides: Mapping[str, Any] | None = None
                    ) -> dict[str, Any]:
    """A consumer's librdkafka settings: never auto-commits; the role adds the rest."""
    return {"bootstrap.servers": settings.bootstrap, "group.id": group_id,
            "enable.auto.commit": False, "logger": KAFKA_LOGGER, **(overrides or {})}
