"""What a handler knows about the attempt it is running: :class:`TaskContext`."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator, Mapping, MutableMapping
from typing import Any, NamedTuple

from taskstream.telemetry.logs import TaskLogContext
from taskstream.workers.errors import WorkerError

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


class ParentResults(Mapping[str, Any]):
    """``ctx.parent_results``: each parent's result, fetched from the API on first read.

    Results are not carried in the dispatch record nor in any state (docs/decisions.md,
    D37): the dispatch lists the parents, and a parent's result is read from the API
    when the handler first asks for it (then kept for the attempt). A parent that is a
    group (``group:<id>``) maps to the list of its members' results, in slot order.
    A parent that did not succeed (``on_parent_failure="run"``) maps to None.
    """

    def __init__(self, parents: tuple[str, ...], fetch: Callable[[str], Any] | None) -> None:
        self._parents = parents
        self._fetch = fetch
        self._cache: dict[str, Any] = {}

    def __getitem__(self, parent: str) -> Any:
        if parent not in self._parents:
            raise KeyError(parent)
        if parent not in self._cache:
            if self._fetch is None:
                raise WorkerError(
                    "this worker cannot fetch parent results: it has no API to ask (set "
                    "TASKSTREAM_API_URL; a process-pool child cannot fetch, read them in the "
                    "parent process or use pool='thread')")
            self._cache[parent] = self._fetch(parent)
        return self._cache[parent]

    def __iter__(self) -> Iterator[str]:
        return iter(self._parents)

    def __len__(self) -> int:
        return len(self._parents)


#: the longest progress note sent (the fold keeps 200 characters)
MAX_NOTE = 200


def check_progress(fraction: float, note: str) -> tuple[float, str]:
    """(fraction, note) as sent; ValueError for a fraction outside 0..1 or not a number."""
    if isinstance(fraction, bool) or not isinstance(fraction, int | float):
        raise TypeError(f"progress fraction must be a number in 0..1, got {fraction!r}")
    value = float(fraction)
    if math.isnan(value) or not 0.0 <= value <= 1.0:
        raise ValueError(f"progress fraction must be within 0..1, got {fraction!r}")
    return value, str(note)[:MAX_NOTE]


class FencingToken(NamedTuple):
    """What a handler passes to the systems it writes to, so they can refuse a stale writer.

    A handler whose lease lapsed may still be running while the next attempt (or, with a
    concurrency key, the next holder of the key) already runs: a concurrency key guards
    the *dispatch*, it cannot stop a process it no longer hears from. ``sequence`` is the
    key's grant number and grows with every holder of the key; a store that remembers the
    highest sequence it saw and refuses lower ones keeps a late writer out. Without a key
    ``sequence`` is 0 and (``attempt``, ``dispatch_id``) identify the attempt.
    docs/flow-control.md says more.
    """

    sequence: int
    attempt: int
    dispatch_id: str
    key: str | None = None


class TaskContext:
    """The second argument of ``(payload, ctx)`` handlers.

    ``task_id``, ``attempt`` and ``idempotency_key`` let a handler make its side
    effects idempotent (execution is at-least-once). ``heartbeat()`` renews the
    lease now (the runtime also renews it every ``lease_ms / 3``). ``cancelled``
    turns true when the task is cancelled while running: coroutines are also
    interrupted with ``CancelledError``; a thread can only check this flag.
    ``fencing_token`` guards side effects against a stale attempt (issue 16), and
    ``progress(fraction, note)`` reports how far it has come (throttled; shown by
    ``taskstream status`` and the API).
    """

    __slots__ = ("_cancelled", "_fencing_token", "_fetch_result", "_heartbeat", "_logger",
                 "_parent_results", "_progress", "attempt", "dispatch_id", "headers",
                 "idempotency_key", "name", "parents", "queue", "task_id")

    def __init__(
        self,
        *,
        task_id: str,
        attempt: int,
        name: str = "",
        idempotency_key: str | None = None,
        headers: Mapping[str, str] | None = None,
        heartbeat: Callable[[], None] | None = None,
        parents: tuple[str, ...] | list[str] = (),
        fetch_result: Callable[[str], Any] | None = None,
        dispatch_id: str = "",
        fencing_token: FencingToken | None = None,
        progress: Callable[[float, str], object] | None = None,
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
        self.parents = tuple(parents)
        self._fetch_result = fetch_result
        self._parent_results: ParentResults | None = None
        self.dispatch_id = dispatch_id
        self._fencing_token = fencing_token
        self._progress = progress

    @property
    def parent_results(self) -> ParentResults:
        """Each parent's result (``depends_on``), fetched when first read (D37)."""
        if self._parent_results is None:  # made when first used (the worker's hot path)
            self._parent_results = ParentResults(self.parents, self._fetch_result)
        return self._parent_results

    @property
    def fencing_token(self) -> FencingToken:
        """What a handler passes to the systems it writes to (D32; :class:`FencingToken`)."""
        if self._fencing_token is None:
            self._fencing_token = FencingToken(0, self.attempt, self.dispatch_id)
        return self._fencing_token

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

    def progress(self, fraction: float, note: str = "") -> None:
        """Report how far this attempt has come: ``fraction`` in 0..1 and a short note.

        At most one report a second leaves the worker (and always 1.0); the task's
        state keeps the newest. A no-op inside a process-pool child. ValueError for a
        fraction outside 0..1.
        """
        check_progress(fraction, note)
        if self._progress is not None:
            self._progress(fraction, note)

    def __getstate__(self) -> dict[str, Any]:
        # a process-pool child gets the plain facts; it cannot reach the producer
        return {"task_id": self.task_id, "attempt": self.attempt, "name": self.name,
                "idempotency_key": self.idempotency_key, "headers": self.headers,
                "parents": self.parents, "dispatch_id": self.dispatch_id,
                "fencing_token": self.fencing_token, "queue": self.queue}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(**state)  # type: ignore[misc]

    def __repr__(self) -> str:
        return f"TaskContext(task_id={self.task_id!r}, attempt={self.attempt})"
