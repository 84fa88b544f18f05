"""``replay export``: the events topic as a file outside tools can read.

* ``avro``: an Avro object container file (fastavro, deflate) whose schema is the
  envelope schema this build writes (``taskstream.schemas.catalog``), one record per
  event in partition order, offset order within a partition. The file metadata
  holds ``taskstream.topic`` and ``taskstream.ranges`` (JSON: partition -> [first,
  end) offsets read). Any Avro reader (fastavro, Java ``avro-tools``, Spark) reads it.
* ``jsonl``: one JSON object per event: the Kafka position (``partition``,
  ``offset``, ``timestamp_ms``), the envelope fields, ``type`` and ``body``. A bytes
  field whose content type (``content_type`` for ``payload``, ``result_content_type``
  for ``result``) is JSON and parses is written as that JSON value; any other bytes
  field is written base64 under ``<name>_base64``.

``--since``/``--until`` select by Kafka record timestamp (inclusive); the first and
last offsets come from the broker's time index, and each record is checked again.
Records that do not decode are skipped and reported with partition and offset.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import IO, Any

import fastavro

from taskstream.processors.replay.errors import ReplayError
from taskstream.processors.replay.folding import FoldStats
from taskstream.processors.replay.read import (
    ProgressFactory,
    SkippedRecord,
    make_consumer,
    no_progress,
    offsets_for_time,
    partition_count,
    plan,
    read_batches,
)
from taskstream.schemas.catalog import catalog
from taskstream.schemas.convert import envelope_to_record
from taskstream.schemas.errors import DecodeError
from taskstream.schemas.events import Envelope
from taskstream.schemas.serde import decode_event
from taskstream.settings import Settings
from taskstream.topics import events_topic

FORMATS = ("avro", "jsonl")
_CONTENT_TYPE_OF = {"payload": "content_type", "result": "result_content_type"}


@dataclass(frozen=True, slots=True)
class ExportResult:
    out: Path
    format: str
    events: int
    skipped: int
    skipped_details: tuple[SkippedRecord, ...]
    seconds: float

    def summary(self) -> dict[str, Any]:
        return {"out": str(self.out), "format": self.format, "events": self.events,
                "skipped": self.skipped, "seconds": round(self.seconds, 3)}


def _json_bytes(name: str, value: bytes, content_type: str | None) -> tuple[str, Any]:
    if content_type and "json" in content_type.lower():
        try:
            return name, json.loads(value)
        except ValueError:
            pass
    return f"{name}_base64", base64.b64encode(value).decode("ascii")


def body_to_json(body: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in fields(body):
        value = getattr(body, f.name)
        if isinstance(value, bytes):
            ct_field = _CONTENT_TYPE_OF.get(f.name)
            key, value = _json_bytes(f.name, value, getattr(body, ct_field, None)
                                     if ct_field else None)
            out[key] = value
        elif hasattr(value, "__dataclass_fields__"):
            out[f.name] = {g.name: getattr(value, g.name) for g in fields(value)}
        elif hasattr(value, "value") and not isinstance(value, int | float | str):
            out[f.name] = value.value
        else:
            out[f.name] = value
    return out


def envelope_to_json(env: Envelope, partition: int, offset: int, timestamp_ms: int) -> str:
    return json.dumps({
        "partition": partition,
        "offset": offset,
        "timestamp_ms": timestamp_ms,
        "event_id": env.event_id,
        "task_id": env.task_id,
        "occurred_at_ms": env.occurred_at_ms,
        "source": env.source,
        "attempt": env.attempt,
        "type": env.type_name,
        "body": body_to_json(env.body),
    }, separators=(",", ":"), default=str)


def _decoded(batches: Iterator[list[Any]], since_ms: int | None, until_ms: int | None,
             counts: FoldStats) -> Iterator[tuple[Envelope, int, int, int]]:
    for batch in batches:
        for m in batch:
            ts = m.timestamp()[1]
            if (since_ms is not None and ts < since_ms) or (until_ms is not None and ts > until_ms):
                continue
            value = m.value()
            try:
                env = decode_event(value if isinstance(value, bytes) else b"")
            except DecodeError as exc:
                counts.skip(SkippedRecord(m.partition(), m.offset(), str(exc)))
                continue
            counts.events += 1
            yield env, m.partition(), m.offset(), ts


def _write_avro(fo: IO[bytes], items: Iterator[tuple[Envelope, int, int, int]],
                metadata: Mapping[str, str]) -> None:
    schema = catalog().envelope.parsed
    fastavro.writer(fo, schema, (envelope_to_record(env) for env, _, _, _ in items),
                    codec="deflate", metadata=dict(metadata))


def _write_jsonl(fo: IO[bytes], items: Iterator[tuple[Envelope, int, int, int]]) -> None:
    for env, partition, offset, ts in items:
        fo.write(envelope_to_json(env, partition, offset, ts).encode())
        fo.write(b"\n")


def export(
    settings: Settings, fmt: str, out: Path, *, since_ms: int | None = None,
    until_ms: int | None = None, progress: ProgressFactory = no_progress,
) -> ExportResult:
    if fmt not in FORMATS:
        raise ReplayError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    started = time.perf_counter()
    topic = events_topic(settings)
    consumer = make_consumer(settings)
    counts = FoldStats()
    try:
        count = partition_count(consumer, topic, settings.kafka_timeout_s)
        everything = list(range(count))
        starts = (offsets_for_time(consumer, topic, everything, since_ms, settings.kafka_timeout_s)
                  if since_ms is not None else None)
        ends = (offsets_for_time(consumer, topic, everything, until_ms + 1,
                                 settings.kafka_timeout_s) if until_ms is not None else None)
        read = plan(consumer, settings, topic, ends, starts)
        ranges = {str(p): [read.starts[p], read.ends[p]] for p in sorted(read.ends)}
        out.parent.mkdir(parents=True, exist_ok=True)
        with progress("export", read.total) as counter, open(out, "wb") as fo:
            items = _decoded(read_batches(consumer, read, settings.kafka_timeout_s, counter),
                             since_ms, until_ms, counts)
            if fmt == "avro":
                _write_avro(fo, items, {"taskstream.topic": topic,
                                        "taskstream.ranges": json.dumps(ranges)})
            else:
                _write_jsonl(fo, items)
    finally:
        consumer.close()
    return ExportResult(out, fmt, counts.events, counts.skipped, tuple(counts.skipped_details),
                        time.perf_counter() - started)
