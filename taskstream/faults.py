"""Named fault points: where a test, or the fault harness, breaks a process on purpose.

Code that performs a dangerous step calls ``fault_point("<name>")`` right after it.
Unarmed, that is one lookup in an empty mapping. Armed through the environment of
the process (so a test arms a replica it runs as a subprocess, and the fault
harness arms any process it starts)::

    TASKSTREAM_FAULTS="fold.after_state_write=kill@3; queue.create_topics=sleep:30"

Each entry is ``<point>=<action>[@<hits>]``:

* actions: ``kill`` (SIGKILL itself: nothing is flushed, nothing cleaned up, as
  if the machine lost power under the process), ``stop`` (SIGSTOP itself, a
  zombie until someone sends SIGCONT), ``sleep:<seconds>`` (the calling thread
  stalls, as on a slow broker call), ``raise:<Class>`` or
  ``raise:<module>:<Class>`` (the class is built with a message naming the point;
  a bare name is looked up in :mod:`taskstream.errors`);
* hits: ``N`` fires on the Nth call only (the default is 1), ``N+`` on every
  call from the Nth on, ``N-M`` on calls N to M.

A fault that fires writes ``taskstream fault: <point> hit <n>: <action>`` to
stderr first, so a test can tell that the fault it armed did happen. Points are
named in :data:`POINTS`; arming a name not there is refused at start-up (a typo
would otherwise never fire and the test would prove nothing). The names outlive
the code that calls them: the processor rewrite (issue 12) calls the same points
at the same steps, and the fault harness (issue 21) arms them.
"""

from __future__ import annotations

import importlib
import itertools
import os
import signal
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

from taskstream.errors import ConfigError

ENV = "TASKSTREAM_FAULTS"

#: every fault point, with the step it follows (docs/decisions.md, D20)
POINTS: Mapping[str, str] = {
    "fold.after_state_write":
        "a task's new state is in the local RocksDB; its changelog record is not sent yet",
    "fold.after_changelog_send":
        "the open window's changelog records are handed to the producer; the batch's "
        "effects not sent yet (D50)",
    "fold.window_open":
        "a batch's effects are acknowledged; its changelog records wait in the open "
        "window, its offsets are not committed (D50)",
    "fold.after_effect_send":
        "an effect (dispatch, dead letter, cancellation, quarantine copy) is handed to "
        "the producer, not yet acknowledged",
    "fold.consume":
        "the fold's consumer thread is about to wait for records (its loop waits on it: "
        "``sleep`` here stalls the fold while the replica stays up, issue 21)",
    "fold.after_fold":
        "a batch is folded in memory; nothing of it is written yet (``stop`` here makes "
        "a zombie that wakes with the batch in hand, issue 21)",
    "commit.before":
        "the processor is about to commit its events offsets",
    "queue.create_topics":
        "a queue is about to get its topics made (its registration: topics create, "
        "POST /queues, a replica's start-up)",
    "queue.look_up":
        "the fold is about to read the queue registry for a queue it has not seen "
        "registered (off the fold; its dispatches wait)",
    "fold.start":
        "a replica's tables are restored; its fold is about to start (off the event loop: "
        "a sleep here is a replica that lags while its API serves)",
    "api.list_scan":
        "a listing is about to scan this replica's partitions",
    "worker.consumer_loop":
        "a worker's queue-consumer thread begins one turn of its poll loop (a raise here "
        "is that thread dying; D47)",
    "worker.started_send":
        "a worker is about to hand a TaskStarted to its producer (a raise of "
        "confluent_kafka:KafkaException is the producer refusing it: the event never "
        "reaches the broker; D47)",
    "worker.commit":
        "a worker's queue consumer is about to commit the offsets of settled records "
        "(``kill`` here is a worker that dies with started attempts not yet committed: "
        "their records are read again by the partitions' next owner, D49)",
}


@dataclass(frozen=True, slots=True)
class Fault:
    point: str
    action: str  # "kill" | "stop" | "sleep:<s>" | "raise:<[module:]Class>"
    first: int = 1
    last: int | None = 1  # None: every hit from ``first`` on
    _hits: itertools.count[int] = field(default_factory=lambda: itertools.count(1),
                                        compare=False, repr=False)

    def due(self) -> int | None:
        """Count one hit; its number when the fault fires on it, else None."""
        hit = next(self._hits)
        return hit if hit >= self.first and (self.last is None or hit <= self.last) else None


def parse(spec: str) -> dict[str, Fault]:
    """``TASKSTREAM_FAULTS`` as point -> fault; ConfigError naming what is wrong."""
    faults: dict[str, Fault] = {}
    for entry in (e.strip() for e in spec.replace("\n", ";").split(";")):
        if not entry:
            continue
        point, sep, rest = entry.partition("=")
        point = point.strip()
        if not sep or point not in POINTS:
            raise ConfigError(
                f"{ENV}: {entry!r} does not arm a known fault point; write "
                f"<point>=<action>[@<hits>] with a point among {sorted(POINTS)}")
        action, _, hits = rest.strip().partition("@")
        _check_action(entry, action)
        first, last = _parse_hits(entry, hits.strip() or "1")
        faults[point] = Fault(point, action, first, last)
    return faults


def _check_action(entry: str, action: str) -> None:
    kind, _, arg = action.partition(":")
    ok = (kind in ("kill", "stop") and not arg) or (kind == "raise" and bool(arg))
    if kind == "sleep":
        try:
            ok = float(arg) >= 0
        except ValueError:
            ok = False
    if not ok:
        raise ConfigError(
            f"{ENV}: {entry!r} has no valid action; use kill, stop, sleep:<seconds> "
            "or raise:[<module>:]<Class>")


def _parse_hits(entry: str, hits: str) -> tuple[int, int | None]:
    try:
        if hits.endswith("+"):
            first, last = int(hits[:-1]), None
        elif "-" in hits:
            low, high = hits.split("-", 1)
            first, last = int(low), int(high)
        else:
            first = last = int(hits)
    except ValueError:
        first, last = 0, 0
    if first < 1 or (last is not None and last < first):
        raise ConfigError(f"{ENV}: {entry!r} has bad hits; use N, N+ or N-M (N >= 1)")
    return first, last


def _error_class(name: str) -> type[BaseException]:
    module, _, cls = name.rpartition(":")
    found = getattr(importlib.import_module(module or "taskstream.errors"), cls, None)
    if not (isinstance(found, type) and issubclass(found, BaseException)):
        raise ConfigError(f"{ENV}: raise:{name} does not name an exception class")
    return found


def fire(fault: Fault, hit: int) -> None:
    """Do what ``fault`` says, announced on stderr first."""
    os.write(2, f"taskstream fault: {fault.point} hit {hit}: {fault.action}\n".encode())
    kind, _, arg = fault.action.partition(":")
    if kind == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif kind == "stop":
        os.kill(os.getpid(), signal.SIGSTOP)
    elif kind == "sleep":
        time.sleep(float(arg))
    else:
        raise _error_class(arg)(f"injected fault at {fault.point} (hit {hit})")


#: the faults this process was started with (read once; hit counters are their only state)
_ARMED: Mapping[str, Fault] = parse(os.environ.get(ENV, ""))


def fault_point(name: str) -> None:
    """Mark a dangerous step; fires the fault armed for ``name`` when its hit is due."""
    fault = _ARMED.get(name)
    if fault is not None:
        hit = fault.due()
        if hit is not None:
            fire(fault, hit)
