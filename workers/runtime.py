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
import functools
from collections.abc import Sequence
from typing import Any

from taskstream.objectstore.offload import Offloader
from taskstream.schemas.events import TaskDispatched
from taskstream.security.sealing import Sealer
from taskstream.workers.batch import batch_outcomes, whole_batch
from taskstream.workers.blobs import fetch_payload, store_result
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
        outcome: Outcome = await run_in_process(task.fn, args, task.name)
        return outcome
    return encode_result(await run_in_thread(task.fn, args, task.name))


async def execute(task: TaskDef, dispatched: TaskDispatched, ctx: TaskContext,
                  pool: Pool = Pool.THREAD, *, offloader: Offloader | None = None,
                  sealer: Sealer | None = None) -> Outcome:
    """Run the handler once. Never raises, except CancelledError when cancelled.

    With object storage (D34) the payload is fetched first (and opened, when sealed)
    and a large result stored after (sealed first, when sealing; workers/blobs.py);
    their failures are the attempt's outcome. An inline payload comes here opened.
    """
    if offloader is None and dispatched.payload_ref is None:  # the hot path: no extra await
        return await _execute(task, dispatched, ctx, pool, dispatched.payload)
    raw = await fetch_payload(offloader, dispatched, ctx.task_id, sealer)
    if isinstance(raw, Failure):
        return raw
    outcome = await _execute(task, dispatched, ctx, pool, raw)
    return await store_result(offloader, ctx.task_id, ctx.attempt, dispatched, outcome, sealer)


async def _execute(task: TaskDef, dispatched: TaskDispatched, ctx: TaskContext,
                   pool: Pool, raw: bytes | bytearray) -> Outcome:
    try:
        payload = decode_payload(raw, dispatched.content_type)
    except ValueError as exc:
        return _payload_failure(dispatched, exc)
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


def _payload_failure(dispatched: TaskDispatched, exc: ValueError) -> Failure:
    return Failure("PayloadDecodeError",
                   f"payload declared {dispatched.content_type} does not decode: {exc}",
                   retryable=False)


async def _call_batch(task: TaskDef, args: tuple[Any, ...], count: int, pool: Pool
                      ) -> list[Outcome]:
    if task.is_coroutine:
        return batch_outcomes(await task.fn(*args), count)
    if pool is Pool.PROCESS:
        sent = await run_in_process(task.fn, args, task.name,
                                    functools.partial(batch_outcomes, count=count))
        return whole_batch(sent, count) if isinstance(sent, Failure) else list(sent)
    return batch_outcomes(await run_in_thread(task.fn, args, task.name), count)


async def execute_batch(task: TaskDef, records: Sequence[TaskDispatched],
                        ctxs: Sequence[TaskContext], pool: Pool = Pool.THREAD
                        ) -> list[Outcome]:
    """Run a batch handler once over ``records``: one outcome per record, in order.

    A record whose payload does not decode fails alone and is left out of the call.
    The batch's timeout is the shortest of its records' (workers/batch.py). Never
    raises, except CancelledError when cancelled.
    """
    outcomes: dict[int, Outcome] = {}
    payloads: list[Any] = []
    chosen: list[int] = []
    for i, dispatched in enumerate(records):
        try:
            payloads.append(decode_payload(dispatched.payload, dispatched.content_type))
            chosen.append(i)
        except ValueError as exc:
            outcomes[i] = _payload_failure(dispatched, exc)
    if chosen:
        args: tuple[Any, ...] = (payloads, [ctxs[i] for i in chosen]) if task.takes_context \
            else (payloads,)
        limits = [t for t in (timeout_seconds(task, records[i]) for i in chosen) if t]
        limit = min(limits) if limits else None
        try:
            async with asyncio.timeout(limit) as scope:
                results = await _call_batch(task, args, len(chosen), pool)
        except TimeoutError as exc:
            failure = timeout_failure(limit or 0.0) if scope.expired() \
                else failure_from_exception(exc)
            results = whole_batch(failure, len(chosen))
        except Exception as exc:
            results = whole_batch(failure_from_exception(exc), len(chosen))
        for i, outcome in zip(chosen, results, strict=True):
            outcomes[i] = outcome
    return [outcomes[i] for i in range(len(records))]


__all__ = ["Failure", "Outcome", "Pool", "Success", "execute", "execute_batch",
           "timeout_seconds"]
