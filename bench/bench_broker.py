"""What the broker's CPU per task is spent on: its threads, and the requests it serves.

The compare section reads the broker's CPU per task as one figure (issue 12: 78 us in
a burst, 487 us paced at 1,000/s). This bench splits it. A fresh rig (one processor,
one worker, as compare starts them) takes a burst, then ``--reps`` paced runs of
single submits in a row on the same broker; around each it reads

- every process's CPU per task (as compare does);
- the broker's CPU per task by thread (``/proc/<pid>/task``), grouped: request
  handling (the ``data-plane-kafka-*`` network and request-handler threads), the JIT
  compiler, GC, the group coordinator, the rest;
- the requests the broker served per task, by API, and its produce requests and
  appended records per topic, from the broker's own counters (JMX, read by attaching
  to its JVM with ``bench/BrokerCounts.java``; needs a JDK, same user).

Reps after the first show a warm broker: on a fresh JVM the JIT compiler takes a
large part of the first paced run's broker CPU (see the README). Nothing is
asserted: figures are reported.

    python bench/bench_broker.py --rate 1000 --seconds 40 --reps 3
    python bench/bench_broker.py --set partitions=3 --set ready_partitions=1 \
        --out bench/results/broker-1000-p3.json

writes ``bench/results/broker-<rate>.json``.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_compare import settle, with_cpu
from bench_e2e import OursRig, measure_max, measure_paced
from cpu import thread_seconds
from meta import write_result

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
COUNTS_JAVA = HERE / "BrokerCounts.java"
#: the broker's counters read around each run (each MBean's "Count")
MBEANS = (
    "kafka.network:type=RequestMetrics,name=RequestsPerSec,*",
    "kafka.server:type=BrokerTopicMetrics,name=TotalProduceRequestsPerSec,*",
    "kafka.server:type=BrokerTopicMetrics,name=MessagesInPerSec,*",
)
#: thread-name prefix -> group (the kernel keeps the first 15 characters of a name)
THREAD_GROUPS = (
    ("data-plane-kaf", "request handling"),
    ("C2 CompilerThr", "JIT compiler"),
    ("C1 CompilerThr", "JIT compiler"),
    ("GC Thread", "GC"),
    ("G1 ", "GC"),
    ("group-coordina", "group coordinator"),
)


def thread_group(name: str) -> str:
    """The group a broker thread's CPU is counted under."""
    for prefix, group in THREAD_GROUPS:
        if name.startswith(prefix):
            return group
    return "other"


def group_seconds(pid: int) -> dict[str, float]:
    """CPU seconds so far of a process's live threads, summed by :func:`thread_group`."""
    out: Counter[str] = Counter()
    for name, seconds in thread_seconds(pid):
        out[thread_group(name)] += seconds
    return dict(out)


def parse_counts(text: str) -> dict[str, float]:
    """``BrokerCounts`` output as ``{"<metric>:<request or topic>": count}``; an MBean
    with neither (a broker-wide total) is keyed ``<metric>:all``."""
    out: Counter[str] = Counter()
    for line in text.splitlines():
        name, _, count = line.rpartition("\t")
        metric = re.search(r"name=(\w+)", name)
        if metric is None:
            continue
        which = re.search(r"(?:request|topic)=([^,]+)", name)
        out[f"{metric.group(1)}:{which.group(1) if which else 'all'}"] += float(count)
    return dict(out)


