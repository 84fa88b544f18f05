"""Names of the platform's topics and consumer groups (DESIGN.md, "Topics"), derived here only.

Every topic name carries the configured prefix. Ready topics are one per queue,
tag set and priority level (D38): ``<prefix>ready.<queue>.p<level>`` for untagged
tasks, ``<prefix>ready.<queue>.t.<tag1>.<tag2>.p<level>`` for a task with tags
(sorted, without repeats); a higher level runs first. Neither queue names nor
tags hold a dot, so a name reads back without ambiguity. A worker started with
tags T reads the topics of every subset of T (the untagged ones included),
through one regular-expression subscription (:func:`ready_subscription`).
The processors are one Faust app, ``<prefix>processor``: that id is their
consumer group and the prefix of their tables' changelogs
(``<app id>-<table>-changelog``), which replay verify reads.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from taskstream.settings import Settings

QUEUE_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
#: a routing tag: like a queue name, shorter (it becomes a segment of a topic name)
TAG_NAME = re.compile(r"^[A-Za-z0-9_-]{1,32}$")
#: tags of one task at most (its ready topic name must stay under Kafka's 249 characters)
MAX_TASK_TAGS = 4
#: tags of one worker at most (its subscription is every subset of them)
MAX_WORKER_TAGS = 16
#: Kafka refuses longer topic names
MAX_TOPIC_NAME = 249
_TAGGED = "t"

EVENTS = "events"
QUEUES = "queues"
CANCELLATIONS = "cancellations"
DLQ = "dlq"
QUARANTINE = "quarantine"
PROCESSOR = "processor"
#: the processor's task table (a Faust table: its changelog is a topic)
TASK_TABLE = "tasks"
#: replay's consumers only assign partitions; librdkafka still wants a group id
REPLAY_GROUP = "taskstream-replay-assign-only"


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


def canonical_tags(tags: Iterable[str], *, most: int = MAX_TASK_TAGS) -> tuple[str, ...]:
    """Tags sorted and without repeats; a bad tag or too many raise ValueError."""
    unique = sorted(set(tags))
    for tag in unique:
        if not isinstance(tag, str) or not TAG_NAME.match(tag):
            raise ValueError(f"tag {tag!r} is not legal: 1-32 letters, digits, '_' or '-'")
    if len(unique) > most:
        raise ValueError(f"{len(unique)} tags given; at most {most} are allowed")
    return tuple(unique)


def ready_topic(settings: Settings, queue: str, level: int, tags: Iterable[str] = ()) -> str:
    """The ready topic of (queue, tag set, level). Raises ValueError when the name would be
    longer than Kafka allows (a long prefix, queue name and tags together)."""
    tagset = canonical_tags(tags, most=MAX_WORKER_TAGS)
    middle = "".join(f".{tag}" for tag in tagset)
    name = settings.topic(f"ready.{queue}{'.' + _TAGGED if tagset else ''}{middle}.p{level}")
    if len(name) > MAX_TOPIC_NAME:
        raise ValueError(f"the ready topic for queue {queue!r} and tags {list(tagset)} would be "
                         f"{len(name)} characters, over Kafka's {MAX_TOPIC_NAME}; use shorter "
                         "tags, a shorter queue name or a shorter topic prefix")
    return name


def ready_topics(settings: Settings, queue: str, tags: Iterable[str] = ()) -> list[str]:
    """The ready topics of one queue and tag set, highest priority first."""
    return [ready_topic(settings, queue, lvl, tags)
            for lvl in reversed(range(settings.priority_levels))]


@dataclass(frozen=True, slots=True)
class ReadyTopic:
    """What a ready topic's name says."""

    queue: str
    tags: tuple[str, ...]
    level: int


def parse_ready_topic(settings: Settings, name: str) -> ReadyTopic | None:
    """The (queue, tags, level) of a ready topic's name; None for any other topic."""
    head = settings.topic("ready.")
    if not name.startswith(head):
        return None
    parts = name[len(head):].split(".")
    if len(parts) < 2 or not QUEUE_NAME.match(parts[0]):
        return None
    level = parts[-1]
    if len(level) < 2 or level[0] != "p" or not level[1:].isdigit():
        return None
    middle = parts[1:-1]
    if not middle:
        return ReadyTopic(parts[0], (), int(level[1:]))
    if middle[0] != _TAGGED or len(middle) < 2:
        return None
    tags = tuple(middle[1:])
    if list(tags) != sorted(set(tags)) or not all(TAG_NAME.match(t) for t in tags):
        return None
    return ReadyTopic(parts[0], tags, int(level[1:]))


def ready_subscription(settings: Settings, queue: str, worker_tags: Iterable[str] = ()
                       ) -> list[str]:
    """What a worker of ``queue`` with ``worker_tags`` subscribes to: the untagged topics by
    name when it has no tags, else one regular expression (librdkafka's ``^`` form) matching
    the topics of every non-empty subset of its tags and the untagged ones. Tagged topics
    are made when the first task with that tag set is dispatched; a pattern picks them up
    at the next metadata refresh, and matches no topic of a tag the worker lacks."""
    tagset = canonical_tags(worker_tags, most=MAX_WORKER_TAGS)
    if not tagset:
        return ready_topics(settings, queue)
    prefix = settings.topic("ready.").replace(".", "\\.")
    optional = "".join(f"(\\.{tag})?" for tag in tagset)
    top = settings.priority_levels - 1
    return [f"^{prefix}{queue}(\\.{_TAGGED}{optional})?\\.p[0-{min(top, 9)}]$"]


def processor_app_id(settings: Settings) -> str:
    """The Faust app id: the processors' consumer group and changelog prefix."""
    return settings.topic(PROCESSOR)


def changelog_topic(settings: Settings, table: str) -> str:
    """A processor table's changelog (Faust: ``<app id>-<table>-changelog``)."""
    return f"{processor_app_id(settings)}-{table}-changelog"


def task_changelog_topic(settings: Settings) -> str:
    return changelog_topic(settings, TASK_TABLE)


def worker_group(settings: Settings, queue: str) -> str:
    """The consumer group of the workers of ``queue`` (they share its ready topics)."""
    return settings.topic(f"workers.{queue}")


def worker_control_group(settings: Settings, instance: str) -> str:
    """One worker's own group for the cancellations and queues topics (it reads all of them)."""
    return settings.topic(f"workers.control.{instance}")


def api_reader_group(instance: str) -> str:
    """A group id for one read of the queues topic by the API (never joined)."""
    return f"taskstream-api-{instance}"
