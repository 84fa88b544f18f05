"""The benchmark harness: every section in one run, side by side, on this machine.

    python bench/run.py [--quick] [--out bench/results] [--only compare,scaling] [--runs 3]

Sections (each also runs alone with ``--only``):

* ``ingest`` (bench_ingest.run), ``replay`` (bench_replay.run);
* ``compare`` (bench_compare.run): taskstream, Celery prefork and Celery threads,
  ``--runs`` alternating runs, each on a fresh rig: bursts of 10,000 and 50,000
  no-op tasks with CPU per task per process, the sustainable rate, paced
  submits at 1,000/s for 60 s, and ``replay verify`` after every taskstream run;
  medians over the runs;
* ``worker`` (bench_worker.run): the worker alone, draining pre-filled ready
  records and at a paced 1,000 records/s: tasks/s and CPU per task;
* ``scaling``: no-op bursts on 1 processor + 1 worker and 2 processors + 2
  workers (tasks/s and CPU per task); I/O-bound tasks (``examples.io_wait``, 50
  ms) at a fixed concurrency per worker on 1, 2 and 4 workers, through the
  processor and on the workers alone (bench_worker.scaling);
* ``delayed`` (tasks with a 2 s delay) and ``failover`` (SIGKILL one of two
  replicas under load), at a quarter of taskstream's sustainable rate.

Writes ``results.json``, ``results.md`` and PNG plots to ``--out``. A failing
section is recorded with its error and the others still run. Nothing is
asserted: figures are reported.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_compare
from bench_e2e import OursRig, measure_max, measure_paced
from bench_worker import IO_TASK, IO_WAIT_S
from report import markdown

from taskstream.dev.platform import DevOptions
from taskstream.localkafka import cluster as localkafka
from taskstream.settings import load_settings

SECTIONS = ("ingest", "replay", "compare", "worker", "scaling", "delayed", "failover")


@dataclass(frozen=True)
class Sizes:
    ingest_n: int
    ingest_reps: int
    replay_events: int
    replay_runs: int
    compare: bench_compare.Plan
    worker_n: int
    worker_paced_s: float
    scaling_n: int
    io_workers: tuple[int, ...]
    io_seconds: float  # how long each I/O-bound row runs at its ideal rate
    delayed_s: float
    failover_pre_s: float
    failover_post_s: float


FULL = Sizes(100_000, 3, 1_000_000, 3, bench_compare.FULL, 20_000, 20.0, 10_000, (1, 2, 4),
             15.0, 10.0, 8.0, 25.0)
QUICK = Sizes(10_000, 1, 30_000, 1, bench_compare.QUICK, 2_000, 3.0, 500, (1, 2), 4.0, 3.0,
              3.0, 8.0)


def _max_timeout(n: int) -> float:
    return 60.0 + n / 25.0


def _strip(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if k != "finish_ms"}


def reproduce(section: str, args: argparse.Namespace) -> str:
    """The command that runs one section again with this run's options."""
    parts = ["python", "bench/run.py", "--only", section]
    if args.quick:
        parts.append("--quick")
    if section == "compare":
        parts += ["--runs", str(args.runs), "--systems", args.systems]
    if args.concurrency != DevOptions().concurrency:
        parts += ["--concurrency", str(args.concurrency)]
    if section == "scaling" and args.io_concurrency != 8:
        parts += ["--io-concurrency", str(args.io_concurrency)]
    return " ".join(parts)


