"""taskstream: a distributed task platform on Kafka event logs.

The public facade. Names load on first use, so ``import taskstream`` (and every
CLI command) stays cheap::

    from taskstream import TaskApp, TaskProducer, Worker

    app = TaskApp("billing")

    @app.task(queue="default", timeout=30)
    async def charge(payload, ctx): ...

    with TaskProducer() as producer:
        handle = producer.submit("billing.charge", {"order": 42})
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from taskstream.errors import TaskstreamError
    from taskstream.producer import AsyncTaskProducer, TaskHandle, TaskProducer
    from taskstream.schemas.models import TaskSpec
    from taskstream.settings import Settings, load_settings
    from taskstream.workers import NonRetryableError, Retry, TaskApp, TaskContext, Worker

_EXPORTS = {
    "AsyncTaskProducer": "taskstream.producer",
    "NonRetryableError": "taskstream.workers",
    "Retry": "taskstream.workers",
    "Settings": "taskstream.settings",
    "TaskApp": "taskstream.workers",
    "TaskContext": "taskstream.workers",
    "TaskHandle": "taskstream.producer",
    "TaskProducer": "taskstream.producer",
    "TaskSpec": "taskstream.schemas.models",
    "TaskstreamError": "taskstream.errors",
    "Worker": "taskstream.workers",
    "load_settings": "taskstream.settings",
}

__all__ = [
    "AsyncTaskProducer",
    "NonRetryableError",
    "Retry",
    "Settings",
    "TaskApp",
    "TaskContext",
    "TaskHandle",
    "TaskProducer",
    "TaskSpec",
    "TaskstreamError",
    "Worker",
    "load_settings",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'taskstream' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
