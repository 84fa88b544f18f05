"""Benchmark: what flow control costs the fold per task, in memory (issue 16, phase 1).

The real-system bench (CPU per task per process and submit-to-start latency through
broker, processor and worker) needs the engine that runs the limit and key entities
(issue 12); until then this measures the part that is already written: the pure
folds. For N tasks of each kind it counts the events the fold applies per task and
times ``apply`` (effects on, as the processor runs it) over all of them, the same
router a processor would be: a record's key picks its kind, ``Emit`` effects are
applied next, a ``Dispatch`` is answered by a start and a success.

    python bench/bench_flow_fold.py --tasks 20000

Kinds: ``plain``; ``rate`` (a key-less limit with room for all); ``rate_key`` (a
limit with a key per 100 tasks: one more hop through the definition); ``ckey``
(a concurrency key per task, so nobody waits); ``both``.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import deque
from typing import Any

from taskstream.processors.fold.effects import Dispatch, Emit
from taskstream.processors.fold.kinds import kind_of
from taskstream.processors.fold.rules import Limits
from taskstream.schemas.entity_keys import limit_key
from taskstream.schemas.events import (
    Backoff,
    Envelope,
    EventBody,
    FlowControl,
    LimitSet,
    TaskDispatched,
    TaskStarted,
    TaskSubmitted,
    TaskSucceeded,
)

T0 = 1_700_000_000_000
LIMITS = Limits()


def _flow(kind: str, n: int) -> FlowControl | None:
    return {
        "plain": None,
        "rate": FlowControl(rate_limit="bench"),
        "rate_key": FlowControl(rate_limit="bench", rate_key=f"k{n // 100}"),
        "ckey": FlowControl(concurrency_key=f"c{n}"),
        "both": FlowControl(rate_limit="bench", concurrency_key=f"c{n}"),
    }[kind]


def run_kind(kind: str, tasks: int) -> dict[str, Any]:
    """Fold ``tasks`` tasks of ``kind`` from submit to success; events and time per task."""
    states: dict[str, Any] = {}
    queue: deque[Envelope] = deque()
    seq = 0

    def event(key: str, body: EventBody, attempt: int = 0) -> Envelope:
        nonlocal seq
        seq += 1
        return Envelope(f"E{seq:012d}", key, T0 + seq // 1000, "bench", attempt, body)

    setup = event(limit_key("bench"), LimitSet("bench", 10**6, 1000, 10**6))
    states[setup.task_id], _ = kind_of(setup.task_id).apply(None, setup, LIMITS)
    for n in range(tasks):
        queue.append(event(f"T{n:025d}", TaskSubmitted(
            name="bench.noop", queue="default", priority=0, payload=b"{}",
            content_type="application/json", eta_ms=None, max_attempts=3,
            backoff=Backoff(), timeout_ms=None, lease_ms=30_000, flow=_flow(kind, n))))
    applied = 0
    start = time.perf_counter()
    while queue:
        env = queue.popleft()
        key = env.task_id
        after, effects = kind_of(key).apply(states.get(key), env, LIMITS)
        applied += 1
        if after is not None:
            states[key] = after
        for effect in effects:
            if isinstance(effect, Emit):
                queue.append(effect.envelope)
            elif isinstance(effect, Dispatch):
                body = effect.envelope.body
                assert isinstance(body, TaskDispatched)
                attempt = effect.envelope.attempt
                queue.append(event(key, TaskStarted(body.dispatch_id, "w"), attempt))
                queue.append(event(key, TaskSucceeded(body.dispatch_id, "w"), attempt))
    took = time.perf_counter() - start
    done = sum(1 for k, s in states.items() if k.startswith("T") and s.status.value == "SUCCEEDED")
    assert done == tasks, f"{kind}: {done} of {tasks} succeeded"
    return {"kind": kind, "tasks": tasks, "events_per_task": round(applied / tasks, 2),
            "apply_us_per_task": round(took / tasks * 1e6, 1),
            "apply_us_per_event": round(took / applied * 1e6, 2)}


def run(tasks: int = 20_000) -> list[dict[str, Any]]:
    return [run_kind(kind, tasks) for kind in ("plain", "rate", "rate_key", "ckey", "both")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=20_000)
    args = parser.parse_args()
    print(json.dumps(run(args.tasks), indent=2))


if __name__ == "__main__":
    main()
