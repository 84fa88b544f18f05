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
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import httpx
from confluent_kafka.admin import AdminClient
from cpu import CpuMeter

from taskstream.dev.platform import DevOptions
from taskstream.dev.procs import (
    Child,
    free_port,
    settings_env,
    start_processor,
    start_worker,
    stop_all,
    taskstream_argv,
)
from taskstream.dev.workload import percentile
from taskstream.producer import TaskProducer
from taskstream.queue_registry import set_up_platform
from taskstream.settings import Settings, load_settings
from taskstream.topics import worker_group

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


#: called once every task is done, before their times are read back (a CPU reading
#: ends there: reading 50,000 states back is the harness's work, not the system's)
Done = Callable[[], object]


def measure_max(system: System, n: int, timeout: float,
                done: Done | None = None) -> dict[str, Any]:
    """Submit ``n`` tasks at once and wait for all of them."""
    since = int(time.time() * 1000) - 1
    started = time.perf_counter()
    ids = system.submit_batch(n)
    submit_s = time.perf_counter() - started
    finished = system.wait_all_done(timeout)
    if done is not None:
        done()
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
                  delay_s: float | None = None, done: Done | None = None) -> dict[str, Any]:
    """Submit at ``rate``/s for ``seconds``; latency percentiles from the task states."""
    since = int(time.time() * 1000) - 1
    ids, achieved = paced(lambda: system.submit_one(delay_s), rate, seconds)
    system.flush()
    finished = system.wait_all_done(timeout + (delay_s or 0.0))
    if done is not None:
        done()
    times = system.times(ids, since)
    result: dict[str, Any] = {
        "target_rate": round(rate, 1), "achieved_rate": round(achieved, 1),
        "seconds": seconds, "tasks": len(ids), "done": len(times),
        "all_done_in_time": finished,
    }
    if delay_s is None:
        result["submit_to_start_ms"] = stats([t.started_ms - t.submitted_ms for t in times])
        result["submit_to_done_ms"] = stats([t.finished_ms - t.submitted_ms for t in times])
        # a backlog that grows shows first in the last tasks submitted
        last = sorted(times, key=lambda t: t.submitted_ms)[len(times) * 3 // 4:]
        result["last_quarter_submit_to_start_ms"] = stats(
            [t.started_ms - t.submitted_ms for t in last])
    else:
        result["delay_s"] = delay_s
        result["start_after_due_ms"] = stats(
            [t.started_ms - (t.due_ms or t.submitted_ms + delay_s * 1000) for t in times])
    return result


def override_env(overrides: Mapping[str, Any]) -> dict[str, str]:
    """Settings as a child's ``TASKSTREAM_*`` variables (JSON for what is not a scalar)."""
    env = {}
    for key, value in overrides.items():
        text = str(value) if isinstance(value, (str, int, float)) else json.dumps(value)
        env[f"TASKSTREAM_{key.upper()}"] = text
    return env


class OursRig:
    """A processor (or more) and worker(s) on fresh topics; a TaskProducer to submit.

    As ``taskstream dev`` runs the platform: 6 event partitions, 3 ready partitions
    per level, a standby replica, workers at dev's concurrency with the async pool
    (``app``: ``examples.tasks``); ``overrides`` change settings for every process.
    Logs at ``warning`` (dev logs at ``info``: a line per task start and success).
    """

    name = "taskstream"

    def __init__(self, bootstrap: str, *, concurrency: int = DevOptions().concurrency,
                 workdir: Path | None = None, ready_timeout: float = 90.0,
                 broker_pids: Sequence[int] = (), app: str = "examples.tasks",
                 task: str = NOOP, **overrides: Any) -> None:
        """``overrides``: more settings for every process of the rig (``session_timeout_s``)."""
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="taskstream-bench-"))
        self.settings: Settings = load_settings(**{
            "bootstrap": bootstrap, "topic_prefix": f"bench{uuid.uuid4().hex[:8]}.",
            "partitions": 6, "ready_partitions": 3, "standby_replicas": 1,
            "kafka_timeout_s": 30.0, "data_dir": self.workdir / "data", **overrides})
        #: the overrides as the children's environment: settings_env passes only the
        #: settings every process of a platform shares (broker, prefix, partitions)
        self.env = override_env(overrides)
        self.concurrency = concurrency
        self.ready_timeout = ready_timeout
        self.broker_pids = list(broker_pids)
        self.app, self.task = app, task
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
                                ready_timeout=self.ready_timeout, env=self.env)
        url = f"http://127.0.0.1:{port}"
        self.processors.append((child, url))
        return url

    def add_worker(self, timeout: float = 90.0) -> None:
        """Start a worker and wait until the group is stable with it (see
        ``wait_group_stable``: measuring before that measures the rebalance)."""
        i = len(self.workers)
        self.workers.append(start_worker(self.settings, self.app,
                                         self.workdir / f"worker{i}.log", ROOT,
                                         concurrency=self.concurrency, pool="async",
                                         env=self.env))
        wait_group_stable(self.settings, len(self.workers), timeout)

    def remove_worker(self) -> None:
        self.workers.pop().stop(20.0)
        if self.workers:
            wait_group_stable(self.settings, len(self.workers), 90.0)

    def meter(self) -> CpuMeter:
        """This rig's processes for CPU readings: processor(s), worker(s), the broker
        (when its PIDs are known) and this process (the client)."""
        meter = CpuMeter()
        meter.add("processor", *(c.pid for c, _ in self.processors))
        meter.add("worker", *(c.pid for c in self.workers))
        if self.broker_pids:
            meter.add("broker", *self.broker_pids)
        meter.add_alone("client", os.getpid())
        return meter

    def config(self) -> dict[str, Any]:
        s = self.settings
        return {"processors": len(self.processors), "workers": len(self.workers),
                "concurrency": self.concurrency, "pool": "async", "partitions": s.partitions,
                "ready_partitions": s.ready_partitions, "standby_replicas": s.standby_replicas,
                "loglevel": "warning"}

    def verify(self, timeout: float = 300.0) -> dict[str, Any]:
        """``taskstream replay verify`` on this rig's topics: is the live task table
        exactly the fold of the log? Its verdict (``ok``) and counts."""
        started = time.monotonic()
        proc = subprocess.run(
            taskstream_argv("replay", "verify", "--json", "--quiet", "--wait-timeout", "120"),
            env=settings_env(self.settings), cwd=ROOT, capture_output=True, text=True,
            timeout=timeout, check=False)
        out: dict[str, Any] = {"exit_code": proc.returncode,
                               "seconds": round(time.monotonic() - started, 1)}
        try:
            body = json.loads(proc.stdout)
        except ValueError:
            out.update(ok=False, error=(proc.stderr or proc.stdout).strip()[-500:])
            return out
        out.update(ok=bool(body.get("ok")), tasks=body.get("tasks"), events=body.get("events"),
                   mismatches=len(body.get("mismatches") or []),
                   skipped=body.get("skipped"))
        return out

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
            ids += [h.task_id for h in self.producer.submit_many([{"name": self.task}] * size)]
        self.producer.flush(60)
        self.expected += n
        return ids

    def submit_one(self, delay_s: float | None = None) -> str:
        self.expected += 1
        if delay_s is None:
            return self.producer.submit(self.task).task_id
        return self.producer.submit(self.task, None, delay=delay_s).task_id

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


