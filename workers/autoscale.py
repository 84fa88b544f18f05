"""``--concurrency auto``: how many attempts a worker runs at once, decided each tick (D40).

A pure controller, fed once a second with what the worker sees:

* ``waiting``: ready records it could start now (buffered, held for a batch, or
  lag on its assigned partitions);
* ``in_use``: slots busy;
* ``cpu_busy`` and ``mem_available``: the machine's CPU use over the last tick and
  the fraction of memory still available (workers/machine.py reads them).

Rules, in order:

1. **No room** (CPU at or above ``cpu_ceiling``, or memory below ``mem_floor``)
   while every slot is busy: shrink by an eighth (at least 1). More attempts
   would only queue for the CPU, or swap.
2. **Saturated** (every slot busy and records waiting) with room: grow by half
   (at least 1). An I/O-bound handler leaves the CPU idle, so it grows to the
   upper bound; a CPU-bound one stops where the machine is full.
3. **Idle** (fewer than half the slots busy and nothing waiting) for
   ``idle_ticks`` ticks in a row: shrink by a quarter (at least 1), never below
   twice what is in use.
4. Otherwise keep the limit.

The limit always stays within ``[low, high]``. Growing fast and shrinking slowly
is deliberate: a backlog costs latency now, an idle slot costs only a little
memory.
"""

from __future__ import annotations

from dataclasses import dataclass

from taskstream.workers.errors import WorkerError

#: seconds between two decisions
TICK_S = 1.0
DEFAULT_LOW = 2
DEFAULT_HIGH = 64


@dataclass(frozen=True, slots=True)
class Sample:
    waiting: int
    in_use: int
    cpu_busy: float  # 0..1, the whole machine over the last tick
    mem_available: float  # 0..1


@dataclass(frozen=True, slots=True)
class Bounds:
    low: int = DEFAULT_LOW
    high: int = DEFAULT_HIGH

    def __post_init__(self) -> None:
        if not 1 <= self.low <= self.high:
            raise WorkerError(f"auto concurrency bounds must satisfy 1 <= low <= high; got "
                              f"low={self.low}, high={self.high}")

    def clamp(self, value: int) -> int:
        return max(self.low, min(self.high, value))


class AutoConcurrency:
    """The limit, and the rule that moves it (module docstring)."""

    def __init__(self, bounds: Bounds, *, start: int | None = None, cpu_ceiling: float = 0.85,
                 mem_floor: float = 0.10, idle_ticks: int = 5) -> None:
        self.bounds = bounds
        self.limit = bounds.clamp(bounds.low if start is None else start)
        self.cpu_ceiling = cpu_ceiling
        self.mem_floor = mem_floor
        self.idle_ticks = max(1, idle_ticks)
        self._idle = 0

    def step(self, sample: Sample) -> int:
        """One tick: the new limit."""
        busy = sample.in_use >= self.limit
        room = sample.cpu_busy < self.cpu_ceiling and sample.mem_available > self.mem_floor
        idle = sample.waiting <= 0 and sample.in_use * 2 < self.limit
        self._idle = self._idle + 1 if idle else 0
        if busy and not room:
            self.limit = self.bounds.clamp(self.limit - max(1, self.limit // 8))
        elif busy and sample.waiting > 0:
            self.limit = self.bounds.clamp(self.limit + max(1, self.limit // 2))
        elif self._idle >= self.idle_ticks:
            self._idle = 0
            target = max(self.limit - max(1, self.limit // 4), 2 * sample.in_use)
            self.limit = self.bounds.clamp(min(self.limit, target))
        return self.limit


def parse_concurrency(raw: str) -> int | None:
    """``--concurrency``: a number, or ``auto`` (returned as None)."""
    text = raw.strip().lower()
    if text == "auto":
        return None
    if text.isascii() and text.isdigit() and int(text) >= 1:
        return int(text)
    raise WorkerError(f"--concurrency takes a number >= 1 or 'auto'; got {raw!r}")
