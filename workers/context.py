"""What a handler knows about the attempt it is running: :class:`TaskContext`."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, MutableMapping
from typing import Any

from taskstream.telemetry.logs import TaskLogContext

_TASK_LOG = logging.getLogger("taskstream.task")


class TaskLogger(logging.LoggerAdapter[logging.Logger]):
    """A handler's logger: every line carries its task's ``task_id``, ``attempt``, ``queue``
    and ``trace_id`` as record fields (JSON logs show them as keys, text logs append them:
    taskstream/telemetry/logs.py), wherever the handler runs, a process-pool child too."""

    def process(
        self, msg: Any, kwargs: MutableMapping[str, Any]
    ) -> tuple[Any, MutableMapping[str, Any]]:
        kwargs["extra"] = {**(self.extra or {}), **kwargs.get("extra", {})}
        return msg, kwargs


class TaskContext:
    """The second argument of ``(payload, ctx)`` handlers.

    ``task_id``, ``attempt`` and ``idempotency_key`` let a handler make its side
    effects idempotent (execution is at-least-once). ``heartbeat()`` renews the
    lease now (the runtime also renews it every ``lease_ms / 3``). ``cancelled``
    turns true when the task is cancelled while running: coroutines are also
    interrupted with ``CancelledError``; a thread can only check this flag.
    """

    __slots__ = ("_cancelled", "_heartbeat", "_logger", "attempt", "headers",
                 "idempotency_key", "name", "queue", "task_id")

    def __init__(
        self,
        *,
        task_id: str,
        attempt: int,
        name: str = "",
        idempotency_key: str | None = None,
        headers: Mapping[str, str] | None = None,
        heartbeat: Callable[[], None] | None = None,
        queue: str = "",
    ) -> None:
        self.task_id = task_id
        self.attempt = attempt
        self.name = name
        self.queue = queue
        self.idempotency_key = idempotency_key
        self.headers: dict[str, str] = dict(headers or {})
        self._logger: TaskLogger | None = None
        self._heartbeat = heartbeat
        self._cancelled = False

    @property
    def logger(self) -> TaskLogger:
        """A logger that adds the task's fields (task_id, attempt, queue, task name; made
        when first used)."""
        if self._logger is None:
            self._logger = TaskLogger(_TASK_LOG, TaskLogContext(
                self.task_id, self.attempt, self.queue, self.name).fields())
        return self._logger

    @property
    def cancelled(self) -> bool:
        return self._cancelled

    def mark_cancelled(self) -> None:
        """Called by the runtime when a cancellation for this task arrives."""
        self._cancelled = True

    def heartbeat(self) -> None:
        """Emit a LeaseRenewed for this attempt now (a no-op inside a process-pool child,
        whose lease the parent renews)."""
        if self._heartbeat is not None:
            self._heartbeat()

    def __getstate__(self) -> dict[str, Any]:
        # a process-pool child gets the plain facts; it cannot reach the producer
        return {"task_id": self.task_id, "attempt": self.attempt, "name": self.name,
                "idempotency_key": self.idempotency_key, "headers": self.headers,
                "queue": self.queue}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(**state)  # type: ignore[misc]

    def __repr__(self) -> str:
        return f"TaskContext(task_id={self.task_id!r}, attempt={self.attempt})"
