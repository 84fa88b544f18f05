"""The worker runtime: task registry (``@app.task``), consumer groups per queue,
priority-aware fetching, concurrency, heartbeats, timeouts, cancellation and
graceful shutdown. See docs/workers.md.
"""

from taskstream.workers.context import TaskContext
from taskstream.workers.errors import NonRetryableError, Retry, TaskLoadError, WorkerError, fail
from taskstream.workers.registry import TaskApp, TaskDef, TaskRegistry
from taskstream.workers.runtime import Pool
from taskstream.workers.worker import Worker

__all__ = [
    "NonRetryableError",
    "Pool",
    "Retry",
    "TaskApp",
    "TaskContext",
    "TaskDef",
    "TaskLoadError",
    "TaskRegistry",
    "Worker",
    "WorkerError",
    "fail",
]
