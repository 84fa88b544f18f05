"""The worker on its own: CPU per no-op task and how fast it drains a backlog.

No processor runs here, so the worker's figures are not hidden behind the
processor's (issue 12). The rig: fresh topics on the given broker, one or more
``taskstream worker -A examples.tasks`` processes (async pool) that have joined
their group (every ready partition assigned, the group stable), then:

* ``drain``: ``n`` ready records (``TaskDispatched`` envelopes, as the processor
  writes them) produced at once to ``ready.default.p0``; the worker's
  ``TaskStarted``/``TaskSucceeded`` events are read back from the events topic.
  Tasks/s is tasks / (last ``TaskSucceeded`` - first ``TaskStarted``), both the
  worker's own clock in the events (not the harness's). CPU per task is read
  from /proc before the records are produced and after the last
  ``TaskSucceeded`` is read (bench/cpu.py), for the worker(s), the broker (when
  its PID is known) and this process (which produces and reads back);
* ``paced``: ready records at a fixed rate, one ``produce`` + ``poll`` each;
  dispatch->start latency is ``TaskStarted.occurred_at_ms`` minus the ready
  record's ``occurred_at_ms`` (stamped just before it is produced): the part of
  submit->start that the worker adds (fetch wait, decode, start). Also CPU per
  task at that rate, which includes the worker's idle polling.

    python bench/bench_worker.py [--n 20000] [--rate 1000 --seconds 20] [--workers 1]
    python bench/bench_worker.py --scaling 1,2,4 --concurrency 8 --seconds 10

``--scaling``: I/O-bound tasks (``examples.io_wait``, a 50 ms wait) on 1, 2, 4
workers that join one rig in turn (:func:`scaling`): whether adding a worker
adds its slots, with the processor out of the way.

writes ``bench/results/worker.json``. Nothing is asserted: figures are reported.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from confluent_kafka import Consumer, Producer, TopicPartition
from cpu import CpuMeter
from meta import write_result

from taskstream.admin import ensure_topics
from taskstream.dev.platform import DevOptions
from taskstream.dev.procs import Child, start_worker, stop_all
from taskstream.dev.workload import percentile
from taskstream.kafka_config import consumer_config, producer_config
from taskstream.schemas.errors import DecodeError
from taskstream.schemas.events import Envelope, TaskDispatched, TaskStarted, TaskSucceeded
from taskstream.schemas.ids import new_event_id, new_task_id
from taskstream.schemas.serde import decode_event, encode_event
from taskstream.settings import Settings, load_settings
from taskstream.topics import events_topic, ready_topic

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "worker.json"
NOOP = "examples.noop"
IO_TASK = "examples.io_wait"
IO_WAIT_S = 0.05  # the io_wait task's default wait


def dispatch_record(task_id: str, now_ms: int, name: str = NOOP) -> bytes:
    """A ready record for one task without a payload, as the processor's dispatch effect
    writes it (processors/fold/effects.py ``dispatch_envelope``): attempt 1, the default
    lease."""
    body = TaskDispatched(
        dispatch_id=f"{task_id}:1", name=name, queue="default", priority=0, payload=b"null",
        content_type="application/json", timeout_ms=None, lease_ms=30_000, max_attempts=3,
        submitted_at_ms=now_ms, idempotency_key=None, headers={})
    return encode_event(Envelope(event_id=new_event_id(), task_id=task_id,
                                 occurred_at_ms=now_ms, source="bench", attempt=1, body=body))


class EventsReader:
    """The events topic from the start, decoded; keeps started/succeeded times per task."""

    def __init__(self, settings: Settings) -> None:
        self.consumer = Consumer(consumer_config(settings, f"bench-reader-{uuid.uuid4().hex}",
                                                 {"auto.offset.reset": "earliest"}))
        topic = events_topic(settings)
        self.consumer.assign([TopicPartition(topic, p, 0) for p in range(settings.partitions)])
        self.started: dict[str, int] = {}
        self.succeeded: dict[str, int] = {}
        self.worker_of: dict[str, str] = {}  # task ID -> the worker that started it

    def read(self, timeout: float = 0.5) -> None:
        for msg in self.consumer.consume(num_messages=10_000, timeout=timeout):
            if msg.error() is not None:
                continue
            try:
                env = decode_event(msg.value() or b"")
            except DecodeError:
                continue
            if isinstance(env.body, TaskStarted):
                self.started.setdefault(env.task_id, env.occurred_at_ms)
                self.worker_of.setdefault(env.task_id, env.body.worker_id)
            elif isinstance(env.body, TaskSucceeded):
                self.succeeded.setdefault(env.task_id, env.occurred_at_ms)

    def wait_succeeded(self, ids: Sequence[str], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        wanted = set(ids)
        while time.monotonic() < deadline:
            self.read()
            if wanted <= self.succeeded.keys():
                return True
        return False

    def close(self) -> None:
        self.consumer.close()


class WorkerRig:
    """Topics, worker processes, a producer of ready records, a reader of events."""

    def __init__(self, bootstrap: str, *, concurrency: int, workers: int = 1,
                 app: str = "examples.tasks", task: str = NOOP, **overrides: Any) -> None:
        self.workdir = Path(tempfile.mkdtemp(prefix="taskstream-bench-worker-"))
        self.settings = load_settings(**{
            "bootstrap": bootstrap, "topic_prefix": f"benchw{uuid.uuid4().hex[:8]}.",
            "partitions": 6, "ready_partitions": 3, "kafka_timeout_s": 30.0, **overrides})
        ensure_topics(self.settings)
        self.concurrency, self.app, self.task = concurrency, app, task
        self.children: list[Child] = []
        self.producer = Producer(producer_config(self.settings, {
            "linger.ms": 5, "queue.buffering.max.messages": 1_000_000}))
        self.topic = ready_topic(self.settings, "default", 0)
        self.events = EventsReader(self.settings)
        for _ in range(workers):
            self.add_worker()

    def add_worker(self) -> Child:
        from bench_e2e import wait_group_stable

        i = len(self.children)
        child = start_worker(self.settings, self.app, self.workdir / f"worker{i}.log", ROOT,
                             concurrency=self.concurrency, pool="async")
        self.children.append(child)
        wait_group_stable(self.settings, len(self.children), 90.0)
        return child

    @property
    def pids(self) -> list[int]:
        return [c.pid for c in self.children]

    def produce(self, n: int) -> list[str]:
        ids = []
        for _ in range(n):
            task_id = new_task_id()
            ids.append(task_id)
            self._produce(task_id)
        self.producer.flush(60)
        return ids

    def _produce(self, task_id: str) -> int:
        """Produce one ready record; its ``occurred_at_ms`` stamp."""
        stamp = time.time_ns() // 1_000_000
        value = dispatch_record(task_id, stamp, self.task)
        while True:
            try:
                self.producer.produce(self.topic, key=task_id.encode(), value=value)
                return stamp
            except BufferError:
                self.producer.poll(0.05)

    def paced(self, rate: float, seconds: float) -> tuple[dict[str, int], float]:
        """Ready records at ``rate``/s, one at a time: (task ID -> stamp, achieved rate)."""
        stamps: dict[str, int] = {}
        count = max(1, int(rate * seconds))
        began = time.perf_counter()
        for i in range(count):
            wait = began + i / rate - time.perf_counter()
            if wait > 0:
                time.sleep(wait)
            task_id = new_task_id()
            stamps[task_id] = self._produce(task_id)
            self.producer.poll(0)
        self.producer.flush(60)
        elapsed = time.perf_counter() - began
        return stamps, len(stamps) / elapsed if elapsed > 0 else 0.0

    def close(self) -> None:
        from bench_e2e import delete_topics

        stop_all(list(reversed(self.children)))
        self.events.close()
        self.producer.flush(10)
        delete_topics(self.settings)
        shutil.rmtree(self.workdir, ignore_errors=True)


def _meter(rig: WorkerRig, broker_pids: Sequence[int]) -> CpuMeter:
    meter = CpuMeter()
    meter.add("worker", *rig.pids)
    if broker_pids:
        meter.add("broker", *broker_pids)
    meter.add_alone("harness (this process)", os.getpid())
    return meter


def _idle_cpu(meter: CpuMeter, seconds: float) -> dict[str, float]:
    """Cores each role uses while nothing is submitted (polling, heartbeats)."""
    before = meter.read()
    time.sleep(seconds)
    after = meter.read()
    wall = after["_wall"] - before["_wall"]
    return {role: round((after[role] - before[role]) / wall, 4)
            for role in after if not role.startswith("_")}


def drain(rig: WorkerRig, n: int, meter: CpuMeter, timeout: float) -> dict[str, Any]:
    """Produce ``n`` ready records at once; the worker's tasks/s and CPU per task."""
    before = meter.read()
    ids = rig.produce(n)
    done = rig.events.wait_succeeded(ids, timeout)
    after = meter.read()
    starts = [rig.events.started[t] for t in ids if t in rig.events.started]
    ends = [rig.events.succeeded[t] for t in ids if t in rig.events.succeeded]
    span_s = (max(ends) - min(starts)) / 1000 if starts and ends else 0.0
    per_worker: dict[str, int] = {}
    for task_id in ids:
        worker = rig.events.worker_of.get(task_id)
        if worker is not None:
            per_worker[worker] = per_worker.get(worker, 0) + 1
    return {"tasks": n, "done": len(ends), "all_done_in_time": done,
            "tasks_per_s": round(len(ends) / span_s, 1) if span_s > 0 else None,
            "started_per_worker": sorted(per_worker.values(), reverse=True),
            "cpu_us_per_task": meter.per_task_us(before, after, len(ends))}


