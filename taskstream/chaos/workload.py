"""The chaos workload: a seeded, steady mix of tasks (pure), and its ledger (D42).

Kinds, and what the checker expects of each:

* ``fast``, ``slow``, ``flaky`` (fails on attempts 1 and 2), ``delayed`` (due 2-8 s
  later): SUCCEEDED, after 1, 1, 3 and 1 handler runs;
* ``duplicate``: submitted twice with the same idempotency key (one task ID): one run;
* ``cancel``: a delayed slow task, cancelled before it is due: CANCELLED, or
  SUCCEEDED when the cancellation lost the race (either is terminal);
* ``limited``: under one concurrency key, at most :data:`MAX_CONCURRENCY` at a time;
* ``dependent``: a fast task that depends on the task submitted just before it (D37):
  SUCCEEDED after its parent, or CANCELLED when its parent was (a ``cancel`` task); a
  dependency left WAITING is lost like any other task;
* ``canary``: a fast task the runner submits as each fault strikes, to time recovery;
* ``tick``: a fast task one of the run's two schedules (:func:`schedules`) submitted at
  one of its fire times; not in the ledger (the platform submits it), the checker
  finds them in the log. One run each, like ``fast``.

The ledger is one JSON line per submission Kafka acknowledged (events it refused or
never acknowledged are counted, not recorded): the checker's list of what must not
be lost.
"""

from __future__ import annotations

import json
import random
import threading
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from taskstream.chaos.tasks import FLAKY_SUCCEEDS_ON, QUEUE

#: relative weights of the kinds in the steady mix
WEIGHTS: dict[str, int] = {"fast": 45, "slow": 10, "flaky": 10, "delayed": 10,
                           "duplicate": 8, "cancel": 7, "limited": 10, "dependent": 6}
#: handler runs each kind needs when nothing goes wrong (cancel: at most this many)
EXPECTED_RUNS: dict[str, int] = {"fast": 1, "slow": 1, "flaky": FLAKY_SUCCEEDS_ON,
                                 "delayed": 1, "duplicate": 1, "cancel": 1, "limited": 1,
                                 "dependent": 1, "canary": 1, "tick": 1}
#: the kind of a task a schedule's tick submitted (the checker adds them from the log)
TICK_KIND = "tick"
MAX_CONCURRENCY = 2
#: short leases and backoffs: a task whose worker died is dispatched again in seconds
LEASE_S = 8.0
BACKOFF = {"initial": 0.2, "multiplier": 2.0, "max": 2.0, "jitter": 0.0}
MAX_ATTEMPTS = 10


@dataclass(frozen=True, slots=True)
class Submission:
    """One task of the mix: the SDK call, and what to send after it."""

    n: int
    kind: str
    name: str
    payload: Any
    options: Mapping[str, Any]
    repeat_after_s: float | None = None  # duplicate: submit the same again
    cancel_after_s: float | None = None  # cancel: ask to cancel it this much later
    after_previous: bool = False  # dependent: depends on the task submitted before it


def task_options(**extra: Any) -> dict[str, Any]:
    return {"queue": QUEUE, "max_attempts": MAX_ATTEMPTS, "lease": LEASE_S,
            "backoff": dict(BACKOFF), **extra}


def make_submission(rng: random.Random, n: int, run_id: str) -> Submission:
    """The ``n``-th task of a run (``run_id`` keeps idempotency and concurrency keys
    apart between runs on the same topics)."""
    kind = rng.choices(list(WEIGHTS), weights=list(WEIGHTS.values()))[0]
    if kind == "slow":
        return Submission(n, kind, "chaos.slow", {"seconds": round(rng.uniform(1, 3), 2)},
                          task_options())
    if kind == "flaky":
        return Submission(n, kind, "chaos.flaky", {"n": n}, task_options())
    if kind == "delayed":
        return Submission(n, kind, "chaos.fast", {"n": n},
                          task_options(delay=round(rng.uniform(2, 8), 2)))
    if kind == "duplicate":
        return Submission(n, kind, "chaos.fast", {"n": n},
                          task_options(idempotency_key=f"{run_id}-dup-{n}"),
                          repeat_after_s=round(rng.uniform(0.1, 2.0), 2))
    if kind == "cancel":
        return Submission(n, kind, "chaos.slow", {"seconds": 1.0}, task_options(delay=5.0),
                          cancel_after_s=round(rng.uniform(0.2, 2.0), 2))
    if kind == "limited":
        return Submission(n, kind, "chaos.limited",
                          {"seconds": round(rng.uniform(0.2, 0.6), 2)},
                          task_options(concurrency_key=f"{run_id}-ckey",
                                   max_concurrency=MAX_CONCURRENCY))
    if kind == "dependent":
        return Submission(n, kind, "chaos.fast", {"n": n}, task_options(), after_previous=True)
    return Submission(n, "fast", "chaos.fast", {"n": n}, task_options())


def schedules(run_id: str) -> list[tuple[str, dict[str, Any]]]:
    """The run's schedules, created at its start and deleted before its drain: (schedule
    ID, the keyword arguments of the SDK's ``producer.schedule``). One every 2 s that
    catches up every missed tick (so none may be skipped), one a cron every 3 s that
    runs the latest missed tick once (so a stall's ticks but the last are skipped, as
    D37 documents)."""
    return [
        (f"chaos-{run_id}-every", {"task_name": "chaos.fast", "payload": {"tick": "every"},
                                   "every": 2.0, "misfire": "catch_up",
                                   "catch_up_max": 1000, **task_options()}),
        (f"chaos-{run_id}-cron", {"task_name": "chaos.fast", "payload": {"tick": "cron"},
                                  "cron": "* * * * * */3", "misfire": "run_once",
                                  **task_options()}),
    ]


def mix(seed: int, run_id: str) -> Iterator[Submission]:
    """The run's submissions, in order, for ever (the same seed: the same mix)."""
    rng = random.Random(seed)
    n = 0
    while True:
        yield make_submission(rng, n, run_id)
        n += 1


# -- the ledger ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Entry:
    """One acknowledged submission (or cancellation, or schedule write): ``event``
    TaskSubmitted, CancelRequested, ScheduleSet or ScheduleCommand (``task_id`` then the
    schedule's key); ``via`` sdk or retrying-producer; ``mono``: time.monotonic()."""

    task_id: str
    kind: str
    event: str
    mono: float
    via: str = "sdk"
    n: int = -1


@dataclass
class Ledger:
    """Every acknowledged submission, appended to ``path`` as it is acknowledged."""

    path: Path
    entries: list[Entry] = field(default_factory=list)
    refused: int = 0  # submissions Kafka refused or never acknowledged
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def record(self, entry: Entry) -> None:
        with self._lock:
            self.entries.append(entry)
            with open(self.path, "a", encoding="utf-8") as out:
                out.write(json.dumps(asdict(entry), separators=(",", ":")) + "\n")

    def count_refused(self) -> None:
        with self._lock:
            self.refused += 1

    @classmethod
    def load(cls, path: Path) -> Ledger:
        ledger = cls(path)
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                ledger.entries.append(Entry(**json.loads(line)))
        return ledger

    def tasks(self) -> dict[str, str]:
        """Task ID -> kind of every acknowledged task."""
        return {e.task_id: e.kind for e in self.entries if e.event == "TaskSubmitted"}

    def schedules(self) -> set[str]:
        """The keys (``schedule:<id>``) of every schedule whose creation Kafka acknowledged."""
        return {e.task_id for e in self.entries if e.event == "ScheduleSet"}

    def cancelled(self) -> set[str]:
        return {e.task_id for e in self.entries if e.event == "CancelRequested"}
