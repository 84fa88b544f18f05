"""Does the hand-written TaskSubmitted encoder still earn its place? (issue 13)

Times, in one process, the three ways the SDK can encode a validated TaskSpec's
TaskSubmitted envelope: ``fast`` (:func:`taskstream.producer.fastwire.make_fast_encoder`),
``reference`` (``encode_event`` of an Envelope: the compiled codec of D12 with
its fastavro fallback) and the whole ``submitted`` path around either
(``EventBuilder.submitted``: the spec to a body, IDs, encoding), on a plain spec
and on one with every option. Medians of ``--reps`` runs of ``-n`` encodes, in
microseconds per event; nothing is asserted.

    python bench/bench_submitted_encoder.py -n 50000 --reps 5
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from typing import Any

from taskstream.producer.build import EventBuilder
from taskstream.producer.fastwire import (
    HEADER_LEN,
    canaries,
    make_fast_encoder,
    reference_encoder,
)
from taskstream.schemas.models import TaskSpec
from taskstream.schemas.serde import encode_event

EVENT_ID, TASK_ID = "01ARZ3NDEKTSV4RRFFQ69G5FAV", "7ZZZZZZZZZZZZZZZZZZZZZZZZZ"
SPECS = {
    "plain": {"name": "bench.noop", "payload": {"i": 1, "pad": "x" * 80}},
    "options": {"name": "bench.noop", "payload": {"i": 1, "pad": "x" * 80}, "queue": "images",
                "priority": 2, "max_attempts": 5, "timeout": 60, "idempotency_key": "order-42",
                "headers": {"trace": "abc"}, "tags": ["a", "b"],
                "backoff": {"initial": 0.5, "multiplier": 3.0, "max": 60, "jitter": 0.1}},
}


def _per_event_us(fn: Callable[[], Any], n: int, reps: int) -> float:
    runs = []
    for _ in range(reps):
        start = time.perf_counter()
        for _ in range(n):
            fn()
        runs.append((time.perf_counter() - start) / n * 1e6)
    return statistics.median(runs)


def run(n: int, reps: int) -> dict[str, dict[str, float]]:
    fast = make_fast_encoder(encode_event(canaries()[0])[:HEADER_LEN])
    out: dict[str, dict[str, float]] = {}
    for label, fields in SPECS.items():
        spec = TaskSpec.model_validate(fields)
        body = spec.to_submitted(1_800_000_000_000)
        args = (EVENT_ID, TASK_ID, 1_800_000_000_000, "bench", body)
        assert fast(*args) == reference_encoder(*args)
        with_fast = EventBuilder("bench", 1 << 20, encoder=fast)
        with_reference = EventBuilder("bench", 1 << 20, encoder=reference_encoder)
        out[label] = {
            "fast_us": _per_event_us(lambda a=args: fast(*a), n, reps),
            "reference_us": _per_event_us(lambda a=args: reference_encoder(*a), n, reps),
            "submitted_fast_us": _per_event_us(
                lambda s=spec, b=with_fast: b.submitted(s, 1_800_000_000_000), n, reps),
            "submitted_reference_us": _per_event_us(
                lambda s=spec, b=with_reference: b.submitted(s, 1_800_000_000_000), n, reps),
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=50_000)
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args()
    print(json.dumps(run(args.n, args.reps), indent=2))


if __name__ == "__main__":
    main()
