"""Periodic jobs that never raise.

Faust treats an exception escaping an ``app.timer`` as a crash of the whole app, so
a periodic job (the timer scan between fold batches, the API's rate sampler) that
read an index while a rebalance began would have stopped the replica.

A record the fold cannot apply never comes here: the batched fold sets it aside
for the quarantine topic with its reason (processors/live/batch.py), and Kafka
refusing a record the fold sends is retried by the engine until it is
acknowledged, before the offset commit (processors/live/engine.py, ``persist``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from enum import Enum

from taskstream.errors import TaskstreamError

log = logging.getLogger("taskstream.processor")

def timer_round(
    job: Callable[[], Awaitable[None]], name: str, skip: tuple[type[BaseException], ...] = ()
) -> Callable[[], Awaitable[None]]:
    """``job`` as an ``app.timer`` body that never raises: an exception of a ``skip``
    type ends the round quietly (the next round tries again), anything else is logged
    with its traceback and the round ends. Faust would crash the app instead."""

    async def one_round() -> None:
        try:
            await job()
        except skip:
            return
        except Exception:  # a bug in a periodic job must not stop the replica
            log.exception("periodic job %s raised; it runs again next round", name)

    one_round.__name__ = one_round.__qualname__ = f"{name}_round"
    return one_round


# -- a paused replica fences itself (issue 21, D43) ------------------------------------


class ReplicaFenced(TaskstreamError):
    """The fold was paused for longer than its lease (SIGSTOP, a frozen VM, a starved
    process): its group may have given its partitions to another replica meanwhile, so
    the batch in hand is not written. The fold reads it again once the group has
    answered (a rebalance, or nothing for a session: still the owner)."""

    retriable = True


class PauseFence:
    """Refuses the fold's writes once the process has not run for longer than
    ``limit_s`` (D43).

    A ticker thread notes the monotonic clock every ``tick_s``; the clock counts on
    while the process is stopped, its threads do not, so a pause shows as a gap
    between two ticks (or since the last tick, when the fold runs first after the
    wake-up). The fold ``beat``s at the start of every round of its loop and ``check``s
    before each step that writes (the local state, the sends, the offset commit, the
    parked dispatches): a gap longer than the limit since the round began refuses it.
    A round that is only slow (a broker slow to acknowledge) is no pause: the ticker
    runs on. ``limit_s`` is half the group's session timeout: a replica paused for less
    still holds its partitions (the coordinator waits a whole session before it moves
    them), so nothing it writes can land on a new owner's records.

    This is a fence the replica keeps itself, not one the brokers keep: a pause that
    begins after a check and before the client has sent the records (milliseconds,
    plus the retries of requests in flight) is not seen. D43 says why Kafka
    transactions, which close that gap, are not used yet.
    """

    def __init__(self, limit_s: float, clock: Callable[[], float] = time.monotonic,
                 tick_s: float = 0.1) -> None:
        self.limit_s = limit_s
        self.tick_s = tick_s
        self._clock = clock
        self._last_tick = clock()
        #: the longest gap between two ticks since the round began
        self._gap = 0.0
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def start(self) -> None:
        """Tick on a thread of the fence's own (a daemon: it dies with the process)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="taskstream-pause-fence",
                                            daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self.tick_s):
            self.tick()

    def tick(self) -> None:
        now = self._clock()
        self._gap = max(self._gap, now - self._last_tick)
        self._last_tick = now

    def _paused_for(self) -> float:
        return max(self._gap, self._clock() - self._last_tick)

    def beat(self) -> None:
        """A new round of the fold; raises :class:`ReplicaFenced` when the process was
        paused since the previous round began."""
        paused = self._paused_for()
        self.reset()
        if paused > self.limit_s:
            raise ReplicaFenced(f"the replica did not run for {paused:.1f}s (its lease is "
                                f"{self.limit_s:.1f}s) before a new round of the fold")

    def check(self, step: str) -> None:
        """Raises :class:`ReplicaFenced` when the process was paused since the round began."""
        paused = self._paused_for()
        if paused > self.limit_s:
            raise ReplicaFenced(f"the replica did not run for {paused:.1f}s (its lease is "
                                f"{self.limit_s:.1f}s) before {step}")

    def reset(self) -> None:
        """A round begins: gaps before now no longer count."""
        self._gap = 0.0
        self._last_tick = self._clock()


# -- the liveness watchdog (issue 21, D43) ---------------------------------------------


