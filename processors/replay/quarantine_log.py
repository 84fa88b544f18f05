"""The quarantine topic read back: what was set aside, from where, and why.

Records land there unchanged (original key and value) with headers naming
their origin and the reason (``schemas/quarantine.py``): bytes no reader could
decode, derived records on the events topic, or an event the fold refused
(D11). Nothing on the events topic is lost by it: the original stays where it
was, so ``replay history`` of the task shows it too. This module lists them for
an operator (``taskstream quarantine list``) with the assign-only, no-commit
reader the replay uses; a record whose headers are missing or garbled is
listed with that problem rather than skipped.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any

from taskstream.processors.replay.read import make_consumer, plan, read_batches
from taskstream.schemas.errors import DecodeError, QuarantineHeaderError
from taskstream.schemas.quarantine import QuarantineRecord
from taskstream.schemas.serde import decode_event
from taskstream.settings import Settings
from taskstream.topics import quarantine_topic


@dataclass(frozen=True, slots=True)
class Quarantined:
    """One record of the quarantine topic."""

    partition: int  # where it sits on the quarantine topic
    offset: int
    timestamp_ms: int  # Kafka's timestamp of the quarantined copy
    origin: QuarantineRecord | None  # None when its headers are missing or garbled
    problem: str | None  # why origin is None
    key: bytes | None
    value: bytes | None

    @property
    def event(self) -> str:
        """What the value decodes to ("TaskStarted of <task>"), or why it does not."""
        if self.value is None:
            return "(no value)"
        try:
            envelope = decode_event(self.value)
        except DecodeError:
            return "(undecodable)"
        return f"{envelope.type_name} of {envelope.task_id}"

    def to_json(self) -> dict[str, Any]:
        origin = self.origin
        return {
            "partition": self.partition,
            "offset": self.offset,
            "timestamp_ms": self.timestamp_ms,
            "origin": None
            if origin is None
            else {"topic": origin.topic, "partition": origin.partition, "offset": origin.offset},
            "reason": origin.reason if origin is not None else None,
            "quarantined_at_ms": origin.at_ms if origin is not None else None,
            "problem": self.problem,
            "event": self.event,
            "key": self.key.decode("utf-8", "replace") if self.key is not None else None,
            "value_base64": base64.b64encode(self.value).decode("ascii")
            if self.value is not None
            else None,
            "value_bytes": len(self.value) if self.value is not None else 0,
        }


def _quarantined(message: Any) -> Quarantined:
    origin: QuarantineRecord | None = None
    problem: str | None = None
    try:
        origin = QuarantineRecord.from_headers(message.headers())
    except QuarantineHeaderError as exc:
        problem = str(exc)
    return Quarantined(
        partition=message.partition(),
        offset=message.offset(),
        timestamp_ms=message.timestamp()[1],
        origin=origin,
        problem=problem,
        key=message.key(),
        value=message.value(),
    )


def read_quarantine(
    settings: Settings, *, newest: int | None = None
) -> tuple[list[Quarantined], int]:
    """Every record on the quarantine topic (the ``newest`` N when given), oldest first,
    and how many there are in all."""
    consumer = make_consumer(settings)
    try:
        read = plan(consumer, settings, quarantine_topic(settings))
        records = [
            _quarantined(m)
            for batch in read_batches(consumer, read, settings.kafka_timeout_s)
            for m in batch
        ]
    finally:
        consumer.close()
    records.sort(key=lambda r: (r.timestamp_ms, r.partition, r.offset))
    total = len(records)
    if newest is not None:
        records = records[-newest:] if newest else []
    return records, total
