"""How busy the machine is, for ``--concurrency auto`` (workers/autoscale.py, D40).

Linux: CPU use from ``/proc/stat`` (the share of non-idle time since the last
reading, all CPUs together), available memory from ``/proc/meminfo``
(``MemAvailable / MemTotal``). Elsewhere: the 1-minute load average over the CPU
count, and memory taken as plentiful. Readings never raise: an unreadable file
counts as "room", so a worker never shrinks for lack of a number.
"""

from __future__ import annotations

import os
from pathlib import Path

_STAT = Path("/proc/stat")
_MEMINFO = Path("/proc/meminfo")


def _cpu_times() -> tuple[int, int] | None:
    """(busy, total) jiffies of all CPUs; None when /proc/stat is not readable."""
    try:
        first = _STAT.read_text().split("\n", 1)[0].split()
    except OSError:
        return None
    if not first or first[0] != "cpu":
        return None
    values = [int(v) for v in first[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
    total = sum(values[:8])  # guest time is already counted in user time
    return total - idle, total


class MachineLoad:
    """Readings between two calls of :meth:`cpu_busy`."""

    def __init__(self) -> None:
        self._last = _cpu_times()

    def cpu_busy(self) -> float:
        """CPU use (0..1) since the previous call."""
        now = _cpu_times()
        last, self._last = self._last, now
        if now is None or last is None:
            try:
                return min(1.0, os.getloadavg()[0] / (os.cpu_count() or 1))
            except OSError:
                return 0.0
        busy, total = now[0] - last[0], now[1] - last[1]
        return 0.0 if total <= 0 else max(0.0, min(1.0, busy / total))

    @staticmethod
    def mem_available() -> float:
        """MemAvailable / MemTotal (0..1); 1.0 when unknown."""
        try:
            fields = dict(line.split(":", 1) for line in _MEMINFO.read_text().splitlines()
                          if ":" in line)
            total = int(fields["MemTotal"].split()[0])
            available = int(fields["MemAvailable"].split()[0])
        except (OSError, KeyError, ValueError, IndexError):
            return 1.0
        return 1.0 if total <= 0 else max(0.0, min(1.0, available / total))
