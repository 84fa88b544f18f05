"""Errors the producer SDK raises. All derive from :class:`TaskstreamError`.

Each message says what went wrong and what to do next. ``retriable`` follows
the project convention: True when doing the same thing again may succeed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from taskstream.errors import KafkaUnavailableError, TaskstreamError


class ProducerError(TaskstreamError):
    """Root of the producer's own errors."""


class InvalidTaskError(ProducerError, ValueError):
    """A task's options are invalid. ``fields`` names every offending field."""

    def __init__(self, message: str, fields: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.fields = tuple(fields)


class EventTooLargeError(InvalidTaskError):
    """An encoded event is over the size budget (``max_event_bytes``, D28): the broker would
    refuse it. ``fields`` names the biggest part the caller controls."""


class ProducerClosedError(ProducerError):
    """The producer was closed; create a new one."""


@dataclass(frozen=True, slots=True)
class FailedDelivery:
    """One task event the broker did not accept."""

    task_id: str
    event_type: str
    error: str  # the Kafka error, as text
    code: int  # confluent_kafka.KafkaError code
    retriable: bool


class DeliveryError(ProducerError):
    """One or more task events were not delivered to Kafka.

    ``failures`` lists each task ID with the Kafka error; nothing in that list
    reached the events topic, so re-submitting those tasks is safe (use an
    idempotency key to make it a no-op if it did land after all).
    """

    def __init__(self, failures: Sequence[FailedDelivery], bootstrap: str = "") -> None:
        self.failures = tuple(failures)
        self.bootstrap = bootstrap
        self.task_ids = tuple(f.task_id for f in self.failures)
        self.retriable = all(f.retriable for f in self.failures)
        shown = ", ".join(f"{f.task_id} ({f.error})" for f in self.failures[:5])
        more = f" and {len(self.failures) - 5} more" if len(self.failures) > 5 else ""
        where = f" to Kafka at {bootstrap}" if bootstrap else ""
        super().__init__(
            f"{len(self.failures)} task event(s) were not delivered{where}: {shown}{more}. "
            "They are not in the log: submit them again once the cause is fixed."
        )


class BrokerUnreachableError(KafkaUnavailableError, ProducerError):
    """Kafka could not be reached within the configured time."""

    def __init__(self, bootstrap: str, waited_s: float, detail: str = "") -> None:
        self.bootstrap = bootstrap
        self.waited_s = waited_s
        extra = f" ({detail})" if detail else ""
        super().__init__(
            f"cannot reach Kafka at {bootstrap} within {waited_s:g}s{extra}. Check that the "
            "broker is running and that TASKSTREAM_BOOTSTRAP names it "
            "(`taskstream kafka up` starts a local one)."
        )


class UndeliveredOnBrokerDownError(DeliveryError, KafkaUnavailableError):
    """Events failed because the brokers were unreachable (a DeliveryError too)."""

    retriable = True


class FlushTimeoutError(ProducerError):
    """flush() ran out of time with events still waiting for the broker's ack."""

    retriable = True

    def __init__(self, pending: int, timeout_s: float, bootstrap: str, brokers_down: bool) -> None:
        self.pending = pending
        why = (
            f"the brokers at {bootstrap} are unreachable"
            if brokers_down
            else f"Kafka at {bootstrap} is slow to acknowledge"
        )
        super().__init__(
            f"{pending} task event(s) still unacknowledged after {timeout_s:g}s: {why}. "
            "They are still queued; call flush() again, or they fail with a DeliveryError "
            "when delivery_timeout_s passes."
        )


class FlushTimeoutBrokerDownError(FlushTimeoutError, KafkaUnavailableError):
    """flush() timed out and the brokers were unreachable."""


class ProducerQueueFullError(ProducerError):
    """The local send queue stayed full for longer than the configured wait."""

    retriable = True

    def __init__(self, capacity: int, waited_s: float, bootstrap: str) -> None:
        self.capacity = capacity
        self.waited_s = waited_s
        #: submit_many: handles of the tasks sent before the queue filled up
        self.handles: list[Any] = []
        super().__init__(
            f"the producer's local queue ({capacity} messages) stayed full for {waited_s:g}s: "
            f"Kafka at {bootstrap} is not keeping up or is unreachable. Nothing was dropped; "
            "this task was not submitted. Slow down, call flush(), or raise producer_queue_max."
        )


# --- results (the HTTP API) ---------------------------------------------------


class ResultError(ProducerError):
    """Root of errors from TaskHandle.result()."""


class TaskFailedError(ResultError):
    """The task is DEAD: it ran out of attempts or failed for good."""

    def __init__(self, task_id: str, error: dict[str, Any] | None) -> None:
        self.task_id = task_id
        info = error or {}
        self.error_type: str = str(info.get("error_type", ""))
        self.error_message: str = str(info.get("message", ""))
        self.traceback: str = str(info.get("traceback", ""))
        self.attempt: int = int(info.get("attempt", 0) or 0)
        self.timed_out: bool = bool(info.get("timed_out", False))
        what = "timed out" if self.timed_out else f"{self.error_type}: {self.error_message}"
        super().__init__(
            f"task {task_id} failed for good (attempt {self.attempt}): {what}. "
            "Inspect it with GET /tasks/{id}; redrive it with TaskProducer.redrive()."
        )


class SealedResultError(ResultError):
    """A result or error is sealed (D27) and this producer cannot open it: no payload
    keyring, or not the key it was sealed with. The message names what is missing."""


class TaskCancelledError(ResultError):
    """The task was cancelled."""

    def __init__(self, task_id: str, reason: str = "") -> None:
        self.task_id = task_id
        self.reason = reason
        why = f": {reason}" if reason else ""
        super().__init__(f"task {task_id} was cancelled{why}")


class ResultTimeoutError(ResultError, TimeoutError):
    """The task did not finish within the wait."""

    retriable = True

    def __init__(self, task_id: str, timeout_s: float, status: str) -> None:
        self.task_id = task_id
        self.status = status
        super().__init__(
            f"task {task_id} did not finish within {timeout_s:g}s (status {status}); "
            "call result() again with a longer timeout"
        )


class DeliveryTimeoutError(ProducerError, TimeoutError):
    """TaskHandle.delivered() ran out of time before the broker acknowledged."""

    retriable = True


class ApiUnavailableError(ResultError):
    """The taskstream HTTP API could not be reached or answered badly."""

    retriable = True


class ApiBusyError(ApiUnavailableError):
    """The API asked this client to come back later (its wait was over the replica's
    ``api_max_waiters``, or over the request rate) until the wait's time ran out. The
    task is not affected: ask again later."""

    retriable = True


class TaskNotFoundError(ResultError):
    """The replica owning the task has folded past its submit's record and holds no such
    task: it was refused by the fold, or purged by retention (docs/storage.md). Waiting
    longer will not make it appear."""

    def __init__(self, task_id: str, detail: str = "") -> None:
        self.task_id = task_id
        extra = f" ({detail})" if detail else ""
        super().__init__(
            f"task {task_id} is not known to the API although its replica has folded past "
            f"its submit{extra}: it was refused (see the processor's log) or already purged")


class ResultIntegrityError(ResultError):
    """A streamed result did not match its sha256 (a torn or corrupted transfer)."""

    retriable = True
