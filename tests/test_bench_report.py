"""The bench's pure parts: rates, the rate search, CPU readings, failover recovery, the
markdown report, plots."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

import bench_compare
from bench_broker import group_seconds, parse_counts, parse_overrides, per_task, thread_group
from bench_compare import QUICK, Plan, held, next_rate, settle, summarize
from bench_e2e import Times, _rates, override_env, paced, stats
from bench_failover import _recovery
from bench_hops import HOPS, hop_stats, stamps_of
from cpu import CpuMeter, cpu_seconds, tree
from meta import write_result
from plots import write_plots
from report import markdown

from taskstream.schemas.events import TaskStarted
from taskstream.schemas.serde import encode_event
from taskstream.settings import load_settings
from tests.test_fold_validate import envelope, submitted


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


def _step(rate: float, p99: float, *, done: int = 100, last_p99: float | None = None,
          achieved: float | None = None) -> dict[str, Any]:
    return {"target_rate": rate, "achieved_rate": achieved or rate, "tasks": 100, "done": done,
            "all_done_in_time": done == 100,
            "submit_to_start_ms": {"p50": 5.0, "p99": p99},
            "last_quarter_submit_to_start_ms": {"p99": p99 if last_p99 is None else last_p99}}


def test_a_step_holds_only_when_every_rule_does() -> None:
    assert held(_step(100, 40)) == (True, "held")
    assert not held(_step(100, 140))[0]
    assert not held(_step(100, 40, last_p99=150))[0]  # the backlog grows at the end
    assert not held(_step(100, 40, done=99))[0]
    assert not held(_step(100, 40, achieved=80))[0]  # the client could not keep up


def test_the_search_doubles_then_bisects_to_the_precision() -> None:
    plan = Plan(search_start=100, precision=0.1)
    capacity = 700.0
    rate: float | None = plan.search_start
    best = worst = None
    tried = []
    while rate is not None:
        tried.append(rate)
        rate, best, worst = next_rate(rate, rate <= capacity, best, worst, plan)
    assert tried[:4] == [100, 200, 400, 800]
    assert best is not None and worst is not None
    assert best <= capacity < worst <= best * 1.1
    assert len(tried) <= 8


def test_the_search_halves_when_the_start_fails_and_stops_at_its_cap() -> None:
    plan = Plan(search_start=100, search_max=300)
    assert next_rate(100, False, None, None, plan) == (50, None, 100)
    assert next_rate(200, True, 100, None, plan) == (None, 200, None)  # 400 is over the cap


def test_summary_takes_medians_over_runs() -> None:
    def run(rate: float, cpu: float, sustained: float) -> dict[str, Any]:
        burst = {"tasks": 10, "steady_tasks_per_s": rate, "tasks_per_s": rate,
                 "all_done_in_time": True, "cpu_us_per_task": {"worker": cpu, "total": cpu}}
        return {"bursts": [burst], "sustainable": {"rate": sustained},
                "paced": {"target_rate": 1000.0, "achieved_rate": 990.0, "done": 5, "tasks": 5,
                          "submit_to_start_ms": {"p50": 4.0, "p99": 9.0},
                          "cpu_us_per_task": {"worker": cpu}},
                "verify": {"ok": True}}

    summary = summarize([run(100, 300, 50), run(300, 100, 70), run(200, 200, 60)])
    assert summary["bursts"][0]["steady_tasks_per_s"] == 200
    assert summary["bursts"][0]["cpu_us_per_task"] == {"total": 200, "worker": 200}
    assert summary["sustainable_rate"] == 60 and summary["paced"]["p99_ms"] == 9
    assert summary["verify"] == [{"ok": True}] * 3


def test_cpu_readings_count_a_child_for_its_parent_but_not_for_the_harness() -> None:
    import os
    import subprocess

    child = subprocess.Popen([sys.executable, "-c",
                              "import time\nend = time.time() + 0.6\nwhile time.time() < end: "
                              "pass\ntime.sleep(30)"])
    try:
        meter = CpuMeter()
        meter.add("child", child.pid)
        meter.add_alone("harness", os.getpid())
        before = meter.read()
        assert child.pid in tree(os.getpid())
        import time

        time.sleep(1.0)  # the child spins for 0.6 s of it
        after = meter.read()
        per = meter.per_task_us(before, after, tasks=1)
        assert per["child"] is not None and per["child"] > 0
        # the harness's own threads only: the child's spin is not in it, nor in the total twice
        assert per["total"] == per["child"]
        assert cpu_seconds([os.getpid()]) >= after["harness"]
    finally:
        child.kill()
        child.wait(10)


def _compare() -> dict[str, Any]:
    def system(rate: float, cpu: dict[str, float]) -> dict[str, Any]:
        return {"runs": 3, "sustainable_rate": rate / 2,
                "bursts": [{"tasks": 10_000, "steady_tasks_per_s": rate,
                            "cpu_us_per_task": {**cpu, "total": sum(cpu.values())}}],
                "paced": {"target_rate": 1000.0, "achieved_rate": 1000.0, "p50_ms": 8.0,
                          "p99_ms": 40.0}}

    steps = [{"target_rate": 100.0, "achieved_rate": 100.0, "held": True, "verdict": "held",
              "submit_to_start_ms": {"p50": 5.0, "p99": 20.0}},
             {"target_rate": 200.0, "achieved_rate": 199.0, "held": False,
              "verdict": "p99 submit->start 250 ms",
              "submit_to_start_ms": {"p50": 50.0, "p99": 250.0}}]
    ours = system(900, {"processor": 300.0, "worker": 200.0, "broker": 100.0})
    ours["verify"] = [{"ok": True}, {"ok": False, "mismatches": 2},
                      {"ok": False, "exit_code": 1, "error": "not caught up"}]
    return {"median": {"taskstream": ours,
                       "celery-prefork": system(300, {"celery worker": 2000.0, "redis": 250.0})},
            "runs": {"taskstream": [{"sustainable": {"steps": steps, "rule": "p99 <= 100"}}]},
            "reproduce": "python bench/run.py --only compare --runs 3"}


def test_markdown_and_plots_of_a_full_result(tmp_path: Path) -> None:
    results = {
        "meta": {"command": "python bench/run.py", "cpus": 2},
        "compare": _compare(),
        "worker": {"config": {"workers": 1, "concurrency": 16},
                   "drain": [{"tasks": 100, "done": 100, "tasks_per_s": 2000.0,
                              "cpu_us_per_task": {"worker": 210.0, "broker": 40.0}}],
                   "paced": {"target_rate": 1000.0, "achieved_rate": 999.0, "tasks": 50,
                             "started": 50, "cpu_us_per_task": {"worker": 300.0},
                             "dispatch_to_start_ms": {"p50": 2.0, "p99": 20.0}},
                   "reproduce": "python bench/run.py --only worker"},
        "scaling": {"noop": [{"processors": 2, "workers": 2, "done": 5, "tasks": 5,
                              "steady_tasks_per_s": 900.0,
                              "cpu_us_per_task": {"processor": 1.0, "total": 3.0}}],
                    "io": {"task": "examples.io_wait", "wait_s": 0.05,
                           "concurrency_per_worker": 8, "processors": 1, "ready_partitions": 12,
                           "rows": [{"workers": 2, "done": 9, "tasks": 9,
                                     "steady_tasks_per_s": 288.0,
                                     "ideal_tasks_per_s": 320.0}]},
                    "io_workers_alone": {"task": "examples.io_wait", "wait_s": 0.05,
                                         "concurrency_per_worker": 8, "ready_partitions": 12,
                                         "rows": [{"workers": 2, "done": 8, "tasks": 8,
                                                   "tasks_per_s": 300.0,
                                                   "ideal_tasks_per_s": 320.0,
                                                   "started_per_worker": [5, 3]}]}},
        "failover": {"rate": 50.0, "serve_again_s": 7.5, "throughput_recovered_s": 8,
                     "done": 10, "tasks": 10, "pre_kill_s": 2.0,
                     "per_second_after_kill": [5, 5, 0, 0, 5]},
        "delayed": {"done": 3, "tasks": 3, "achieved_rate": 10.0,
                    "start_after_due_ms": {"p50": 100.0, "p95": 200.0, "p99": 300.0}},
        "replay": {"error": "RuntimeError: boom"},
    }
    text = markdown(results)
    assert "| burst of 10,000: tasks/s | 900 | 300 | 3.00x |" in text
    assert "| sustainable rate, tasks/s (held with p99 submit->start <= 100 ms) | 450 | 150 |" \
        " 3.00x |" in text
    assert "| taskstream | 10,000 | 300 | 200 | 100 | n/a | n/a | n/a | 600 |" in text
    assert ("| `replay verify` after each taskstream run | clean, NOT clean (2 mismatches), "
            "no verdict (exit 1: not caught up) |") in text
    assert "- taskstream, run 1: 100 held, 200 not held (p99 submit->start 250 ms)" in text
    assert "Reproduce: `python bench/run.py --only compare --runs 3`" in text
    assert "| drain 1 | 100/100 | 2,000 | 210 | 40 | |" in text
    assert "| 2 | 9/9 | 288 | 320 | 90% |" in text
    assert "| 2 | 8/8 | 300 | 320 | 94% | 5 / 3 |" in text
    assert "| 50.0 | 7.5 s | 8 s | 10/10 | <= 5 s |" in text
    assert "`replay`: RuntimeError: boom" in text
    made = write_plots(results, tmp_path)
    assert {p.name for p in made} == {"latency_vs_load.png", "throughput.png", "failover.png"}


def test_markdown_of_an_empty_run() -> None:
    text = markdown({"meta": {}})
    assert text.startswith("# Benchmark results") and "## " not in text


def test_quick_plan_is_smaller_than_the_full_one() -> None:
    assert QUICK.paced_s < Plan().paced_s and max(QUICK.bursts) < max(Plan().bursts)


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


class _ScriptedMeter(CpuMeter):
    """A meter whose rig used ``busy`` core-seconds per second for its first readings,
    then ``idle``; one second passes per reading (the harness sleeps a window)."""

    def __init__(self, busy_readings: int, busy: float = 1.5, idle: float = 0.05) -> None:
        super().__init__()
        self.add("processor", 1)
        self.add_alone("client", 2)
        self.readings, self.cpu = 0, 0.0
        self.busy_readings, self.busy, self.idle = busy_readings, busy, idle

    def read(self) -> dict[str, float]:
        if self.readings:
            self.cpu += self.busy if self.readings <= self.busy_readings else self.idle
        self.readings += 1
        # the harness's own CPU must not count towards the rig's
        return {"processor": self.cpu, "client": 1000.0 * self.readings,
                "_wall": float(self.readings)}


def test_settle_waits_for_a_quiet_rig_and_no_longer_than_its_bound(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bench_compare.time, "sleep", lambda s: None)
    busy = _ScriptedMeter(busy_readings=4)
    settle(busy)
    assert busy.readings == 6  # 4 busy windows, then the first quiet one
    clock = iter(range(1000))
    monkeypatch.setattr(bench_compare.time, "monotonic", lambda: float(next(clock)))
    never = _ScriptedMeter(busy_readings=10_000)
    assert settle(never, 30.0) >= 30.0
    assert never.readings <= 32


def test_hops_split_each_task_at_its_own_records_first_of_each_kind() -> None:
    def rows(task: str, t: int) -> list[tuple[str, int, bytes]]:
        submit = envelope(submitted(), task_id=task, occurred_at_ms=t)
        start = envelope(TaskStarted("d", "w"), task_id=task, occurred_at_ms=t + 20)
        return [("events", t + 5, encode_event(submit)),
                ("ready.default.p1", t + 9, encode_event(submit)),
                ("events", t + 26, encode_event(start)),
                # a retry's records come later and do not count
                ("ready.default.p1", t + 900, encode_event(submit)),
                ("events", t + 990, encode_event(start))]

    a, b = "0" * 25 + "A", "0" * 25 + "B"
    stamps = stamps_of([*rows(a, 1_000), *rows(b, 5_000)], "ready.")
    assert stamps[a] == {"submit_called": 1_000, "submitted_appended": 1_005,
                         "dispatch_produced": 1_009, "started": 1_020,
                         "started_appended": 1_026}
    hops = hop_stats(stamps)
    assert hops["tasks"] == 2
    assert [hops[hop]["p50"] for hop, _, _ in HOPS] == [5, 4, 11, 20, 6]
    assert hop_stats(stamps, skip_ms=1_000)["tasks"] == 1  # the first second left out
    assert hop_stats({a: {"submit_called": 1}})["tasks"] == 0  # no task with every stamp


def test_broker_threads_are_grouped_by_their_kernel_names() -> None:
    assert thread_group("data-plane-kaf") == "request handling"  # 15 characters kept
    assert thread_group("C2 CompilerThre") == thread_group("C1 CompilerThre") == "JIT compiler"
    assert thread_group("GC Thread#1") == thread_group("G1 Conc#0") == "GC"
    assert thread_group("kafka-scheduler") == "other"
    # this process's own threads read and sum to its CPU time so far
    own = group_seconds(os.getpid())
    assert own.get("other", 0) > 0 and set(own) <= {"other"}


def test_broker_counts_are_keyed_by_metric_and_request_or_topic() -> None:
    text = ("kafka.network:type=RequestMetrics,name=RequestsPerSec,request=Produce,version=9\t40\n"
            "kafka.network:type=RequestMetrics,name=RequestsPerSec,request=Produce,version=11\t2\n"
            "kafka.server:type=BrokerTopicMetrics,name=MessagesInPerSec,topic=t.events\t300\n"
            "kafka.server:type=BrokerTopicMetrics,name=MessagesInPerSec\t310\n"
            "no metric here\t5\n")
    counts = parse_counts(text)
    assert counts == {"RequestsPerSec:Produce": 42.0, "MessagesInPerSec:t.events": 300.0,
                      "MessagesInPerSec:all": 310.0}
    later = {**counts, "RequestsPerSec:Produce": 142.0, "RequestsPerSec:Fetch": 50.0}
    assert per_task(counts, later, 100) == {"RequestsPerSec:Produce": 1.0,
                                            "RequestsPerSec:Fetch": 0.5}
    assert list(per_task(counts, later, 100)) == ["RequestsPerSec:Produce",
                                                  "RequestsPerSec:Fetch"]  # largest first
    assert per_task({"x": 1.0}, {"x": 3.0}, 4, 1e6) == {"x": 500000.0}
    assert per_task(counts, later, 0) == {}


def test_broker_bench_settings_are_typed_and_a_bad_pair_is_refused() -> None:
    assert parse_overrides(["partitions=3", "processor_linger_ms=2.5", "compression=lz4"]) == {
        "partitions": 3, "processor_linger_ms": 2.5, "compression": "lz4"}
    assert parse_overrides([]) == {}
    with pytest.raises(SystemExit, match="KEY=VALUE"):
        parse_overrides(["partitions"])


def test_a_rigs_settings_reach_its_children_as_variables_their_settings_read(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A bench's ``--set`` must reach the processor and the worker: settings_env passes
    only what every process of a platform shares, so the rig passes the rest."""
    env = override_env({"changelog_window_ms": 0, "processor_linger_ms": 2.5,
                        "retention_by_queue": {"q": 60}})
    assert env == {"TASKSTREAM_CHANGELOG_WINDOW_MS": "0",
                   "TASKSTREAM_PROCESSOR_LINGER_MS": "2.5",
                   "TASKSTREAM_RETENTION_BY_QUEUE": '{"q": 60}'}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    settings = load_settings()
    assert settings.changelog_window_ms == 0 and settings.processor_linger_ms == 2.5
    assert settings.retention_by_queue == {"q": 60}


def test_a_result_is_written_with_its_meta_into_a_new_folder(tmp_path: Path) -> None:
    out = write_result({"rate": 5}, "bench_x.py", tmp_path / "new" / "x.json", wall_s=1.5)
    assert out == tmp_path / "new" / "x.json"
    written = json.loads(out.read_text())
    assert written["rate"] == 5 and written["meta"]["wall_s"] == 1.5
    assert written["meta"]["command"].startswith("python bench/bench_x.py")
    assert {"when", "cpus", "python", "load_average_at_end"} <= written["meta"].keys()
