"""The eager mode (taskstream/testing.py): handlers and graphs in-process, no broker."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from taskstream.producer.errors import ResultTimeoutError, TaskCancelledError, TaskFailedError
from taskstream.schemas.errors import InvalidSpecError
from taskstream.schemas.ids import derived_task_id
from taskstream.schemas.state import TaskStatus
from taskstream.testing import EagerRunner
from taskstream.workers import NonRetryableError, Retry, TaskApp, TaskContext


def make_app() -> tuple[TaskApp, list[tuple[str, int]]]:
    app = TaskApp("eager")
    seen: list[tuple[str, int]] = []

    @app.task(name="add")
    def add(payload: dict[str, int], ctx: TaskContext) -> int:
        seen.append((ctx.name, ctx.attempt))
        return payload["a"] + payload["b"]

    @app.task(name="flaky", max_attempts=3)
    async def flaky(payload: dict[str, int], ctx: TaskContext) -> dict[str, int]:
        seen.append((ctx.name, ctx.attempt))
        if ctx.attempt < payload["succeed_on"]:
            raise Retry("not yet", after=5)
        return {"attempt": ctx.attempt}

    @app.task(name="poison")
    def poison(payload: object) -> None:
        raise NonRetryableError("never")

    @app.task(name="badresult")
    def badresult(payload: object) -> object:
        return {1, 2}  # a set is not JSON

    @app.task(name="batch", batch_size=10)
    def batch(payloads: list[int]) -> list[Any]:
        return [ValueError("odd") if p % 2 else p * 10 for p in payloads]

    return app, seen


def test_a_handler_runs_with_a_real_context_and_returns_json() -> None:
    app, seen = make_app()
    runner = EagerRunner(app)
    handle = runner.submit("add", {"a": 2, "b": 3}, headers={"trace": "x"})
    assert handle.status is TaskStatus.SUCCEEDED and handle.result() == 5
    assert seen == [("add", 1)] and runner.calls("add") == 1


def test_retries_run_at_once_up_to_max_attempts() -> None:
    app, _ = make_app()
    runner = EagerRunner(app)
    ok = runner.submit("flaky", {"succeed_on": 3}, max_attempts=3)
    assert ok.result() == {"attempt": 3} and len(ok.failures) == 2
    assert ok.failures[0].retry_after_ms == 5000
    dead = runner.submit("flaky", {"succeed_on": 9}, max_attempts=2)
    assert dead.status is TaskStatus.DEAD and dead.attempt == 2
    with pytest.raises(TaskFailedError, match="Retry: not yet"):
        dead.result()


def test_failures_end_as_on_a_worker() -> None:
    app, _ = make_app()
    runner = EagerRunner(app)
    poison = runner.submit("poison", max_attempts=5)
    assert poison.status is TaskStatus.DEAD and poison.attempt == 1
    bad = runner.submit("badresult")
    assert bad.error is not None and bad.error.error_type == "ResultEncodeError"
    unknown = runner.submit("nobody.has.this")
    assert unknown.error is not None and unknown.error.error_type == "UnknownTask"
    with pytest.raises(InvalidSpecError, match="tags"):
        runner.submit("add", {"a": 1, "b": 1}, tags=["no.dots"])
    with pytest.raises(InvalidSpecError):
        runner.submit("add", {1, 2})  # a payload the SDK would refuse


def test_an_idempotency_key_meets_the_first_submission() -> None:
    app, seen = make_app()
    runner = EagerRunner(app)
    first = runner.submit("add", {"a": 1, "b": 1}, idempotency_key="k")
    again = runner.submit("add", {"a": 1, "b": 1}, idempotency_key="k")
    assert again is first and first.task_id == derived_task_id("add", "k")
    assert seen == [("add", 1)]


def test_a_diamond_runs_parents_first_and_a_failed_parent_cancels_its_children() -> None:
    app, seen = make_app()
    runner = EagerRunner(app)
    # children listed before their parents in one submit_many: still run after them
    a_key, b_key = "a", "b"
    a_id, b_id = derived_task_id("add", a_key), derived_task_id("add", b_key)
    d, a, b = runner.submit_many([
        {"name": "add", "payload": {"a": 0, "b": 0}, "depends_on": [a_id, b_id]},
        {"name": "add", "payload": {"a": 1, "b": 0}, "idempotency_key": a_key},
        {"name": "add", "payload": {"a": 2, "b": 0}, "idempotency_key": b_key},
    ])
    assert [h.status for h in (a, b, d)] == [TaskStatus.SUCCEEDED] * 3
    assert seen == [("add", 1)] * 3
    dead = runner.submit("poison")
    child = runner.submit("add", {"a": 1, "b": 1}, depends_on=[dead.task_id])
    grandchild = runner.submit("add", {"a": 1, "b": 1}, depends_on=[child.task_id])
    assert child.status is TaskStatus.CANCELLED and grandchild.status is TaskStatus.CANCELLED
    with pytest.raises(TaskCancelledError, match=f"parent {dead.task_id} ended DEAD"):
        child.result()
    orphan = runner.submit("add", {"a": 1, "b": 1}, depends_on=["0" * 26])
    assert orphan.status is TaskStatus.WAITING
    with pytest.raises(ResultTimeoutError):
        orphan.result()


def test_batch_tasks_run_as_batches_of_one_each_with_its_own_outcome() -> None:
    app, _ = make_app()
    runner = EagerRunner(app)
    assert runner.submit("batch", 4).result() == 40
    odd = runner.submit("batch", 3, max_attempts=2)
    assert odd.status is TaskStatus.DEAD and odd.error is not None
    assert odd.error.error_type == "ValueError" and runner.calls("batch") == 3


def test_a_handler_may_submit_more_tasks_and_async_tests_work() -> None:
    app = TaskApp("fanout")
    runner = EagerRunner(app)

    @app.task(name="leaf")
    async def leaf(payload: int) -> int:
        await asyncio.sleep(0)
        return payload * 2

    @app.task(name="fan")
    def fan(payload: int) -> list[int]:
        return [runner.submit("leaf", i).result() for i in range(payload)]

    async def inside_a_loop() -> Any:
        return runner.submit("fan", 3).result()

    assert asyncio.run(inside_a_loop()) == [0, 2, 4]
    assert runner.calls("leaf") == 3
