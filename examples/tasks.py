"""Example tasks: ``taskstream worker -A examples.tasks`` runs them.

Each one shows one behaviour of the runtime:

* ``examples.noop`` — the fastest possible task (benchmarks);
* ``examples.io_wait`` — waits ``payload["seconds"]`` (default 0.05) without
  using the CPU, like a call to another service (the workers-scaling bench);
* ``examples.slow`` — sleeps ``payload["seconds"]`` (shutdown, leases);
* ``examples.flaky`` — fails on attempts 1 and 2, succeeds on 3 (retries);
* ``examples.poison`` — always raises (ends DEAD after its attempts);
* ``examples.hash_file`` — a plain function, run in a thread (or a process
  with ``--pool process``);
* ``examples.sleepy`` — a 1 s timeout it may overrun (timeouts);
* ``examples.blob`` — returns ``payload["size"]`` bytes (large results in object
  storage, bench/bench_storage.py).
* ``examples.progress`` — reports its progress step by step (``ctx.progress``).
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from typing import Any

from taskstream.workers import NonRetryableError, Retry, TaskApp, TaskContext

app = TaskApp("examples")


@app.task(name="examples.noop")
async def noop(payload: Any) -> None:
    return None


@app.task(name="examples.io_wait")
async def io_wait(payload: dict[str, Any] | None) -> None:
    await asyncio.sleep(float((payload or {}).get("seconds", 0.05)))


@app.task(name="examples.slow")
async def slow(payload: dict[str, Any], ctx: TaskContext) -> dict[str, Any]:
    seconds = float(payload.get("seconds", 1.0))
    ctx.logger.info("sleeping %.1fs", seconds)
    await asyncio.sleep(seconds)
    return {"slept": seconds}


@app.task(name="examples.flaky", max_attempts=5)
async def flaky(payload: Any, ctx: TaskContext) -> dict[str, Any]:
    """Fails on attempts 1 and 2 (asking for a 0.2 s pause), succeeds on the third."""
    if ctx.attempt < 3:
        raise Retry(f"attempt {ctx.attempt} fails on purpose", after=0.2)
    return {"succeeded_on_attempt": ctx.attempt}


class PoisonError(RuntimeError):
    """What the poison task raises, every time."""


@app.task(name="examples.poison", max_attempts=3)
async def poison(payload: Any) -> None:
    raise PoisonError("this task always fails")


@app.task(name="examples.invalid")
async def invalid(payload: Any) -> None:
    raise NonRetryableError("the payload can never work: not retrying")


@app.task(name="examples.hash_file")
def hash_file(payload: dict[str, Any]) -> dict[str, Any]:
    """A blocking, CPU-bound plain function: runs in a thread (or a process)."""
    data = str(payload.get("text", "")).encode() * int(payload.get("repeat", 1))
    return {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}


@app.task(name="examples.sleepy", timeout=1.0)
def sleepy(payload: dict[str, Any]) -> dict[str, Any]:
    """Blocks ``payload["seconds"]``; over 1 s it times out (a thread is abandoned,
    a process killed)."""
    seconds = float(payload.get("seconds", 0.1))
    time.sleep(seconds)
    return {"slept": seconds}


@app.task(name="examples.blob")
async def blob(payload: dict[str, Any]) -> bytes:
    """A result of payload["size"] bytes (octet-stream): one copy, made here."""
    return b"\xab" * int(payload["size"])
@app.task(name="examples.progress")
async def progress(payload: dict[str, Any], ctx: TaskContext) -> dict[str, Any]:
    """``payload["steps"]`` steps of ``payload["pause"]`` seconds, each one reported."""
    steps, pause = int(payload.get("steps", 4)), float(payload.get("pause", 0.5))
    for step in range(1, steps + 1):
        await asyncio.sleep(pause)
        ctx.progress(step / steps, f"step {step} of {steps}")
    return {"steps": steps}
