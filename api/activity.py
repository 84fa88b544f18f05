"""Live activity for the dashboard's charts: rates and dispatch latency over ten minutes.

Each replica samples its own Prometheus registry every :data:`STEP_S` (a timer in
the API, never the fold): the events it folded by type, its dispatches and dead
letters, and the cumulative buckets of the dispatch-latency histogram. It keeps
the last :data:`WINDOW_S` of samples and answers ``/internal/activity`` with the
*differences* between consecutive samples. The replica that took ``GET /activity``
merges them on a grid of wall-clock steps: per step and replica a rate is the
counts divided by the time they cover; the step's rate is the sum over
replicas; latency quantiles are read from the summed histogram buckets the way
Prometheus' ``histogram_quantile`` does (linear inside a bucket). Reading the
registry costs a few dozen series, nothing that grows with the task table
(docs/decisions.md, D30).

Everything here but :func:`sample_registry` is arithmetic on plain data, unit-tested.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry

#: seconds between two samples of a replica's counters
STEP_S = 2.0
#: how far back the charts reach
WINDOW_S = 600.0
#: the quantiles the latency chart draws
QUANTILES = (0.5, 0.99)

#: series name -> (metric family, label that selects it or None for the sum over labels)
COUNTERS: dict[str, tuple[str, tuple[str, str] | None]] = {
    "submitted": ("taskstream_events_applied", ("type", "TaskSubmitted")),
    "started": ("taskstream_events_applied", ("type", "TaskStarted")),
    "succeeded": ("taskstream_events_applied", ("type", "TaskSucceeded")),
    "failed": ("taskstream_events_applied", ("type", "TaskFailed")),
    "dispatched": ("taskstream_dispatched", None),
    "dead_lettered": ("taskstream_dead_letters", None),
}
LATENCY = "taskstream_dispatch_latency_seconds"


@dataclass(frozen=True)
class Sample:
    """One reading of a replica's counters (cumulative since the process started)."""

    at_s: float  # wall clock, seconds
    counts: Mapping[str, float]
    buckets: tuple[float, ...]  # cumulative histogram counts, one per bound (+Inf last)


def sample_registry(registry: CollectorRegistry, at_s: float) -> tuple[Sample, tuple[float, ...]]:
    """The counters of :data:`COUNTERS` and the latency histogram, read now; with the
    histogram's finite upper bounds in seconds."""
    counts = dict.fromkeys(COUNTERS, 0.0)
    buckets: list[tuple[float, float]] = []
    for family in registry.collect():
        if family.name == LATENCY:
            buckets = sorted((float(s.labels["le"]), s.value) for s in family.samples
                             if s.name.endswith("_bucket"))
            continue
        for series, (name, label) in COUNTERS.items():
            if family.name != name:
                continue
            counts[series] += sum(s.value for s in family.samples if s.name.endswith("_total")
                                  and (label is None or s.labels.get(label[0]) == label[1]))
    bounds = tuple(b for b, _ in buckets if math.isfinite(b))
    return Sample(at_s, counts, tuple(v for _, v in buckets)), bounds


@dataclass
class ActivityWindow:
    """A replica's recent samples; :meth:`deltas` is what it answers the coordinator."""

    step_s: float = STEP_S
    window_s: float = WINDOW_S
    bounds: tuple[float, ...] = ()
    samples: deque[Sample] = field(default_factory=deque)

    def add(self, sample: Sample, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.samples.append(sample)
        while len(self.samples) > 2 and self.samples[1].at_s <= sample.at_s - self.window_s:
            self.samples.popleft()

    def deltas(self) -> dict[str, Any]:
        """JSON: the bounds and, per pair of consecutive samples, when the second was
        taken, the seconds between them, what each counter gained and each bucket."""
        out: list[list[Any]] = []
        pairs = zip(list(self.samples), list(self.samples)[1:], strict=False)
        for old, new in pairs:
            span = new.at_s - old.at_s
            if span <= 0:
                continue
            gained = {k: max(0.0, v - old.counts.get(k, 0.0)) for k, v in new.counts.items()}
            cumulative = [max(0.0, n - o) for n, o in zip(new.buckets, old.buckets, strict=False)]
            per_bucket = [c - p for c, p in zip(cumulative, [0.0, *cumulative], strict=False)]
            out.append([int(new.at_s * 1000), round(span, 3), gained,
                        [max(0.0, b) for b in per_bucket]])
        return {"step_s": self.step_s, "bounds": list(self.bounds), "deltas": out}


def quantile(q: float, bounds: Sequence[float], counts: Sequence[float]) -> float | None:
    """The q-quantile of a histogram: ``counts[i]`` observations in (bounds[i-1], bounds[i]]
    and the last entry above the last bound. Linear inside a bucket, as Prometheus does;
    above the last bound the answer is the last bound. None without observations."""
    total = sum(counts)
    if total <= 0 or not bounds:
        return None
    rank = q * total
    seen = 0.0
    for i, n in enumerate(counts):
        if n > 0 and seen + n >= rank:
            if i >= len(bounds):
                return bounds[-1]
            lower = bounds[i - 1] if i > 0 else 0.0
            return lower + (bounds[i] - lower) * max(0.0, rank - seen) / n
        seen += n
    return bounds[-1]


def merge_activity(answers: Iterable[Mapping[str, Any]], now_ms: int,
                   step_s: float = STEP_S, window_s: float = WINDOW_S) -> dict[str, Any]:
    """Replicas' ``deltas()`` -> one series on a grid of ``step_s``, oldest first, up to
    the last step that is over; a difference counts in the step its second sample fell in.

    A point's rates are None when no replica had a sample in that step (before the
    platform started, or while every replica was down); latencies are None when
    nothing was dispatched in it.
    """
    step_ms = int(step_s * 1000)
    last = now_ms // step_ms - 1  # the newest step that is over (the current one is not)
    first = last - int(window_s / step_s) + 1
    rates: dict[int, dict[str, float]] = {}
    latency: dict[int, list[float]] = {}
    bounds: list[float] = []
    for answer in answers:
        bounds = list(answer.get("bounds") or bounds)
        per_slot: dict[int, tuple[float, dict[str, float]]] = {}
        for at_ms, span, gained, buckets in answer.get("deltas", []):
            slot = int(at_ms) // step_ms
            if not first <= slot <= last:
                continue
            covered, sums = per_slot.get(slot, (0.0, {}))
            for name, n in gained.items():
                sums[name] = sums.get(name, 0.0) + float(n)
            per_slot[slot] = (covered + float(span), sums)
            hist = latency.setdefault(slot, [0.0] * len(buckets))
            for i, n in enumerate(buckets[:len(hist)]):
                hist[i] += float(n)
        for slot, (covered, sums) in per_slot.items():
            total = rates.setdefault(slot, dict.fromkeys(COUNTERS, 0.0))
            for name, n in sums.items():
                total[name] = total.get(name, 0.0) + n / covered
    points = []
    for slot in range(first, last + 1):
        hist = latency.get(slot, [])
        slot_rates = rates.get(slot)
        points.append({
            "t_ms": slot * step_ms,
            "rates": None if slot_rates is None else {
                k: round(v, 3) for k, v in sorted(slot_rates.items())},
            "latency_ms": {f"p{round(q * 100)}": _ms(quantile(q, bounds, hist))
                           for q in QUANTILES},
        })
    return {"step_s": step_s, "window_s": window_s,
            "latency_max_ms": _ms(bounds[-1] if bounds else None), "points": points}


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 2)
