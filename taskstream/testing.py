"""Run tasks in-process, without Kafka: the eager mode for users' unit tests.

Like Celery's ``task_always_eager``, but it keeps what makes taskstream's handlers
behave in production, so a test that passes here does not lie:

* the task is checked exactly as ``TaskProducer.submit`` checks it (``TaskSpec``:
  name, queue, priority, payload size, tags, ``depends_on``), and its payload
  travels as bytes (JSON in, JSON out) so a non-JSON payload or result fails as it
  would on a worker;
* the handler gets a real :class:`TaskContext` (task ID, attempt, idempotency
  key, headers) and runs through the worker's own ``execute`` /
  ``execute_batch`` (same timeouts, same mapping of ``Retry``,
  ``NonRetryableError`` and other exceptions to outcomes);
* a retryable failure runs the next attempt at once (no backoff wait; a
  ``Retry(after=...)`` delay is recorded, not slept), up to ``max_attempts``;
  then the task is DEAD;
* an idempotency key gives the task ID the SDK would derive, and a second
  submit with it returns the first task (it does not run again);
* ``depends_on`` makes a graph: a task runs once every parent has SUCCEEDED,
  parents first (the order of submission decides among ready tasks); a parent
  that ends DEAD or CANCELLED cancels its dependents, with the reason; an unknown
  parent ID leaves the task WAITING;
* a batch task (``batch_size``) is called with a batch of one per task;
* a handler may submit more tasks through the runner (pass it in as you would a
  ``TaskProducer``): they run before its own call returns.

What it leaves out, on purpose: delays, ETAs and priorities (everything runs at
once, in submission order), leases, routing (queues and tags are checked, not
used) and concurrency. Use the real broker (``taskstream dev``) for those.

::

    from taskstream.testing import EagerRunner
    from myapp.tasks import app

    def test_resize() -> None:
        runner = EagerRunner(app)
        a = runner.submit("myapp.fetch", {"url": "https://x/y.png"})
        b = runner.submit("myapp.resize", {"size": 64}, depends_on=[a.task_id])
        assert b.result() == {"done": 64}
        assert runner.calls("myapp.resize") == 1

Handlers run in the calling thread's turn: coroutine handlers on a private
event loop (in a helper thread when the caller is itself inside a running loop,
so ``async`` tests work too).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Coroutine, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from taskstream.producer.errors import ResultTimeoutError, TaskCancelledError, TaskFailedError
from taskstream.schemas.events import TaskDispatched
from taskstream.schemas.ids import derived_task_id, new_task_id
from taskstream.schemas.models import TaskSpec
from taskstream.schemas.state import TaskStatus
from taskstream.workers.context import TaskContext
from taskstream.workers.outcome import Failure, Outcome, Success, decode_payload
from taskstream.workers.registry import TaskDef, TaskRegistry
from taskstream.workers.runtime import Pool, execute, execute_batch

T = TypeVar("T")


@dataclass
class EagerHandle:
    """One task run eagerly: its state, attempts, result or error."""

    task_id: str
    name: str
    spec: TaskSpec
    status: TaskStatus = TaskStatus.READY
    attempt: int = 0
    outcome: Outcome | None = None
    failures: list[Failure] = field(default_factory=list)
    cancel_reason: str = ""

    @property
    def error(self) -> Failure | None:
        """The last failure, if any."""
        return self.failures[-1] if self.failures else None

    def result(self, timeout: float = 0.0) -> Any:
        """What ``TaskHandle.result()`` would return: the decoded result of a SUCCEEDED task;
        TaskFailedError when DEAD, TaskCancelledError when CANCELLED, ResultTimeoutError
        while it still waits for a parent (``timeout`` is accepted and ignored)."""
        if self.status is TaskStatus.SUCCEEDED and isinstance(self.outcome, Success):
            return decode_payload(self.outcome.result, self.outcome.content_type)
        if self.status is TaskStatus.DEAD:
            last = self.error
            raise TaskFailedError(self.task_id, None if last is None else {
                "error_type": last.error_type, "message": last.message,
                "traceback": last.traceback, "attempt": self.attempt,
                "timed_out": last.timed_out})
        if self.status is TaskStatus.CANCELLED:
            raise TaskCancelledError(self.task_id, self.cancel_reason)
        raise ResultTimeoutError(self.task_id, timeout, self.status.value)


class EagerRunner:
    """Runs the handlers of ``app`` in this process (module docstring)."""

    def __init__(self, app: TaskRegistry, *, pool: Pool | str = Pool.THREAD) -> None:
        self.app = app
        self.pool = Pool(pool)
        self.tasks: dict[str, EagerHandle] = {}
        self._calls: dict[str, int] = {}
        self._waiting: list[str] = []  # submission order

    # -- submitting ----------------------------------------------------------------------

    def submit(self, name: str, payload: Any = None, **options: Any) -> EagerHandle:
        """Check the task like ``TaskProducer.submit``, then run it (and whatever waited on
        it) now, unless a parent has not succeeded yet. InvalidSpecError for a bad task."""
        spec = TaskSpec.build(name=name, payload=payload, **options)
        handle = self._add(spec)
        self._run_ready()
        return handle

    def submit_many(self, specs: Iterable[TaskSpec | Mapping[str, Any]]) -> list[EagerHandle]:
        """Like ``TaskProducer.submit_many``: every spec is checked before any runs, so a
        graph submitted in one call may list a child before its parent."""
        built = [s if isinstance(s, TaskSpec) else TaskSpec.build(**s) for s in specs]
        handles = [self._add(spec) for spec in built]
        self._run_ready()
        return handles

    def _add(self, spec: TaskSpec) -> EagerHandle:
        key = spec.idempotency_key
        task_id = derived_task_id(spec.name, key) if key is not None else new_task_id()
        existing = self.tasks.get(task_id)
        if existing is not None:
            return existing  # a duplicate meets the first submission and is not run again
        handle = self.tasks[task_id] = EagerHandle(task_id, spec.name, spec)
        if spec.depends_on:
            handle.status = TaskStatus.WAITING
        self._waiting.append(task_id)
        return handle

    # -- running --------------------------------------------------------------------------

    def calls(self, name: str) -> int:
        """How many times the handler of ``name`` was called (attempts, or batch calls)."""
        return self._calls.get(name, 0)

    def _run_ready(self) -> None:
        """Run every task whose parents have all succeeded; cancel those with a failed
        parent; repeat until nothing changes."""
        progress = True
        while progress:
            progress = False
            for task_id in list(self._waiting):
                if task_id not in self._waiting:
                    continue  # a handler's own submit ran it meanwhile
                handle = self.tasks[task_id]
                verdict = self._parents(handle)
                if verdict == "wait":
                    continue
                self._waiting.remove(task_id)
                progress = True
                if verdict == "cancel":
                    continue
                self._run(handle)

    def _parents(self, handle: EagerHandle) -> str:
        for parent_id in handle.spec.depends_on:
            parent = self.tasks.get(parent_id)
            if parent is None or not parent.status.terminal:
                return "wait"
            if parent.status is not TaskStatus.SUCCEEDED:
                handle.status = TaskStatus.CANCELLED
                handle.cancel_reason = f"parent {parent_id} ended {parent.status.value}"
                return "cancel"
        return "run"

    def _run(self, handle: EagerHandle) -> None:
        task = self.app.get(handle.name)
        spec = handle.spec
        for attempt in range(1, spec.max_attempts + 1):
            handle.attempt, handle.status = attempt, TaskStatus.RUNNING
            outcome = self._attempt(task, handle, attempt) if task is not None else Failure(
                "UnknownTask", f"no handler is registered for task {handle.name!r} in "
                f"{self.app.name!r} (registered: {', '.join(self.app.names()) or 'none'})",
                retryable=False)
            handle.outcome = outcome
            if isinstance(outcome, Success):
                handle.status = TaskStatus.SUCCEEDED
                return
            handle.failures.append(outcome)
            if not outcome.retryable:
                break
        handle.status = TaskStatus.DEAD

    def _attempt(self, task: TaskDef, handle: EagerHandle, attempt: int) -> Outcome:
        spec = handle.spec
        dispatched = TaskDispatched(
            dispatch_id=f"eager:{handle.task_id}:{attempt}", name=spec.name, queue=spec.queue,
            priority=spec.priority, payload=spec.payload_bytes,
            content_type=spec.resolved_content_type,
            timeout_ms=None if spec.timeout is None else round(spec.timeout * 1000),
            lease_ms=round(spec.lease * 1000), max_attempts=spec.max_attempts,
            submitted_at_ms=int(time.time() * 1000), idempotency_key=spec.idempotency_key,
            headers=dict(spec.headers))
        ctx = TaskContext(task_id=handle.task_id, attempt=attempt, name=spec.name,
                          idempotency_key=spec.idempotency_key, headers=spec.headers)
        self._calls[task.name] = self._calls.get(task.name, 0) + 1
        if task.is_batch:
            return _run_coroutine(execute_batch(task, [dispatched], [ctx], self.pool))[0]
        return _run_coroutine(execute(task, dispatched, ctx, self.pool))


def _run_coroutine(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to the end from sync code, inside a running loop or not."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = asyncio.run(coro)
        except BaseException as exc:  # handed back to the caller's thread
            box["error"] = exc

    thread = threading.Thread(target=target, name="taskstream-eager")
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    value: T = box["value"]
    return value


__all__ = ["EagerHandle", "EagerRunner"]
