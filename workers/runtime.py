"""Run one attempt of one task and say how it ended (an :class:`Outcome`).

Where the handler runs: coroutines on the worker's event loop; plain functions
in their own thread (``pool="thread"``, the default) or their own process
(``pool="process"``); see :mod:`taskstream.workers.pools`.

Timeouts: the ready record's ``timeout_ms``, else the ``@task(timeout=...)``
default, else none. A coroutine is cancelled, a process killed; a thread
cannot be stopped, so its attempt is reported as timed out and its eventual
result discarded. Every timeout is ``TaskFailed(error_type="TaskTimeout",
timed_out=True, retryable=True)``.

Cancelling the asyncio task that awaits :func:`execute` interrupts the handler
the same way (``CancelledError`` in a coroutine, kill for a process, abandon a
thread); the caller decides what to report.
"""

from __future__ import annotations

import asyncio
import enum
from typing import Any

from taskstream.schemas.events import TaskDispatched
from taskstream.workers.context import TaskContext
from taskstream.workers.outcome import (
    Failure,
    Outcome,
    Success,
    decode_payload,
    encode_result,
    failure_from_exception,
    timeout_failure,
)
from taskstream.workers.pools import run_in_process, run_in_thread
from taskstream.workers.registry import TaskDef


class Pool(enum.StrEnum):
    """Where plain functions run. Coroutines always run on the event loop."""

    ASYNC = "async"  # same as THREAD: the loop never runs blocking code
    THREAD = "thread"
    PROCESS = "process"


def timeout_seconds(task: TaskDef, dispatched: TaskDispatched) -> float | None:
    """The record's timeout wins over the task's default."""
    if dispatched.timeout_ms is not None and dispatched.timeout_ms > 0:
        return dispatched.timeout_ms / 1000
    return task.timeout_s


async def _call(task: TaskDef, args: tuple[Any, ...], pool: Pool) -> Outcome:
    if task.is_coroutine:
        return encode_result(await task.fn(*args))
    if pool is Pool.PROCESS:
        return await run_in_process(task.fn, args, task.name)
    return encode_result(await run_in_thread(task.fn, args, task.name))


async def execute(task: TaskDef, dispatched: TaskDispatched, ctx: TaskContext,
                  pool: Pool = Pool.THREAD) -> Outcome:
    """Run the handler once. Never raises, except CancelledError when cancelled."""
    try:
        payload = decode_payload(dispatched.payload, dispatched.content_type)
    except ValueError as exc:
        return Failure("PayloadDecodeError",
                       f"payload declared {dispatched.content_type} does not decode: {exc}",
                       retryable=False)
    args = (payload, ctx) if task.takes_context else (payload,)
    limit = timeout_seconds(task, dispatched)
    scope: asyncio.Timeout | None = None
    try:
        if limit is None:  # no timer to arm and disarm
            return await _call(task, args, pool)
        async with asyncio.timeout(limit) as scope:
            return await _call(task, args, pool)
    except TimeoutError as exc:
        if scope is not None and scope.expired():
            return timeout_failure(limit or 0.0)
        return failure_from_exception(exc)  # the handler's own TimeoutError
    except Exception as exc:
        return failure_from_exception(exc)

__all__ = ["Failure", "Outcome", "Pool", "Success", "execute", "timeout_seconds"]
