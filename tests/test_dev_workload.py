"""The demo workload and its summary, without a broker."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from taskstream.dev.workload import demo_workload, percentile, render, summarize
from taskstream.schemas.models import TaskSpec


@given(st.integers(min_value=5, max_value=2000))
def test_workload_has_every_kind_and_the_asked_size(n: int) -> None:
    tasks = demo_workload(n)
    kinds = Counter(t.kind for t in tasks)
    assert len(tasks) == n
    assert kinds["poison"] == 1
    assert {"fast", "flaky", "slow", "delayed"} <= set(kinds)


def test_workload_specs_are_valid_task_specs_with_two_priorities() -> None:
    specs = [TaskSpec.model_validate(t.spec) for t in demo_workload(50)]
    fast = [s for s in specs if s.name == "examples.noop" and s.delay is None]
    assert {s.priority for s in fast} == {0, 2}
    assert all(s.delay == 2.0 for s in specs if s.delay is not None)


def test_too_small_a_workload_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 5"):
        demo_workload(4)


@given(st.lists(st.floats(min_value=0, max_value=1e6), min_size=1, max_size=200),
       st.floats(min_value=0, max_value=100))
def test_percentile_lies_within_the_values(values: list[float], q: float) -> None:
    p = percentile(values, q)
    assert p is not None
    assert min(values) - 1e-6 <= p <= max(values) + 1e-6


def test_percentile_of_known_values() -> None:
    assert percentile([], 50) is None
    assert percentile([7.0], 99) == 7.0
    assert percentile([1.0, 2.0, 3.0, 4.0, 5.0], 50) == 3.0
    assert percentile(list(map(float, range(101))), 99) == 99.0


def _view(status: str, sub: int, start: int | None, done: int | None,
          retries: int = 0) -> dict[str, Any]:
    return {"status": status, "submitted_at_ms": sub, "started_at_ms": start,
            "finished_at_ms": done, "retries": retries}


def test_summary_figures() -> None:
    views = {
        "a": _view("SUCCEEDED", 1_000, 1_010, 1_020),
        "b": _view("SUCCEEDED", 1_000, 1_030, 1_040),
        "c": _view("SUCCEEDED", 1_000, 3_050, 3_060),  # delayed 2 s: 50 ms late
        "d": _view("DEAD", 1_000, 1_500, 2_000, retries=2),
        "e": _view("SUCCEEDED", 1_000, 1_900, 3_000, retries=2),  # flaky: not in latencies
    }
    kinds = {"a": "fast", "b": "fast", "c": "delayed", "d": "poison", "e": "flaky",
             "missing": "fast"}
    s = summarize(views, kinds, elapsed_s=2.5, urls={"API": "http://127.0.0.1:1"})
    assert (s.tasks, s.finished, s.retries, s.dead_letters) == (6, 5, 4, 1)
    assert s.states == {"SUCCEEDED": 4, "DEAD": 1}
    assert s.submit_to_start_ms == {"p50": 20.0, "p99": pytest.approx(29.8)}
    assert s.submit_to_done_ms["p50"] == 30.0
    assert s.delayed_start_late_ms == {"p50": 50.0, "p99": 50.0}
    assert s.tasks_per_s == pytest.approx(5 / 2.06)
    text = "\n".join(render(s))
    assert "5/6 tasks finished" in text and "dead letters      1" in text
    assert "http://127.0.0.1:1" in text
    assert s.to_json()["submit_to_done_ms"]["p50"] == 30.0


def test_summary_of_nothing_finished() -> None:
    s = summarize({}, {"a": "fast"}, elapsed_s=1.0)
    assert s.finished == 0 and s.tasks_per_s is None
    assert "p50 n/a" in "\n".join(render(s))
