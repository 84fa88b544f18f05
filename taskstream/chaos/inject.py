"""Carry out one planned fault on the run's processes (D42).

Each function injects its fault, submits a canary task at once (the runner times
recovery with it), holds for the planned time, heals (restarts what it killed,
wakes what it stopped) and returns what it did as a
:class:`~taskstream.chaos.checker.FaultRecord`. A fault that cannot be injected here
(a remote deployment's brokers or replicas) is returned as
``not-run`` with the reason: reported, never silently skipped.
"""

from __future__ import annotations

import random
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass

from taskstream.chaos import schedule as s
from taskstream.chaos.checker import FaultRecord, load_runs
from taskstream.chaos.errors import ChaosError
from taskstream.chaos.submitter import Submitter
from taskstream.chaos.topology import Replica, Topology
from taskstream.dev.procs import Child

#: how long worker-kill waits for its target to be running a task
BUSY_WAIT_S = 10.0


@dataclass
class Context:
    topology: Topology
    submitter: Submitter
    seed: int


def inject(ctx: Context, fault: s.PlannedFault) -> FaultRecord:
    """Inject ``fault`` and heal it; a record of what happened."""
    why_not = cannot_run(ctx.topology, fault.kind)
    if why_not:
        now = time.monotonic()
        return FaultRecord(fault.index, fault.kind, "not-run", now, now, note=why_not)
    started = time.monotonic()
    try:
        return _ACTIONS[fault.kind](ctx, fault)
    except Exception as exc:  # the run goes on; the report says the fault went wrong
        return FaultRecord(fault.index, fault.kind, "error", started, time.monotonic(),
                           note=f"{type(exc).__name__}: {exc}"[:500])


def cannot_run(topology: Topology, kind: str) -> str:
    """Why ``kind`` cannot be injected on this topology ('' when it can)."""
    if kind in s.LOCAL_ONLY and not topology.local:
        return "needs the platform's own brokers and replicas (a local run); a deployment's " \
               "are not ours to kill"
    return ""


def _record(fault: s.PlannedFault, started: float, target: str, pids: tuple[int, ...],
            canary: str | None, note: str = "") -> FaultRecord:
    return FaultRecord(fault.index, fault.kind, "done", started, time.monotonic(), target,
                       pids, canary, note=note)


def broker_kill(ctx: Context, fault: s.PlannedFault) -> FaultRecord:
    topo = ctx.topology
    node = topo.busiest_broker()
    started = time.monotonic()
    pid = topo.kill_broker(node)
    canary = ctx.submitter.canary()
    time.sleep(fault.hold_s)
    topo.restart_broker(node)
    return _record(fault, started, f"kafka node {node} (leads the most events partitions)",
                   (pid,), canary)


def _replica(ctx: Context, fault: s.PlannedFault) -> Replica:
    replicas = ctx.topology.replicas
    if not replicas:
        raise ChaosError("no processor replica to fault")
    return replicas[fault.target % len(replicas)]


def replica_kill(ctx: Context, fault: s.PlannedFault, wipe: bool = False) -> FaultRecord:
    topo = ctx.topology
    replica = _replica(ctx, fault)
    assert replica.child is not None
    pid = replica.child.pid
    started = time.monotonic()
    topo.kill_replica(replica, wipe=wipe)
    canary = ctx.submitter.canary()
    time.sleep(fault.hold_s)
    topo.start_replica(replica)
    assert replica.child is not None
    return _record(fault, started, f"replica {replica.index}" + (" (data dir wiped)"
                                                               if wipe else ""),
                   (pid, replica.child.pid), canary)


def replica_wipe(ctx: Context, fault: s.PlannedFault) -> FaultRecord:
    return replica_kill(ctx, fault, wipe=True)


def replica_zombie(ctx: Context, fault: s.PlannedFault) -> FaultRecord:
    topo = ctx.topology
    replica = _replica(ctx, fault)
    assert replica.child is not None
    session = topo.settings.session_timeout_s or 6.0
    started = time.monotonic()
    topo.signal_replica(replica, signal.SIGSTOP)
    canary = ctx.submitter.canary()
    time.sleep(session + fault.hold_s)
    topo.signal_replica(replica, signal.SIGCONT)
    alive = replica.child.alive()
    return _record(fault, started, f"replica {replica.index} stopped "
                   f"{session + fault.hold_s:.1f} s (session timeout {session:g} s)",
                   (replica.child.pid,), canary,
                   note="" if alive else "the replica exited after SIGCONT")


