"""End-to-end no-op tasks on this machine: broker + processor(s) + worker(s).

``OursRig`` runs the platform as real processes (``taskstream processor``,
``taskstream worker -A examples.tasks``) on fresh topics of the given broker;
``bench_celery.CeleryRig`` offers the same five calls for Celery, so every
measurement below runs unchanged on both:

* :func:`measure_max`: submit ``n`` no-op tasks as fast as the client can, wait
  until all are done; throughput is tasks / (last finish - first submit), and the
  steady rate counts the middle 80 % of finishes;
* :func:`measure_paced`: submit at a fixed rate (one call per task) for some
  seconds; submit-to-start and submit-to-done percentiles; with ``delay_s``, how
  late each task started after its due time.

Times come from the task states (``submitted_at_ms``, ``started_at_ms``,
``finished_at_ms`` read back through ``GET /tasks``), never from the harness's
own clock around a call. Nothing here asserts a timing.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import httpx
from confluent_kafka.admin import AdminClient

from taskstream.dev.procs import Child, free_port, start_processor, start_worker, stop_all
from taskstream.dev.workload import percentile
from taskstream.producer import TaskProducer
from taskstream.queue_registry import set_up_platform
from taskstream.settings import Settings, load_settings

ROOT = Path(__file__).resolve().parent.parent
NOOP = "examples.noop"
CHUNK = 5_000


@dataclass(frozen=True)
class Times:
    """One finished task: epoch milliseconds; ``due_ms`` only for delayed tasks."""

    submitted_ms: float
    started_ms: float
    finished_ms: float
    due_ms: float | None = None


class System(Protocol):
    name: str

    def submit_batch(self, n: int) -> list[str]: ...

    def submit_one(self, delay_s: float | None = None) -> str: ...

    def flush(self) -> None: ...

    def wait_all_done(self, timeout: float) -> bool: ...

    def times(self, ids: Sequence[str], since_ms: int) -> list[Times]: ...


def stats(values: Sequence[float]) -> dict[str, float | int | None]:
    return {"n": len(values), "p50": percentile(values, 50), "p95": percentile(values, 95),
            "p99": percentile(values, 99), "max": max(values) if values else None}


def _rates(times: Sequence[Times]) -> tuple[float | None, float | None]:
    """(tasks / (last finish - first submit), finishes/s over the middle 80 % of them)."""
    if len(times) < 2:
        return None, None
    ends = sorted(t.finished_ms for t in times)
    span = (ends[-1] - min(t.submitted_ms for t in times)) / 1000.0
    lo, hi = int(len(ends) * 0.1), int(len(ends) * 0.9) - 1
    middle = (ends[hi] - ends[lo]) / 1000.0
    return (len(times) / span if span > 0 else None,
            (hi - lo) / middle if hi > lo and middle > 0 else None)


def measure_max(system: System, n: int, timeout: float) -> dict[str, Any]:
    """Submit ``n`` tasks at once and wait for all of them."""
    since = int(time.time() * 1000) - 1
    started = time.perf_counter()
    ids = system.submit_batch(n)
    submit_s = time.perf_counter() - started
    finished = system.wait_all_done(timeout)
    times = system.times(ids, since)
    overall, steady = _rates(times)
    return {
        "tasks": n, "done": len(times), "all_done_in_time": finished,
        "submit_s": round(submit_s, 3), "tasks_per_s": overall, "steady_tasks_per_s": steady,
        "submit_to_start_ms": stats([t.started_ms - t.submitted_ms for t in times]),
        "submit_to_done_ms": stats([t.finished_ms - t.submitted_ms for t in times]),
        "finish_ms": sorted(t.finished_ms for t in times),
    }


def paced(submit: Callable[[], str], rate: float, seconds: float,
          stop: threading.Event | None = None) -> tuple[list[str], float]:
    """Call ``submit`` ``rate`` times a second for ``seconds``; (ids, achieved rate)."""
    ids: list[str] = []
    count = max(1, int(rate * seconds))
    began = time.perf_counter()
    for i in range(count):
        if stop is not None and stop.is_set():
            break
        due = began + i / rate
        wait = due - time.perf_counter()
        if wait > 0:
            time.sleep(wait)
        ids.append(submit())
    elapsed = time.perf_counter() - began
    return ids, len(ids) / elapsed if elapsed > 0 else 0.0


def measure_paced(system: System, rate: float, seconds: float, timeout: float,
                  delay_s: float | None = None) -> dict[str, Any]:
    """Submit at ``rate``/s for ``seconds``; latency percentiles from the task states."""
    since = int(time.time() * 1000) - 1
    ids, achieved = paced(lambda: system.submit_one(delay_s), rate, seconds)
    system.flush()
    finished = system.wait_all_done(timeout + (delay_s or 0.0))
    times = system.times(ids, since)
    result: dict[str, Any] = {
        "target_rate": round(rate, 1), "achieved_rate": round(achieved, 1),
        "seconds": seconds, "tasks": len(ids), "done": len(times),
        "all_done_in_time": finished,
    }
    if delay_s is None:
        result["submit_to_start_ms"] = stats([t.started_ms - t.submitted_ms for t in times])
        result["submit_to_done_ms"] = stats([t.finished_ms - t.submitted_ms for t in times])
    else:
        result["delay_s"] = delay_s
        result["start_after_due_ms"] = stats(
            [t.started_ms - (t.due_ms or t.submitted_ms + delay_s * 1000) for t in times])
    return result


def load_profile(system: System, max_rate: float, fractions: Sequence[float], seconds: float,
                 timeout: float) -> list[dict[str, Any]]:
    """Latency at each fraction of the measured maximum rate."""
    out = []
    for fraction in fractions:
        row = measure_paced(system, max(1.0, max_rate * fraction), seconds, timeout)
        row["fraction_of_max"] = fraction
        out.append(row)
    return out


class OursRig:
    """A processor (or more) and worker(s) on fresh topics; a TaskProducer to submit."""

    name = "taskstream"

    def __init__(self, bootstrap: str, *, concurrency: int = 16, workdir: Path | None = None,
                 ready_timeout: float = 90.0, **overrides: Any) -> None:
        """``overrides``: more settings for every process of the rig (``session_timeout_s``)."""
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="taskstream-bench-"))
        self.settings: Settings = load_settings(**{
            "bootstrap": bootstrap, "topic_prefix": f"bench{uuid.uuid4().hex[:8]}.",
            "partitions": 6, "ready_partitions": 3, "standby_replicas": 1,
            "kafka_timeout_s": 30.0, "data_dir": self.workdir / "data", **overrides})
        self.concurrency = concurrency
        self.ready_timeout = ready_timeout
        self.processors: list[tuple[Child, str]] = []
        self.workers: list[Child] = []
        self.expected = 0
        set_up_platform(self.settings)  # topics, and the queues registered
        self.producer = TaskProducer(self.settings, source="bench")
        self.http = httpx.Client(timeout=30.0)

    @property
    def api(self) -> str:
        return self.processors[0][1]

    def add_processor(self) -> str:
        port = free_port()
        i = len(self.processors)
        child = start_processor(self.settings, self.workdir / f"replica{i}", port,
                                self.workdir / f"processor{i}.log", ROOT,
                                ready_timeout=self.ready_timeout)
        url = f"http://127.0.0.1:{port}"
        self.processors.append((child, url))
        return url

    def add_worker(self) -> None:
        i = len(self.workers)
        self.workers.append(start_worker(self.settings, "examples.tasks",
                                         self.workdir / f"worker{i}.log", ROOT,
                                         concurrency=self.concurrency, pool="async"))

    def remove_worker(self) -> None:
        self.workers.pop().stop(20.0)

    def warm_up(self, n: int = 20, timeout: float = 120.0) -> float:
        """Run ``n`` tasks through (groups joined, caches warm); seconds it took."""
        started = time.monotonic()
        self.submit_batch(n)
        if not self.wait_all_done(timeout):
            logs = ", ".join(str(p) for p in sorted(self.workdir.glob("*.log")))
            raise RuntimeError(f"warm-up tasks did not finish in {timeout:g} s; see {logs}")
        return time.monotonic() - started

    # -- the System calls -----------------------------------------------------------

    def submit_batch(self, n: int) -> list[str]:
        ids: list[str] = []
        for lo in range(0, n, CHUNK):
            size = min(CHUNK, n - lo)
            ids += [h.task_id for h in self.producer.submit_many([{"name": NOOP}] * size)]
        self.producer.flush(60)
        self.expected += n
        return ids

    def submit_one(self, delay_s: float | None = None) -> str:
        self.expected += 1
        if delay_s is None:
            return self.producer.submit(NOOP).task_id
        return self.producer.submit(NOOP, None, delay=delay_s).task_id

    def flush(self) -> None:
        self.producer.flush(60)

    def succeeded(self) -> int:
        response = self.http.get(f"{self.api}/queues")
        response.raise_for_status()
        return sum(int(q["counts"].get("SUCCEEDED", 0)) for q in response.json()["queues"])

    def wait_all_done(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if self.succeeded() >= self.expected:
                    return True
            except (httpx.HTTPError, KeyError):
                pass  # 503 during a rebalance
            time.sleep(1.0)  # /queues counts index keys: do not load the processor much
        return False

    def times(self, ids: Sequence[str], since_ms: int) -> list[Times]:
        wanted = set(ids)
        out: list[Times] = []
        cursor: str | None = None
        for _ in range(10_000):
            params: dict[str, Any] = {"state": "SUCCEEDED", "since": since_ms, "limit": 1000}
            if cursor:
                params["cursor"] = cursor
            body = self._get_listing(params)
            for item in body["items"]:
                if item["task_id"] in wanted and item.get("started_at_ms"):
                    out.append(Times(item["submitted_at_ms"], item["started_at_ms"],
                                     item["finished_at_ms"]))
            cursor = body.get("next_cursor")
            if not cursor:
                break
        return out

    def _get_listing(self, params: dict[str, Any]) -> dict[str, Any]:
        for _ in range(30):
            response = self.http.get(f"{self.api}/tasks", params=params)
            if response.status_code == 503:
                time.sleep(1.0)
                continue
            response.raise_for_status()
            body: dict[str, Any] = response.json()
            return body
        raise RuntimeError("GET /tasks answered 503 for 30 s")

    def close(self) -> None:
        with contextlib.suppress(Exception):  # closing goes on whatever the producer says
            self.producer.close(30)
        self.http.close()
        stop_all([*reversed(self.workers), *(c for c, _ in reversed(self.processors))])
        self.workers.clear()
        self.processors.clear()
        delete_topics(self.settings)
        shutil.rmtree(self.workdir, ignore_errors=True)


def delete_topics(settings: Settings) -> None:
    """Delete every topic of this rig (its prefix), changelogs included."""
    admin = AdminClient({"bootstrap.servers": settings.bootstrap, "log_level": 0})
    names = [t for t in admin.list_topics(timeout=10).topics
             if t.startswith(settings.topic_prefix)]
    if names:
        for future in admin.delete_topics(names, operation_timeout=30).values():
            with contextlib.suppress(Exception):  # a leftover topic is not worth failing for
                future.result(timeout=60)
