"""Soak: memory and latency of the running platform over a long steady load.

DESIGN.md's target: memory flat over a 10-minute soak; state on disk, not in RAM.
One processor replica and one worker (async pool) on fresh topics take paced
no-op tasks (one ``submit`` call each) for ``--minutes``; every ``--interval``
seconds the resident set (``VmRSS``) of the processor, the worker, the broker's
JVM (when this run started it) and this process (the producer) is sampled, with
the size of the processor's data directory (its RocksDB state) and the tasks done.
CPU per task of each process is read from /proc around the paced part (submit to
all done), and ``taskstream replay verify`` checks the live state against the log
at the end (issue 12: verify clean after every bench run).

Reported per process, after a warm-up (the first fifth of the run, at most two
minutes: caches, RocksDB memtables and the JVM heap fill up first): the resident
set at the start and at the end of the measured part (medians of the first and
the last minute of it), the highest sample, the highest of each half, and the
least-squares slope in MiB per minute. Latency per minute of the run
(submit->start p50/p99 of the tasks submitted in that minute) shows whether the
platform slows down as state grows.

    python bench/bench_soak.py --minutes 10 --rate 150

writes ``bench/results/soak.json``. Nothing is asserted: figures are reported.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_e2e import OursRig, Times, paced, stats
from meta import write_result

RESULTS = Path(__file__).resolve().parent / "results" / "soak.json"
MIB = 1024 * 1024


def rss_bytes(pid: int) -> int | None:
    """The resident set of a live process (``VmRSS``), None once it is gone."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return None


def dir_bytes(path: Path) -> int:
    """Bytes of the regular files under ``path`` (files vanishing meanwhile are skipped)."""
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except FileNotFoundError:
                continue
    return total


def slope_per_minute(samples: Sequence[tuple[float, float]]) -> float | None:
    """Least-squares slope of (seconds, value) pairs, per minute; None with < 2 times."""
    if len({t for t, _ in samples}) < 2:
        return None
    n = len(samples)
    mean_t = sum(t for t, _ in samples) / n
    mean_v = sum(v for _, v in samples) / n
    cov = sum((t - mean_t) * (v - mean_v) for t, v in samples)
    var = sum((t - mean_t) ** 2 for t, _ in samples)
    return cov / var * 60.0


def summarize(samples: Sequence[tuple[float, float]], warmup_s: float,
              window_s: float = 60.0) -> dict[str, Any]:
    """Start, end, highest and slope of ``(seconds since start, MiB)`` samples after warm-up."""
    kept = [(t, v) for t, v in samples if t >= warmup_s]
    if not kept:
        return {"samples": 0}
    first_t, last_t = kept[0][0], kept[-1][0]
    head = [v for t, v in kept if t <= first_t + window_s]
    tail = [v for t, v in kept if t >= last_t - window_s]
    start, end = statistics.median(head), statistics.median(tail)
    slope = slope_per_minute(kept)
    middle = (first_t + last_t) / 2
    # RocksDB memtables fill and flush: a saw-tooth whose slope depends on where the run
    # stops; bounded memory shows as a second half whose highest point is not far above
    # the first half's
    halves = [max(v for t, v in kept if t <= middle), max(v for t, v in kept if t >= middle)]
    return {"samples": len(kept), "measured_s": round(last_t - first_t, 1),
            "max_first_half_mib": round(halves[0], 1), "max_second_half_mib": round(halves[1], 1),
            "start_mib": round(start, 1), "end_mib": round(end, 1),
            "growth_mib": round(end - start, 1),
            "growth_pct": round(100.0 * (end - start) / start, 1) if start else None,
            "max_mib": round(max(v for _, v in kept), 1),
            "slope_mib_per_min": None if slope is None else round(slope, 2)}


