"""Storage lifecycle (issue 22): 10 MB results end to end, and state size with retention.

Part 1, large results: a processor and a worker (``examples.blob``) with the local
S3Proxy as object storage. ``--tasks`` tasks each return ``--size-mb`` MB; the
results go to S3 (the event carries a reference) and come back through
``handle.result()``, which streams ``GET /tasks/{id}/result``. Reported: the
throughput (tasks/s and MB/s from the first submit to the last result read) and,
for each process, the resident set's peak above its level before the run, in
units of one value (the worker, the processor with the API, this process as the
client). Run twice: ``concurrency 1`` (one value in flight: the "one whole copy
per process" check) and ``--concurrency`` (throughput).

Part 2, retention: a soak of no-op tasks at ``--rate`` for ``--minutes`` with
``retention_s`` = ``--retention``. Sampled every ``--interval`` s: tasks in the
state (``taskstream_tasks``), the processor's data directory, and the time of a
listing (``GET /tasks?state=SUCCEEDED&limit=100``), and the data directory by
store and RocksDB file kind; at the end ``replay verify``. With retention the state
holds about rate x retention finished tasks, whatever the run's length.

    python bench/bench_storage.py                       # both parts
    python bench/bench_storage.py --only large --tasks 20

writes ``bench/results/storage.json``. Nothing is asserted: figures are reported.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_e2e import OursRig, paced
from bench_soak import dir_bytes, rss_bytes
from meta import write_result

from taskstream.locals3.server import LocalS3
from taskstream.producer.sync import TaskProducer
from taskstream.settings import load_settings

RESULTS = Path(__file__).resolve().parent / "results" / "storage.json"
MB = 1_000_000
MIB = 1024 * 1024


class PeakRss(threading.Thread):
    """The highest resident set of some processes, sampled every 20 ms."""

    def __init__(self, pids: dict[str, int]) -> None:
        super().__init__(daemon=True)
        self.pids = pids
        self.base = {name: rss_bytes(pid) or 0 for name, pid in pids.items()}
        self.peak = dict(self.base)
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(0.02):
            for name, pid in self.pids.items():
                rss = rss_bytes(pid) or 0
                if rss > self.peak[name]:
                    self.peak[name] = rss

    def finish(self, value_bytes: int) -> dict[str, dict[str, float]]:
        self.stop.set()
        self.join(5)
        return {name: {"before_mib": round(self.base[name] / MIB, 1),
                       "peak_above_mib": round((self.peak[name] - self.base[name]) / MIB, 1),
                       "peak_above_in_values": round(
                           (self.peak[name] - self.base[name]) / value_bytes, 2)}
                for name in self.pids}


def large(rig: OursRig, producer: TaskProducer, tasks: int, size: int, parallel: bool
          ) -> dict[str, Any]:
    pids = {"worker": rig.workers[0].pid, "processor (API)": rig.processors[0][0].pid,
            "client (this process)": os.getpid()}
    meter = PeakRss(pids)
    meter.start()
    began = time.monotonic()
    if parallel:
        handles = [producer.submit("examples.blob", {"size": size}) for _ in range(tasks)]
        for handle in handles:
            value = handle.result(timeout=600)
            assert len(value) == size
            del value
    else:
        for _ in range(tasks):
            value = producer.submit("examples.blob", {"size": size}).result(timeout=600)
            assert len(value) == size
            del value
    took = time.monotonic() - began
    return {"tasks": tasks, "value_mb": size / MB, "parallel": parallel,
            "seconds": round(took, 2), "tasks_per_s": round(tasks / took, 2),
            "mb_per_s": round(tasks * size / MB / took, 1), "memory": meter.finish(size)}


def run_large(bootstrap: str, s3: LocalS3, *, tasks: int, size: int, concurrency: int
              ) -> dict[str, Any]:
    results = {}
    for name, workers_concurrency, parallel in (("one_at_a_time", 1, False),
                                                ("concurrent", concurrency, True)):
        env = s3.settings_env(f"bench{int(time.time())}{name[:3]}")
        overrides = {k.removeprefix("TASKSTREAM_").lower(): v for k, v in env.items()}
        rig = OursRig(bootstrap, concurrency=workers_concurrency, **overrides)
        try:
            from taskstream.objectstore.store import ObjectStore

            store = ObjectStore.from_settings(rig.settings)
            assert store is not None
            store.ensure_bucket()
            api = rig.add_processor()
            rig.add_worker()
            with TaskProducer(rig.settings.model_copy(update={"api_url": api})) as producer:
                producer.submit("examples.blob", {"size": size}).result(timeout=300)  # warm
                results[name] = large(rig, producer, tasks, size, parallel)
            print(json.dumps({name: results[name]}), flush=True)
        finally:
            rig.close()
    return results


def listing_ms(rig: OursRig) -> float:
    started = time.perf_counter()
    rig.http.get(f"{rig.api}/tasks", params={"state": "SUCCEEDED", "limit": 100})
    return (time.perf_counter() - started) * 1000


def data_dir_parts(root: Path) -> dict[str, float]:
    """MiB of the processor's data directory by store and RocksDB file kind: the task
    table (``tables``), the listing and due indexes; SSTs, write-ahead logs (``wal``)
    and the rest (manifests, info logs)."""
    parts: dict[str, float] = {}
    for path in root.rglob("*"):
        try:
            size = path.lstat().st_size if path.is_file() else None
        except FileNotFoundError:
            continue
        if size is None:
            continue
        store = ("tables" if "tables" in path.parts else
                 path.parent.name if path.parent.name in ("listing", "due") else "other")
        kind = {".sst": "sst", ".log": "wal"}.get(path.suffix, "rest")
        parts[f"{store}_{kind}"] = parts.get(f"{store}_{kind}", 0.0) + size / MIB
    return {k: round(v, 1) for k, v in sorted(parts.items())}


def tasks_in_state(rig: OursRig) -> int | None:
    try:
        text = rig.http.get(f"{rig.api}/metrics").text
    except Exception:
        return None
    return int(sum(float(line.split()[-1]) for line in text.splitlines()
                   if line.startswith("taskstream_tasks{")))


def run_retention(bootstrap: str, *, minutes: float, rate: float, retention_s: float,
                  interval: float) -> dict[str, Any]:
    rig = OursRig(bootstrap, concurrency=64, retention_s=retention_s)
    samples: list[dict[str, Any]] = []
    stop = threading.Event()

    def sample() -> None:
        began = time.monotonic()
        while not stop.wait(interval):
            samples.append({
                "t_s": round(time.monotonic() - began, 1),
                "tasks_in_state": tasks_in_state(rig),
                "data_dir_mib": round(dir_bytes(rig.workdir / "replica0") / MIB, 1),
                "listing_ms": round(listing_ms(rig), 1),
                "data_dir_parts_mib": data_dir_parts(rig.workdir / "replica0"),
            })

    try:
        rig.add_processor()
        rig.add_worker()
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        ids, achieved = paced(lambda: rig.submit_one(), rate, minutes * 60)
        rig.flush()
        stop.set()
        sampler.join(interval + 30)
        half = len(samples) // 2
        first, last = samples[1:half] or samples[:1], samples[half:] or samples[-1:]

        def median(rows: list[dict[str, Any]], key: str) -> float | None:
            values = [r[key] for r in rows if r[key] is not None]
            return round(statistics.median(values), 1) if values else None

        summary = {key: {"first_half": median(first, key), "second_half": median(last, key)}
                   for key in ("tasks_in_state", "data_dir_mib", "listing_ms")}
        # the removals and the compactions they cause left the state a fold of the log
        verdict = rig.verify(timeout=900.0)
        return {"minutes": minutes, "rate": rate, "achieved_rate": round(achieved, 1),
                "retention_s": retention_s, "submitted": len(ids),
                "expected_in_state": round(rate * retention_s), "summary": summary,
                "replay_verify": verdict, "samples": samples}
    finally:
        rig.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--bootstrap", default=os.environ.get("TASKSTREAM_BOOTSTRAP"))
    parser.add_argument("--only", choices=["large", "retention"])
    parser.add_argument("--tasks", type=int, default=20)
    parser.add_argument("--size-mb", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--minutes", type=float, default=3.0)
    parser.add_argument("--rate", type=float, default=100.0)
    parser.add_argument("--retention", type=float, default=10.0, help="retention_s")
    parser.add_argument("--interval", type=float, default=10.0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    from run import broker_for_run

    result: dict[str, Any] = {}
    with broker_for_run(args.bootstrap) as (bootstrap, _):
        if args.only in (None, "large"):
            s3 = LocalS3.install(Path(tempfile.mkdtemp(prefix="taskstream-s3-")),
                                 load_settings())
            with s3:
                result["large"] = run_large(bootstrap, s3, tasks=args.tasks,
                                            size=int(args.size_mb * MB),
                                            concurrency=args.concurrency)
        if args.only in (None, "retention"):
            result["retention"] = run_retention(bootstrap, minutes=args.minutes,
                                                rate=args.rate, retention_s=args.retention,
                                                interval=args.interval)
    write_result(result, "bench_storage.py", args.out)
    print(json.dumps({k: v for k, v in result.items() if k != "retention"}, indent=2))
    if "retention" in result:
        print(json.dumps(result["retention"]["summary"], indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
