"""The seeded fault plan of a chaos run: the same seed gives the same plan (D42).

A plan is data, made here without I/O: which fault, in which order, held how long,
against which target (an index the runner reduces modulo the processes it has, so a
plan does not depend on PIDs or ports). The runner (:mod:`taskstream.chaos.run`)
executes the faults one after another: each waits for its planned time and for the
previous one to heal, so two faults never overlap and the extra runs and recovery
times the report gives are each owned by one fault.

Kinds are taken round-robin from a seeded permutation of the selected kinds, so a
short run with N kinds selected injects each of them once in its first N faults.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from taskstream.chaos.errors import ChaosError

BROKER_KILL = "broker-kill"
REPLICA_KILL = "replica-kill"
REPLICA_ZOMBIE = "replica-zombie"
REPLICA_WIPE = "replica-wipe"
WORKER_KILL = "worker-kill"
REBALANCE_STORM = "rebalance-storm"
CLOCK_SKEW = "clock-skew"
PRODUCER_DUP = "producer-dup"

#: every fault kind, with what it does (the CLI's --help and docs/chaos.md list these)
KINDS: dict[str, str] = {
    BROKER_KILL: "kill -9 the Kafka node that leads the most events partitions; restart it",
    REPLICA_KILL: "kill -9 a processor replica; restart it on the same data dir",
    REPLICA_ZOMBIE: "SIGSTOP a processor replica for longer than the session timeout "
                    "(its partitions move), then SIGCONT it",
    REPLICA_WIPE: "kill -9 a processor replica, delete its data dir (RocksDB), restart it",
    WORKER_KILL: "kill -9 a worker while it runs a task; start a new one",
    REBALANCE_STORM: "workers join and leave every few seconds",
    CLOCK_SKEW: "a worker whose wall clock is an hour off runs for a while",
    PRODUCER_DUP: "a producer that retries after timeouts: every record is sent twice",
}

#: kinds that need the platform's own processes (a local cluster started by the run)
LOCAL_ONLY = frozenset({BROKER_KILL, REPLICA_KILL, REPLICA_ZOMBIE, REPLICA_WIPE})

#: how long each kind holds (seconds, drawn uniformly); the zombie's is added to the
#: session timeout, so it always outlasts it
HOLD_S: dict[str, tuple[float, float]] = {
    BROKER_KILL: (8.0, 15.0),
    REPLICA_KILL: (2.0, 6.0),
    REPLICA_ZOMBIE: (3.0, 8.0),
    REPLICA_WIPE: (1.0, 4.0),
    WORKER_KILL: (1.0, 3.0),
    REBALANCE_STORM: (12.0, 20.0),
    CLOCK_SKEW: (15.0, 30.0),
    PRODUCER_DUP: (8.0, 15.0),
}
HOUR_MS = 3_600_000


@dataclass(frozen=True, slots=True)
class PlannedFault:
    """One fault of the plan. ``at_s``: its earliest start, seconds after the workload
    began; ``target``: reduced modulo the candidates the runner has; ``skew_ms``: the
    clock offset of a clock-skew worker (+/- one hour), 0 for other kinds."""

    index: int
    kind: str
    at_s: float
    hold_s: float
    target: int
    skew_ms: int = 0

    def to_json(self) -> dict[str, object]:
        return {"index": self.index, "kind": self.kind, "at_s": round(self.at_s, 3),
                "hold_s": round(self.hold_s, 3), "target": self.target,
                "skew_ms": self.skew_ms}


def parse_kinds(text: str) -> tuple[str, ...]:
    """``--faults``: ``all``, ``none`` or a comma-separated list of kinds (order kept,
    repeats dropped); ChaosError naming an unknown kind."""
    text = text.strip()
    if text == "all":
        return tuple(KINDS)
    if text in ("", "none"):
        return ()
    kinds: list[str] = []
    for name in (part.strip() for part in text.split(",")):
        if name not in KINDS:
            raise ChaosError(f"--faults: {name!r} is not a fault kind; use all, none or "
                             f"some of {', '.join(KINDS)}")
        if name not in kinds:
            kinds.append(name)
    return tuple(kinds)


def make_plan(seed: int, kinds: Sequence[str], count: int, *, first_at_s: float = 10.0,
              gap_s: float = 30.0) -> list[PlannedFault]:
    """``count`` faults of ``kinds``, one every ``gap_s`` seconds (jittered by up to a
    quarter of the gap) from ``first_at_s`` on. Pure: the same arguments, the same plan."""
    if count < 0 or gap_s <= 0 or first_at_s < 0:
        raise ChaosError("a plan needs count >= 0, gap_s > 0 and first_at_s >= 0")
    if count and not kinds:
        raise ChaosError("a plan with faults needs at least one fault kind")
    unknown = [k for k in kinds if k not in KINDS]
    if unknown:
        raise ChaosError(f"unknown fault kinds: {unknown}")
    rng = random.Random(seed)
    order = list(kinds)
    rng.shuffle(order)
    faults = []
    for i in range(count):
        kind = order[i % len(order)]
        at = first_at_s + i * gap_s + rng.uniform(0.0, gap_s / 4)
        low, high = HOLD_S[kind]
        skew = rng.choice((-HOUR_MS, HOUR_MS)) if kind == CLOCK_SKEW else 0
        faults.append(PlannedFault(i, kind, at, rng.uniform(low, high),
                                   rng.randrange(1_000_000), skew))
    return faults
