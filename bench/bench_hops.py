"""Where a task's submit->start time goes, hop by hop, read back from the log.

A paced run of single submits on a fresh rig (one processor, one worker, as the
compare section starts them; CPU per task of each process read around it), then
every record of those tasks is read back and each task's submit->start split at
the timestamps the log already holds:

1. **client**: ``submit()`` called (the envelope's ``occurred_at_ms``, the client's
   clock) -> the broker appended the ``TaskSubmitted`` record (the events topic's
   LogAppendTime, D44): the producer's linger and the request;
2. **processor**: that append -> the processor produced the task's dispatch (the
   ready record's CreateTime, the processor's clock): fetch, fold, local write;
3. **worker**: the dispatch produced -> the handler started (the ``TaskStarted``
   envelope's ``occurred_at_ms``, the worker's clock): the acknowledgement, the
   worker's fetch and its start;
4. and, outside submit->start, the handler's start -> its ``TaskStarted`` appended
   (the worker's emitter).

The clocks are one machine's here; across machines their skew is in the hops.
``--burst`` first runs a burst of that many tasks, as the compare section does
before its paced steps; ``--skip-s`` leaves out the first seconds of the paced run
(the burst's aftermath). Nothing is asserted: figures are reported.

    python bench/bench_hops.py --rate 200 --seconds 60 --burst 20000 --skip-s 5

Settings come from the environment as for any taskstream process (for example
``TASKSTREAM_LINGER_MS=1`` for the client's producer linger).

writes ``bench/results/hops-<rate>.json``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_e2e import OursRig, measure_max, paced, stats
from confluent_kafka import Consumer, TopicPartition
from meta import write_result

from taskstream.schemas.serde import decode_event
from taskstream.topics import events_topic, ready_topic_prefix

RESULTS = Path(__file__).resolve().parent / "results"
#: (hop, from stamp, to stamp); a task's stamps are named in ``stamps_of``
HOPS = (
    ("client: submit() -> TaskSubmitted appended", "submit_called", "submitted_appended"),
    ("processor: appended -> dispatch produced", "submitted_appended", "dispatch_produced"),
    ("worker: dispatch produced -> handler started", "dispatch_produced", "started"),
    ("submit -> start", "submit_called", "started"),
    ("handler started -> TaskStarted appended", "started", "started_appended"),
)


def hop_stats(stamps: Mapping[str, Mapping[str, int]], skip_ms: int = 0) -> dict[str, Any]:
    """Percentiles of every hop over the tasks with all their stamps, leaving out those
    submitted in the first ``skip_ms``."""
    names = {name for _, a, b in HOPS for name in (a, b)}
    whole = [s for s in stamps.values() if names <= s.keys()]
    if not whole:
        return {"tasks": 0}
    first = min(s["submit_called"] for s in whole)
    kept = [s for s in whole if s["submit_called"] - first >= skip_ms]
    return {"tasks": len(kept),
            **{hop: stats([s[b] - s[a] for s in kept]) for hop, a, b in HOPS}}


def stamps_of(records: Iterable[tuple[str, int, bytes]],
              ready_prefix: str) -> dict[str, dict[str, int]]:
    """Each task's stamps from ``(topic, record timestamp, value)`` rows read
    in log order: the first of each kind counts (a retry's later records do not)."""
    out: dict[str, dict[str, int]] = {}
    for topic, timestamp, value in records:
        envelope = decode_event(value)
        task = out.setdefault(envelope.task_id, {})
        if topic.startswith(ready_prefix):
            task.setdefault("dispatch_produced", timestamp)
        elif envelope.type_name == "TaskSubmitted":
            task.setdefault("submit_called", envelope.occurred_at_ms)
            task.setdefault("submitted_appended", timestamp)
        elif envelope.type_name == "TaskStarted":
            task.setdefault("started", envelope.occurred_at_ms)
            task.setdefault("started_appended", timestamp)
    return out


def read_back(bootstrap: str, events: str, ready_prefix: str, wanted: set[bytes],
              idle_s: float = 3.0) -> list[tuple[str, int, bytes]]:
    """Every record of the events topic and the ready topics keyed by a wanted task,
    from the start until the topics gave nothing for ``idle_s``."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "bench-hops",
                         "enable.auto.commit": False})
    try:
        topics = consumer.list_topics(timeout=10).topics
        consumer.assign([TopicPartition(name, p, 0) for name, meta in topics.items()
                         if name == events or name.startswith(ready_prefix)
                         for p in meta.partitions])
        rows: list[tuple[str, int, bytes]] = []
        quiet_since = time.monotonic()
        while time.monotonic() - quiet_since < idle_s:
            batch = consumer.consume(5000, 0.5)
            if batch:
                quiet_since = time.monotonic()
            for msg in batch:
                if msg.error() is None and msg.key() in wanted and msg.value():
                    rows.append((msg.topic(), msg.timestamp()[1], msg.value()))
        return rows
    finally:
        consumer.close()


def run(bootstrap: str, *, rate: float, seconds: float, burst: int, skip_s: float,
        broker_pids: Sequence[int] = ()) -> dict[str, Any]:
    rig = OursRig(bootstrap, broker_pids=broker_pids)  # dev's concurrency, as compare
    try:
        rig.add_processor()
        rig.add_worker()
        rig.warm_up()
        if burst:
            measure_max(rig, burst, 300.0)
        meter = rig.meter()
        before = meter.read()
        ids, achieved = paced(lambda: rig.submit_one(), rate, seconds)
        rig.flush()
        all_done = rig.wait_all_done(120.0)
        cpu = meter.per_task_us(before, meter.read(), len(ids))
        linger_ms = rig.settings.linger_ms
        prefix = ready_topic_prefix(rig.settings)
        stamps = stamps_of(read_back(bootstrap, events_topic(rig.settings), prefix,
                                     {i.encode() for i in ids}), prefix)
    finally:
        rig.close()
    return {"rate": rate, "achieved_rate": round(achieved, 1), "seconds": seconds,
            "burst_before": burst, "skip_s": skip_s, "all_done_in_time": all_done,
            "client_linger_ms": linger_ms,
            "cpu_us_per_task": cpu, "hops_ms": hop_stats(stamps, int(skip_s * 1000))}


def report(result: dict[str, Any]) -> str:
    hops = result["hops_ms"]
    lines = [f"{hops['tasks']} tasks at {result['achieved_rate']}/s (the first "
             f"{result['skip_s']:g} s left out; a burst of {result['burst_before']} before)",
             "CPU per task (us, the whole paced part): " + ", ".join(
                 f"{role} {us}" for role, us in result["cpu_us_per_task"].items()
                 if not role.startswith("_")),
             f"{'hop (ms)':<48}{'p50':>6}{'p95':>6}{'p99':>6}{'max':>6}"]
    for hop, _, _ in HOPS:
        s = hops.get(hop)
        if s:
            lines.append(f"{hop:<48}{s['p50']:>6.0f}{s['p95']:>6.0f}{s['p99']:>6.0f}"
                         f"{s['max']:>6.0f}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--bootstrap", default=os.environ.get("TASKSTREAM_BOOTSTRAP"),
                        help="a running broker (default: start a local one for this run)")
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--burst", type=int, default=0)
    parser.add_argument("--skip-s", type=float, default=0.0)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    from run import broker_for_run

    with broker_for_run(args.bootstrap) as (bootstrap, broker_pids):
        result = run(bootstrap, rate=args.rate, seconds=args.seconds, burst=args.burst,
                     skip_s=args.skip_s, broker_pids=broker_pids)
    out = write_result(result, "bench_hops.py", args.out or RESULTS / f"hops-{args.rate:g}.json")
    print(report(result))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