def _busy_worker(topo: Topology, preferred: int) -> tuple[Child, bool]:
    """A live worker that is running a task now (the preferred one if it is), within
    BUSY_WAIT_S, and True; else the preferred one and False."""
    workers = topo.live_workers()
    if not workers:
        raise ChaosError("no live worker to kill")
    ordered = workers[preferred % len(workers):] + workers[:preferred % len(workers)]
    deadline = time.monotonic() + BUSY_WAIT_S
    while time.monotonic() < deadline:
        busy = {r.pid for r in load_runs(topo.runs_path) if r.end is None}
        for worker in ordered:
            if worker.pid in busy:
                return worker, True
        time.sleep(0.2)
    return ordered[0], False


def worker_kill(ctx: Context, fault: s.PlannedFault) -> FaultRecord:
    topo = ctx.topology
    victim, busy = _busy_worker(topo, fault.target)
    started = time.monotonic()
    topo.kill(victim)
    canary = ctx.submitter.canary()
    time.sleep(fault.hold_s)
    replacement = topo.start_worker()
    return _record(fault, started, f"{victim.name} (pid {victim.pid})",
                   (victim.pid, replacement.pid), canary,
                   note="" if busy else "it was not running a task when killed")


def rebalance_storm(ctx: Context, fault: s.PlannedFault) -> FaultRecord:
    """Extra workers join and leave (SIGTERM, a graceful leave) every 1-3 s."""
    topo = ctx.topology
    rng = random.Random(f"{ctx.seed}-{fault.index}")
    started = time.monotonic()
    canary = ctx.submitter.canary()
    extra: list[Child] = []
    pids: list[int] = []
    moves = 0
    while time.monotonic() - started < fault.hold_s:
        if extra and (len(extra) >= 3 or rng.random() < 0.5):
            topo.stop(extra.pop(rng.randrange(len(extra))), grace=15.0)
        else:
            worker = topo.start_worker(wait=False)
            extra.append(worker)
            pids.append(worker.pid)
        moves += 1
        time.sleep(rng.uniform(1.0, 3.0))
    for worker in extra:
        topo.stop(worker, grace=15.0)
    return _record(fault, started, f"{moves} joins and leaves", tuple(pids), canary)


def clock_skew(ctx: Context, fault: s.PlannedFault) -> FaultRecord:
    topo = ctx.topology
    started = time.monotonic()
    worker = topo.start_worker(skew_ms=fault.skew_ms)
    canary = ctx.submitter.canary()
    time.sleep(fault.hold_s)
    topo.stop(worker, grace=15.0)
    ran = sum(1 for r in load_runs(topo.runs_path) if r.pid == worker.pid)
    return _record(fault, started, f"a worker {fault.skew_ms / 3_600_000:+.0f} h off "
                   f"for {fault.hold_s:.0f} s", (worker.pid,), canary,
                   note=f"it started {ran} handler runs")


def producer_dup(ctx: Context, fault: s.PlannedFault) -> FaultRecord:
    sub = ctx.submitter
    before = sub.retrying_producer.sent
    started = time.monotonic()
    sub.retrying.set()
    canary = sub.canary()
    try:
        time.sleep(fault.hold_s)
    finally:
        sub.retrying.clear()
    sent = sub.retrying_producer.sent - before
    return _record(fault, started, f"{sent // 2} fast tasks sent twice", (), canary)


_ACTIONS: dict[str, Callable[[Context, s.PlannedFault], FaultRecord]] = {
    s.BROKER_KILL: broker_kill,
    s.REPLICA_KILL: replica_kill,
    s.REPLICA_ZOMBIE: replica_zombie,
    s.REPLICA_WIPE: replica_wipe,
    s.WORKER_KILL: worker_kill,
    s.REBALANCE_STORM: rebalance_storm,
    s.CLOCK_SKEW: clock_skew,
    s.PRODUCER_DUP: producer_dup,
}
