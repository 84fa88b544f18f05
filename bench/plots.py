"""PNG plots of a bench run (matplotlib, no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def _latency_vs_load(results: dict[str, Any], out: Path) -> Path | None:
    series = {"taskstream": results.get("e2e", {}).get("profile"),
              "celery": results.get("celery", {}).get("profile")}
    if not any(series.values()):
        return None
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, rows in series.items():
        if not rows:
            continue
        xs = [r["achieved_rate"] for r in rows]
        for q, style in (("p50", "-o"), ("p99", "--s")):
            ys = [r["submit_to_start_ms"][q] for r in rows]
            ax.plot(xs, ys, style, label=f"{name} {q}")
    ax.set_xlabel("submitted tasks/s (25 %, 50 %, 90 % of each system's max)")
    ax.set_ylabel("submit -> start, ms")
    ax.set_yscale("log")
    ax.grid(True, alpha=0.3)
    ax.legend()
    ax.set_title("Submit-to-start latency under load (no-op tasks)")
    path = out / "latency_vs_load.png"
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _throughput(results: dict[str, Any], out: Path) -> Path | None:
    bars: list[tuple[str, float]] = []
    for row in results.get("scaling", {}).get("rows", []):
        if row.get("steady_tasks_per_s"):
            bars.append((row["label"], row["steady_tasks_per_s"]))
    celery = results.get("celery", {}).get("max", {})
    if celery.get("steady_tasks_per_s"):
        bars.append(("celery+redis\n1 worker", celery["steady_tasks_per_s"]))
    if not bars:
        return None
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.bar([b[0] for b in bars], [b[1] for b in bars],
           color=["tab:blue"] * (len(bars) - 1) + ["tab:orange"])
    ax.set_ylabel("no-op tasks/s (steady)")
    ax.set_title("End-to-end throughput on this machine")
    ax.grid(True, axis="y", alpha=0.3)
    plt.setp(ax.get_xticklabels(), fontsize=8)
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
