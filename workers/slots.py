"""The worker's concurrency slots: a semaphore whose size can change while it is held.

``asyncio.Semaphore`` has a fixed size; ``--concurrency auto`` moves it every
tick (workers/autoscale.py). Lowering the limit never interrupts a running
attempt: the slots in use above the new limit are simply not handed out again
until enough of them are released. One waiter (the dispatcher) at a time.
"""

from __future__ import annotations

import asyncio


class Slots:
    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"a worker needs at least one slot; got {limit}")
        self._limit = limit
        self._used = 0
        self._changed = asyncio.Event()

    @property
    def limit(self) -> int:
        return self._limit

    @property
    def in_use(self) -> int:
        return self._used

    def set_limit(self, limit: int) -> None:
        self._limit = max(1, limit)
        self._changed.set()

    async def acquire(self) -> None:
        while self._used >= self._limit:
            self._changed.clear()
            await self._changed.wait()
        self._used += 1

    def release(self) -> None:
        self._used = max(0, self._used - 1)
        self._changed.set()
