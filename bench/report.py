"""results.md from a bench run's results (pure formatting).

Every table says how its figures were taken and ends with the command that
reproduces it.
"""

from __future__ import annotations

from typing import Any

NAMES = {"taskstream": "taskstream", "celery-prefork": "Celery prefork",
         "celery-threads": "Celery threads"}
#: CPU roles in the order the tables show them
ROLES = ("processor", "worker", "broker", "celery worker", "redis", "client", "total")


def _n(value: Any, digits: int = 0) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, int | float):
        return f"{value:,.{digits}f}"
    return str(value)


def _reproduce(section: dict[str, Any]) -> list[str]:
    command = section.get("reproduce")
    return [f"Reproduce: `{command}`", ""] if command else [""]


def _ratio(ours: Any, theirs: Any) -> str:
    return f"{ours / theirs:.2f}x" if ours and theirs else "n/a"


def _compare(r: dict[str, Any]) -> list[str]:
    c = r.get("compare") or {}
    med = c.get("median") or {}
    if not med:
        return []
    systems = [s for s in NAMES if s in med]
    head = " | ".join(NAMES[s] for s in systems)
    ratio_to = "celery-prefork" if "celery-prefork" in med else None
    runs = max((m.get("runs", 0) for m in med.values()), default=0)
    lines = [f"## Side by side (no-op tasks; median of {runs} alternating run(s))", "",
             "One processor and one worker as `taskstream dev` runs them; Celery with its "
             "defaults (prefork, concurrency = CPUs) plus `task_acks_late` and a Redis result "
             "backend, Redis with AOF `everysec`; Celery threads at our worker's concurrency. "
             "Tasks/s from the tasks' own finish times (middle 80 % of finishes); CPU per task "
             "from /proc before the submit and after the last success, every process of the "
             "rig (the client, this harness, shown apart).", "",
             f"| | {head} |" + (" taskstream / Celery prefork |" if ratio_to else ""),
             "|---|" + "---:|" * (len(systems) + (1 if ratio_to else 0))]

    def row(label: str, values: dict[str, Any], ratio: bool = True, digits: int = 0) -> None:
        cells = " | ".join(_n(values.get(s), digits) for s in systems)
        extra = ""
        if ratio_to:
            extra = f" {_ratio(values.get('taskstream'), values.get(ratio_to))} |" if ratio \
                else " |"
        lines.append(f"| {label} | {cells} |{extra}")

    first = next(iter(med.values()))
    for i, burst in enumerate(first.get("bursts") or []):
        n = burst["tasks"]
        row(f"burst of {n:,}: tasks/s", {s: _burst(med[s], i, "steady_tasks_per_s")
                                          for s in systems})
        row(f"burst of {n:,}: CPU us per task, the rig's processes (not the client)",
            {s: (_burst(med[s], i, "cpu_us_per_task") or {}).get("total") for s in systems},
            ratio=False)
    row("sustainable rate, tasks/s (held with p99 submit->start <= 100 ms)",
        {s: med[s].get("sustainable_rate") for s in systems})
    paced = {s: med[s].get("paced") or {} for s in systems}
    target = next((p.get("target_rate") for p in paced.values() if p.get("target_rate")), None)
    row(f"paced {_n(target)}/s: achieved tasks/s", {s: paced[s].get("achieved_rate")
                                                     for s in systems}, ratio=False)
    row(f"paced {_n(target)}/s: submit->start p50 ms", {s: paced[s].get("p50_ms")
                                                        for s in systems}, ratio=False)
    row(f"paced {_n(target)}/s: submit->start p99 ms", {s: paced[s].get("p99_ms")
                                                        for s in systems}, ratio=False)
    verdicts = med.get("taskstream", {}).get("verify") or []
    if verdicts:
        text = ", ".join(_verdict(v) for v in verdicts)
        lines.append(f"| `replay verify` after each taskstream run | {text} |"
                     + " |" * (len(systems) - 1 + (1 if ratio_to else 0)))
    lines += ["", *_cpu_table(med, systems), *_search(c), *_reproduce(c)]
    return lines


def _verdict(v: dict[str, Any]) -> str:
    if v.get("ok"):
        return "clean"
    if v.get("mismatches"):
        return f"NOT clean ({v['mismatches']} mismatches)"
    return f"no verdict (exit {v.get('exit_code')}: {str(v.get('error', ''))[:80]})"


