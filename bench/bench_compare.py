"""taskstream against Celery + Redis, side by side: bursts, sustainable rate, paced load.

Systems (``--systems``):

* ``taskstream``: one processor and one worker as ``taskstream dev`` starts them
  (6 event partitions, 3 ready partitions per level, a standby replica, the
  worker's concurrency 16, async pool), on fresh topics (``OursRig``);
* ``celery-prefork``: Celery's defaults (prefork pool, concurrency = CPU count)
  plus ``task_acks_late=True`` and a Redis result backend, Redis with AOF
  ``everysec`` (``CeleryRig``);
* ``celery-threads``: the same with ``--pool threads`` at our worker's concurrency.

Each run starts every system afresh, one after the other (taskstream, Celery,
taskstream, Celery, ...), and measures on it, in this order:

1. **bursts** (10,000 and 50,000 no-op tasks): submit them at once (``submit_many``
   / ``apply_async`` in a loop), wait until all succeeded; tasks/s from the tasks'
   own times (``bench_e2e.measure_max``), and CPU per task of every process of the
   rig read from /proc before the submit and after the last success (``cpu.py``);
2. **sustainable rate**: the highest paced rate (one submit call per task) the
   system holds, searched from ``--search-start`` tasks/s (see ``held`` for the
   rule and ``next_rate`` for the search), each step ``--step-s`` seconds;
3. **paced** single submits at ``--paced-rate`` (1,000/s) for ``--paced-s`` (60 s):
   submit->start p50/p99 and CPU per task;
4. taskstream only: ``taskstream replay verify`` against the rig's topics, its
   verdict recorded (the live task table must be exactly the fold of the log).

Before each burst, each step of the search and the paced load, the harness waits
until the rig is quiet (``settle``: its processes together below ``QUIET_CORES`` of a
core over a second, at most ``Plan.settle_max_s``), the same rule for every system: the
work a system defers (RocksDB flushes and compactions after a 50,000-task burst, a
Redis AOF rewrite) otherwise lands on the first seconds of the next step, and one
100 ms stall in a 15 s step at 100 tasks/s is already its p99. The wait is reported
(``settled_s``).

The summary per system is the median over runs of every figure. Figures come
from the task states (submitted, started and finished times), never from the
harness's clock around a call; nothing is asserted.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from bench_e2e import Done, OursRig, System, measure_max, measure_paced
from cpu import CpuMeter

from taskstream.dev.platform import DevOptions

SYSTEMS = ("taskstream", "celery-prefork", "celery-threads")
#: a step is held when its p99 submit->start is at most this (ms), overall and over
#: the last quarter of the step's submissions
HELD_P99_MS = 100.0
#: the client must have submitted at least this share of the offered rate
HELD_ACHIEVED = 0.95
#: a rig is quiet when its processes together use at most this much of one core...
QUIET_CORES = 0.25
#: ... over this window (s); the wait for it ends after ``Plan.settle_max_s`` in any case
QUIET_WINDOW_S = 1.0


@dataclass(frozen=True)
class Plan:
    bursts: tuple[int, ...] = (10_000, 50_000)
    paced_rate: float = 1000.0
    paced_s: float = 60.0
    search_start: float = 100.0
    search_max: float = 20_000.0
    step_s: float = 15.0
    max_steps: int = 9
    precision: float = 0.1  # stop when the bracket [held, failed] is this narrow
    settle_max_s: float = 30.0  # the longest wait for a quiet rig (``settle``)


FULL = Plan()
QUICK = Plan(bursts=(500, 1_500), paced_s=3.0, search_start=50.0, step_s=4.0, max_steps=4,
             precision=0.25, settle_max_s=5.0)


def held(row: dict[str, Any], limit_ms: float = HELD_P99_MS) -> tuple[bool, str]:
    """Whether a paced step held its rate: every task done in time, the client kept
    the rate, and p99 submit->start within ``limit_ms`` both over the whole step and
    over the tasks submitted in its last quarter (a growing backlog shows there
    first). The reason when not."""
    if not row.get("all_done_in_time") or row.get("done") != row.get("tasks"):
        return False, f"{row.get('done')}/{row.get('tasks')} done in time"
    if row["achieved_rate"] < HELD_ACHIEVED * row["target_rate"]:
        return False, f"client submitted {row['achieved_rate']}/s"
    for key, what in (("submit_to_start_ms", "p99"), ("last_quarter_submit_to_start_ms",
                                                      "last-quarter p99")):
        p99 = (row.get(key) or {}).get("p99")
        if p99 is None or p99 > limit_ms:
            return False, f"{what} submit->start {p99} ms"
    return True, "held"


def next_rate(rate: float, ok: bool, best: float | None, worst: float | None, plan: Plan,
              ) -> tuple[float | None, float | None, float | None]:
    """(next rate to try or None to stop, highest held, lowest failed): double until a
    step fails, then bisect between the highest held and the lowest failed rate until
    they are within ``plan.precision`` of each other."""
    if ok:
        best = rate if best is None else max(best, rate)
    else:
        worst = rate if worst is None else min(worst, rate)
    if worst is None:
        nxt = rate * 2
        return (nxt if nxt <= plan.search_max else None), best, worst
    if best is None:
        nxt = rate / 2
        return (nxt if nxt >= 1.0 else None), best, worst
    if worst <= best * (1 + plan.precision):
        return None, best, worst
    return (best + worst) / 2, best, worst


def settle(meter: CpuMeter, most_s: float = FULL.settle_max_s) -> float:
    """Wait until the rig's processes (not the harness) use at most ``QUIET_CORES`` of
    a core over ``QUIET_WINDOW_S``, or ``most_s`` passed; the seconds waited."""
    began = time.monotonic()
    last = meter.read()
    while time.monotonic() - began < most_s:
        time.sleep(QUIET_WINDOW_S)
        now = meter.read()
        used = sum(now[role] - last[role] for role in meter.roles)
        if used <= QUIET_CORES * (now["_wall"] - last["_wall"]):
            break
        last = now
    return round(time.monotonic() - began, 1)


def sustainable_rate(system: System, plan: Plan, drain_timeout: Callable[[float], float],
                     quiet: Callable[[], float] = lambda: 0.0) -> dict[str, Any]:
    """The highest rate ``held``, searched by ``next_rate``, each step begun once
    ``quiet`` returns; every step reported."""
    steps: list[dict[str, Any]] = []
    rate: float | None = plan.search_start
    best = worst = None
    while rate is not None and len(steps) < plan.max_steps:
        settled_s = quiet()
        row = measure_paced(system, rate, plan.step_s, drain_timeout(rate * plan.step_s))
        ok, why = held(row)
        steps.append({**row, "settled_s": settled_s, "held": ok, "verdict": why})
        rate, best, worst = next_rate(rate, ok, best, worst, plan)
    return {"rate": best, "lowest_failed": worst, "step_s": plan.step_s,
            "rule": f"p99 submit->start <= {HELD_P99_MS:g} ms over the step and over its last "
                    f"quarter, all done, client at >= {HELD_ACHIEVED:.0%} of the rate",
            "steps": steps}


def _drain_timeout(tasks: float) -> float:
    """How long to wait for ``tasks`` queued tasks: generous (a slow system at 100/s)."""
    return 60.0 + tasks / 100.0


def with_cpu(meter: CpuMeter, measure: Callable[[Done], dict[str, Any]]) -> dict[str, Any]:
    """Run ``measure`` between two /proc readings; CPU per done task per role. The second
    reading is taken when ``measure`` calls the hook it is given: once every task is
    done, before the harness reads their times back (before, the processor's figure
    included serving that read-back of every task's state)."""
    before = meter.read()
    after: dict[str, float] = {}
    row = measure(lambda: after.update(meter.read()))
    row["cpu_us_per_task"] = meter.per_task_us(before, after or meter.read(),
                                               int(row.get("done") or 0))
    return row


def _strip(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if k != "finish_ms"}


def one_run(system: Any, meter: CpuMeter, plan: Plan) -> dict[str, Any]:
    """Bursts, sustainable rate and paced load on one started, warmed-up system."""
    out: dict[str, Any] = {"bursts": []}
    def quiet() -> float:
        return settle(meter, plan.settle_max_s)

    for n in plan.bursts:
        settled_s = quiet()
        row = with_cpu(meter, lambda done, n=n: measure_max(system, n, _drain_timeout(n), done))
        out["bursts"].append({**_strip(row), "settled_s": settled_s})
    out["sustainable"] = sustainable_rate(system, plan, _drain_timeout, quiet)
    settled_s = quiet()
    out["paced"] = with_cpu(meter, lambda done: measure_paced(
        system, plan.paced_rate, plan.paced_s, _drain_timeout(plan.paced_rate * plan.paced_s),
        done=done))
    out["paced"]["settled_s"] = settled_s
    return out


@contextmanager
def started(name: str, bootstrap: str, broker_pids: Sequence[int],
            concurrency: int) -> Iterator[tuple[Any, CpuMeter, dict[str, Any]]]:
    """A fresh rig of ``name``, started and warmed up: (rig, its meter, its config)."""
    if name == "taskstream":
        rig = OursRig(bootstrap, concurrency=concurrency, broker_pids=broker_pids)
        try:
            rig.add_processor()
            rig.add_worker()
            rig.warm_up()
            yield rig, rig.meter(), rig.config()
        finally:
            rig.close()
        return
    from bench_celery import CeleryRig

    pool = name.removeprefix("celery-")
    workers = (os.cpu_count() or 1) if pool == "prefork" else concurrency
    celery = CeleryRig(concurrency=workers, pool=pool)
    try:
        celery.start()
        celery.warm_up()
        yield celery, celery.meter(), celery.config()
    finally:
        celery.close()


def _median(values: Sequence[float | int | None]) -> float | None:
    kept = [float(v) for v in values if v is not None]
    return round(statistics.median(kept), 1) if kept else None


def summarize(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The median over runs of each figure of one system."""
    bursts = []
    for i, first in enumerate(runs[0]["bursts"] if runs else []):
        rows = [r["bursts"][i] for r in runs if len(r.get("bursts", [])) > i]
        roles = sorted({k for row in rows for k in row.get("cpu_us_per_task", {})
                        if not k.startswith("_")})
        bursts.append({
            "tasks": first["tasks"],
            "steady_tasks_per_s": _median([r.get("steady_tasks_per_s") for r in rows]),
            "tasks_per_s": _median([r.get("tasks_per_s") for r in rows]),
            "cpu_us_per_task": {role: _median([r.get("cpu_us_per_task", {}).get(role)
                                               for r in rows]) for role in roles},
            "all_done": all(r.get("all_done_in_time") for r in rows)})
    paced = [r["paced"] for r in runs if "paced" in r]
    return {
        "runs": len(runs),
        "bursts": bursts,
        "sustainable_rate": _median([r.get("sustainable", {}).get("rate") for r in runs]),
        "paced": {
            "target_rate": paced[0]["target_rate"] if paced else None,
            "achieved_rate": _median([p.get("achieved_rate") for p in paced]),
            "p50_ms": _median([p.get("submit_to_start_ms", {}).get("p50") for p in paced]),
            "p99_ms": _median([p.get("submit_to_start_ms", {}).get("p99") for p in paced]),
            "done": [f"{p.get('done')}/{p.get('tasks')}" for p in paced],
            "cpu_us_per_task": {role: _median([p.get("cpu_us_per_task", {}).get(role)
                                               for p in paced])
                                for role in sorted({k for p in paced
                                                    for k in p.get("cpu_us_per_task", {})
                                                    if not k.startswith("_")})}},
        "verify": [r["verify"] for r in runs if "verify" in r],
    }


def run(bootstrap: str, *, broker_pids: Sequence[int], plan: Plan, runs: int,
        systems: Sequence[str], concurrency: int = DevOptions().concurrency,
        progress: Callable[[str], None] = print) -> dict[str, Any]:
    """``runs`` rounds of every system in turn; per-run figures and the medians."""
    per_system: dict[str, list[dict[str, Any]]] = {s: [] for s in systems}
    configs: dict[str, Any] = {}
    for i in range(runs):
        for name in systems:
            progress(f"[compare] run {i + 1}/{runs}: {name}")
            started_at = time.monotonic()
            try:
                with started(name, bootstrap, broker_pids, concurrency) as (rig, meter, config):
                    configs[name] = config
                    result = one_run(rig, meter, plan)
                    if isinstance(rig, OursRig):
                        result["verify"] = rig.verify()
            except Exception as exc:  # one broken run is reported, the others still run
                result = {"error": f"{type(exc).__name__}: {exc}"}
            result["run_s"] = round(time.monotonic() - started_at, 1)
            per_system[name].append(result)
    return {"plan": plan.__dict__, "configs": configs,
            "runs": per_system,
            "median": {name: summarize([r for r in rows if "error" not in r])
                       for name, rows in per_system.items()}}
