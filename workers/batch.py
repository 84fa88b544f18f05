"""Batch handlers: many tasks in one call, each task still its own outcome (D39).

``@app.task(batch_size=100, batch_wait=0.05)`` registers a handler that takes a
list of payloads (and, if it asks, the list of their contexts). The worker
collects the ready records of that task name until ``batch_size`` are in hand or
``batch_wait`` has passed since the first one, then starts them together: a
``TaskStarted`` per task, one handler call, a ``TaskSucceeded`` or ``TaskFailed``
per task. A batch is one slot of the worker's concurrency.

How a batch handler reports per task: it returns a list (or tuple) with one
entry per payload, in order. An entry that is an exception *instance* fails that
task alone, as if a plain handler had raised it (``Retry(after=...)`` retries it,
``NonRetryableError`` ends it DEAD, anything else is a retryable failure); any
other entry is that task's result. A handler that raises fails every task of the
batch with that error. A return value that is not a list of the right length
fails every task, not retryable (a bug a retry would repeat).

What a batch does not change: each task keeps its own attempt, lease, timeout,
retry budget and fencing. A failed task comes back as a new dispatch and may
meet other tasks in its next batch; nothing else in its first batch runs again.

This module is pure: the :class:`Batcher` that holds unstarted records until
their batch is due, and :func:`batch_outcomes`, which turns a handler's return
value into outcomes (it runs in a process-pool child too, so it pickles).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from taskstream.workers.outcome import Failure, Outcome, encode_result, failure_from_exception

T = TypeVar("T")


@dataclass
class _Pending(Generic[T]):
    size: int
    due_at: float
    items: list[T] = field(default_factory=list)


class Batcher(Generic[T]):
    """Unstarted items per batch key (the task name), released when full or due.

    Times are whatever clock the caller passes (the worker uses ``time.monotonic``).
    """

    def __init__(self) -> None:
        self._pending: dict[str, _Pending[T]] = {}

    def add(self, key: str, item: T, now: float, *, size: int, wait_s: float) -> None:
        pending = self._pending.get(key)
        if pending is None:
            pending = self._pending[key] = _Pending(size=max(1, size), due_at=now + wait_s)
        pending.items.append(item)

    def pop_due(self, now: float) -> tuple[str, list[T]] | None:
        """A batch that is full or whose wait has passed (full ones first); None if none."""
        due: str | None = None
        for key, pending in self._pending.items():
            if len(pending.items) >= pending.size:
                due = key
                break
            if pending.due_at <= now and (due is None or
                                          pending.due_at < self._pending[due].due_at):
                due = key
        if due is None:
            return None
        pending = self._pending[due]
        taken, rest = pending.items[:pending.size], pending.items[pending.size:]
        if rest:
            pending.items = rest
        else:
            del self._pending[due]
        return due, taken

    def seconds_to_due(self, now: float) -> float | None:
        """Time until the next batch is due (0 when one is due now); None when none waits."""
        if not self._pending:
            return None
        if any(len(p.items) >= p.size for p in self._pending.values()):
            return 0.0
        return max(0.0, min(p.due_at for p in self._pending.values()) - now)

    def drain(self) -> list[T]:
        """Every item held, the batches forgotten (shutdown: they were never started)."""
        items = [item for pending in self._pending.values() for item in pending.items]
        self._pending.clear()
        return items

    def __len__(self) -> int:
        return sum(len(p.items) for p in self._pending.values())

    def __iter__(self) -> Iterator[T]:
        return iter([item for pending in self._pending.values() for item in pending.items])


def batch_outcomes(value: Any, count: int) -> list[Outcome]:
    """A batch handler's return value as one outcome per task (module docstring)."""
    if not isinstance(value, list | tuple) or len(value) != count:
        shown = f"a {type(value).__name__}" if not isinstance(value, list | tuple) else (
            f"{len(value)} entries")
        failure = Failure(
            "BatchResultError",
            f"a batch handler must return a list with one entry per payload ({count}); "
            f"it returned {shown}",
            retryable=False,
        )
        return [failure] * count
    return [failure_from_exception(entry) if isinstance(entry, BaseException)
            else encode_result(entry) for entry in value]


def whole_batch(outcome: Outcome, count: int) -> list[Outcome]:
    """One outcome for every task of a batch (the handler raised, timed out, was killed)."""
    return [outcome] * count


__all__ = ["Batcher", "batch_outcomes", "whole_batch"]
