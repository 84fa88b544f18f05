"""One error tree for the whole platform.

Every error a user can see derives from :class:`TaskstreamError` and says what
went wrong and what to do. Subpackages add their own subclasses in their own
``errors`` module, always under this root. ``retriable`` tells callers whether
trying the same thing again may succeed (aiokafka's convention).
"""

from __future__ import annotations


class TaskstreamError(Exception):
    """Root of every error raised by taskstream."""

    retriable: bool = False


class ConfigError(TaskstreamError):
    """A setting is missing or invalid. The message names the field."""


class KafkaUnavailableError(TaskstreamError):
    """The Kafka cluster could not be reached in time."""

    retriable = True


class KafkaAuthError(TaskstreamError):
    """The brokers refused this client: wrong credentials, an unverifiable certificate or
    missing ACLs. Retrying as configured will not help; the message says what to check."""


class LocalKafkaError(TaskstreamError):
    """The local Kafka runner could not install, start or stop a broker."""


class TopicError(TaskstreamError):
    """A topic could not be created or described."""


class UnknownQueueError(TaskstreamError, ValueError):
    """A submission names a queue nobody registered (taskstream/queue_registry.py, D31).
    Register the queue first; submitting again as is will not help."""

    def __init__(self, queues: list[str]) -> None:
        self.queues = queues
        names = ", ".join(repr(q) for q in queues)
        listed = ",".join(queues)
        super().__init__(
            f"queue{'s' if len(queues) > 1 else ''} {names} "
            f"{'are' if len(queues) > 1 else 'is'} not registered: tasks are accepted only "
            f"for known queues. Register with `taskstream topics create --queues {listed}` "
            "or POST /queues (admin scope), then submit again")