class Bench:
    def __init__(self, bootstrap: str, broker_pids: Sequence[int], sizes: Sizes,
                 args: argparse.Namespace, only: set[str]) -> None:
        self.bootstrap, self.broker_pids, self.sizes, self.args, self.only = (
            bootstrap, list(broker_pids), sizes, args, only)
        self.concurrency: int = args.concurrency
        self.results: dict[str, Any] = {}

    def section(self, name: str, fn: Callable[[], dict[str, Any]]) -> None:
        if name not in self.only:
            return
        print(f"[bench] {name} ...", flush=True)
        started = time.monotonic()
        try:
            self.results[name] = fn()
        except Exception as exc:  # a broken section is reported, the run goes on
            traceback.print_exc()
            self.results[name] = {"error": f"{type(exc).__name__}: {exc}"}
        self.results[name]["section_s"] = round(time.monotonic() - started, 1)
        self.results[name]["reproduce"] = reproduce(name, self.args)
        print(f"[bench] {name} done in {self.results[name]['section_s']} s", flush=True)

    def ingest(self) -> dict[str, Any]:
        import bench_ingest

        s = self.sizes
        return bench_ingest.run(self.bootstrap, s.ingest_n, reps=s.ingest_reps,
                                n_single=s.ingest_n // 2)

    def replay(self) -> dict[str, Any]:
        import bench_replay

        return bench_replay.run(self.bootstrap, self.sizes.replay_events,
                                runs=self.sizes.replay_runs)

    def compare(self) -> dict[str, Any]:
        systems = [s.strip() for s in self.args.systems.split(",") if s.strip()]
        return bench_compare.run(self.bootstrap, broker_pids=self.broker_pids,
                                 plan=self.sizes.compare, runs=self.args.runs, systems=systems,
                                 concurrency=self.concurrency,
                                 progress=lambda line: print(line, flush=True))

    def worker(self) -> dict[str, Any]:
        import bench_worker

        s = self.sizes
        return bench_worker.run(self.bootstrap, n=s.worker_n, rate=1000.0,
                                seconds=s.worker_paced_s, concurrency=self.concurrency,
                                broker_pids=self.broker_pids, runs=3)

    def scaling(self) -> dict[str, Any]:
        import bench_worker

        return {"noop": self._scaling_noop(), "io": self._scaling_io(),
                "io_workers_alone": bench_worker.scaling(
                    self.bootstrap, workers=self.sizes.io_workers,
                    concurrency=self.args.io_concurrency, seconds=self.sizes.io_seconds,
                    broker_pids=self.broker_pids)}

    def _scaling_noop(self) -> list[dict[str, Any]]:
        """No-op bursts on 1 processor + 1 worker, then 2 + 2: tasks/s and CPU per task."""
        n = self.sizes.scaling_n
        rig = OursRig(self.bootstrap, concurrency=self.concurrency, broker_pids=self.broker_pids)
        rows = []
        try:
            for count in (1, 2):
                while len(rig.processors) < count:
                    rig.add_processor()
                while len(rig.workers) < count:
                    rig.add_worker()
                rig.warm_up(40)
                row = bench_compare.with_cpu(
                    rig.meter(), lambda done: measure_max(rig, n, _max_timeout(n), done))
                rows.append({"processors": count, "workers": count, **_strip(row)})
        finally:
            rig.close()
        return rows

    def _scaling_io(self) -> dict[str, Any]:
        """I/O-bound tasks (a 50 ms wait) at a fixed concurrency per worker, workers added
        to one rig (each joins, the group settles, then the burst): close to proportional
        while the processor keeps up. Ready topics get 12 partitions a level, so 4
        workers all have partitions of the level the tasks use."""
        conc = self.args.io_concurrency
        ideal_per_worker = conc / IO_WAIT_S
        rig = OursRig(self.bootstrap, concurrency=conc, broker_pids=self.broker_pids,
                      task=IO_TASK, ready_partitions=12)
        rows = []
        try:
            rig.add_processor()
            for workers in self.sizes.io_workers:
                while len(rig.workers) < workers:
                    rig.add_worker()
                rig.warm_up(40)
                n = int(workers * ideal_per_worker * self.sizes.io_seconds)
                row = bench_compare.with_cpu(
                    rig.meter(), lambda done, n=n: measure_max(rig, n, _max_timeout(n), done))
                rows.append({"workers": workers, "ideal_tasks_per_s": workers * ideal_per_worker,
                             **_strip(row)})
        finally:
            rig.close()
        return {"task": IO_TASK, "wait_s": IO_WAIT_S, "concurrency_per_worker": conc,
                "processors": 1, "ready_partitions": 12, "rows": rows}

    def platform_sections(self) -> None:
        """delayed and failover on one rig, at a quarter of the sustainable rate."""
        if not {"delayed", "failover"} & self.only:
            return
        medians = self.results.get("compare", {}).get("median", {})
        sustained = (medians.get("taskstream") or {}).get("sustainable_rate")
        rate = max(5.0, 0.25 * (sustained or self.args.rate_hint))
        rig = OursRig(self.bootstrap, concurrency=self.concurrency, broker_pids=self.broker_pids)
        try:
            rig.add_processor()
            rig.add_worker()
            rig.warm_up()
            self.section("delayed", lambda: measure_paced(rig, rate, self.sizes.delayed_s, 60.0,
                                                          delay_s=2.0))
            self.section("failover", lambda: self._failover(rig, rate))
        finally:
            rig.close()

    def _failover(self, rig: OursRig, rate: float) -> dict[str, Any]:
        from bench_failover import run_failover

        rig.add_processor()
        rig.warm_up(40)
        s = self.sizes
        return run_failover(rig, rate, s.failover_pre_s, s.failover_post_s, 120.0)


def _broker(given: str | None, scratch: Path) -> tuple[str, Path | None]:
    """A broker that answers: the given one, else a local one started for this run."""
    if given and localkafka.cluster_answers({"bootstrap.servers": given}, 5.0) is not None:
        return given, None
    if given:
        print(f"[bench] no Kafka answers at {given}; starting a local one", flush=True)
    data_dir = scratch / "kafka"
    up = localkafka.up(load_settings(), port=localkafka.free_port_block(2), data_dir=data_dir,
                       show_progress=True)
    return up.cluster.bootstrap, data_dir


@contextlib.contextmanager
def broker_for_run(given: str | None,
                   broker_pids: Sequence[int] = ()) -> Iterator[tuple[str, list[int]]]:
    """(bootstrap, PIDs of the broker's JVMs) for one run: the given broker (its PIDs
    only when passed, for the CPU figures), else a local one started and stopped here."""
    scratch = Path(tempfile.mkdtemp(prefix="taskstream-bench-broker-"))
    bootstrap, own_kafka = _broker(given, scratch)
    pids = list(broker_pids)
    if own_kafka is not None:
        state = localkafka.read_state(own_kafka)
        pids = [n.pid for n in state.nodes] if state is not None else []
    try:
        yield bootstrap, pids
    finally:
        if own_kafka is not None:
            localkafka.down(own_kafka)


def _meta(args: argparse.Namespace, bootstrap: str, broker_pids: Sequence[int],
          sizes: Sizes) -> dict[str, Any]:
    load = os.getloadavg()
    return {"when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "command": " ".join(["python", "bench/run.py", *sys.argv[1:]]),
            "quick": args.quick, "bootstrap": bootstrap, "concurrency": args.concurrency,
            "broker_cpu_measured": bool(broker_pids), "sizes": json.loads(json.dumps(
                sizes.__dict__, default=lambda o: o.__dict__)),
            "cpus": os.cpu_count(), "python": platform.python_version(),
            "platform": platform.platform(),
            "load_average_at_start": [round(x, 2) for x in load],
            "note": "shared 2-core machine with other engineers' builds and tests running: "
                    "figures are noisy"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else "")
    parser.add_argument("--quick", action="store_true", help="small sizes (a few minutes)")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    parser.add_argument("--bootstrap", default=os.environ.get("TASKSTREAM_BOOTSTRAP"),
                        help="a running broker (default: start a local one for this run)")
    parser.add_argument("--broker-pid", type=int, action="append", default=[],
                        help="PID of the broker's JVM with --bootstrap (for its CPU per task)")
    parser.add_argument("--only", default=",".join(SECTIONS),
                        help=f"comma-separated sections of {', '.join(SECTIONS)}")
    parser.add_argument("--runs", type=int, default=3,
                        help="compare: alternating runs per system (the medians are reported)")
    parser.add_argument("--systems", default=",".join(bench_compare.SYSTEMS),
                        help=f"compare: which of {', '.join(bench_compare.SYSTEMS)}")
    parser.add_argument("--concurrency", type=int, default=DevOptions().concurrency,
                        help="tasks at once per worker of ours (default: as `taskstream dev`) "
                             "and Celery's threads pool")
    parser.add_argument("--io-concurrency", type=int, default=8,
                        help="scaling: tasks at once per worker for the I/O-bound rows")
    parser.add_argument("--rate-hint", type=float, default=200.0,
                        help="delayed/failover: taskstream's sustainable rate when compare "
                             "does not run")
    args = parser.parse_args(argv)
    only = {s.strip() for s in args.only.split(",") if s.strip()}
    unknown = only - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections {sorted(unknown)}; choose from {', '.join(SECTIONS)}")
    systems = {s.strip() for s in args.systems.split(",") if s.strip()}
    if systems - set(bench_compare.SYSTEMS):
        parser.error(f"unknown systems {sorted(systems - set(bench_compare.SYSTEMS))}")
    sizes = QUICK if args.quick else FULL
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with broker_for_run(args.bootstrap, args.broker_pid) as (bootstrap, broker_pids):
        meta = _meta(args, bootstrap, broker_pids, sizes)
        bench = Bench(bootstrap, broker_pids, sizes, args, only)
        bench.section("ingest", bench.ingest)
        bench.section("replay", bench.replay)
        bench.section("compare", bench.compare)
        bench.section("worker", bench.worker)
        bench.section("scaling", bench.scaling)
        bench.platform_sections()
    results = {"meta": meta, **bench.results}
    results["meta"]["total_s"] = round(time.monotonic() - started, 1)
    results["meta"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.out / "results.md").write_text(markdown(results))
    from plots import write_plots

    plots = write_plots(results, args.out)
    print(f"[bench] wrote {args.out / 'results.json'}, results.md and "
          f"{', '.join(p.name for p in plots) or 'no plots'} in {results['meta']['total_s']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
