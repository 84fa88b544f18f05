"""taskstream.producer: the client SDK that submits tasks to the events topic.

``TaskProducer`` (blocking) and ``AsyncTaskProducer`` (asyncio) send
``TaskSubmitted``, ``CancelRequested`` and ``RedriveRequested`` events keyed by
task ID, idempotent and acks=all; handles report delivery and, through the
HTTP API, the task's result. See docs/producer.md.
"""

from taskstream.errors import UnknownQueueError
from taskstream.producer.aio import AsyncTaskProducer
from taskstream.producer.errors import (
    ApiBusyError,
    ApiUnavailableError,
    BrokerUnreachableError,
    DeliveryError,
    DeliveryTimeoutError,
    FailedDelivery,
    FlushTimeoutError,
    InvalidTaskError,
    ProducerClosedError,
    ProducerError,
    ProducerQueueFullError,
    ResultTimeoutError,
    TaskCancelledError,
    TaskFailedError,
    TaskNotFoundError,
)
from taskstream.producer.handle import AsyncTaskHandle, TaskHandle
from taskstream.producer.metrics import ProducerMetrics, producer_metrics
from taskstream.producer.sync import TaskProducer

__all__ = [
    "ApiBusyError",
    "ApiUnavailableError",
    "AsyncTaskHandle",
    "AsyncTaskProducer",
    "BrokerUnreachableError",
    "DeliveryError",
    "DeliveryTimeoutError",
    "FailedDelivery",
    "FlushTimeoutError",
    "InvalidTaskError",
    "ProducerClosedError",
    "ProducerError",
    "ProducerMetrics",
    "ProducerQueueFullError",
    "ResultTimeoutError",
    "TaskCancelledError",
    "TaskFailedError",
    "TaskHandle",
    "TaskNotFoundError",
    "TaskProducer",
    "UnknownQueueError",
    "producer_metrics",
]
