"""Names of the platform's topics (DESIGN.md, "Topics").

Every name carries the configured prefix. Ready topics are one per queue and
priority level: ``<prefix>ready.<queue>.p<level>``; a higher level runs first.
"""

from __future__ import annotations

import re

from taskstream.settings import Settings

QUEUE_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")

EVENTS = "events"
QUEUES = "queues"
CANCELLATIONS = "cancellations"
DLQ = "dlq"
QUARANTINE = "quarantine"


def events_topic(settings: Settings) -> str:
    return settings.topic(EVENTS)


def queues_topic(settings: Settings) -> str:
    return settings.topic(QUEUES)


def cancellations_topic(settings: Settings) -> str:
    return settings.topic(CANCELLATIONS)


def dlq_topic(settings: Settings) -> str:
    return settings.topic(DLQ)


def quarantine_topic(settings: Settings) -> str:
    """Records that could not be decoded, kept byte for byte with the reason in headers."""
    return settings.topic(QUARANTINE)


def ready_topic(settings: Settings, queue: str, level: int) -> str:
    return settings.topic(f"ready.{queue}.p{level}")


def ready_topics(settings: Settings, queue: str) -> list[str]:
    """The queue's ready topics, highest priority first."""
    return [ready_topic(settings, queue, lvl) for lvl in reversed(range(settings.priority_levels))]
