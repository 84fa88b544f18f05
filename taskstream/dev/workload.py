"""The demo workload of ``taskstream dev`` and the summary of its outcome (pure logic).

The workload uses the tasks of ``examples/tasks.py`` and shows every behaviour
once: fast tasks at two priority levels, slow tasks, tasks that fail twice and
then succeed, a poison task that ends dead, and delayed tasks.
:func:`summarize` turns the task views the API returns into the figures the
command prints; both are tested without a broker.
"""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from taskstream.schemas.state import TERMINAL, TaskStatus

FAST_BACKOFF = {"initial": 0.2, "multiplier": 2.0, "max": 1.0, "jitter": 0.0}
DELAY_S = 2.0
SLOW_S = 1.0
#: the progress bar's columns: every status the fold reaches (WAITING is reserved)
STATES = tuple(s.value for s in TaskStatus if s is not TaskStatus.WAITING)


@dataclass(frozen=True)
class DemoTask:
    """One task to submit: its kind (for the summary) and the SDK spec."""

    kind: str
    spec: Mapping[str, Any]


def _fast(i: int) -> dict[str, Any]:
    return {"name": "examples.noop", "payload": {"i": i}, "priority": 2 if i % 2 else 0}


def demo_workload(n: int) -> list[DemoTask]:
    """``n`` tasks (n >= 5): one poison task, ~10% flaky, ~5% slow, ~10% delayed, the
    rest fast no-ops split between priority 0 and 2."""
    if n < 5:
        raise ValueError("the demo needs at least 5 tasks (one of each kind)")
    flaky, slow, delayed = max(1, n // 10), max(1, n // 20), max(1, n // 10)
    fast = n - 1 - flaky - slow - delayed
    tasks = [DemoTask("fast", _fast(i)) for i in range(fast)]
    tasks += [DemoTask("flaky", {"name": "examples.flaky", "payload": {"i": i},
                                 "max_attempts": 5, "backoff": FAST_BACKOFF})
              for i in range(flaky)]
    tasks += [DemoTask("slow", {"name": "examples.slow", "payload": {"seconds": SLOW_S},
                                "priority": 1})
              for _ in range(slow)]
    tasks += [DemoTask("delayed", {"name": "examples.noop", "payload": {"delayed": i},
                                   "delay": DELAY_S})
              for i in range(delayed)]
    tasks.append(DemoTask("poison", {"name": "examples.poison", "payload": None,
                                     "max_attempts": 3, "backoff": FAST_BACKOFF}))
    return tasks


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0..100) by linear interpolation; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    if len(ordered) == 1:
        return float(ordered[0])
    rank = (len(ordered) - 1) * q / 100.0
    lo = int(rank)
    hi = min(lo + 1, len(ordered) - 1)
    return float(ordered[lo] + (ordered[hi] - ordered[lo]) * (rank - lo))


def count_states(views: Iterable[Mapping[str, Any]]) -> Counter[str]:
    return Counter(str(v.get("status")) for v in views)


@dataclass(frozen=True)
class Summary:
    """What ``taskstream dev`` reports at the end."""

    tasks: int
    finished: int
    states: dict[str, int]
    elapsed_s: float
    tasks_per_s: float | None
    submit_to_start_ms: dict[str, float | None]
    submit_to_done_ms: dict[str, float | None]
    delayed_start_late_ms: dict[str, float | None]
    retries: int
    dead_letters: int
    urls: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "tasks": self.tasks, "finished": self.finished, "states": self.states,
            "elapsed_s": round(self.elapsed_s, 3), "tasks_per_s": self.tasks_per_s,
            "submit_to_start_ms": self.submit_to_start_ms,
            "submit_to_done_ms": self.submit_to_done_ms,
            "delayed_start_late_ms": self.delayed_start_late_ms,
            "retries": self.retries, "dead_letters": self.dead_letters, "urls": self.urls,
        }


def _p(values: Sequence[float]) -> dict[str, float | None]:
    return {"p50": percentile(values, 50), "p99": percentile(values, 99)}


def summarize(views: Mapping[str, Mapping[str, Any]], kinds: Mapping[str, str],
              elapsed_s: float, urls: Mapping[str, str] | None = None) -> Summary:
    """Figures over the demo's tasks. ``views``: task ID -> view (GET /tasks item);
    ``kinds``: task ID -> workload kind. Latencies count tasks that ran once and were
    not delayed (a retry's start is its last attempt's); delayed tasks report how late
    they started after their due time."""
    mine = [views[t] for t in kinds if t in views]
    finished = [v for v in mine if v.get("status") in TERMINAL]
    to_start: list[float] = []
    to_done: list[float] = []
    late: list[float] = []
    for task_id, kind in kinds.items():
        v = views.get(task_id)
        if v is None or v.get("status") != "SUCCEEDED":
            continue
        submitted, started, done = (v.get("submitted_at_ms"), v.get("started_at_ms"),
                                    v.get("finished_at_ms"))
        if submitted is None or started is None or done is None:
            continue
        if kind == "delayed":
            late.append(started - (submitted + DELAY_S * 1000))
        elif kind in ("fast", "slow"):
            to_start.append(started - submitted)
            to_done.append(done - submitted)
    ends = [v["finished_at_ms"] for v in finished if v.get("finished_at_ms")]
    begins = [v["submitted_at_ms"] for v in mine if v.get("submitted_at_ms")]
    span_s = (max(ends) - min(begins)) / 1000.0 if ends and begins else 0.0
    return Summary(
        tasks=len(kinds), finished=len(finished), states=dict(count_states(mine)),
        elapsed_s=elapsed_s,
        tasks_per_s=len(finished) / span_s if span_s > 0 else None,
        submit_to_start_ms=_p(to_start), submit_to_done_ms=_p(to_done),
        delayed_start_late_ms=_p(late),
        retries=sum(int(v.get("retries") or 0) for v in mine),
        dead_letters=sum(1 for v in mine if v.get("status") == "DEAD"),
        urls=dict(urls or {}),
    )


def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:,.0f} ms"


def render(summary: Summary) -> list[str]:
    """The summary as the lines the command prints."""
    rate = "n/a" if summary.tasks_per_s is None else f"{summary.tasks_per_s:,.1f} tasks/s"
    states = ", ".join(f"{k} {v}" for k, v in sorted(summary.states.items()))
    s2s, s2d, late = (summary.submit_to_start_ms, summary.submit_to_done_ms,
                      summary.delayed_start_late_ms)
    lines = [
        f"Summary: {summary.finished}/{summary.tasks} tasks finished in "
        f"{summary.elapsed_s:.1f} s ({states})",
        f"  throughput        {rate} (first submit to last finish)",
        f"  submit->start     p50 {_ms(s2s['p50'])}, p99 {_ms(s2s['p99'])}",
        f"  submit->done      p50 {_ms(s2d['p50'])}, p99 {_ms(s2d['p99'])}",
        f"  delayed, late by  p50 {_ms(late['p50'])}, p99 {_ms(late['p99'])} after due time",
        f"  retries           {summary.retries}",
        f"  dead letters      {summary.dead_letters}",
    ]
    lines += [f"  {name:<17} {url}" for name, url in summary.urls.items()]
    return lines


def median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None
