"""The Celery side of the comparison: one no-op task, Redis broker and result backend.

Celery's defaults plus what brings it closest to taskstream's guarantees (issue
12): ``task_acks_late`` (a task is acknowledged after it ran: at-least-once, like
our lease) and a result backend (every task's outcome is stored, like our task
state). ``task_track_started`` stays off, as by default: the task returns its own
start time. The broker URL comes from ``BENCH_REDIS_URL``.
"""

from __future__ import annotations

import os
import time
from typing import Any

from celery import Celery

REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379")

app = Celery("bench", broker=f"{REDIS_URL}/0", backend=f"{REDIS_URL}/1")
app.conf.update(
    task_acks_late=True,
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    result_expires=3600,
    worker_hijack_root_logger=False,
    broker_connection_retry_on_startup=True,
)


@app.task(name="bench.noop")  # type: ignore[untyped-decorator]
def noop(submitted_ms: float) -> dict[str, Any]:
    """Does nothing; returns the times the comparison needs (epoch ms)."""
    started = time.time() * 1000
    return {"submitted_ms": submitted_ms, "started_ms": started, "finished_ms": time.time() * 1000}
