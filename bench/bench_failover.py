"""Processor failover: SIGKILL one of two replicas under load.

Given a rig with two processor replicas (standby replicas on) and paced load,
pick one finished task on every partition of the events topic, SIGKILL the
victim, then measure from the kill:

* ``serve_again_s``: until the survivor answers ``GET /tasks/{id}`` with 200 for
  every one of them, i.e. for the killed replica's partitions too (until the
  group rebalances, the survivor still routes those to the dead replica);
* ``throughput_recovered_s``: from the kill until finishes per second (from the
  tasks' ``finished_at_ms``, 1 s bins), after first dropping below half the rate
  before the kill, are back to 80 % of it over two seconds (0: no dip at all).

On its own, side by side for several processor session timeouts (a SIGKILLed
replica is only noticed when its session lapses), alternating, on one broker:

    python bench/bench_failover.py --rate 200 --session-timeouts 6,3 --runs 3

writes ``bench/results/failover.json``; :func:`run_failover` is what the bench
harness calls.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_e2e import OursRig, paced

from taskstream.processors.replay.read import partition_for


def _one_per_partition(task_ids: list[str], partitions: int) -> list[str]:
    """A task ID on each partition of the events topic (murmur2, as the producers do)."""
    chosen: dict[int, str] = {}
    for task_id in task_ids:
        chosen.setdefault(partition_for(task_id.encode(), partitions), task_id)
    return [chosen[p] for p in sorted(chosen)]


def _serves_all(url: str, probes: list[str]) -> bool:
    try:
        return all(httpx.get(f"{url}/tasks/{t}", timeout=2).status_code == 200 for t in probes)
    except httpx.HTTPError:
        return False


def _recovery(finish_ms: list[float], kill_ms: float, pre_s: float) -> dict[str, Any]:
    bins: dict[int, int] = {}
    for f in finish_ms:
        second = int((f - kill_ms) // 1000)
        bins[second] = bins.get(second, 0) + 1
    before = [bins.get(s, 0) for s in range(-int(pre_s) + 1, 0)]
    base = sum(before) / len(before) if before else 0.0
    last = max(bins) if bins else 0
    # the dip: the first second after the kill below half the rate before it
    dip = next((s for s in range(0, last + 1) if bins.get(s, 0) < 0.5 * base), None)
    recovered: int | None = 0 if dip is None else None
    for second in range(dip if dip is not None else last + 1, last + 1):
        window = [bins.get(s, 0) for s in range(second, second + 2)]
        if base > 0 and sum(window) / 2 >= 0.8 * base:
            recovered = second
            break
    return {"rate_before_per_s": base, "throughput_recovered_s": recovered,
            "per_second_after_kill": [bins.get(s, 0) for s in range(-int(pre_s), last + 1)]}


def run_failover(rig: OursRig, rate: float, pre_s: float, post_s: float,
                 timeout: float) -> dict[str, Any]:
    """``rig`` must have two processors; the second one is killed."""
    victim, _ = rig.processors[1]
    probes = _one_per_partition(rig.submit_batch(100), rig.settings.partitions)
    rig.wait_all_done(60)
    since = int(time.time() * 1000) - 1
    result: dict[str, list[str]] = {}
    stop = threading.Event()

    def load() -> None:
        ids, _ = paced(lambda: rig.submit_one(), rate, pre_s + post_s, stop)
        result["ids"] = ids

    loader = threading.Thread(target=load, name="failover-load", daemon=True)
    loader.start()
    time.sleep(pre_s)
    kill_ms = time.time() * 1000
    victim.kill()
    serve_again = None
    deadline = time.monotonic() + timeout
    time.sleep(0.05)
    while time.monotonic() < deadline:
        if _serves_all(rig.api, probes):
            serve_again = (time.time() * 1000 - kill_ms) / 1000
            break
        time.sleep(0.1)
    loader.join(pre_s + post_s + 60)
    stop.set()
    rig.flush()
    all_done = rig.wait_all_done(timeout)
    ids = result.get("ids", [])
    times = rig.times(ids, since)
    out = {"rate": rate, "pre_kill_s": pre_s, "post_kill_s": post_s, "tasks": len(ids),
           "done": len(times), "all_done_in_time": all_done, "probe_tasks": len(probes),
           "serve_again_s": serve_again}
    out.update(_recovery([t.finished_ms for t in times], kill_ms, pre_s))
    return out


RESULTS = Path(__file__).resolve().parent / "results" / "failover.json"


def one_run(bootstrap: str, session_timeout_s: float, rate: float, pre_s: float,
            post_s: float) -> dict[str, Any]:
    """A fresh rig (two processors, one worker) with this session timeout; one kill."""
    rig = OursRig(bootstrap, concurrency=64, session_timeout_s=session_timeout_s)
    try:
        rig.add_processor()
        rig.add_worker()
        rig.add_processor()
        rig.warm_up(40)
        return {"session_timeout_s": session_timeout_s,
                **run_failover(rig, rate, pre_s, post_s, 120.0)}
    finally:
        rig.close()


def _median(rows: list[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in rows if r.get(key) is not None]
    return round(statistics.median(values), 2) if values else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--bootstrap", default=os.environ.get("TASKSTREAM_BOOTSTRAP"),
                        help="a running broker (default: start a local one for this run)")
    parser.add_argument("--rate", type=float, default=200.0, help="tasks submitted per second")
    parser.add_argument("--session-timeouts", default="6,3",
                        help="processor session timeouts to compare, seconds, comma separated")
    parser.add_argument("--runs", type=int, default=3, help="kills per session timeout")
    parser.add_argument("--pre", type=float, default=8.0, help="seconds of load before the kill")
    parser.add_argument("--post", type=float, default=20.0, help="seconds of load after it")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    timeouts = [float(t) for t in args.session_timeouts.split(",") if t.strip()]
    from run import broker_for_run

    runs: list[dict[str, Any]] = []
    with broker_for_run(args.bootstrap) as (bootstrap, _):
        for i in range(args.runs):
            for timeout in timeouts:  # alternating: drift in the machine's load hits both
                row = one_run(bootstrap, timeout, args.rate, args.pre, args.post)
                print(f"run {i + 1}, session {timeout:g} s: serving again after "
                      f"{row['serve_again_s']} s, throughput back after "
                      f"{row['throughput_recovered_s']} s", flush=True)
                runs.append(row)
    summary = []
    for t in timeouts:
        mine = [r for r in runs if r["session_timeout_s"] == t]
        summary.append({"session_timeout_s": t,
                        "serve_again_s_median": _median(mine, "serve_again_s"),
                        "throughput_recovered_s_median": _median(mine, "throughput_recovered_s"),
                        "serve_again_s": [r["serve_again_s"] for r in mine]})
    result = {"when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "command": " ".join(["python", "bench/bench_failover.py", *sys.argv[1:]]),
              "rate": args.rate, "summary": summary, "runs": runs}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    for row in summary:
        print(f"session {row['session_timeout_s']:g} s: serving again after "
              f"{row['serve_again_s_median']} s (median of {row['serve_again_s']}), "
              f"throughput back after {row['throughput_recovered_s_median']} s")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
