"""What security costs: plaintext against SASL_SSL with signed events and sealed payloads.

Two local clusters side by side in one run: a plaintext one and a secured one
(``kafka up --secure``: SASL_SSL with SCRAM-SHA-512, TLS, ACLs). On each, a
processor and a worker (``examples.tasks``), and the SDK in this process:

* ``plaintext``: no security, no keys;
* ``secured``: every client over SASL_SSL under its role's principal, workers
  sign their events (D26), payloads, results and error texts sealed with
  AES-256-GCM (D27).

Measured, alternating the two modes ``--reps`` times (the machine is shared and
noisy; the two modes see the same noise):

* ``burst``: ``--tasks`` no-op tasks with a small JSON payload submitted with
  ``submit_many``, until all are SUCCEEDED: tasks/s (first submit to last finish,
  from the task states) and CPU seconds per task of the processor, the worker, the
  broker (JVM) and this process (the SDK), from ``/proc`` around the burst;
* ``ingest``: ``submit_many`` of ``--ingest`` tasks into the events topic only
  (no processor work awaited): tasks/s and the SDK's CPU per task.

Nothing is asserted. ``python bench/bench_security.py --tasks 3000 --ingest 50000 --reps 3``
writes ``bench/results/security.json`` and ``security.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from bench_e2e import ROOT, _rates

from taskstream.acls import Role, apply_acls
from taskstream.dev.procs import Child, free_port, start_processor, start_worker, stop_all
from taskstream.localkafka import cluster as localkafka
from taskstream.localkafka import secure as security
from taskstream.producer import TaskProducer
from taskstream.queue_registry import set_up_platform
from taskstream.security.keyring import keyring_json, new_secret
from taskstream.settings import Settings, load_settings

RESULTS = Path(__file__).resolve().parent / "results"
NOOP = "examples.noop"
CHUNK = 5_000
TICK = os.sysconf("SC_CLK_TCK")
PAYLOAD = {"order": "A-1042", "customer": "c-7781", "amount_cents": 12_950,
           "items": [{"sku": f"SKU-{i}", "qty": i + 1} for i in range(4)]}


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a live process (its threads included)."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
        fields = stat.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def self_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class Rig:
    """A processor and a worker on fresh topics of one cluster, in one security mode."""

    def __init__(self, mode: str, cluster: localkafka.Cluster, workdir: Path) -> None:
        self.mode, self.cluster, self.workdir = mode, cluster, workdir
        self.prefix = f"bsec{uuid.uuid4().hex[:6]}."
        base = {"topic_prefix": self.prefix, "partitions": 6, "ready_partitions": 3,
                "kafka_timeout_s": 30.0, "data_dir": workdir / "data"}
        if cluster.secure:
            files = security.prepare(cluster.data_dir)
            ring = keyring_json({"k1": new_secret()}, "k1")

            def role(r: Role, **extra: Any) -> Settings:
                values = {**base, **security.role_overrides(files, r.value, cluster.bootstrap,
                                                             self.prefix), **extra}
                if r is not Role.SUBMITTER:
                    values["signing_keyring_file"] = files.keyring(r.value)
                return load_settings(**values)

            admin = role(Role.ADMIN)
            apply_acls(admin, {r: f"User:{r.value}" for r in Role})
            self.admin, self.processor = admin, role(Role.PROCESSOR)
            self.worker = role(Role.WORKER, payload_keys=ring)
            self.submitter = role(Role.SUBMITTER, payload_keys=ring)
        else:
            plain = load_settings(bootstrap=cluster.bootstrap, **base)
            self.admin = self.processor = self.worker = self.submitter = plain
        set_up_platform(self.admin)  # topics, and the queues registered
        port = free_port()
        self.api = f"http://127.0.0.1:{port}"
        self.children: list[Child] = [
            start_processor(self.processor, workdir / "replica0", port,
                            workdir / "processor.log", ROOT, ready_timeout=180)]
        self.children.append(start_worker(self.worker, "examples.tasks", workdir / "worker.log",
                                          ROOT, concurrency=64, pool="async"))
        self.producer = TaskProducer(self.submitter, source="bench")
        self.http = httpx.Client(timeout=30.0)
        self.expected = 0

    @property
    def pids(self) -> dict[str, int]:
        return {"processor": self.children[0].pid, "worker": self.children[1].pid,
                "broker": self.cluster.nodes[0].pid}

    def submit(self, n: int) -> list[str]:
        ids: list[str] = []
        for lo in range(0, n, CHUNK):
            size = min(CHUNK, n - lo)
            ids += [h.task_id for h in self.producer.submit_many(
                [{"name": NOOP, "payload": PAYLOAD}] * size)]
        self.producer.flush(120)
        return ids

    def succeeded(self) -> int:
        """SUCCEEDED tasks from ``/metrics`` (local counts: unlike ``/queues`` it reads no
        topic, so polling it costs both modes the same, and no SASL login per poll)."""
        text = self.http.get(f"{self.api}/metrics").text
        return sum(int(float(line.rsplit(" ", 1)[1])) for line in text.splitlines()
                   if line.startswith("taskstream_tasks{") and 'state="SUCCEEDED"' in line)

    def wait_done(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if self.succeeded() >= self.expected:
                    return True
            except (httpx.HTTPError, ValueError, IndexError):
                pass
            time.sleep(0.5)
        return False

    def finish_times(self, since_ms: int) -> list[tuple[float, float]]:
        """(submitted_at_ms, finished_at_ms) of the tasks that succeeded since ``since_ms``."""
        out, cursor = [], None
        while True:
            params: dict[str, Any] = {"state": "SUCCEEDED", "since": since_ms, "limit": 1000}
            if cursor:
                params["cursor"] = cursor
            body = self.http.get(f"{self.api}/tasks", params=params).json()
            out += [(i["submitted_at_ms"], i["finished_at_ms"]) for i in body["items"]]
            cursor = body.get("next_cursor")
            if not cursor:
                return out

    def burst(self, n: int, timeout: float) -> dict[str, Any]:
        since = int(time.time() * 1000) - 1
        before = {k: cpu_s(p) for k, p in self.pids.items()} | {"sdk": self_cpu_s()}
        self.expected += n
        self.submit(n)
        done = self.wait_done(timeout)
        after = {k: cpu_s(p) for k, p in self.pids.items()} | {"sdk": self_cpu_s()}
        times = self.finish_times(since)
        ends = sorted(f for _, f in times)
        span = (ends[-1] - min(s for s, _ in times)) / 1000 if len(times) > 1 else None
        _, steady = _rates_of(times)
        return {"tasks": n, "done": len(times), "all_done_in_time": done,
                "tasks_per_s": n / span if span else None, "steady_tasks_per_s": steady,
                "cpu_us_per_task": {k: round((after[k] - before[k]) / n * 1e6, 1)
                                    for k in before}}

    def ingest(self, n: int) -> dict[str, Any]:
        """submit_many into the events topic; the SDK's rate and CPU (not awaited by anyone)."""
        cpu, started = self_cpu_s(), time.perf_counter()
        self.submit(n)
        wall = time.perf_counter() - started
        self.expected += n
        return {"tasks": n, "tasks_per_s": n / wall,
                "sdk_cpu_us_per_task": round((self_cpu_s() - cpu) / n * 1e6, 1)}

    def close(self) -> None:
        self.producer.close(30)
        self.http.close()
        stop_all(list(reversed(self.children)))


