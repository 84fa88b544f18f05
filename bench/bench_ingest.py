"""Ingest throughput: tasks/s of TaskProducer against the raw client's ceiling.

Three measurements per repetition, on one fresh events topic, durable
(idempotent, acks=all, the producer's own librdkafka settings):

* ``raw``: confluent-kafka ``produce()`` of the very bytes the SDK would send
  (pre-encoded envelopes, same keys), then ``flush()``: the ceiling;
* ``submit_many``: ``TaskProducer.submit_many`` over pre-built spec mappings in
  chunks, then ``flush()``;
* ``submit``: ``TaskProducer.submit`` one call at a time, then ``flush()``;
* ``submit_many_options``: ``submit_many`` again, every spec with options
  (queue, priority, max_attempts, timeout): the general fast path, where the
  plain ``{name, payload}`` specs above take the per-name template path.

Every timing includes the final flush, i.e. the broker's acks. Medians over
the repetitions and the ratios SDK/raw (measured in the same run) are printed
and written as JSON. ``run()`` is the entry point for other harnesses.

    python bench/bench_ingest.py --bootstrap 127.0.0.1:19092 -n 200000 --reps 3
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
import uuid
from pathlib import Path
from typing import Any

from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

from taskstream.producer import TaskProducer
from taskstream.producer.build import EventBuilder, now_ms
from taskstream.producer.config import kafka_config
from taskstream.queue_registry import set_up_platform
from taskstream.settings import Settings, load_settings
from taskstream.topics import events_topic

DEFAULT_OUT = Path(__file__).parent / "results" / "ingest.json"
CHUNK = 10_000


def _specs(n: int, payload_bytes: int) -> list[dict[str, Any]]:
    pad = "x" * max(0, payload_bytes - 20)
    return [{"name": "bench.noop", "payload": {"i": i, "pad": pad}} for i in range(n)]


def _with_options(specs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    extra = {"queue": "default", "priority": 1, "max_attempts": 5, "timeout": 60}
    return [{**spec, **extra} for spec in specs]


def _raw_rate(settings: Settings, records: list[tuple[str, bytes]]) -> float:
    producer = Producer(kafka_config(settings))
    topic = events_topic(settings)
    produce, poll = producer.produce, producer.poll
    produce(topic, *records[0][::-1])  # connect and get the idempotent producer ID first,
    producer.flush(30)  # as the SDK measurements do with their warm-up submit
    started = time.perf_counter()
    for i, (key, value) in enumerate(records):
        while True:
            try:
                produce(topic, value, key)
                break
            except BufferError:
                poll(0.01)
        if not i & 1023:
            poll(0)
    left = producer.flush(120)
    elapsed = time.perf_counter() - started
    if left:
        raise RuntimeError(f"raw producer: {left} messages unacknowledged after 120 s")
    return len(records) / elapsed


def _submit_many_rate(settings: Settings, specs: list[dict[str, Any]]) -> float:
    producer = TaskProducer(settings)
    producer.submit_many(specs[:1])  # connect outside the timing
    producer.flush()
    started = time.perf_counter()
    for lo in range(0, len(specs), CHUNK):
        producer.submit_many(specs[lo : lo + CHUNK])
    producer.close(timeout=120)
    return len(specs) / (time.perf_counter() - started)


def _submit_rate(settings: Settings, specs: list[dict[str, Any]]) -> float:
    producer = TaskProducer(settings)
    producer.submit("bench.warmup")
    producer.flush()
    submit = producer.submit
    started = time.perf_counter()
    for spec in specs:
        submit(spec["name"], spec["payload"])
    producer.close(timeout=120)
    return len(specs) / (time.perf_counter() - started)


def _create_topic(settings: Settings, partitions: int) -> str:
    admin = AdminClient({"bootstrap.servers": settings.bootstrap})
    topic = events_topic(settings)
    for fut in admin.create_topics([NewTopic(topic, partitions, 1)]).values():
        fut.result(timeout=30)
    deadline = time.monotonic() + 15
    while topic not in admin.list_topics(timeout=10).topics and time.monotonic() < deadline:
        time.sleep(0.1)
    set_up_platform(settings)  # the queue registry: submissions go to registered queues only
    return topic


def _delete_topic(settings: Settings, topic: str) -> None:
    admin = AdminClient({"bootstrap.servers": settings.bootstrap})
    for fut in admin.delete_topics([topic]).values():
        fut.result(timeout=30)


def run(
    bootstrap: str,
    n: int = 200_000,
    *,
    reps: int = 3,
    n_single: int | None = None,
    payload_bytes: int = 64,
    partitions: int = 6,
    linger_ms: int = 5,
    compression: str = "lz4",
) -> dict[str, Any]:
    """Measure and return the results (tasks/s, medians, ratios to raw)."""
    settings = load_settings(
        bootstrap=bootstrap,
        topic_prefix=f"bench{uuid.uuid4().hex[:8]}.",
        partitions=partitions,
        linger_ms=linger_ms,
        compression=compression,
        producer_queue_max=max(200_000, 2 * CHUNK),
    )
    n_single = n if n_single is None else n_single
    topic = _create_topic(settings, partitions)
    try:
        specs = _specs(n, payload_bytes)
        build = EventBuilder("producer:bench", settings.max_payload_bytes)
        at = now_ms()
        records = [build.from_item(s, i, at) for i, s in enumerate(specs)]
        optioned = _with_options(specs)
        runs: dict[str, list[float]] = {
            "raw": [],
            "submit_many": [],
            "submit": [],
            "submit_many_options": [],
        }
        for _ in range(reps):
            runs["raw"].append(_raw_rate(settings, records))
            runs["submit_many"].append(_submit_many_rate(settings, specs))
            runs["submit"].append(_submit_rate(settings, specs[:n_single]))
            runs["submit_many_options"].append(_submit_many_rate(settings, optioned))
    finally:
        _delete_topic(settings, topic)
    med = {k: statistics.median(v) for k, v in runs.items()}
    return {
        "benchmark": "ingest",
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "host": {"python": platform.python_version(), "cpus": os.cpu_count()},
        "config": {
            "bootstrap": bootstrap,
            "tasks": n,
            "tasks_single": n_single,
            "reps": reps,
            "payload_bytes": payload_bytes,
            "event_bytes": len(records[0][1]),
            "partitions": partitions,
            "acks": "all",
            "idempotence": True,
            "linger_ms": linger_ms,
            "compression": compression,
        },
        "runs_tasks_per_s": runs,
        "median_tasks_per_s": med,
        "ratio_to_raw": {k: med[k] / med["raw"] for k in med if k != "raw"},
        "targets_tasks_per_s": {"submit_many": 150_000, "submit": 50_000},
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--bootstrap", default=os.environ.get("TASKSTREAM_BOOTSTRAP", "127.0.0.1:9092")
    )
    parser.add_argument("-n", type=int, default=200_000, help="tasks per measurement")
    parser.add_argument("--single", type=int, default=None, help="tasks for the submit loop")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--payload-bytes", type=int, default=64)
    parser.add_argument("--linger-ms", type=int, default=5)
    parser.add_argument("--compression", default="lz4")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    result = run(
        args.bootstrap,
        args.n,
        reps=args.reps,
        n_single=args.single,
        payload_bytes=args.payload_bytes,
        linger_ms=args.linger_ms,
        compression=args.compression,
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    med, ratio = result["median_tasks_per_s"], result["ratio_to_raw"]
    print(f"raw produce  {med['raw']:>10,.0f} /s (ceiling)")
    print(f"submit_many  {med['submit_many']:>10,.0f} /s ({ratio['submit_many']:.0%} of raw)")
    print(f"submit       {med['submit']:>10,.0f} /s ({ratio['submit']:.0%} of raw)")
    print(
        f"submit_many with options {med['submit_many_options']:>10,.0f} /s "
        f"({ratio['submit_many_options']:.0%} of raw)"
    )
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