class Verdict(Enum):
    OK = "ok"
    PAUSED = "paused"  # the watchdog itself did not run for a while: judge nothing
    RESTART = "restart"  # the fold has lag and made no progress: restart it
    EXIT = "exit"  # the event loop does not answer: only a new process helps


@dataclass
class StallJudge:
    """When the fold has stalled, from what the watchdog sees every round (pure).

    ``positions``: partition -> the next offset the fold reads; ``ends``: partition ->
    the end of the events partition; ``loop_beat``: when the replica's event loop last
    ran a beat. No progress for ``stall_s`` while some partition has lag is a stall;
    a loop silent for ``stall_s`` is a blocked loop. A gap between two rounds longer
    than ``stall_s`` means the whole process was paused: nothing is judged and every
    clock starts again (a zombie woken by SIGCONT is not a stall; D43 fences it).
    """

    stall_s: float
    last_round: float | None = None
    #: when the clocks last started again (the first round, or after a pause)
    since: float = 0.0
    progress_at: float | None = None
    positions: dict[int, int] = field(default_factory=dict)

    def judge(self, now: float, positions: Mapping[int, int], ends: Mapping[int, int],
              loop_beat: float) -> Verdict:
        last, self.last_round = self.last_round, now
        if last is None or now - last > self.stall_s:
            self.since = self.progress_at = now
            self.positions = dict(positions)
            return Verdict.PAUSED if last is not None else Verdict.OK
        if now - max(loop_beat, self.since) > self.stall_s:
            return Verdict.EXIT
        lag = sum(max(0, ends.get(p, 0) - o) for p, o in positions.items())
        if lag == 0 or dict(positions) != self.positions or self.progress_at is None:
            self.progress_at, self.positions = now, dict(positions)
            return Verdict.OK
        if now - self.progress_at > self.stall_s:
            self.progress_at = now  # the next restart only after another stall_s
            return Verdict.RESTART
        return Verdict.OK


#: the exit code of a replica whose event loop stopped answering (EX_SOFTWARE)
EXIT_STALLED = 70


class FoldWatchdog:
    """A thread that restarts a stalled fold, or ends a replica whose loop is blocked.

    Every ``round_s`` it asks the fold where it is (``positions``) and the brokers where
    the partitions end (``ends``), and lets :class:`StallJudge` decide. A stall is
    handed to ``restart`` (which schedules the fold's restart on the event loop); a
    blocked loop can only be left by ``exit`` (the process ends non-zero and its
    supervisor starts it again: every crash point of the fold is safe, D19). It runs
    on a thread of its own so that a blocked loop cannot hide from it.
    """

    def __init__(self, stall_s: float, positions: Callable[[], Mapping[int, int]],
                 ends: Callable[[list[int]], Mapping[int, int]],
                 restart: Callable[[], None], exit_: Callable[[], None],
                 round_s: float = 1.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.judge = StallJudge(stall_s)
        self._positions = positions
        self._ends = ends
        self._restart = restart
        self._exit = exit_
        self.round_s = min(round_s, stall_s / 3)
        self._clock = clock
        self.loop_beat = clock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def beat(self) -> None:
        """The event loop is alive (called on it every ``round_s``)."""
        self.loop_beat = self._clock()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="taskstream-fold-watchdog",
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5.0)

    def round(self) -> Verdict:
        """One look at the fold (the thread's body; tests call it directly)."""
        positions = dict(self._positions())
        ends = self._ends(sorted(positions)) if positions else {}
        verdict = self.judge.judge(self._clock(), positions, ends, self.loop_beat)
        if verdict is Verdict.RESTART:
            lag = sum(max(0, ends.get(p, 0) - o) for p, o in positions.items())
            log.error("fold stalled: no progress for %.0fs with %d record(s) of lag on "
                      "partitions %s; restarting the fold (D43)", self.judge.stall_s, lag,
                      sorted(positions))
            self._restart()
        elif verdict is Verdict.EXIT:
            log.critical("fold stalled: the event loop has not answered for %.0fs; the "
                         "replica exits with %d for its supervisor to start it again (D43)",
                         self.judge.stall_s, EXIT_STALLED)
            self._exit()
        elif verdict is Verdict.PAUSED:
            log.warning("the fold watchdog was paused itself (the process was stopped?); "
                        "its clocks start again")
        return verdict

    def _run(self) -> None:
        while not self._stop.wait(self.round_s):
            try:
                self.round()
            except Exception:  # a broker that does not answer: judge again next round
                log.warning("fold watchdog: this round could not look at the fold",
                            exc_info=True)