def _rates_of(times: list[tuple[float, float]]) -> tuple[float | None, float | None]:
    from bench_e2e import Times

    return _rates([Times(s, f, f) for s, f in times])


def _median(rows: list[dict[str, Any]], key: Callable[[dict[str, Any]], float | None]
            ) -> float | None:
    values = [v for v in (key(r) for r in rows) if v is not None]
    return round(statistics.median(values), 1) if values else None


def summarize(runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for mode, rows in runs.items():
        bursts = [r["burst"] for r in rows]
        ingests = [r["ingest"] for r in rows if r.get("ingest")]
        out[mode] = {
            "burst_tasks_per_s": _median(bursts, lambda r: r["tasks_per_s"]),
            "burst_steady_tasks_per_s": _median(bursts, lambda r: r["steady_tasks_per_s"]),
            "cpu_us_per_task": {k: _median(bursts, lambda r, k=k: r["cpu_us_per_task"][k])
                                for k in ("processor", "worker", "broker", "sdk")},
            "ingest_tasks_per_s": _median(ingests, lambda r: r["tasks_per_s"]),
            "ingest_sdk_cpu_us_per_task": _median(ingests, lambda r: r["sdk_cpu_us_per_task"]),
        }
    return out


def markdown(summary: dict[str, Any], meta: dict[str, Any]) -> str:
    plain, secured = summary.get("plaintext", {}), summary.get("secured", {})

    def ratio(a: float | None, b: float | None) -> str:
        return f"{b / a:.2f}x" if a and b else "-"

    rows = [("burst: tasks/s, submit to last finish", "burst_tasks_per_s"),
            ("burst: steady tasks/s (middle 80 %)", "burst_steady_tasks_per_s"),
            ("ingest: submit_many tasks/s (SDK only)", "ingest_tasks_per_s"),
            ("ingest: SDK CPU us per task", "ingest_sdk_cpu_us_per_task")]
    lines = ["| what (medians) | plaintext | SASL_SSL + signed + sealed | secured / plain |",
             "|---|---:|---:|---:|"]
    for label, key in rows:
        a, b = plain.get(key), secured.get(key)
        lines.append(f"| {label} | {a} | {b} | {ratio(a, b)} |")
    for part in ("processor", "worker", "broker", "sdk"):
        a = plain.get("cpu_us_per_task", {}).get(part)
        b = secured.get("cpu_us_per_task", {}).get(part)
        lines.append(f"| burst: {part} CPU us per task | {a} | {b} | {ratio(a, b)} |")
    return (f"# Security cost, one run ({meta['when']})\n\n"
            f"{meta['tasks']} no-op tasks per burst, {meta['ingest']} per ingest, "
            f"{meta['reps']} alternating repetitions, {meta['cpus']} CPUs, load average "
            f"{meta['load_average']} at the start. Command: `{meta['command']}`\n\n"
            + "\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=3000)
    parser.add_argument("--ingest", type=int, default=30000)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="taskstream-bench-security-"))
    base = load_settings()
    started: list[Path] = []
    rigs: dict[str, Rig] = {}
    try:
        plain = localkafka.up(base, port=localkafka.free_port_block(2),
                              data_dir=scratch / "kafka-plain", timeout=180)
        started.append(scratch / "kafka-plain")
        secured = localkafka.up(base, port=localkafka.free_port_block(2),
                                data_dir=scratch / "kafka-secure", timeout=180, secure=True)
        started.append(scratch / "kafka-secure")
        rigs = {"plaintext": Rig("plaintext", plain.cluster, scratch / "plain"),
                "secured": Rig("secured", secured.cluster, scratch / "secure")}
        for mode, rig in rigs.items():  # warm up: groups joined, caches filled
            if not rig.burst(200, 300)["all_done_in_time"]:
                raise RuntimeError(f"{mode}: warm-up tasks did not finish; see the logs in "
                                   f"{rig.workdir}")
        runs: dict[str, list[dict[str, Any]]] = {m: [] for m in rigs}
        for rep in range(args.reps):
            for mode, rig in rigs.items():
                row = {"burst": rig.burst(args.tasks, 600)}
                if args.ingest:
                    row["ingest"] = rig.ingest(args.ingest)
                    rig.wait_done(600)  # let the processor drain before the next mode runs
                runs[mode].append(row)
                print(f"[bench] rep {rep + 1} {mode}: {json.dumps(row)}", flush=True)
        meta = {"when": time.strftime("%Y-%m-%d %H:%M"), "tasks": args.tasks,
                "ingest": args.ingest, "reps": args.reps, "cpus": os.cpu_count(),
                "python": platform.python_version(),
                "load_average": [round(x, 2) for x in os.getloadavg()],
                "command": f"python bench/bench_security.py --tasks {args.tasks} "
                           f"--ingest {args.ingest} --reps {args.reps}"}
        summary = summarize(runs)
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "security.json").write_text(json.dumps(
            {"meta": meta, "summary": summary, "runs": runs}, indent=2))
        (args.out / "security.md").write_text(markdown(summary, meta))
        print(markdown(summary, meta))
    finally:
        for rig in rigs.values():
            rig.close()
        for data_dir in started:
            localkafka.down(data_dir)
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
