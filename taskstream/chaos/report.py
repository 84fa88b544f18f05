"""The report of a chaos run: JSON, and the same figures as markdown tables (D42)."""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from taskstream.chaos.checker import FaultRecord, Findings, TickFindings


def by_kind(faults: Sequence[FaultRecord], findings: Findings) -> dict[str, dict[str, Any]]:
    """Per fault kind: how many were injected (and not run), recovery times, extra runs."""
    extras = Counter(e.cause.split(" #")[0] for e in findings.extras)
    rows: dict[str, dict[str, Any]] = {}
    for fault in faults:
        row = rows.setdefault(fault.kind, {"injected": 0, "not_run": 0, "errors": 0,
                                           "recovery_s": [],
                                           "extra_runs": extras.get(fault.kind, 0)})
        if fault.status == "done":
            row["injected"] += 1
            if fault.recovery_s is not None:
                row["recovery_s"].append(round(fault.recovery_s, 2))
        elif fault.status == "not-run":
            row["not_run"] += 1
        else:
            row["errors"] += 1
    for row in rows.values():
        times = row["recovery_s"]
        row["recovery_p50_s"] = round(statistics.median(times), 2) if times else None
        row["recovery_max_s"] = max(times) if times else None
    return rows


def ticks_json(ticks: Sequence[TickFindings]) -> dict[str, Any]:
    """The schedules' figures: totals, and each schedule's (fire times listed, 50 at most)."""
    return {
        "expected": sum(t.expected for t in ticks),
        "fired": sum(t.fired for t in ticks),
        "skipped": sum(t.skipped for t in ticks),
        "pending": sum(t.pending for t in ticks),
        "duplicated": sum(len(t.duplicated) for t in ticks),
        "missed": sum(len(t.missed) for t in ticks),
        "unexpected": sum(len(t.unexpected) for t in ticks),
        "schedules": [
            {"schedule": t.schedule, "expected": t.expected, "fired": t.fired,
             "skipped": t.skipped, "pending": t.pending, "removed": t.removed,
             "created": t.created,
             "duplicated": {str(k): v for k, v in list(t.duplicated.items())[:50]},
             "missed": t.missed[:50], "unexpected": t.unexpected[:50], "note": t.note}
            for t in ticks],
    }


def to_json(meta: Mapping[str, Any], faults: Sequence[FaultRecord], findings: Findings,
            t0: float) -> dict[str, Any]:
    return {
        **meta,
        "invariants": findings.invariants(),
        "ok": findings.ok(),
        "tasks": findings.tasks,
        "tasks_by_kind": findings.by_kind,
        "lost": findings.lost[:100],
        "lost_status": dict(list(findings.not_terminal_status.items())[:100]),
        "double_accepted": findings.double_accepted,
        "handler_runs": findings.runs,
        "task_started_events": findings.started_events,
        "extra_runs": len(findings.extras),
        "extra_runs_by_cause": dict(Counter(e.cause for e in findings.extras)),
        "unattributed_runs": [
            {"task_id": e.task_id, "kind": e.kind, "attempt": e.run.attempt, "pid": e.run.pid,
             "at_s": round(e.run.start - t0, 2)} for e in findings.unattributed[:50]],
        "limit": {"max_concurrent": findings.limit_max, "allowed": findings.limit_allowed,
                  "exceeded_at_s": None if findings.limit_exceeded_at is None
                  else round(findings.limit_exceeded_at - t0, 2)},
        "replay_verify": {"clean": findings.verify_ok, "detail": findings.verify_detail},
        "schedule_ticks": ticks_json(findings.ticks),
        "faults_injected": sum(1 for f in faults if f.status == "done"),
        "faults_not_run": sum(1 for f in faults if f.status == "not-run"),
        "faults_failed": sum(1 for f in faults if f.status == "error"),
        "by_fault_kind": by_kind(faults, findings),
        "faults": [f.to_json(t0) for f in faults],
    }


def _mark(value: bool | None) -> str:
    return "not checked" if value is None else ("holds" if value else "BROKEN")


def _s(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} s"


def _tick_rows(ticks: Mapping[str, Any] | None) -> list[str]:
    if not ticks or not ticks["schedules"]:
        return ["| schedule ticks | no schedule in this run |"]
    return [
        f"| schedule ticks expected | {ticks['expected']} ({len(ticks['schedules'])} "
        f"schedules; {ticks['skipped']} skipped by their misfire policy, {ticks['pending']} "
        "still pending at removal: not counted) |",
        f"| schedule ticks fired | {ticks['fired']} |",
        f"| schedule ticks duplicated | {ticks['duplicated']} |",
        f"| schedule ticks missed | {ticks['missed']} (fired outside the window or against "
        f"the policy: {ticks['unexpected']}) |",
    ]


def markdown(report: Mapping[str, Any]) -> str:
    """The report's figures as markdown (bench/results/chaos/<stamp>.md)."""
    lines = [
        f"# Chaos run {report['stamp']}",
        "",
        f"`{report['command']}`",
        "",
        f"Seed {report['seed']}, {report['duration_s']:.0f} s, {report['topology']}; "
        f"faults selected: {', '.join(report['kinds']) or 'none'}.",
        "",
        "| figure | value |",
        "|---|---|",
        f"| faults injected | {report['faults_injected']} "
        f"(not run: {report['faults_not_run']}, failed to inject: "
        f"{report['faults_failed']}) |",
        f"| tasks acknowledged | {report['tasks']} ({report['refused']} refused or never "
        "acknowledged: not counted; schedule ticks' tasks: "
        f"{report['tasks_by_kind'].get('tick', 0)}) |",
        f"| lost | {len(report['lost'])} |",
        f"| double-accepted completions | {len(report['double_accepted'])} |",
        f"| handler runs | {report['handler_runs']} (TaskStarted events: "
        f"{report['task_started_events']}) |",
        f"| extra runs | {report['extra_runs']} "
        f"({len(report['unattributed_runs'])} unattributed) |",
        f"| most concurrent runs of the key | {report['limit']['max_concurrent']} "
        f"(allowed {report['limit']['allowed']}) |",
        f"| replay verify | {_mark(report['replay_verify']['clean'])} |",
        *_tick_rows(report.get("schedule_ticks")),
        "",
        "| invariant | result |",
        "|---|---|",
        *(f"| {name} | {_mark(value)} |" for name, value in report["invariants"].items()),
        "",
        "| fault kind | injected | not run | failed | recovery p50 | recovery max | extra runs |",
        "|---|---|---|---|---|---|---|",
        *(f"| {kind} | {row['injected']} | {row['not_run']} | {row['errors']} | "
          f"{_s(row['recovery_p50_s'])} | "
          f"{_s(row['recovery_max_s'])} | {row['extra_runs']} |"
          for kind, row in sorted(report["by_fault_kind"].items())),
        "",
        "| # | fault | at | held | recovery | target | note |",
        "|---|---|---|---|---|---|---|",
        *(f"| {f['index']} | {f['kind']} | {f['at_s']:.0f} s | {f['held_s']:.1f} s | "
          f"{_s(f['recovery_s'])} | {f['target']} | {f['status'] if f['status'] != 'done' else ''}"
          f"{' ' if f['status'] != 'done' and f['note'] else ''}{f['note']} |"
          for f in report["faults"]),
        "",
        "Extra runs by cause: " + (", ".join(f"{c}: {n}" for c, n in
                                            sorted(report["extra_runs_by_cause"].items()))
                                   or "none"),
        "",
        "Recovery: from the fault's start until a canary task submitted at that moment was "
        "seen terminal in the task changelog.",
    ]
    return "\n".join(lines) + "\n"
