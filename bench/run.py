"""The benchmark harness: every section in one run, side by side, on this machine.

    python bench/run.py [--quick] [--out bench/results] [--only e2e,celery]

Sections: ``ingest`` (bench_ingest.run), ``replay`` (bench_replay.run), ``e2e``
(max rate and latency at 25/50/90 % of it), ``delayed``, ``scaling`` (1, 2, 4
workers; 1 and 2 processor replicas), ``failover`` (SIGKILL one of two
replicas), ``celery`` (the same no-op workload on Celery + Redis). The e2e,
delayed, scaling and failover sections share one platform rig (one processor
start-up, workers and a replica added as they go). Writes ``results.json``,
``results.md`` and PNG plots to ``--out``. A failing section is recorded with
its error and the others still run. Nothing is asserted: figures are reported.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_e2e import OursRig, load_profile, measure_max, measure_paced
from report import markdown

from taskstream.localkafka import cluster as localkafka
from taskstream.settings import load_settings

SECTIONS = ("ingest", "replay", "e2e", "delayed", "scaling", "failover", "celery")
FRACTIONS = (0.25, 0.5, 0.9)
#: the same offered loads for both systems: latency side by side at equal rates
#: (the "max" above comes from a burst and overstates what a system sustains)
FIXED_RATES = (100.0, 200.0, 300.0)


@dataclass(frozen=True)
class Sizes:
    ingest_n: int
    ingest_reps: int
    replay_events: int
    replay_runs: int
    e2e_n: int
    paced_s: float
    delayed_s: float
    scaling_n: int
    workers: tuple[int, ...]
    failover_pre_s: float
    failover_post_s: float


FULL = Sizes(100_000, 3, 1_000_000, 3, 5_000, 10.0, 10.0, 4_000, (1, 2, 4), 8.0, 25.0)
QUICK = Sizes(10_000, 1, 30_000, 1, 400, 2.0, 3.0, 300, (1, 2), 3.0, 8.0)


def _max_timeout(n: int) -> float:
    return 60.0 + n / 25.0


def _strip(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if k != "finish_ms"}


class Bench:
    def __init__(self, bootstrap: str, sizes: Sizes, concurrency: int,
                 only: set[str]) -> None:
        self.bootstrap, self.sizes, self.concurrency, self.only = (
            bootstrap, sizes, concurrency, only)
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
        self.results.setdefault(name, {})["section_s"] = round(time.monotonic() - started, 1)
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

    def platform_sections(self) -> None:
        """e2e, delayed, scaling, failover on one rig."""
        wanted = {"e2e", "delayed", "scaling", "failover"} & self.only
        if not wanted:
            return
        rig = OursRig(self.bootstrap, concurrency=self.concurrency)
        try:
            self.section("e2e", lambda: self._e2e(rig))
            max_rate = self.results.get("e2e", {}).get("max", {}).get("steady_tasks_per_s")
            rate = max_rate or 50.0
            self.section("delayed", lambda: self._delayed(rig, rate))
            self.section("scaling", lambda: self._scaling(rig))
            self.section("failover", lambda: self._failover(rig, rate))
        finally:
            rig.close()

    def _ensure_started(self, rig: OursRig) -> None:
        if not rig.processors:
            rig.add_processor()
            rig.add_worker()
            rig.warm_up()

    def _e2e(self, rig: OursRig) -> dict[str, Any]:
        started = time.monotonic()
        self._ensure_started(rig)
        startup = time.monotonic() - started
        s = self.sizes
        best = measure_max(rig, s.e2e_n, _max_timeout(s.e2e_n))
        rate = best["steady_tasks_per_s"] or best["tasks_per_s"] or 10.0
        profile = load_profile(rig, rate, FRACTIONS, s.paced_s, 60.0)
        fixed = fixed_rates(rig, s.paced_s)
        return {"config": {"processors": 1, "workers": 1, "concurrency": self.concurrency,
                           "pool": "async", "partitions": 6, "ready_partitions": 3,
                           "startup_s": round(startup, 1)},
                "max": _strip(best), "profile": profile, "fixed": fixed}

    def _delayed(self, rig: OursRig, max_rate: float) -> dict[str, Any]:
        self._ensure_started(rig)
        return measure_paced(rig, max(1.0, 0.25 * max_rate), self.sizes.delayed_s, 60.0,
                             delay_s=2.0)

    def _scaling(self, rig: OursRig) -> dict[str, Any]:
        self._ensure_started(rig)
        s = self.sizes
        rows = []
        for workers in s.workers:
            while len(rig.workers) < workers:
                rig.add_worker()
            rig.warm_up(40)
            row = _strip(measure_max(rig, s.scaling_n, _max_timeout(s.scaling_n)))
            rows.append({"label": f"1 proc\n{workers} worker(s)", "processors": 1,
                         "workers": workers, **row})
        while len(rig.workers) > 1:
            rig.remove_worker()
        rig.add_processor()
        rig.warm_up(40)
        row = _strip(measure_max(rig, s.scaling_n, _max_timeout(s.scaling_n)))
        rows.append({"label": "2 procs\n1 worker", "processors": 2, "workers": 1, **row})
        return {"concurrency": self.concurrency, "rows": rows}

    def _failover(self, rig: OursRig, max_rate: float) -> dict[str, Any]:
        from bench_failover import run_failover

        self._ensure_started(rig)
        if len(rig.processors) < 2:
            rig.add_processor()
            rig.warm_up(40)
        s = self.sizes
        return run_failover(rig, max(5.0, 0.25 * max_rate), s.failover_pre_s,
                            s.failover_post_s, 120.0)

    def celery(self) -> dict[str, Any]:
        from bench_celery import CeleryRig

        rig = CeleryRig(concurrency=self.concurrency)
        try:
            rig.start()
            rig.warm_up()
            s = self.sizes
            best = measure_max(rig, s.e2e_n, _max_timeout(s.e2e_n))
            rate = best["steady_tasks_per_s"] or best["tasks_per_s"] or 10.0
            profile = load_profile(rig, rate, FRACTIONS, s.paced_s, 60.0)
            return {"config": rig.config(), "max": _strip(best), "profile": profile,
                    "fixed": fixed_rates(rig, s.paced_s)}
        finally:
            rig.close()


def fixed_rates(rig: Any, seconds: float) -> list[dict[str, Any]]:
    """Latency at each of FIXED_RATES tasks/s, one call per task."""
    return [{**measure_paced(rig, rate, seconds, 60.0), "rate": rate} for rate in FIXED_RATES]


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


def _meta(args: argparse.Namespace, bootstrap: str, sizes: Sizes) -> dict[str, Any]:
    load = os.getloadavg()
    return {"when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "command": " ".join(["python", "bench/run.py", *sys.argv[1:]]),
            "quick": args.quick, "bootstrap": bootstrap, "concurrency": args.concurrency,
            "sizes": sizes.__dict__, "cpus": os.cpu_count(),
            "python": platform.python_version(), "platform": platform.platform(),
            "load_average_at_start": [round(x, 2) for x in load],
            "note": "shared 2-core machine with other engineers' builds and tests running: "
                    "figures are noisy; medians/percentiles of one run"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else "")
    parser.add_argument("--quick", action="store_true", help="small sizes (under 2 minutes)")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    parser.add_argument("--bootstrap", default=os.environ.get("TASKSTREAM_BOOTSTRAP"))
    parser.add_argument("--only", default=",".join(SECTIONS),
                        help=f"comma-separated sections of {', '.join(SECTIONS)}")
    parser.add_argument("--concurrency", type=int, default=64,
                        help="tasks at once per worker process, ours and Celery's")
    args = parser.parse_args(argv)
    only = {s.strip() for s in args.only.split(",") if s.strip()}
    unknown = only - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections {sorted(unknown)}; choose from {', '.join(SECTIONS)}")
    sizes = QUICK if args.quick else FULL
    args.out.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="taskstream-bench-run-"))
    bootstrap, own_kafka = _broker(args.bootstrap, scratch)
    started = time.monotonic()
    bench = Bench(bootstrap, sizes, args.concurrency, only)
    try:
        bench.section("ingest", bench.ingest)
        bench.section("replay", bench.replay)
        bench.platform_sections()
        bench.section("celery", bench.celery)
    finally:
        if own_kafka is not None:
            localkafka.down(own_kafka)
    results = {"meta": _meta(args, bootstrap, sizes), **bench.results}
    results["meta"]["total_s"] = round(time.monotonic() - started, 1)
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.out / "results.md").write_text(markdown(results))
    from plots import write_plots

    plots = write_plots(results, args.out)
    print(f"[bench] wrote {args.out / 'results.json'}, results.md and "
          f"{', '.join(p.name for p in plots) or 'no plots'} in {results['meta']['total_s']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
