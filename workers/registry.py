"""The task registry: which function runs a task name, on which queue, with which defaults.

A :class:`TaskRegistry` (alias :data:`TaskApp`) is a plain object you create in
your tasks module and pass to a :class:`~taskstream.workers.worker.Worker` (or
name with ``taskstream worker -A module:attr``). There is no global registry.

Handlers are coroutines or plain functions taking ``(payload)`` or
``(payload, ctx)``; which one is decided once, at registration. A batch handler
(``@app.task(batch_size=100, batch_wait=0.05)``) takes ``(payloads)`` or
``(payloads, ctxs)``: lists, one entry per task, and returns one result per task
(an exception instance in the list fails that task alone; see workers/batch.py).
The decorator returns the function unchanged, so it stays importable by name (a
process pool needs that) and callable in unit tests.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar, overload

from taskstream.schemas.events import Backoff
from taskstream.topics import QUEUE_NAME
from taskstream.workers.errors import RegistrationError

F = TypeVar("F", bound=Callable[..., Any])

#: a batch waits this long for more tasks after its first, unless told otherwise
DEFAULT_BATCH_WAIT_S = 0.05
MAX_BATCH_SIZE = 10_000
MAX_BATCH_WAIT_S = 60.0


@dataclass(frozen=True, slots=True)
class TaskDef:
    """One registered task."""

    name: str
    fn: Callable[..., Any]
    queue: str = "default"
    timeout_s: float | None = None  # default when the ready record carries none
    max_attempts: int | None = None  # submission defaults, read by clients
    retry: Backoff | None = None
    is_coroutine: bool = False
    takes_context: bool = False
    batch_size: int | None = None  # a batch handler: up to this many tasks per call
    batch_wait_s: float = 0.0  # how long a batch waits to fill from its first task

    @property
    def is_batch(self) -> bool:
        return self.batch_size is not None

    @property
    def timeout_ms(self) -> int | None:
        return None if self.timeout_s is None else int(self.timeout_s * 1000)


def _takes_context(fn: Callable[..., Any], name: str) -> bool:
    """True for ``(payload, ctx)`` handlers, False for ``(payload)``."""
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError) as exc:
        raise RegistrationError(
            f"task {name!r}: cannot read the handler's signature: {exc}"
        ) from exc
    if any(p.kind is p.VAR_POSITIONAL for p in params):
        return True
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if not positional:
        raise RegistrationError(
            f"task {name!r}: a handler takes (payload) or (payload, ctx); "
            f"{getattr(fn, '__qualname__', fn)!r} takes no positional argument"
        )
    return len(positional) >= 2


class TaskRegistry:
    """Task names mapped to handlers. Create one per tasks module."""

    def __init__(self, name: str = "taskstream") -> None:
        self.name = name
        self._tasks: dict[str, TaskDef] = {}

    @overload
    def task(self, fn: F, /) -> F: ...  # bare @app.task

    @overload
    def task(
        self,
        fn: None = None,
        /,
        *,
        name: str | None = None,
        queue: str = "default",
        timeout: float | None = None,
        max_attempts: int | None = None,
        retry: Backoff | None = None,
        batch_size: int | None = None,
        batch_wait: float = DEFAULT_BATCH_WAIT_S,
    ) -> Callable[[F], F]: ...

    def task(
        self,
        fn: Callable[..., Any] | None = None,
        /,
        *,
        name: str | None = None,
        queue: str = "default",
        timeout: float | None = None,
        max_attempts: int | None = None,
        retry: Backoff | None = None,
        batch_size: int | None = None,
        batch_wait: float = DEFAULT_BATCH_WAIT_S,
    ) -> Any:
        """Register a handler: ``@app.task`` or ``@app.task(name=..., queue=..., timeout=...)``.

        ``name`` defaults to ``module.qualname``; ``timeout`` and ``batch_wait`` are in
        seconds. ``batch_size`` makes it a batch handler (module docstring).
        """

        def register(func: Callable[..., Any]) -> Callable[..., Any]:
            self.add(func, name=name, queue=queue, timeout=timeout,
                     max_attempts=max_attempts, retry=retry, batch_size=batch_size,
                     batch_wait=batch_wait)
            return func

        return register(fn) if fn is not None else register

    def add(
        self,
        fn: Callable[..., Any],
        *,
        name: str | None = None,
        queue: str = "default",
        timeout: float | None = None,
        max_attempts: int | None = None,
        retry: Backoff | None = None,
        batch_size: int | None = None,
        batch_wait: float = DEFAULT_BATCH_WAIT_S,
    ) -> TaskDef:
        """Register ``fn`` (the decorator's work, callable directly)."""
        task_name = name or f"{fn.__module__}.{fn.__qualname__}"
        if not QUEUE_NAME.match(queue):
            raise RegistrationError(
                f"task {task_name!r}: queue {queue!r} is not a legal queue name "
                "(1-64 letters, digits, '_' or '-')"
            )
        if timeout is not None and timeout <= 0:
            raise RegistrationError(f"task {task_name!r}: timeout must be > 0 seconds")
        if max_attempts is not None and max_attempts < 1:
            raise RegistrationError(f"task {task_name!r}: max_attempts must be >= 1")
        if batch_size is not None and not 1 <= batch_size <= MAX_BATCH_SIZE:
            raise RegistrationError(
                f"task {task_name!r}: batch_size must be 1 to {MAX_BATCH_SIZE}; got {batch_size}")
        if not 0 <= batch_wait <= MAX_BATCH_WAIT_S:
            raise RegistrationError(
                f"task {task_name!r}: batch_wait must be 0 to {MAX_BATCH_WAIT_S:g} seconds "
                f"(tasks wait that long unstarted, with no lease); got {batch_wait!r}")
        existing = self._tasks.get(task_name)
        if existing is not None and existing.fn is not fn:
            raise RegistrationError(
                f"task name {task_name!r} is already registered to "
                f"{existing.fn.__module__}.{existing.fn.__qualname__}; pick another name="
            )
        definition = TaskDef(
            name=task_name,
            fn=fn,
            queue=queue,
            timeout_s=timeout,
            max_attempts=max_attempts,
            retry=retry,
            is_coroutine=inspect.iscoroutinefunction(fn),
            takes_context=_takes_context(fn, task_name),
            batch_size=batch_size,
            batch_wait_s=batch_wait,
        )
        self._tasks[task_name] = definition
        return definition

    def get(self, name: str) -> TaskDef | None:
        return self._tasks.get(name)

    def __contains__(self, name: object) -> bool:
        return name in self._tasks

    def __iter__(self) -> Iterator[TaskDef]:
        return iter(list(self._tasks.values()))

    def __len__(self) -> int:
        return len(self._tasks)

    def names(self) -> list[str]:
        return sorted(self._tasks)

    def queues(self) -> list[str]:
        """The queues the registered tasks use, sorted."""
        return sorted({t.queue for t in self._tasks.values()})


#: The name the README uses: ``app = TaskApp()`` in a tasks module.
TaskApp = TaskRegistry