def paced(rig: WorkerRig, rate: float, seconds: float, meter: CpuMeter,
          timeout: float) -> dict[str, Any]:
    """Ready records at ``rate``/s; dispatch->start latency and CPU per task."""
    before = meter.read()
    stamps, achieved = rig.paced(rate, seconds)
    done = rig.events.wait_succeeded(list(stamps), timeout)
    after = meter.read()
    lat = [rig.events.started[t] - stamp for t, stamp in stamps.items()
           if t in rig.events.started]
    return {"target_rate": rate, "achieved_rate": round(achieved, 1), "seconds": seconds,
            "tasks": len(stamps), "started": len(lat), "all_done_in_time": done,
            "dispatch_to_start_ms": {"p50": percentile(lat, 50), "p90": percentile(lat, 90),
                                     "p99": percentile(lat, 99),
                                     "max": max(lat) if lat else None},
            "cpu_us_per_task": meter.per_task_us(before, after, len(stamps))}


def run(bootstrap: str, *, n: int, rate: float, seconds: float, concurrency: int,
        workers: int = 1, broker_pids: Sequence[int] = (), runs: int = 1) -> dict[str, Any]:
    rig = WorkerRig(bootstrap, concurrency=concurrency, workers=workers)
    try:
        meter = _meter(rig, broker_pids)
        rig.events.wait_succeeded(rig.produce(50), 60.0)  # warm: imports, first fetches
        idle = _idle_cpu(meter, 3.0)
        drains = [drain(rig, n, meter, 60.0 + n / 100) for _ in range(runs)]
        paced_row = paced(rig, rate, seconds, meter, 60.0) if rate > 0 else None
        return {"config": {"workers": workers, "concurrency": concurrency, "pool": "async",
                           "ready_partitions": rig.settings.ready_partitions,
                           "worker_loglevel": "warning"},
                "idle_cores": idle, "drain": drains, "paced": paced_row}
    finally:
        rig.close()


