"""Where a plain (non-async) handler runs: its own thread, or its own process.

Threads. Each call runs in a fresh daemon thread, not a ``ThreadPoolExecutor``:
a thread cannot be killed, so a handler that overruns its timeout is
*abandoned* (its result is discarded) and must not hold a pool slot or block
interpreter exit the way executor threads do. The abandoned count is a metric.
The thread runs in a copy of the caller's context (``contextvars``), as asyncio
tasks do: the task's log fields and its run span are there for the handler.

Processes. Each call runs in a fresh process (``forkserver`` start method, so
the child does not inherit librdkafka's threads). A process can be killed, so a
timeout or a cancellation really stops the work. ``concurrent.futures``'
ProcessPoolExecutor cannot kill one job, hence no pool. The handler must be
importable by name (a module-level function) and its payload and result must
pickle.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import multiprocessing
import threading
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

from taskstream.workers.outcome import Failure, encode_result, failure_from_exception

#: bound on reaping a killed child
_REAP_TIMEOUT_S = 5.0


def _resolve(fut: asyncio.Future[Any], ok: bool, value: Any) -> None:
    if fut.done():
        return  # timed out or cancelled: the result is discarded
    if ok:
        fut.set_result(value)
    else:
        fut.set_exception(value)


async def run_in_thread(fn: Callable[..., Any], args: tuple[Any, ...], name: str) -> Any:
    """Run ``fn(*args)`` in a new daemon thread; await its result."""
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[Any] = loop.create_future()

    def target() -> None:
        try:
            value, ok = fn(*args), True
        except BaseException as exc:  # delivered to the awaiting coroutine
            value, ok = exc, False
        # RuntimeError: the loop is gone (worker stopped), nobody waits for this result
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(_resolve, fut, ok, value)

    # the caller's context goes along: the task's log fields and its run span (tracing)
    threading.Thread(target=contextvars.copy_context().run, args=(target,), name=f"task:{name}",
                     daemon=True).start()
    return await fut


def _child_main(conn: Connection, fn: Callable[..., Any], args: tuple[Any, ...],
                convert: Callable[[Any], Any]) -> None:
    try:
        outcome: Any = convert(fn(*args))
    except BaseException as exc:
        outcome = failure_from_exception(exc)
    try:
        conn.send(outcome)
    finally:
        conn.close()


async def _readable(conn: Connection) -> None:
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[None] = loop.create_future()
    fd = conn.fileno()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_reader(fd, wake)
    try:
        await ready
    finally:
        loop.remove_reader(fd)


async def _reap(proc: multiprocessing.process.BaseProcess) -> None:
    if proc.is_alive():
        proc.kill()
    deadline = asyncio.get_running_loop().time() + _REAP_TIMEOUT_S
    while proc.is_alive() and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.01)
    proc.join(0)


async def run_in_process(fn: Callable[..., Any], args: tuple[Any, ...], name: str,
                         convert: Callable[[Any], Any] = encode_result) -> Any:
    """Run ``fn(*args)`` in a new process; cancelling the await kills the process.

    The child sends ``convert(result)`` back (an :class:`Outcome` by default; a batch sends
    a list of them), or a :class:`Failure` when ``fn`` raised. ``convert`` must pickle (a
    module-level function or a ``functools.partial`` of one)."""
    ctx = multiprocessing.get_context("forkserver")
    reader, writer = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child_main, args=(writer, fn, args, convert),
                       name=f"task:{name}", daemon=True)
    try:
        proc.start()
    finally:
        writer.close()
    try:
        await _readable(reader)
        try:
            outcome: Any = reader.recv()
        except EOFError:
            await _reap(proc)
            return Failure(
                "WorkerProcessDied",
                f"the task's process exited with code {proc.exitcode} before reporting a result",
                retryable=True,
            )
        return outcome
    finally:
        await _reap(proc)
        reader.close()