def _burst(summary: dict[str, Any], i: int, key: str) -> Any:
    bursts = summary.get("bursts") or []
    return bursts[i].get(key) if len(bursts) > i else None


def _cpu_table(med: dict[str, Any], systems: list[str]) -> list[str]:
    rows = []
    for s in systems:
        for burst in med[s].get("bursts") or []:
            cpu = burst.get("cpu_us_per_task") or {}
            rows.append(f"| {NAMES[s]} | {burst['tasks']:,} | "
                        + " | ".join(_n(cpu.get(role)) for role in ROLES) + " |")
    if not rows:
        return []
    return ["CPU per task in the bursts, microseconds (median of runs; n/a: not part of that "
            "rig, or its PID not known):", "",
            "| system | tasks | " + " | ".join(ROLES) + " |",
            "|---|---:|" + "---:|" * len(ROLES), *rows, ""]


def _search(c: dict[str, Any]) -> list[str]:
    lines = []
    for system, runs in (c.get("runs") or {}).items():
        for i, run in enumerate(runs):
            steps = (run.get("sustainable") or {}).get("steps") or []
            if not steps:
                continue
            tried = ", ".join(f"{_n(s['target_rate'])} "
                              + ("held" if s["held"] else f"not held ({s['verdict']})")
                              for s in steps)
            lines.append(f"- {NAMES.get(system, system)}, run {i + 1}: {tried}")
    if not lines:
        return []
    rule = next((run.get("sustainable", {}).get("rule") for runs in c["runs"].values()
                 for run in runs if run.get("sustainable")), "")
    return [f"Sustainable-rate search (doubling, then bisecting; a step holds when {rule}):",
            "", *lines, ""]


def _worker(r: dict[str, Any]) -> list[str]:
    w = r.get("worker") or {}
    drains = w.get("drain") or []
    if not drains:
        return []
    cfg = w.get("config", {})
    lines = ["## The worker alone (no processor)", "",
             f"{cfg.get('workers')} worker, concurrency {cfg.get('concurrency')}, async pool, "
             "no-op tasks from ready records written straight to the ready topic; tasks/s from "
             "the worker's own TaskStarted/TaskSucceeded times; CPU from /proc.", "",
             "| run | tasks | tasks/s | worker CPU us/task | broker CPU us/task | "
             "dispatch->start p50 / p99 ms |", "|---|---:|---:|---:|---:|---:|"]
    for i, d in enumerate(drains):
        cpu = d.get("cpu_us_per_task") or {}
        lines.append(f"| drain {i + 1} | {d['done']}/{d['tasks']} | {_n(d.get('tasks_per_s'))} | "
                     f"{_n(cpu.get('worker'))} | {_n(cpu.get('broker'))} | |")
    paced = w.get("paced")
    if paced:
        cpu = paced.get("cpu_us_per_task") or {}
        lat = paced.get("dispatch_to_start_ms") or {}
        lines.append(f"| paced {_n(paced['target_rate'])}/s | {paced['started']}/{paced['tasks']}"
                     f" | {_n(paced.get('achieved_rate'))} | {_n(cpu.get('worker'))} | "
                     f"{_n(cpu.get('broker'))} | {_n(lat.get('p50'))} / {_n(lat.get('p99'))} |")
    return [*lines, "", *_reproduce(w)]


