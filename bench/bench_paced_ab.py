"""One setting's values side by side on the compare section's own rig and paced step.

bench_broker splits the broker's CPU; this bench answers "did this setting move the
paced latency or the CPU per task?", which a compare across days cannot (the machine's
speed changes between runs: Celery's own CPU per task moved by 20 % between two runs of
2026-12-01). One broker for the whole bench; for each value in turn, alternating, a
fresh rig as compare starts it (one processor, one worker, dev's settings, the value
for every process): a burst, then the paced step compare measures (``--rate`` single
submits for ``--seconds``), each on a quiet rig with CPU per task around it, and
``replay verify`` after. The first run meets a fresh broker (its JIT warm-up lands in
the broker's CPU). Nothing is asserted: figures are reported.

    python bench/bench_paced_ab.py --key fold_round_ms --values 0,3 --runs 3 \
        --out bench/results/paced-1000-round-ab.json
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_broker import parse_overrides
from bench_compare import _drain_timeout, _strip, settle, with_cpu
from bench_e2e import OursRig, measure_max, measure_paced
from meta import write_result

RESULTS = Path(__file__).resolve().parent / "results"


def one(bootstrap: str, broker_pids: Sequence[int], key: str, value: Any, *, rate: float,
        seconds: float, burst: int) -> dict[str, Any]:
    rig = OursRig(bootstrap, broker_pids=broker_pids, **{key: value})
    try:
        rig.add_processor()
        rig.add_worker()
        rig.warm_up()
        meter = rig.meter()
        settle(meter)
        row = with_cpu(meter, lambda done: measure_max(rig, burst, _drain_timeout(burst), done))
        settle(meter)
        paced = with_cpu(meter, lambda done: measure_paced(
            rig, rate, seconds, _drain_timeout(rate * seconds), done=done))
        return {key: value, "burst": _strip(row), "paced": _strip(paced),
                "verify": rig.verify()}
    finally:
        rig.close()


def line(row: dict[str, Any], key: str) -> str:
    lat, cpu = row["paced"]["submit_to_start_ms"], row["paced"]["cpu_us_per_task"]
    return (f"{key}={row[key]}: paced p50 / p99 {lat['p50']} / {lat['p99']} ms; CPU us/task "
            f"processor {cpu.get('processor')}, worker {cpu.get('worker')}, broker "
            f"{cpu.get('broker')}; burst {round(row['burst']['steady_tasks_per_s'])}/s; "
            f"verify {'clean' if row['verify'].get('ok') else row['verify']}")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--key", required=True, help="a setting's name (fold_round_ms)")
    parser.add_argument("--values", required=True, help="comma-separated values (0,3)")
    parser.add_argument("--runs", type=int, default=3, help="runs of each value, alternating")
    parser.add_argument("--rate", type=float, default=1000.0)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--burst", type=int, default=10_000)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    values = [parse_overrides([f"{args.key}={v}"])[args.key] for v in args.values.split(",")]
    from run import broker_for_run

    started, rows = time.monotonic(), []
    with broker_for_run(None) as (bootstrap, broker_pids):
        for _ in range(args.runs):
            for value in values:
                rows.append(one(bootstrap, broker_pids, args.key, value, rate=args.rate,
                                seconds=args.seconds, burst=args.burst))
                print(line(rows[-1], args.key), flush=True)
    out = write_result({"key": args.key, "rate": args.rate, "seconds": args.seconds,
                        "burst": args.burst, "runs": rows}, "bench_paced_ab.py",
                       args.out or RESULTS / f"paced-ab-{args.key}.json",
                       wall_s=round(time.monotonic() - started, 1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
