"""The task registry: which function runs a task name, on which queue, with which defaults.

A :class:`TaskRegistry` (alias :data:`TaskApp`) is a plain object you create in
your tasks module and pass to a :class:`~taskstream.workers.worker.Worker` (or
name with ``taskstream worker -A module:attr``). There is no global registry.

Handlers are coroutines or plain functions taking ``(payload)`` or
``(payload, ctx)``; which one is decided once, at registration. The decorator
returns the function unchanged, so it stays importable by name (a process pool
needs that) and callable in unit tests.
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
    ) -> Any:
        """Register a handler: ``@app.task`` or ``@app.task(name=..., queue=..., timeout=...)``.

        ``name`` defaults to ``module.qualname``; ``timeout`` is in seconds.
        """

        def register(func: Callable[..., Any]) -> Callable[..., Any]:
            self.add(func, name=name, queue=queue, timeout=timeout,
                     max_attempts=max_attempts, retry=retry)
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
