"""Schedules, dependencies and flow control through the live system (issues 15 and 16).

A broker (the one at ``--bootstrap`` or a local one of our own), one processor and one
worker (``examples.tasks``) on fresh topics (``bench_e2e.OursRig``). Times come from the
task states read back through the API; nothing is asserted. Sections:

* ``fanin``: a group of ``--fanin`` no-op members and one callback (a chord), submitted
  in one batch: seconds from the submit to the callback's start;
* ``chain``: a chain of ``--chain`` no-op steps: per hop, the next step's start minus
  the step's finish (p50, p99);
* ``schedule``: an every-second schedule while plain tasks are submitted at
  ``--load`` per second: each firing's start minus its fire time (p50, p99; issue 15
  asks p99 <= 500 ms under moderate load);
* ``flow``: the same paced no-op load (``--load`` per second for ``--seconds``) plain,
  with a rate limit far above the load, and with a concurrency key far above it: the
  processor's CPU per task (its process CPU time over the run / tasks) and
  submit-to-start p50 and p99 (issue 16's cost of a limited or keyed task).

    python bench/bench_entities.py [--quick] [--bootstrap HOST:PORT] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_e2e import ROOT, OursRig, stats
from run import _broker

from taskstream.localkafka import cluster as localkafka
from taskstream.processors.fold.schedule import FIRE_TIME_HEADER

NOOP = "examples.noop"


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _task(rig: OursRig, task_id: str) -> dict[str, Any] | None:
    response = rig.http.get(f"{rig.api}/tasks/{task_id}")
    if response.status_code != 200:
        return None
    body: dict[str, Any] = response.json()
    return body


def _wait(what: str, check: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.5)
    raise RuntimeError(f"{what}: not within {timeout:g} s")


def fanin(rig: OursRig, n: int) -> dict[str, Any]:
    submitted = time.time() * 1000
    handles = rig.producer.group([{"name": NOOP}] * n, {"name": NOOP})
    rig.producer.flush(120)
    assert handles.callback is not None
    callback = handles.callback.task_id

    def started() -> bool:
        state = _task(rig, callback)
        return bool(state and state.get("started_at_ms"))

    _wait("the callback started", started, 600)
    state = _task(rig, callback) or {}
    return {"members": n, "submit_to_callback_start_s":
            round((state["started_at_ms"] - submitted) / 1000, 3)}


def chain(rig: OursRig, n: int) -> dict[str, Any]:
    handles = rig.producer.chain([{"name": NOOP}] * n)
    rig.producer.flush(60)
    last = handles[-1].task_id

    def done() -> bool:
        state = _task(rig, last)
        return bool(state and state.get("finished_at_ms"))

    _wait("the chain finished", done, 600)
    states = [_task(rig, h.task_id) or {} for h in handles]
    hops = [(b["started_at_ms"] - a["finished_at_ms"]) for a, b in itertools.pairwise(states)]
    return {"steps": n, "hop_ms": stats(hops),
            "total_s": round((states[-1]["finished_at_ms"] - states[0]["submitted_at_ms"])
                             / 1000, 3)}


def _paced(rig: OursRig, rate: float, seconds: float, **options: Any) -> list[str]:
    ids = []
    gap, next_at = 1.0 / rate, time.monotonic()
    end = next_at + seconds
    while next_at < end:
        ids.append(rig.producer.submit(NOOP, None, **options).task_id)
        next_at += gap
        time.sleep(max(0.0, next_at - time.monotonic()))
    rig.producer.flush(60)
    return ids


def schedule(rig: OursRig, load: float, seconds: float) -> dict[str, Any]:
    sid = f"bench-{uuid.uuid4().hex[:6]}"
    rig.producer.schedule(sid, NOOP, every=1.0, misfire="skip")
    rig.producer.flush(30)
    ids = _paced(rig, load, seconds)
    rig.expected += len(ids)
    rig.producer.unschedule(sid)
    rig.producer.flush(30)
    time.sleep(3)
    late = []
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"state": "SUCCEEDED", "limit": 1000}
        if cursor:
            params["cursor"] = cursor
        body = rig._get_listing(params)
        for item in body["items"]:
            fire = (item.get("headers") or {}).get(FIRE_TIME_HEADER)
            if fire is not None and item.get("started_at_ms"):
                late.append(item["started_at_ms"] - int(fire))
        cursor = body.get("next_cursor")
        if not cursor:
            break
    return {"load_per_s": load, "firings": len(late), "start_after_fire_ms": stats(late)}


def flow(rig: OursRig, load: float, seconds: float) -> dict[str, Any]:
    rig.producer.set_limit("bench", f"{int(load * 100)}/s", burst=int(load * 10))
    pid = rig.processors[0][0].pid
    out: dict[str, Any] = {"load_per_s": load, "seconds": seconds}
    cases: dict[str, dict[str, Any]] = {
        "plain": {}, "rate_limited": {"rate_limit": "bench"},
        "concurrency_key": {"concurrency_key": "bench-key", "max_concurrency": 1000}}
    for case, options in cases.items():
        since = int(time.time() * 1000)
        cpu0 = _cpu_s(pid)
        ids = _paced(rig, load, seconds, **options)
        rig.expected += len(ids)
        if not rig.wait_all_done(300):
            raise RuntimeError(f"{case}: tasks not done")
        cpu = _cpu_s(pid) - cpu0
        times = rig.times(ids, since)
        out[case] = {"tasks": len(ids), "processor_cpu_ms_per_task": round(
            1000 * cpu / max(1, len(ids)), 3),
            "submit_to_start_ms": stats([t.started_ms - t.submitted_ms for t in times])}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bootstrap", default=os.environ.get("TASKSTREAM_BOOTSTRAP"))
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--fanin", type=int, default=10_000)
    parser.add_argument("--chain", type=int, default=100)
    parser.add_argument("--load", type=float, default=100.0)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" /
                        "entities.json")
    args = parser.parse_args(argv)
    if args.quick:
        args.fanin, args.chain, args.seconds = 1_000, 20, 10.0
    scratch = Path(tempfile.mkdtemp(prefix="taskstream-bench-entities-"))
    bootstrap, local = _broker(args.bootstrap, scratch)
    results: dict[str, Any] = {"load_average": os.getloadavg(), "args": {
        k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}}
    rig = OursRig(bootstrap, workdir=scratch / "rig")
    try:
        rig.add_processor()
        rig.add_worker()
        rig.warm_up()
        for name, run in (("fanin", lambda: fanin(rig, args.fanin)),
                          ("chain", lambda: chain(rig, args.chain)),
                          ("schedule", lambda: schedule(rig, args.load / 2, args.seconds)),
                          ("flow", lambda: flow(rig, args.load, args.seconds))):
            try:
                results[name] = run()
            except Exception as exc:  # recorded; the other sections still run
                results[name] = {"error": f"{type(exc).__name__}: {exc}"}
            print(name, json.dumps(results[name]), flush=True)
    finally:
        rig.close()
        if local is not None:
            localkafka.down(local)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"written {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
