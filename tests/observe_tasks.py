"""Tasks of the observability tests: ``taskstream worker -A tests.observe_tasks``.

``observe.traced`` opens a span of its own and logs through its task logger and a
plain logger; ``observe.flaky`` fails its first attempt; ``observe.poison`` is
never retried.
"""

from __future__ import annotations

import logging
from typing import Any

from opentelemetry import trace

from taskstream.workers import NonRetryableError, Retry, TaskApp, TaskContext

app = TaskApp("observe")
plain_log = logging.getLogger("observe.handlers")


@app.task(name="observe.traced")
async def traced(payload: Any, ctx: TaskContext) -> dict[str, Any]:
    with trace.get_tracer("observe").start_as_current_span("observe.handler.step"):
        ctx.logger.info("handler step for %s", payload)
        plain_log.warning("a plain logger inside the handler")
    return {"ok": True}


@app.task(name="observe.noop")
async def noop(payload: Any) -> None:
    return None


@app.task(name="observe.flaky", max_attempts=3)
async def flaky(payload: Any, ctx: TaskContext) -> dict[str, int]:
    if ctx.attempt < 2:
        raise Retry("the first attempt fails on purpose", after=0.2)
    return {"attempt": ctx.attempt}


@app.task(name="observe.poison")
async def poison(payload: Any) -> None:
    raise NonRetryableError("poison: never retried")