def scaling(bootstrap: str, *, workers: Sequence[int], concurrency: int, seconds: float,
            broker_pids: Sequence[int] = ()) -> dict[str, Any]:
    """I/O-bound tasks (``examples.io_wait``, 50 ms) with no processor: workers join one
    running rig, and once the group is stable with the new one, ``seconds`` worth of
    ready records at the ideal rate (workers x concurrency / 50 ms) are drained.
    Ready topics get 12 partitions a level, so 4 workers all hold some of the level
    the tasks use. Tasks/s and how the starts split over the workers."""
    rig = WorkerRig(bootstrap, concurrency=concurrency, workers=0, task=IO_TASK,
                    ready_partitions=12)
    rows = []
    try:
        for count in workers:
            while len(rig.children) < count:
                rig.add_worker()
            ideal = count * concurrency / IO_WAIT_S
            row = drain(rig, int(ideal * seconds), _meter(rig, broker_pids), 60 + 4 * seconds)
            rows.append({"workers": count, "ideal_tasks_per_s": ideal, **row})
    finally:
        rig.close()
    return {"task": IO_TASK, "wait_s": IO_WAIT_S, "concurrency_per_worker": concurrency,
            "ready_partitions": 12, "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--bootstrap", default=os.environ.get("TASKSTREAM_BOOTSTRAP"),
                        help="a running broker (default: start a local one for this run)")
    parser.add_argument("--n", type=int, default=20_000, help="ready records per drain")
    parser.add_argument("--runs", type=int, default=3, help="drains, one after another")
    parser.add_argument("--rate", type=float, default=1000.0,
                        help="paced ready records per second (0: skip)")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--concurrency", type=int, default=DevOptions().concurrency,
                        help="tasks at once per worker (default: as `taskstream dev`)")
    parser.add_argument("--broker-pid", type=int, action="append", default=[],
                        help="PID of the broker's JVM when --bootstrap is given (CPU)")
    parser.add_argument("--scaling", default=None, metavar="1,2,4",
                        help="instead: I/O-bound tasks on this many workers in turn (see "
                             "scaling); --seconds of work at the ideal rate each")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    from run import broker_for_run

    with broker_for_run(args.bootstrap, args.broker_pid) as (bootstrap, broker_pids):
        if args.scaling:
            counts = [int(c) for c in args.scaling.split(",") if c.strip()]
            result = scaling(bootstrap, workers=counts, concurrency=args.concurrency,
                             seconds=args.seconds, broker_pids=broker_pids)
        else:
            result = run(bootstrap, n=args.n, rate=args.rate, seconds=args.seconds,
                         concurrency=args.concurrency, workers=args.workers,
                         broker_pids=broker_pids, runs=args.runs)
    write_result(result, "bench_worker.py", args.out)
    print(json.dumps({k: v for k, v in result.items() if k != "meta"}, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
