"""The cost of tracing: CPU per task of each process, tracing off and on, in one run.

    python bench/bench_tracing.py [--tasks 5000] [--rounds 3] [--out bench/results]

Rounds alternate off, on, off, on, ... on the same broker: each round starts a
fresh platform (one processor, one worker running ``examples.noop`` with
concurrency 64, the SDK in this process), warms it up, then submits a burst of
no-op tasks with ``submit_many`` and waits until all have succeeded. CPU time
(user + system, from ``/proc/<pid>/stat``) is read around the burst for the
processor and the worker, and from ``time.process_time()`` around submit and
flush for the producer. With tracing on, ``TASKSTREAM_OTLP_ENDPOINT`` points
every process at a small OTLP/HTTP sink (a child process that parses each export
and counts its spans), so the exporters do their whole job: build spans, batch,
serialize to protobuf, POST. ``OTEL_BSP_SCHEDULE_DELAY`` is 500 ms and CPU is
read 2 s after the last task finished in both modes, so the spans of the burst
are exported (and paid for) before the reading.

Writes ``tracing.json`` and ``tracing.png`` to ``--out``. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_e2e import OursRig

from taskstream.dev.procs import free_port
from taskstream.localkafka import cluster as localkafka
from taskstream.settings import load_settings

TICKS = os.sysconf("SC_CLK_TCK")
SETTLE_S = 2.0
SINK = r"""
import sys, threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
count = {"spans": 0, "bytes": 0, "requests": 0}
lock = threading.Lock()
class H(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        req = ExportTraceServiceRequest(); req.ParseFromString(body)
        n = sum(len(s.spans) for r in req.resource_spans for s in r.scope_spans)
        with lock:
            count["spans"] += n; count["bytes"] += len(body); count["requests"] += 1
        self.send_response(200); self.send_header("Content-Length", "0"); self.end_headers()
    def do_GET(self):
        with lock:
            data = repr(count).replace("'", '"').encode()
        self.send_response(200); self.send_header("Content-Length", str(len(data)))
        self.end_headers(); self.wfile.write(data)
    def log_message(self, *a):
        pass
ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"""


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


class Sink:
    """The OTLP/HTTP sink: a child process on a free port."""

    def __init__(self) -> None:
        self.port = free_port()
        self.proc = subprocess.Popen([sys.executable, "-c", SINK, str(self.port)])
        self.url = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                self.counts()
                return
            except httpx.HTTPError:
                time.sleep(0.1)
        raise RuntimeError("the OTLP sink did not start")

    def counts(self) -> dict[str, int]:
        data: dict[str, int] = json.loads(httpx.get(self.url, timeout=5).text)
        return data

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def one_round(bootstrap: str, tasks: int, sink: Sink | None) -> dict[str, Any]:
    overrides: dict[str, Any] = {"otlp_endpoint": sink.url} if sink else {}
    rig = OursRig(bootstrap, concurrency=64, **overrides)
    try:
        rig.add_processor()
        rig.add_worker()
        rig.warm_up(200)
        time.sleep(SETTLE_S)
        pids = {"processor": rig.processors[0][0].pid, "worker": rig.workers[0].pid}
        spans_before = sink.counts()["spans"] if sink else 0
        before = {name: cpu_s(pid) for name, pid in pids.items()}
        producer_before = time.process_time()
        started = time.monotonic()
        rig.submit_batch(tasks)
        rig.producer.telemetry.flush()
        producer_cpu = time.process_time() - producer_before
        done = rig.wait_all_done(600)
        elapsed = time.monotonic() - started
        time.sleep(SETTLE_S)  # the last spans are exported (BSP delay 500 ms)
        after = {name: cpu_s(pid) for name, pid in pids.items()}
        per_task = {name: (after[name] - before[name]) / tasks * 1e6 for name in pids}
        per_task["producer"] = producer_cpu / tasks * 1e6
        spans = (sink.counts()["spans"] - spans_before) if sink else 0
        return {"tracing": sink is not None, "tasks": tasks, "all_done": done,
                "seconds": round(elapsed, 2),
                "cpu_us_per_task": {k: round(v, 1) for k, v in per_task.items()},
                "spans_exported": spans, "spans_per_task": round(spans / tasks, 2)}
    finally:
        rig.close()


def summarize(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for mode in ("off", "on"):
        rows = [r for r in rounds if r["tracing"] == (mode == "on")]
        out[mode] = {name: round(statistics.median(r["cpu_us_per_task"][name] for r in rows), 1)
                     for name in ("producer", "processor", "worker")}
    out["extra_us_per_task"] = {name: round(out["on"][name] - out["off"][name], 1)
                                for name in out["on"]}
    return out


def plot(summary: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = ["producer", "processor", "worker"]
    fig, ax = plt.subplots(figsize=(7, 4))
    width = 0.38
    xs = range(len(names))
    ax.bar([x - width / 2 for x in xs], [summary["off"][n] for n in names], width,
           label="tracing off")
    ax.bar([x + width / 2 for x in xs], [summary["on"][n] for n in names], width,
           label="tracing on (OTLP/HTTP)")
    ax.set_xticks(list(xs), names)
    ax.set_ylabel("CPU per no-op task (µs, median of rounds)")
    ax.set_title("The cost of tracing, same run, alternating rounds")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--bootstrap", default=os.environ.get("TASKSTREAM_BOOTSTRAP"))
    parser.add_argument("--tasks", type=int, default=5_000)
    parser.add_argument("--rounds", type=int, default=3, help="rounds of each mode")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    os.environ.setdefault("OTEL_BSP_SCHEDULE_DELAY", "500")
    scratch = Path(tempfile.mkdtemp(prefix="taskstream-bench-tracing-"))
    bootstrap, data_dir = args.bootstrap, None
    if not bootstrap or localkafka.cluster_answers(bootstrap, 5.0) is None:
        data_dir = scratch / "kafka"
        bootstrap = localkafka.up(load_settings(), port=localkafka.free_port_block(2),
                                  data_dir=data_dir, show_progress=True).cluster.bootstrap
    sink = Sink()
    rounds = []
    try:
        for i in range(2 * args.rounds):
            tracing = i % 2 == 1
            row = one_round(bootstrap, args.tasks, sink if tracing else None)
            print(f"[tracing] round {i + 1}: {json.dumps(row)}", flush=True)
            rounds.append(row)
    finally:
        sink.close()
        if data_dir is not None:
            localkafka.down(data_dir)
    summary = summarize(rounds)
    result = {"when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "command": " ".join(["python", "bench/bench_tracing.py", *sys.argv[1:]]),
              "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                          "load_at_end": os.getloadavg()},
              "rounds": rounds, "summary": summary}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "tracing.json").write_text(json.dumps(result, indent=2) + "\n")
    plot(summary, args.out / "tracing.png")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
