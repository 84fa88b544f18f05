"""PNG plots of a bench run (matplotlib, no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def _latency_vs_load(results: dict[str, Any], out: Path) -> Path | None:
    """submit->start p50 and p99 at each paced rate the sustainable-rate search tried."""
    runs = results.get("compare", {}).get("runs") or {}
    series = {system: sorted((s for run in rows for s in
                              (run.get("sustainable") or {}).get("steps") or []),
                             key=lambda s: s["achieved_rate"])
              for system, rows in runs.items()}
    if not any(series.values()):
        return None
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, steps in series.items():
        steps = [s for s in steps if (s.get("submit_to_start_ms") or {}).get("p99") is not None]
        if not steps:
            continue
        xs = [s["achieved_rate"] for s in steps]
        for q, style in (("p50", "-o"), ("p99", "--s")):
            ax.plot(xs, [s["submit_to_start_ms"][q] for s in steps], style, label=f"{name} {q}")
    ax.axhline(100, color="grey", linewidth=0.8, label="p99 limit of 'held'")
    ax.set_xlabel("paced submits, tasks/s (the sustainable-rate search's steps)")
    ax.set_ylabel("submit -> start, ms")
    ax.set_yscale("log")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title("Submit-to-start latency under paced load (no-op tasks)")
    path = out / "latency_vs_load.png"
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _throughput(results: dict[str, Any], out: Path) -> Path | None:
    """Per system: burst tasks/s and the sustainable rate (medians of the runs)."""
    bars: list[tuple[str, float, str]] = []
    for system, med in (results.get("compare", {}).get("median") or {}).items():
        for burst in med.get("bursts") or []:
            if burst.get("steady_tasks_per_s"):
                bars.append((f"{system}\nburst {burst['tasks']:,}",
                             burst["steady_tasks_per_s"], "tab:blue"))
        if med.get("sustainable_rate"):
            bars.append((f"{system}\nsustainable", med["sustainable_rate"], "tab:orange"))
    for row in (results.get("scaling", {}).get("io") or {}).get("rows") or []:
        if row.get("steady_tasks_per_s"):
            bars.append((f"I/O tasks\n{row['workers']} worker(s)", row["steady_tasks_per_s"],
                         "tab:green"))
    if not bars:
        return None
    fig, ax = plt.subplots(figsize=(max(7.0, 0.9 * len(bars)), 4))
    ax.bar([b[0] for b in bars], [b[1] for b in bars], color=[b[2] for b in bars])
    ax.set_ylabel("tasks/s")
    ax.set_title("Throughput on this machine (bursts, sustainable rate, I/O-bound scaling)")
    ax.grid(True, axis="y", alpha=0.3)
    plt.setp(ax.get_xticklabels(), fontsize=7)
    path = out / "throughput.png"
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _failover(results: dict[str, Any], out: Path) -> Path | None:
    fo = results.get("failover", {})
    per_s = fo.get("per_second_after_kill")
    if not per_s:
        return None
    start = -int(fo["pre_kill_s"])
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.bar(range(start, start + len(per_s)), per_s, width=0.9)
    ax.axvline(0, color="red", label="SIGKILL of one replica")
    if fo.get("serve_again_s") is not None:
        ax.axvline(fo["serve_again_s"], color="green", linestyle="--",
                   label=f"serves again ({fo['serve_again_s']:.1f} s)")
    ax.set_xlabel("seconds after the kill")
    ax.set_ylabel("tasks finished per second")
    ax.set_title("Processor failover under load")
    ax.legend()
    path = out / "failover.png"
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_plots(results: dict[str, Any], out: Path) -> list[Path]:
    made = [_latency_vs_load(results, out), _throughput(results, out), _failover(results, out)]
    return [p for p in made if p is not None]
