"""The chaos workload's tasks: ``taskstream worker -A taskstream.chaos.tasks``.

Each handler records its run in the runs file named by ``TASKSTREAM_CHAOS_RUNS``
(one JSON line when it starts and one when it returns or raises; O_APPEND writes of
one short line, so the workers of one machine share the file). The checker counts
runs per task from these lines and measures how many attempts of one concurrency key
ran at the same time (D42). Times are ``time.monotonic()``: one clock for every process
of the machine, and one the clock-skew fault leaves alone (it shifts only the wall
clock, :data:`taskstream.chaos.topology.SKEWED_CLOCK`).
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from typing import Any

from taskstream.workers import Retry, TaskApp, TaskContext

RUNS_ENV = "TASKSTREAM_CHAOS_RUNS"
#: the queue of every chaos task (its own, so a run against a deployment touches no other)
QUEUE = "chaos"
#: the attempt on which a flaky task first succeeds (it fails on the ones before)
FLAKY_SUCCEEDS_ON = 3

app = TaskApp("chaos")


def record(ctx: TaskContext, event: str, outcome: str = "") -> None:
    """Append one line to the runs file (nothing when the variable is not set)."""
    path = os.environ.get(RUNS_ENV)
    if not path:
        return
    line = json.dumps({"task": ctx.task_id, "attempt": ctx.attempt, "pid": os.getpid(),
                       "ev": event, "mono": time.monotonic(), "outcome": outcome},
                      separators=(",", ":")) + "\n"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


async def _run(ctx: TaskContext, seconds: float, fail: bool = False) -> dict[str, Any]:
    record(ctx, "start")
    try:
        if seconds > 0:
            await asyncio.sleep(seconds)
        if fail:
            raise Retry(f"attempt {ctx.attempt} fails on purpose", after=0.2)
    except BaseException as exc:
        record(ctx, "end", type(exc).__name__)
        raise
    record(ctx, "end", "ok")
    return {"attempt": ctx.attempt}


@app.task(name="chaos.fast", max_attempts=10, queue=QUEUE)
async def fast(payload: Any, ctx: TaskContext) -> dict[str, Any]:
    return await _run(ctx, 0.0)


@app.task(name="chaos.slow", max_attempts=10, queue=QUEUE)
async def slow(payload: dict[str, Any], ctx: TaskContext) -> dict[str, Any]:
    return await _run(ctx, float(payload.get("seconds", 1.0)))


@app.task(name="chaos.flaky", max_attempts=10, queue=QUEUE)
async def flaky(payload: Any, ctx: TaskContext) -> dict[str, Any]:
    return await _run(ctx, 0.0, fail=ctx.attempt < FLAKY_SUCCEEDS_ON)


@app.task(name="chaos.limited", max_attempts=10, queue=QUEUE)
async def limited(payload: dict[str, Any], ctx: TaskContext) -> dict[str, Any]:
    """Runs under a concurrency key: the checker counts overlapping runs."""
    return await _run(ctx, float(payload.get("seconds", 0.3)))
