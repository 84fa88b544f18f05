"""taskstream.producer: the client SDK that submits tasks to the events topic.

``TaskProducer`` (blocking) and ``AsyncTaskProducer`` (asyncio) send
``TaskSubmitted``, ``CancelRequested`` and ``RedriveRequested`` events keyed by
task ID, idempotent and acks=all; handles report delivery and, through the
HTTP API, the task's result. See docs/producer.md.
"""

from taskstream.errors import UnknownQueueError
from taskstream.producer.aio import AsyncTaskProducer
from taskstream.producer.errors import (
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
)
from taskstream.producer.handle import AsyncTaskHandle, TaskHandle
from taskstream.producer.metrics import ProducerMetrics, producer_metrics
from taskstream.producer.sync import TaskProducer

__all__ = [
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
    "TaskProducer",
    "UnknownQueueError",
    "producer_metrics",
]
