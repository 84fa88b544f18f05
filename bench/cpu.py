"""CPU time of the processes of a rig, read from /proc: what one burst cost each part.

Each process is read from ``/proc/<pid>/stat``: user + system time of all its
threads (``utime``, ``stime``) plus that of its children it has already reaped
(``cutime``, ``cstime``), and the same for every live descendant (found through
the parent PID of every process in ``/proc``). So a Celery prefork worker counts
its pool processes, and a worker with ``--pool process`` its task processes,
whether they are still alive at the second reading or not. A descendant that
exited between the two readings and was not reaped by a process in the tree is
lost; none of the rigs here leaves its children unreaped.

``CpuMeter`` reads every role's processes at once; ``per_task_us`` turns two
readings into microseconds of CPU per task. The harness itself is the parent of
the rig's processes, so its own role counts only its own threads
(``tree=False``), not its children. The clock tick is 10 ms on Linux
(``SC_CLK_TCK`` 100): a burst of 10,000 tasks reads to 1 us per task.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

CLK_TCK = os.sysconf("SC_CLK_TCK")


def _read_stat(path: str) -> tuple[str, list[str]] | None:
    """(command name, the fields after it) of a ``stat`` file; None once it is gone."""
    try:
        with open(path, encoding="ascii", errors="replace") as handle:
            text = handle.read()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # the command name is in parentheses and may hold spaces or parentheses itself
    return text[text.index("(") + 1 : text.rindex(")")], text[text.rindex(")") + 2 :].split()


def _stat(pid: int) -> list[str] | None:
    """The fields of ``/proc/<pid>/stat`` after the command name; None once it is gone."""
    read = _read_stat(f"/proc/{pid}/stat")
    return read[1] if read is not None else None


# positions in the list _stat returns (field numbers of proc(5) minus 3)
_PPID, _UTIME, _STIME, _CUTIME, _CSTIME = 1, 11, 12, 13, 14


def _ticks(fields: list[str], reaped: bool = True) -> int:
    fields_used = (_UTIME, _STIME, _CUTIME, _CSTIME) if reaped else (_UTIME, _STIME)
    return sum(int(fields[i]) for i in fields_used)


def thread_seconds(pid: int) -> list[tuple[str, float]]:
    """(name, CPU seconds so far) of each live thread of a process; the kernel keeps
    the first 15 characters of a name. A thread that ends meanwhile is left out."""
    out = []
    for tid in os.listdir(f"/proc/{pid}/task"):
        read = _read_stat(f"/proc/{pid}/task/{tid}/stat")
        if read is not None:
            out.append((read[0], _ticks(read[1], reaped=False) / CLK_TCK))
    return out


def _children_by_parent() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        fields = _stat(int(entry))
        if fields is not None:
            children.setdefault(int(fields[_PPID]), []).append(int(entry))
    return children


def tree(pid: int, children: Mapping[int, list[int]] | None = None) -> list[int]:
    """``pid`` and all its live descendants."""
    children = children if children is not None else _children_by_parent()
    out, todo = [], [pid]
    while todo:
        current = todo.pop()
        out.append(current)
        todo.extend(children.get(current, ()))
    return out


def cpu_seconds(pids: Iterable[int], children: Mapping[int, list[int]] | None = None) -> float:
    """CPU seconds used so far by ``pids`` and their descendants (reaped ones included)."""
    children = children if children is not None else _children_by_parent()
    ticks = 0
    for root in pids:
        for pid in tree(root, children):
            fields = _stat(pid)
            if fields is not None:
                ticks += _ticks(fields)
    return ticks / CLK_TCK


def own_cpu_seconds(pid: int) -> float:
    """CPU seconds used so far by the threads of ``pid`` alone (no children)."""
    fields = _stat(pid)
    return 0.0 if fields is None else _ticks(fields, reaped=False) / CLK_TCK


@dataclass
class CpuMeter:
    """The processes of a rig by role (``"processor"``, ``"broker"``, ...)."""

    roles: dict[str, list[int]] = field(default_factory=dict)
    alone: dict[str, int] = field(default_factory=dict)

    def add(self, role: str, *pids: int) -> None:
        """``pids`` and their descendants count for ``role``."""
        self.roles.setdefault(role, []).extend(pids)

    def add_alone(self, role: str, pid: int) -> None:
        """Only the threads of ``pid`` count for ``role`` (the harness: its children are
        the rig)."""
        self.alone[role] = pid

    def read(self) -> dict[str, float]:
        """CPU seconds so far per role, and the wall clock (``"_wall"``)."""
        children = _children_by_parent()
        out = {role: cpu_seconds(pids, children) for role, pids in self.roles.items()}
        out.update({role: own_cpu_seconds(pid) for role, pid in self.alone.items()})
        out["_wall"] = time.monotonic()
        return out

    def per_task_us(self, before: Mapping[str, float], after: Mapping[str, float],
                    tasks: int) -> dict[str, float | None]:
        """Microseconds of CPU per task for each role between two readings; ``"total"``
        sums the rig's roles (not the harness's own); ``"_wall_s"`` is the time between."""
        out: dict[str, float | None] = {}
        total = 0.0
        for role, value in after.items():
            if role.startswith("_") or role not in before:
                continue
            used = value - before[role]
            if role not in self.alone:
                total += used
            out[role] = round(used / tasks * 1e6, 1) if tasks else None
        out["total"] = round(total / tasks * 1e6, 1) if tasks else None
        out["_wall_s"] = round(after["_wall"] - before["_wall"], 2)
        return out