def _scaling(r: dict[str, Any]) -> list[str]:
    sc = r.get("scaling") or {}
    lines: list[str] = []
    noop = sc.get("noop") or []
    if noop:
        lines += ["## Scaling: processors and workers (no-op burst)", "",
                  "| processors | workers | tasks | tasks/s (steady) | processor | worker | "
                  "broker | total CPU us/task |", "|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for row in noop:
            cpu = row.get("cpu_us_per_task") or {}
            lines.append(f"| {row['processors']} | {row['workers']} | {row['done']}/"
                         f"{row['tasks']} | {_n(row.get('steady_tasks_per_s'))} | "
                         f"{_n(cpu.get('processor'))} | {_n(cpu.get('worker'))} | "
                         f"{_n(cpu.get('broker'))} | {_n(cpu.get('total'))} |")
        lines.append("")
    alone = sc.get("io_workers_alone") or {}
    if alone.get("rows"):
        lines += ["## Scaling: workers alone on I/O-bound tasks (no processor)", "",
                  f"`{alone['task']}` ({alone['wait_s'] * 1000:g} ms wait), concurrency "
                  f"{alone['concurrency_per_worker']} per worker, {alone['ready_partitions']} "
                  "ready partitions per level, ready records written straight to the ready "
                  "topic; each worker joins and the group settles before its drain; tasks/s "
                  "from the workers' own TaskStarted/TaskSucceeded times.", "",
                  "| workers | tasks | tasks/s | ideal | share of ideal | tasks started by "
                  "each worker |", "|---:|---:|---:|---:|---:|---|"]
        for row in alone["rows"]:
            rate, ideal = row.get("tasks_per_s"), row.get("ideal_tasks_per_s")
            share = f"{rate / ideal:.0%}" if rate and ideal else "n/a"
            split = " / ".join(str(n) for n in row.get("started_per_worker") or [])
            lines.append(f"| {row['workers']} | {row['done']}/{row['tasks']} | {_n(rate)} | "
                         f"{_n(ideal)} | {share} | {split} |")
        lines.append("")
    io = sc.get("io") or {}
    if io.get("rows"):
        lines += ["## Scaling: workers on I/O-bound tasks", "",
                  f"`{io['task']}` ({io['wait_s'] * 1000:g} ms wait), concurrency "
                  f"{io['concurrency_per_worker']} per worker, {io['processors']} processor, "
                  f"{io['ready_partitions']} ready partitions per level; each worker joins and "
                  "the group settles before its burst.", "",
                  "| workers | tasks | tasks/s (steady) | ideal (workers x concurrency / wait) | "
                  "share of ideal |", "|---:|---:|---:|---:|---:|"]
        for row in io["rows"]:
            steady, ideal = row.get("steady_tasks_per_s"), row.get("ideal_tasks_per_s")
            share = f"{steady / ideal:.0%}" if steady and ideal else "n/a"
            lines.append(f"| {row['workers']} | {row['done']}/{row['tasks']} | {_n(steady)} | "
                         f"{_n(ideal)} | {share} |")
        lines.append("")
    return [*lines, *_reproduce(sc)] if lines else []


def _delayed(r: dict[str, Any]) -> list[str]:
    d = r.get("delayed")
    if not d or "start_after_due_ms" not in d:
        return []
    s = d["start_after_due_ms"]
    return ["## Delayed tasks (delay 2 s, at a quarter of the sustainable rate)", "",
            "| tasks | rate/s | start after due p50 | p95 | p99 | target p99 |",
            "|---:|---:|---:|---:|---:|---:|",
            f"| {d['done']}/{d['tasks']} | {_n(d['achieved_rate'], 1)} | {_n(s['p50'])} ms | "
            f"{_n(s['p95'])} ms | {_n(s['p99'])} ms | 500 ms |", "", *_reproduce(d)]


def _failover(r: dict[str, Any]) -> list[str]:
    f = r.get("failover")
    if not f or "serve_again_s" not in f:
        return []
    return ["## Processor failover (SIGKILL one of two replicas under load)", "",
            "| load tasks/s | serves the killed replica's keys again | throughput back to "
            "80 % | tasks done | target |", "|---:|---:|---:|---:|---:|",
            f"| {_n(f['rate'], 1)} | {_n(f['serve_again_s'], 1)} s | "
            f"{_n(f['throughput_recovered_s'])} s | {f['done']}/{f['tasks']} | <= 5 s |", "",
            *_reproduce(f)]


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
    runs = [(f"compare/{system}/run {i + 1}", run["error"])
            for system, rows in (r.get("compare", {}).get("runs") or {}).items()
            for i, run in enumerate(rows) if "error" in run]
    if not bad and not runs:
        return []
    return ["## Sections that failed", "", *[f"- `{k}`: {e}" for k, e in [*bad, *runs]], ""]


def markdown(results: dict[str, Any]) -> str:
    meta = results.get("meta", {})
    lines = ["# Benchmark results", "",
             f"`{meta.get('command', 'python bench/run.py')}` on {meta.get('when')}: "
             f"{meta.get('cpus')} CPUs, Python {meta.get('python')}, load average at start "
             f"{meta.get('load_average_at_start')} and at the end "
             f"{meta.get('load_average_at_end')}, {meta.get('total_s', '?')} s in all. "
             f"{meta.get('note', '')}.", "",
             "Latencies come from task states (submitted_at_ms -> started_at_ms -> "
             "finished_at_ms); p50 / p95 / p99.", ""]
    lines += _compare(results) + _worker(results) + _scaling(results) + _delayed(results)
    lines += _failover(results) + _ingest_replay(results) + _errors(results)
    return "\n".join(lines) + "\n"
