"""Benchmark: audit replay (``taskstream replay rebuild``) of a large events topic.

Target (DESIGN.md): >= 100k events/s on the 2-core machine. The topic holds
realistic envelopes: for each task a ``TaskSubmitted`` (JSON payload, backoff,
headers), a ``TaskStarted`` and a ``TaskSucceeded`` of its first dispatch (the
dispatch ID the lifecycle derives, so every event is accepted by the fold), keyed
by task ID with the murmur2 partitioner, in a topic of its own that is deleted
afterwards. The envelopes are encoded before the clock starts; only ``rebuild``
is timed (read + decode + apply + RocksDB), several runs, median reported.

    python bench/bench_replay.py --events 1000000 --runs 3

writes ``bench/results/replay.json``; :func:`run` is what the bench harness calls.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient

from taskstream.admin import ensure_topics
from taskstream.processors.fold.lifecycle import apply
from taskstream.processors.fold.steps import make_dispatch_id
from taskstream.processors.replay.folding import collector_paused, limits_of
from taskstream.processors.replay.rebuild import rebuild
from taskstream.schemas.codec.compiled import event_reader
from taskstream.schemas.events import Backoff, Envelope, TaskStarted, TaskSubmitted, TaskSucceeded
from taskstream.schemas.ids import new_event_id, new_task_id
from taskstream.schemas.serde import default_codec, encode_event
from taskstream.settings import Settings, load_settings

RESULTS = Path(__file__).resolve().parent / "results" / "replay.json"


def _triple(n: int, now_ms: int) -> list[tuple[bytes, bytes]]:
    task_id = new_task_id()
    submit = Envelope(new_event_id(), task_id, now_ms, "producer:bench", 0, TaskSubmitted(
        name="bench.add", queue="default", priority=n % 3,
        payload=json.dumps({"a": n, "b": n * 2, "user": f"u{n % 1000}"}).encode(),
        content_type="application/json", eta_ms=None, max_attempts=3,
        backoff=Backoff(initial_ms=1_000, multiplier=2.0, max_ms=60_000, jitter=0.1),
        timeout_ms=30_000, lease_ms=30_000, headers={"trace": f"{n:016x}"}, tags=["bench"]))
    dispatch = make_dispatch_id(task_id, 1, submit.event_id)
    start = Envelope(new_event_id(), task_id, now_ms + 5, "worker:bench-1", 1,
                     TaskStarted(dispatch, "bench-1"))
    done = Envelope(new_event_id(), task_id, now_ms + 9, "worker:bench-1", 1,
                    TaskSucceeded(dispatch, "bench-1", b'{"sum": 3}'))
    key = task_id.encode()
    return [(key, encode_event(submit)), (key, encode_event(start)), (key, encode_event(done))]


def make_records(n_events: int) -> list[tuple[bytes, bytes]]:
    """``n_events`` (rounded up to triples) encoded envelopes with their keys."""
    now_ms = int(time.time() * 1000)
    return [r for n in range((n_events + 2) // 3) for r in _triple(n, now_ms)]


def components(records: list[tuple[bytes, bytes]]) -> dict[str, float]:
    """Microseconds per event of each step of the fold, measured in memory, one core,
    the way the rebuild runs them (the compiled envelope reader called directly,
    ``apply`` without effects, the codec's bound ``encode_state``, the collector paused)."""
    limits = limits_of(load_settings())
    codec = default_codec()
    encode = codec.encode_state
    header, read = event_reader(codec.catalog)
    start = len(header)
    with collector_paused():
        started = time.perf_counter()
        envelopes = [read(value, start, len(value))[0] for _, value in records]
        decoded = time.perf_counter()
        states: dict[str, Any] = {}
        for env in envelopes:
            after, _ = apply(states.get(env.task_id), env, limits, effects=False)
            if after is not None:
                states[env.task_id] = after
        applied = time.perf_counter()
        for state in states.values():
            encode(state)
        encoded = time.perf_counter()
    n = len(records)
    return {
        "decode_event_us": round((decoded - started) / n * 1e6, 2),
        "apply_us": round((applied - decoded) / n * 1e6, 2),
        "encode_state_us_per_event": round((encoded - applied) / n * 1e6, 2),
        "encode_state_us_per_state": round((encoded - applied) / len(states) * 1e6, 2),
        "in_memory_fold_events_per_s": round(n / (encoded - started)),
    }


def produce(settings: Settings, records: list[tuple[bytes, bytes]]) -> float:
    """Write the records to the events topic; seconds taken."""
    producer = Producer({
        "bootstrap.servers": settings.bootstrap,
        "partitioner": "murmur2_random",
        "linger.ms": 50,
        "batch.size": 1_000_000,
        "compression.type": "lz4",
        "queue.buffering.max.messages": 1_000_000,
        "queue.buffering.max.kbytes": 1_048_576,
    })
    topic = settings.topic("events")
    started = time.perf_counter()
    for key, value in records:
        while True:
            try:
                producer.produce(topic, value, key)
                break
            except BufferError:
                producer.poll(0.05)
    if producer.flush(120) != 0:
        raise RuntimeError("the benchmark topic was not fully written within 120 s")
    return time.perf_counter() - started


def delete_topics(settings: Settings) -> None:
    admin = AdminClient({"bootstrap.servers": settings.bootstrap})
    names = [t for t in admin.list_topics(timeout=10).topics if t.startswith(settings.topic_prefix)]
    if names:
        for future in admin.delete_topics(names, operation_timeout=30).values():
            future.result(timeout=60)


def run(
    bootstrap: str, n_events: int = 1_000_000, runs: int = 3, workers: int | None = None
) -> dict[str, Any]:
    """Produce a topic of ``n_events``, time ``rebuild`` ``runs`` times, return the numbers.

    ``workers``: fold processes (None: rebuild's default, one per core up to 2).
    """
    settings = load_settings(bootstrap=bootstrap, topic_prefix=f"bench{uuid.uuid4().hex[:6]}.",
                             partitions=6, kafka_timeout_s=30.0)
    ensure_topics(settings)
    scratch = Path(tempfile.mkdtemp(prefix="taskstream-bench-replay-"))
    try:
        records = make_records(n_events)
        profile = components(records[:60_000])
        load_before = os.getloadavg()
        produce_s = produce(settings, records)
        del records
        timings: list[dict[str, Any]] = []
        for i in range(runs):
            result = rebuild(settings, scratch / f"run{i}", workers=workers)
            timings.append(result.summary())
            shutil.rmtree(scratch / f"run{i}", ignore_errors=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        delete_topics(settings)
    rates = [t["events_per_s"] for t in timings]
    return {
        "benchmark": "replay rebuild",
        "events": timings[0]["events"],
        "tasks": timings[0]["tasks"],
        "runs": timings,
        "median_events_per_s": statistics.median(rates),
        "target_events_per_s": 100_000,
        "workers": workers if workers is not None else "default",
        "produce_seconds": round(produce_s, 2),
        "fold_components_one_core": profile,
        "load_average_before_after": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "platform": platform.platform()},
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--bootstrap", default=os.environ.get("TASKSTREAM_BOOTSTRAP",
                                                              "127.0.0.1:19092"))
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--workers", type=int, default=None,
                        help="fold processes (default: rebuild's own choice)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    result = run(args.bootstrap, args.events, args.runs, args.workers)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