def group_assignment(settings: Settings, queue: str = "default") -> tuple[str, list[int]]:
    """The broker's view of a queue's worker group: (state, ready partitions per member)."""
    group = worker_group(settings, queue)
    admin = AdminClient({"bootstrap.servers": settings.bootstrap, "log_level": 0})
    description = admin.describe_consumer_groups([group])[group].result(timeout=30)
    counts = [len(m.assignment.topic_partitions if m.assignment else [])
              for m in description.members]
    return str(description.state.name), counts


def wait_group_stable(settings: Settings, members: int, timeout: float,
                      queue: str = "default") -> float:
    """Wait until the queue's worker group is stable with ``members`` members and every
    ready partition assigned; seconds waited. A warm-up that only runs tasks through
    can finish before a new worker has joined, and the rebalance then lands in the
    middle of the measurement."""
    partitions = settings.ready_partitions * settings.priority_levels
    started = time.monotonic()
    seen: tuple[str, list[int]] = ("", [])
    while time.monotonic() - started < timeout:
        try:
            seen = group_assignment(settings, queue)
        except Exception:  # the group does not exist yet, or the coordinator moves
            seen = ("UNKNOWN", [])
        state, counts = seen
        if state == "STABLE" and len(counts) == members and sum(counts) == partitions:
            return time.monotonic() - started
        time.sleep(0.25)
    raise RuntimeError(f"the worker group of queue {queue!r} was not stable with {members} "
                       f"member(s) holding {partitions} partitions within {timeout:g} s; "
                       f"last seen: {seen}")


def delete_topics(settings: Settings) -> None:
    """Delete every topic of this rig (its prefix), changelogs included."""
    admin = AdminClient({"bootstrap.servers": settings.bootstrap, "log_level": 0})
    names = [t for t in admin.list_topics(timeout=10).topics
             if t.startswith(settings.topic_prefix)]
    if names:
        for future in admin.delete_topics(names, operation_timeout=30).values():
            with contextlib.suppress(Exception):  # a leftover topic is not worth failing for
                future.result(timeout=60)