def per_minute(times: Sequence[Times], began_ms: float) -> list[dict[str, Any]]:
    """submit->start percentiles of the tasks submitted in each minute of the run."""
    buckets: dict[int, list[float]] = {}
    for t in times:
        # max(0, ...): the producer's clock is read at submit, a hair before began_ms
        buckets.setdefault(max(0, int((t.submitted_ms - began_ms) // 60_000)), []).append(
            t.started_ms - t.submitted_ms)
    return [{"minute": m, **stats(buckets[m])} for m in sorted(buckets)]


class Sampler(threading.Thread):
    """Samples every ``interval`` seconds until stopped; rows of plain numbers."""

    def __init__(self, pids: dict[str, int], data_dir: Path, done: Callable[[], int | None],
                 interval: float) -> None:
        super().__init__(name="soak-sampler", daemon=True)
        self.pids, self.data_dir, self.done, self.interval = pids, data_dir, done, interval
        self.rows: list[dict[str, Any]] = []
        self.began = time.monotonic()
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            row: dict[str, Any] = {"t": round(time.monotonic() - self.began, 1)}
            for name, pid in self.pids.items():
                rss = rss_bytes(pid)
                row[name] = None if rss is None else round(rss / MIB, 1)
            row["data_dir_mib"] = round(dir_bytes(self.data_dir) / MIB, 1)
            row["done"] = self.done()
            self.rows.append(row)
            self.stop.wait(self.interval)

    def series(self, name: str) -> list[tuple[float, float]]:
        return [(r["t"], r[name]) for r in self.rows if r.get(name) is not None]


def _succeeded(rig: OursRig) -> int | None:
    try:
        return rig.succeeded()
    except Exception:  # a 503 or a slow answer: this sample has no count
        return None


def run(bootstrap: str, *, minutes: float, rate: float, interval: float,
        broker_pids: Sequence[int] = (), concurrency: int = 64) -> dict[str, Any]:
    seconds = minutes * 60.0
    warmup_s = min(120.0, seconds / 5)
    rig = OursRig(bootstrap, concurrency=concurrency, broker_pids=broker_pids)
    try:
        rig.add_processor()
        rig.add_worker()
        rig.warm_up()
        pids = {"processor": rig.processors[0][0].pid, "worker": rig.workers[0].pid,
                "producer (this process)": os.getpid()}
        pids.update({f"broker {i + 1}": pid for i, pid in enumerate(broker_pids)})
        sampler = Sampler(pids, rig.workdir / "replica0", lambda: _succeeded(rig), interval)
        meter = rig.meter()
        since = int(time.time() * 1000) - 1
        began_ms = time.time() * 1000
        sampler.start()
        cpu_before = meter.read()
        ids, achieved = paced(lambda: rig.submit_one(), rate, seconds)
        rig.flush()
        all_done = rig.wait_all_done(300.0)
        cpu_after = meter.read()
        sampler.stop.set()
        sampler.join(interval + 30)
        times = rig.times(ids, since)
        verified = rig.verify()
        return {
            "minutes": minutes, "target_rate": rate, "achieved_rate": round(achieved, 1),
            "interval_s": interval, "warmup_s": warmup_s, "concurrency": concurrency,
            "tasks": len(ids), "done": len(times), "all_done_in_time": all_done,
            "memory": {name: summarize(sampler.series(name), warmup_s) for name in pids},
            "data_dir": summarize(sampler.series("data_dir_mib"), warmup_s),
            "submit_to_start_ms": stats([t.started_ms - t.submitted_ms for t in times]),
            "cpu_per_task_us": meter.per_task_us(cpu_before, cpu_after, len(ids)),
            "verify": verified,
            "per_minute": per_minute(times, began_ms),
            "samples": sampler.rows,
        }
    finally:
        rig.close()


def report(result: dict[str, Any]) -> str:
    lines = [f"{result['tasks']} tasks at {result['achieved_rate']}/s over "
             f"{result['minutes']} min, {result['done']} done; measured after "
             f"{result['warmup_s']:.0f} s of warm-up",
             f"{'process':<26}{'start MiB':>10}{'end MiB':>10}{'max MiB':>10}{'MiB/min':>9}"
             f"{'max 1st/2nd half':>18}"]
    rows = [*result["memory"].items(), ("data dir (on disk)", result["data_dir"])]
    for name, m in rows:
        if m.get("samples"):
            halves = f"{m['max_first_half_mib']} / {m['max_second_half_mib']}"
            lines.append(f"{name:<26}{m['start_mib']:>10}{m['end_mib']:>10}{m['max_mib']:>10}"
                         f"{m['slope_mib_per_min']:>9}{halves:>18}")
    cpu = ", ".join(f"{role} {us}" for role, us in result["cpu_per_task_us"].items()
                    if not role.startswith("_"))
    lines.append(f"CPU per task (us): {cpu}")
    verify = result["verify"]
    lines.append("replay verify: " + ("clean" if verify.get("ok") else f"NOT clean: {verify}"))
    for row in result["per_minute"]:
        lines.append(f"minute {row['minute']}: submit->start p50 {row['p50']:.0f} ms, "
                     f"p99 {row['p99']:.0f} ms ({row['n']} tasks)")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--bootstrap", default=os.environ.get("TASKSTREAM_BOOTSTRAP"),
                        help="a running broker (default: start a local one for this run)")
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=150.0, help="tasks submitted per second")
    parser.add_argument("--interval", type=float, default=5.0, help="seconds between samples")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    from run import broker_for_run

    with broker_for_run(args.bootstrap) as (bootstrap, broker_pids):
        result = run(bootstrap, minutes=args.minutes, rate=args.rate, interval=args.interval,
                     broker_pids=broker_pids, concurrency=args.concurrency)
    write_result(result, "bench_soak.py", args.out)
    print(report(result))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
