"""Celery with a Redis broker on this machine, behind the calls ``bench_e2e`` measures.

``CeleryRig`` starts its own ``redis-server`` on a free 127.0.0.1 port with
persistence stated (AOF on, ``appendfsync everysec``, no RDB snapshots) and one
``celery worker`` with Celery's defaults: the prefork pool at concurrency = CPU
count, unless told otherwise (``pool="threads"`` for the second row), gossip,
mingle and heartbeats on. It submits ``bench.noop`` (celery_app.py: acks late,
Redis result backend) and reads each task's submitted/started/finished times
back from the result backend. ``meter()`` reads the CPU of the worker with its
pool processes and of Redis.

Durability, compared: our events are acknowledged by Kafka (acks=all) once in the
broker's page cache; Kafka does not fsync each write (replication is its
durability; one broker here). Redis with AOF writes every command to the file
before answering and fsyncs once a second. Both survive a crash of the broker
process; neither survives a power cut for the last second or so.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import redis
from bench_e2e import Times
from cpu import CpuMeter

from taskstream.dev.procs import Child, ChildSpec, free_port

HERE = Path(__file__).resolve().parent
INSTALL_HINT = ("redis-server is not installed; on Debian/Ubuntu: "
                "`apt-get update && apt-get install -y redis-server`")


def redis_server() -> str:
    path = shutil.which("redis-server")
    if path is None:
        raise RuntimeError(INSTALL_HINT)
    return path


class CeleryRig:
    name = "celery"

    def __init__(self, *, concurrency: int | None = None, pool: str = "prefork",
                 workdir: Path | None = None) -> None:
        """``concurrency``: Celery's default (the CPU count) when None."""
        from celery_app import app, noop

        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="taskstream-bench-celery-"))
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}"
        self.concurrency, self.pool = concurrency or os.cpu_count() or 1, pool
        self.children: list[Child] = []
        self.pending: dict[str, None] = {}  # submitted, not seen done; in submit order
        self.redis_version = ""
        os.environ["BENCH_REDIS_URL"] = self.url
        app.conf.broker_url, app.conf.result_backend = f"{self.url}/0", f"{self.url}/1"
        # a rig before this one, in this process, left the app holding its stopped Redis:
        # the producer pool and the result backend are cached on the app (Celery resets
        # them only after a fork), so the next run's results went to the old port
        app._after_fork()
        app._backend_cache = None
        app._local = threading.local()
        self.app, self.noop = app, noop
        self.results = redis.Redis(host="127.0.0.1", port=self.port, db=1)

    def start(self, timeout: float = 60.0) -> None:
        server = Child(ChildSpec(
            "redis-server",
            (redis_server(), "--port", str(self.port), "--bind", "127.0.0.1",
             "--dir", str(self.workdir), "--appendonly", "yes", "--appendfsync", "everysec",
             "--save", "", "--daemonize", "no"),
            self.workdir / "redis.log", dict(os.environ), self.workdir))
        self.children.append(server)
        server.wait_until("answering PING", self._pings, timeout)
        info = self.results.info("server")
        self.redis_version = str(info.get("redis_version", ""))
        env = dict(os.environ, BENCH_REDIS_URL=self.url, PYTHONPATH=str(HERE))
        worker = Child(ChildSpec(
            "celery worker",
            (sys.executable, "-m", "celery", "-A", "celery_app", "worker", "--pool", self.pool,
             "--concurrency", str(self.concurrency), "--loglevel", "WARNING"),
            self.workdir / "celery.log", env, HERE))
        self.children.append(worker)

    def _pings(self) -> bool:
        try:
            return bool(self.results.ping())
        except redis.RedisError:
            return False

    def warm_up(self, n: int = 20, timeout: float = 60.0) -> None:
        self.submit_batch(n)
        if not self.wait_all_done(timeout):
            raise RuntimeError(f"Celery warm-up did not finish in {timeout:g} s; "
                               f"see {self.workdir / 'celery.log'}")

    # -- the System calls -----------------------------------------------------------

    def submit_batch(self, n: int) -> list[str]:
        ids = []
        with self.app.producer_or_acquire() as producer:
            for _ in range(n):
                ids.append(self.noop.apply_async((time.time() * 1000,), producer=producer).id)
        self.pending.update(dict.fromkeys(ids))
        return ids

    def submit_one(self, delay_s: float | None = None) -> str:
        task_id = str(self.noop.apply_async((time.time() * 1000,), countdown=delay_s).id)
        self.pending[task_id] = None
        return task_id

    def flush(self) -> None:
        """apply_async returns once Redis has the message: nothing is buffered."""

    def _metas(self, ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for lo in range(0, len(ids), 1000):
            chunk = list(ids[lo : lo + 1000])
            values = self.results.mget([f"celery-task-meta-{i}" for i in chunk])
            for task_id, raw in zip(chunk, values, strict=True):
                if raw is not None:
                    out[task_id] = json.loads(raw)
        return out

    def wait_all_done(self, timeout: float) -> bool:
        """Poll the result backend until every pending task succeeded. While the last
        100 submitted are not all done, only they are read (Redis serves the poll too:
        reading 50,000 keys twice a second would show in its CPU per task)."""
        deadline = time.monotonic() + timeout
        while self.pending:
            tail = list(self.pending)[-100:]
            if self._done(tail) == len(tail):  # the newest are done: read the rest
                self._done(list(self.pending))
            if not self.pending:
                break
            if time.monotonic() > deadline:
                return False
            time.sleep(0.5)
        return True

    def _done(self, ids: list[str]) -> int:
        """How many of ``ids`` succeeded; those are no longer pending."""
        finished = [t for t, m in self._metas(ids).items() if m.get("status") == "SUCCESS"]
        for task_id in finished:
            self.pending.pop(task_id, None)
        return len(finished)

    def times(self, ids: Sequence[str], since_ms: int) -> list[Times]:
        out = []
        for meta in self._metas(ids).values():
            result = meta.get("result")
            if meta.get("status") == "SUCCESS" and isinstance(result, dict):
                out.append(Times(result["submitted_ms"], result["started_ms"],
                                 result["finished_ms"]))
        return out

    def meter(self) -> CpuMeter:
        """The Celery worker with its pool processes, Redis, and this process (client)."""
        meter = CpuMeter()
        names = {c.name: c.pid for c in self.children}
        meter.add("celery worker", names["celery worker"])
        meter.add("redis", names["redis-server"])
        meter.add_alone("client", os.getpid())
        return meter

    def close(self) -> None:
        for child in reversed(self.children):
            child.stop(15.0)
        self.children.clear()
        self.results.close()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def config(self) -> dict[str, Any]:
        return {"broker": "redis", "redis_version": self.redis_version,
                "redis_persistence": {"appendonly": "yes", "appendfsync": "everysec",
                                      "rdb_snapshots": "off"},
                "pool": self.pool, "concurrency": self.concurrency, "worker_processes": 1,
                "acks_late": True, "result_backend": "redis", "loglevel": "warning"}
