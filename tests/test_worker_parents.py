"""``ctx.parent_results``: read lazily, once per parent, only for the task's parents (D37)."""

from __future__ import annotations

import pickle
from typing import Any

import pytest

from taskstream.workers.context import TaskContext
from taskstream.workers.errors import WorkerError


def test_parent_results_are_fetched_on_first_read_and_kept() -> None:
    calls: list[str] = []

    def fetch(parent: str) -> Any:
        calls.append(parent)
        return {"from": parent}

    ctx = TaskContext(task_id="T", attempt=1, parents=["A", "group:g"], fetch_result=fetch)
    assert list(ctx.parent_results) == ["A", "group:g"] and len(ctx.parent_results) == 2
    assert calls == []  # nothing fetched before the handler reads
    assert ctx.parent_results["A"] == {"from": "A"}
    assert ctx.parent_results["A"] == {"from": "A"}
    assert calls == ["A"]
    with pytest.raises(KeyError):
        ctx.parent_results["B"]  # not a parent: never fetched
    assert calls == ["A"]


def test_without_a_reader_or_in_a_process_child_reading_says_why() -> None:
    ctx = TaskContext(task_id="T", attempt=1, parents=["A"])
    with pytest.raises(WorkerError, match="cannot fetch parent results"):
        ctx.parent_results["A"]
    child = pickle.loads(pickle.dumps(TaskContext(task_id="T", attempt=1, parents=["A"],
                                                  fetch_result=lambda p: 1)))
    assert child.parents == ("A",)
    with pytest.raises(WorkerError, match="process-pool child"):
        child.parent_results["A"]
    assert dict(TaskContext(task_id="T", attempt=1).parent_results) == {}
