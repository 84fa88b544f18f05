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
"""

from __future__ import annotations

import threading
import time
from typing import Any

import httpx
from bench_e2e import OursRig, paced

from taskstream.processors.replay_read import partition_for


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
