"""results.md from a bench run's results (pure formatting)."""

from __future__ import annotations

from typing import Any


def _n(value: Any, digits: int = 0) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, int | float):
        return f"{value:,.{digits}f}"
    return str(value)


def _lat(row: dict[str, Any], key: str) -> str:
    s = row.get(key) or {}
    return f"{_n(s.get('p50'))} / {_n(s.get('p95'))} / {_n(s.get('p99'))}"


def _headline(r: dict[str, Any]) -> list[str]:
    ours, celery = r.get("e2e", {}), r.get("celery", {})
    ours_rate = ours.get("max", {}).get("steady_tasks_per_s")
    celery_rate = celery.get("max", {}).get("steady_tasks_per_s")
    ratio = ours_rate / celery_rate if ours_rate and celery_rate else None
    lines = ["## End to end, side by side (no-op tasks, 1 worker process each)", "",
             "| | taskstream | Celery + Redis | ratio |", "|---|---:|---:|---:|",
             f"| max tasks/s (steady) | {_n(ours_rate)} | {_n(celery_rate)} | "
             f"{_n(ratio, 2)}x |"]
    for i, label in enumerate(("25 %", "50 %", "90 %")):
        o = (ours.get("profile") or [{}] * 3)[i] if len(ours.get("profile") or []) > i else {}
        c = (celery.get("profile") or [{}] * 3)[i] if len(celery.get("profile") or []) > i else {}
        lines.append(f"| submit->start p50/p95/p99 ms at {label} of own max "
                     f"({_n(o.get('achieved_rate'))} vs {_n(c.get('achieved_rate'))}/s) | "
                     f"{_lat(o, 'submit_to_start_ms')} | {_lat(c, 'submit_to_start_ms')} | |")
        lines.append(f"| submit->done p50/p95/p99 ms at {label} | "
                     f"{_lat(o, 'submit_to_done_ms')} | {_lat(c, 'submit_to_done_ms')} | |")
    celery_fixed = {row.get("rate"): row for row in celery.get("fixed") or []}
    for o in ours.get("fixed") or []:
        c = celery_fixed.get(o.get("rate"), {})
        lines.append(f"| submit->start p50/p95/p99 ms at {_n(o.get('rate'))} tasks/s offered "
                     f"(achieved {_n(o.get('achieved_rate'))} vs {_n(c.get('achieved_rate'))}/s)"
                     f" | {_lat(o, 'submit_to_start_ms')} | {_lat(c, 'submit_to_start_ms')} | |")
    return [*lines, ""]


def _scaling(r: dict[str, Any]) -> list[str]:
    rows = r.get("scaling", {}).get("rows") or []
    if not rows:
        return []
    lines = ["## Scaling (taskstream, max rate)", "",
             "| processors | workers | tasks | tasks/s (steady) | tasks/s (overall) |",
             "|---:|---:|---:|---:|---:|"]
    lines += [f"| {row['processors']} | {row['workers']} | {row['done']}/{row['tasks']} | "
              f"{_n(row.get('steady_tasks_per_s'))} | {_n(row.get('tasks_per_s'))} |"
              for row in rows]
    return [*lines, ""]


def _delayed(r: dict[str, Any]) -> list[str]:
    d = r.get("delayed")
    if not d or "start_after_due_ms" not in d:
        return []
    s = d["start_after_due_ms"]
    return ["## Delayed tasks (delay 2 s, at 25 % of max rate)", "",
            "| tasks | rate/s | start after due p50 | p95 | p99 | target p99 |",
            "|---:|---:|---:|---:|---:|---:|",
            f"| {d['done']}/{d['tasks']} | {_n(d['achieved_rate'], 1)} | {_n(s['p50'])} ms | "
            f"{_n(s['p95'])} ms | {_n(s['p99'])} ms | 500 ms |", ""]


def _failover(r: dict[str, Any]) -> list[str]:
    f = r.get("failover")
    if not f or "serve_again_s" not in f:
        return []
    return ["## Processor failover (SIGKILL one of two replicas under load)", "",
            "| load tasks/s | serves the killed replica's keys again | throughput back to "
            "80 % | tasks done | target |", "|---:|---:|---:|---:|---:|",
            f"| {_n(f['rate'], 1)} | {_n(f['serve_again_s'], 1)} s | "
            f"{_n(f['throughput_recovered_s'])} s | {f['done']}/{f['tasks']} | <= 5 s |", ""]


def _ingest_replay(r: dict[str, Any]) -> list[str]:
    lines = ["## Ingest and replay", "", "| what | median | target |", "|---|---:|---:|"]
    med = r.get("ingest", {}).get("median_tasks_per_s") or {}
    for key, target in (
        ("raw", None),
        ("submit_many", 150_000),
        ("submit", 50_000),
        ("submit_many_options", 150_000),
    ):
        if key in med:
            lines.append(f"| ingest `{key}` tasks/s | {_n(med[key])} | {_n(target)} |")
    replay = r.get("replay", {})
    if "median_events_per_s" in replay:
        lines.append(f"| replay rebuild events/s ({_n(replay.get('events'))} events) | "
                     f"{_n(replay['median_events_per_s'])} | 100,000 |")
    return [*lines, ""] if len(lines) > 4 else []


def _errors(r: dict[str, Any]) -> list[str]:
    bad = [(k, v["error"]) for k, v in r.items() if isinstance(v, dict) and "error" in v]
    if not bad:
        return []
    return ["## Sections that failed", "", *[f"- `{k}`: {e}" for k, e in bad], ""]


def markdown(results: dict[str, Any]) -> str:
    meta = results.get("meta", {})
    lines = ["# Benchmark results", "",
             f"`{meta.get('command', 'python bench/run.py')}` on {meta.get('when')}: "
             f"{meta.get('cpus')} CPUs, Python {meta.get('python')}, load average at start "
             f"{meta.get('load_average_at_start')}, {meta.get('total_s', '?')} s in all. "
             f"{meta.get('note', '')}.", "",
             "Latencies come from task states (submitted_at_ms -> started_at_ms -> "
             "finished_at_ms); percentiles of one run; p50 / p95 / p99.", ""]
    lines += _headline(results) + _delayed(results) + _scaling(results)
    lines += _failover(results) + _ingest_replay(results) + _errors(results)
    return "\n".join(lines) + "\n"