def broker_counts(pid: int) -> dict[str, float]:
    """The broker's counters now (see ``MBEANS``)."""
    done = subprocess.run(["java", str(COUNTS_JAVA), str(pid), *MBEANS],
                          capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise RuntimeError(f"could not read the broker's counters (PID {pid}): "
                           f"{done.stderr.strip()[-500:]}; this needs a JDK (the attach "
                           f"API) and the broker running as this user")
    return parse_counts(done.stdout)


def per_task(before: Mapping[str, float], after: Mapping[str, float], tasks: int,
             scale: float = 1.0) -> dict[str, float]:
    """What grew between two readings, per task (times ``scale``), largest first; keys
    that did not grow are left out."""
    grown = {k: (v - before.get(k, 0.0)) * scale / tasks for k, v in after.items()
             if tasks and v > before.get(k, 0.0)}
    return {k: round(v, 3) for k, v in sorted(grown.items(), key=lambda kv: -kv[1])}


def parse_overrides(pairs: Sequence[str]) -> dict[str, Any]:
    """``KEY=VALUE`` settings (``partitions=3``): numbers as numbers, the rest as text."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"--set takes KEY=VALUE (a setting's name), not {pair!r}")
        try:
            out[key] = int(value)
        except ValueError:
            try:
                out[key] = float(value)
            except ValueError:
                out[key] = value
    return out


def run(bootstrap: str, *, broker_pid: int, rate: float, seconds: float, reps: int,
        burst: int, overrides: Mapping[str, Any]) -> dict[str, Any]:
    # dev's concurrency and partitions, as compare, unless ``overrides`` say otherwise
    rig = OursRig(bootstrap, broker_pids=[broker_pid], **overrides)
    rows = []
    try:
        rig.add_processor()
        rig.add_worker()
        rig.warm_up()
        if burst:
            measure_max(rig, burst, 300.0)
        meter = rig.meter()
        for _ in range(reps):
            settle(meter, 30.0)
            threads0, counts0 = group_seconds(broker_pid), broker_counts(broker_pid)
            row = with_cpu(meter, lambda done: measure_paced(
                rig, rate, seconds, 60.0 + rate * seconds / 100.0, done=done))
            threads1, counts1 = group_seconds(broker_pid), broker_counts(broker_pid)
            tasks = int(row.get("done") or 0)
            rows.append({
                "achieved_rate": row.get("achieved_rate"),
                "done": f"{row.get('done')}/{row.get('tasks')}",
                "submit_to_start_ms": row.get("submit_to_start_ms"),
                "cpu_us_per_task": row["cpu_us_per_task"],
                "broker_threads_us_per_task": per_task(threads0, threads1, tasks, 1e6),
                "broker_counts_per_task": per_task(counts0, counts1, tasks),
            })
    finally:
        rig.close()
    return {"rate": rate, "seconds": seconds, "burst_before": burst,
            "settings": dict(overrides), "reps": rows}


def report(result: dict[str, Any]) -> str:
    lines = []
    for i, rep in enumerate(result["reps"], 1):
        latency = rep["submit_to_start_ms"] or {}
        cpu = rep["cpu_us_per_task"]
        lines.append(f"rep {i}: {rep['achieved_rate']}/s, done {rep['done']}, submit->start "
                     f"p50 {latency.get('p50')} / p99 {latency.get('p99')} ms; CPU us/task "
                     + ", ".join(f"{k} {v}" for k, v in cpu.items() if not k.startswith("_")))
        lines.append("  broker threads (us/task): " + ", ".join(
            f"{k} {v:.0f}" for k, v in rep["broker_threads_us_per_task"].items()))
        counts = rep["broker_counts_per_task"]
        requests = {k.split(":", 1)[1]: v for k, v in counts.items()
                    if k.startswith("RequestsPerSec:") and v >= 0.001}
        lines.append("  requests per task: " + ", ".join(
            f"{k} {v:.3f}" for k, v in requests.items()))
        lines.append("  produce requests per task by topic: " + ", ".join(
            f"{k.split(':', 1)[1]} {v:.3f}" for k, v in counts.items()
            if k.startswith("TotalProduceRequestsPerSec:") and v >= 0.001))
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--rate", type=float, default=1000.0)
    parser.add_argument("--seconds", type=float, default=40.0)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--burst", type=int, default=20_000)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a setting for every process of the rig (partitions=3)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    overrides = parse_overrides(args.set)
    from run import broker_for_run

    started = time.monotonic()
    with broker_for_run(None) as (bootstrap, broker_pids):
        result = run(bootstrap, broker_pid=broker_pids[0], rate=args.rate,
                     seconds=args.seconds, reps=args.reps, burst=args.burst,
                     overrides=overrides)
    out = write_result(result, "bench_broker.py",
                       args.out or RESULTS / f"broker-{args.rate:g}.json",
                       wall_s=round(time.monotonic() - started, 1))
    print(report(result))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
