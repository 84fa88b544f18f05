"""The bench's pure parts: rates, failover recovery, the markdown report, plots."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

from bench_e2e import Times, _rates, paced, stats
from bench_failover import _recovery
from plots import write_plots
from report import markdown


def test_rates_overall_and_steady() -> None:
    times = [Times(0, i * 10, i * 10 + 5) for i in range(1, 101)]  # a finish every 10 ms
    overall, steady = _rates(times)
    assert overall == pytest.approx(100 / 1.005)
    assert steady == pytest.approx(100.0)
    assert _rates(times[:1]) == (None, None)


def test_stats_of_nothing_and_something() -> None:
    assert stats([])["p50"] is None
    assert stats([1.0, 2.0, 3.0]) == {"n": 3, "p50": 2.0, "p95": 2.9, "p99": 2.98, "max": 3.0}


def test_paced_keeps_the_rate_and_stops_when_told() -> None:
    calls: list[int] = []
    ids, achieved = paced(lambda: str(calls.append(1)), rate=200.0, seconds=0.1)
    assert len(ids) == 20 and 100 < achieved <= 400


def test_recovery_finds_the_first_second_back_at_80_percent() -> None:
    kill = 100_000.0
    finishes = [kill - 3000 + i * 10 for i in range(300)]  # 100/s for 3 s before the kill
    finishes += [kill + 4000 + i * 10 for i in range(300)]  # nothing for 4 s, then 100/s
    out = _recovery(finishes, kill, pre_s=3)
    assert out["rate_before_per_s"] == pytest.approx(100.0)
    assert out["throughput_recovered_s"] == 4
    assert out["per_second_after_kill"][:3] == [100, 100, 100]


def test_recovery_waits_for_the_dip_after_the_kill() -> None:
    kill = 100_000.0
    finishes = [kill - 2000 + i * 10 for i in range(200)]  # 100/s before
    finishes += [kill + i * 10 for i in range(200)]  # 2 more good seconds, then a stall
    finishes += [kill + 5000 + i * 10 for i in range(200)]
    assert _recovery(finishes, kill, pre_s=2)["throughput_recovered_s"] == 5
    steady = [kill - 2000 + i * 10 for i in range(600)]
    assert _recovery(steady, kill, pre_s=2)["throughput_recovered_s"] == 0


def _profile(rate: float) -> list[dict[str, Any]]:
    lat = {"n": 10, "p50": 5.0, "p95": 9.0, "p99": 12.0, "max": 13.0}
    return [{"fraction_of_max": f, "achieved_rate": rate * f, "submit_to_start_ms": lat,
             "submit_to_done_ms": lat, "done": 10, "tasks": 10} for f in (0.25, 0.5, 0.9)]


def test_markdown_and_plots_of_a_full_result(tmp_path: Path) -> None:
    results = {
        "meta": {"command": "python bench/run.py", "cpus": 2},
        "e2e": {"max": {"steady_tasks_per_s": 900.0}, "profile": _profile(900)},
        "celery": {"max": {"steady_tasks_per_s": 300.0}, "profile": _profile(300)},
        "scaling": {"rows": [{"label": "1 proc", "processors": 1, "workers": 1, "done": 5,
                              "tasks": 5, "steady_tasks_per_s": 900.0, "tasks_per_s": 800.0}]},
        "failover": {"rate": 50.0, "serve_again_s": 7.5, "throughput_recovered_s": 8,
                     "done": 10, "tasks": 10, "pre_kill_s": 2.0,
                     "per_second_after_kill": [5, 5, 0, 0, 5]},
        "delayed": {"done": 3, "tasks": 3, "achieved_rate": 10.0,
                    "start_after_due_ms": {"p50": 100.0, "p95": 200.0, "p99": 300.0}},
        "replay": {"error": "RuntimeError: boom"},
    }
    text = markdown(results)
    assert "| max tasks/s (steady) | 900 | 300 | 3.00x |" in text
    assert "| 50.0 | 7.5 s | 8 s | 10/10 | <= 5 s |" in text
    assert "`replay`: RuntimeError: boom" in text
    made = write_plots(results, tmp_path)
    assert {p.name for p in made} == {"latency_vs_load.png", "throughput.png", "failover.png"}


def test_markdown_of_an_empty_run() -> None:
    text = markdown({"meta": {}})
    assert text.startswith("# Benchmark results") and "n/a" in text


def test_markdown_puts_equal_offered_rates_side_by_side() -> None:
    lat = {"p50": 20.0, "p95": 40.0, "p99": 60.0}
    results = {
        "e2e": {"fixed": [{"rate": 200.0, "achieved_rate": 199.0, "submit_to_start_ms": lat}]},
        "celery": {"fixed": [{"rate": 200.0, "achieved_rate": 198.0,
                              "submit_to_start_ms": {"p50": 3.0, "p95": 5.0, "p99": 9.0}}]},
    }
    text = markdown(results)
    assert ("| submit->start p50/p95/p99 ms at 200 tasks/s offered (achieved 199 vs 198/s) "
            "| 20 / 40 / 60 | 3 / 5 / 9 | |") in text


def test_soak_summary_skips_the_warm_up_and_finds_the_trend() -> None:
    from bench_soak import slope_per_minute, summarize

    flat = [(float(t), 100.0) for t in range(0, 600, 5)]
    assert slope_per_minute(flat) == pytest.approx(0.0)
    growing = [(float(t), 100.0 + t / 60.0) for t in range(0, 600, 5)]  # 1 MiB a minute
    assert slope_per_minute(growing) == pytest.approx(1.0)
    warm = [(float(t), 500.0) for t in range(0, 120, 5)] + growing[24:]
    summary = summarize(warm, warmup_s=120.0)
    assert summary["slope_mib_per_min"] == pytest.approx(1.0)
    assert summary["start_mib"] == pytest.approx(100.0 + 150 / 60.0, abs=0.05)  # 120..180 s
    assert summary["end_mib"] == pytest.approx(100.0 + 565 / 60.0, abs=0.05)  # 535..595 s
    assert summary["max_mib"] == pytest.approx(100.0 + 595 / 60.0, abs=0.05)
    assert summary["max_first_half_mib"] < summary["max_second_half_mib"]
    saw = [(float(t), 100.0 + (t % 120) / 4) for t in range(0, 600, 5)]  # fills, flushes
    halves = summarize(saw, warmup_s=0.0)
    assert halves["max_first_half_mib"] == halves["max_second_half_mib"] == 128.8
    assert summarize(warm, warmup_s=1_000.0) == {"samples": 0}
    assert slope_per_minute([(1.0, 5.0), (1.0, 6.0)]) is None


def test_soak_latency_is_bucketed_by_the_minute_of_submission() -> None:
    from bench_soak import per_minute

    times = [Times(1_000 + s * 1_000, 1_000 + s * 1_000 + 10 + s // 60, 0) for s in range(150)]
    rows = per_minute(times, began_ms=1_000)
    assert [(r["minute"], r["n"]) for r in rows] == [(0, 60), (1, 60), (2, 30)]
    assert [r["p50"] for r in rows] == [10, 11, 12]
