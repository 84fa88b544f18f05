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

import hashlib
import json
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
#: the one tag of a dispatch whose tags no worker could hold (route_tags); 43 characters,
#: longer than any legal tag, so no worker can be started with it
UNROUTABLE = "unroutable-"
_UNROUTABLE_LEN = 43
#: a tag segment as a ready topic's name may hold it (legal tags and the placeholder)
_TOPIC_TAG = re.compile(r"^[A-Za-z0-9_-]{1,43}$")

EVENTS = "events"
QUEUES = "queues"
CANCELLATIONS = "cancellations"
DLQ = "dlq"
QUARANTINE = "quarantine"
WORKERS = "workers"
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


def workers_topic(settings: Settings) -> str:
    """Live workers: one record per worker (key = worker id), compacted (workers/presence.py)."""
    return settings.topic(WORKERS)


def ready_topic_prefix(settings: Settings, queue: str | None = None) -> str:
    """What the ready topics of ``queue`` (of every queue when None) start with (ACLs, D25).
    A queue's tagged topics (D38) start with it too: no queue name holds a dot."""
    return settings.topic("ready.") if queue is None else settings.topic(f"ready.{queue}.")


def canonical_tags(tags: Iterable[str], *, most: int = MAX_TASK_TAGS) -> tuple[str, ...]:
    """Tags sorted and without repeats; a bad tag or too many raise ValueError."""
    unique = sorted(set(tags))
    for tag in unique:
        if not isinstance(tag, str) or not TAG_NAME.match(tag):
            raise ValueError(f"tag {tag!r} is not legal: 1-32 letters, digits, '_' or '-'")
    if len(unique) > most:
        raise ValueError(f"{len(unique)} tags given; at most {most} are allowed")
    return tuple(unique)


def _ready_name(settings: Settings, queue: str, level: int, tagset: tuple[str, ...]) -> str:
    middle = "".join(f".{tag}" for tag in tagset)
    name = settings.topic(f"ready.{queue}{'.' + _TAGGED if tagset else ''}{middle}.p{level}")
    if len(name) > MAX_TOPIC_NAME:
        raise ValueError(f"the ready topic for queue {queue!r} and tags {list(tagset)} would be "
                         f"{len(name)} characters, over Kafka's {MAX_TOPIC_NAME}; use shorter "
                         "tags, a shorter queue name or a shorter topic prefix")
    return name


def ready_topic(settings: Settings, queue: str, level: int, tags: Iterable[str] = ()) -> str:
    """The ready topic of (queue, tag set, level). Raises ValueError for a bad tag or when
    the name would be longer than Kafka allows (a long prefix, queue name and tags)."""
    return _ready_name(settings, queue, level, canonical_tags(tags, most=MAX_WORKER_TAGS))


def route_tags(settings: Settings, queue: str, tags: Iterable[str]) -> tuple[str, ...]:
    """The tag set a dispatch is routed by: its tags made canonical, or, for tags no worker
    could ever hold (not legal, too many, a topic name too long: only events written by
    hand get past the SDK's checks), one placeholder longer than any legal tag, so the
    task waits in a topic of its own, reported unserved, and never runs on a worker that
    lacks one of its tags. Never raises; ``route_tags`` of its own result is that result."""
    raw = list(tags)
    if len(raw) == 1 and raw[0].startswith(UNROUTABLE) and len(raw[0]) == _UNROUTABLE_LEN:
        return (raw[0],)
    try:
        tagset = canonical_tags(raw, most=MAX_WORKER_TAGS)
        _ready_name(settings, queue, 9, tagset)
        return tagset
    except (ValueError, TypeError):
        digest = hashlib.sha256(json.dumps(sorted(map(str, raw))).encode()).hexdigest()
        return (f"{UNROUTABLE}{digest[:_UNROUTABLE_LEN - len(UNROUTABLE)]}",)


def dispatch_topic(settings: Settings, queue: str, level: int, tags: Iterable[str] = ()
                   ) -> str:
    """Where the processor sends a dispatch of (queue, level, tags): :func:`route_tags`."""
    return _ready_name(settings, queue, level, route_tags(settings, queue, tags))


def route_key(settings: Settings, queue: str, tags: Iterable[str] = ()) -> str:
    """One string per (queue, routed tag set): the queue's name when untagged (so the queue
    registry's keys stay queue names), else ``<queue>.t.<tag>...`` (no queue name holds a
    dot)."""
    tagset = route_tags(settings, queue, tags)
    return queue if not tagset else ".".join([queue, _TAGGED, *tagset])


def parse_route(key: str) -> tuple[str, tuple[str, ...]]:
    """(queue, routed tag set) of a :func:`route_key`."""
    queue, _, rest = key.partition(f".{_TAGGED}.")
    return queue, tuple(rest.split(".")) if rest else ()


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
    if list(tags) != sorted(set(tags)) or not all(_TOPIC_TAG.match(t) for t in tags):
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


def processor_topic_prefix(settings: Settings) -> str:
    """What the processors' own topics start with: their tables' changelogs and Faust's
    internal topics (``<app id>-...``; ACLs, D25)."""
    return f"{processor_app_id(settings)}-"


def fold_group(settings: Settings) -> str:
    """The group the live fold commits its events offsets under; never joined, the
    fold assigns itself the partitions Faust's assignor gave the replica (D19)."""
    return f"{processor_app_id(settings)}.fold"


def standby_group(settings: Settings) -> str:
    """The group id of a replica's standby follower: assign-only, it never commits (its
    offsets are persisted beside the copies it writes)."""
    return f"{processor_app_id(settings)}.standby"


def changelog_topic(settings: Settings, table: str) -> str:
    """A processor table's changelog (Faust: ``<app id>-<table>-changelog``)."""
    return f"{processor_topic_prefix(settings)}{table}-changelog"


def task_changelog_topic(settings: Settings) -> str:
    return changelog_topic(settings, TASK_TABLE)


def worker_group_prefix(settings: Settings) -> str:
    """What every worker group id starts with (ACLs, D25)."""
    return settings.topic("workers.")


def worker_group(settings: Settings, queue: str) -> str:
    """The consumer group of the workers of ``queue`` (they share its ready topics)."""
    return settings.topic(f"workers.{queue}")


def worker_control_group(settings: Settings, instance: str) -> str:
    """One worker's own group for the cancellations and queues topics (it reads all of them)."""
    return settings.topic(f"workers.control.{instance}")


def api_reader_group_prefix(settings: Settings) -> str:
    """What every group id of the API's reads starts with (the processor's ACLs, D25)."""
    return settings.topic("api.")


#: what every group id of a workers-topic reader starts with (the processor's ACLs, D25)
ROSTER_GROUP_PREFIX = "taskstream-roster-"


def roster_group(instance: str) -> str:
    """A group id for a reader of the workers topic (assign-only: never joined)."""
    return f"{ROSTER_GROUP_PREFIX}{instance}"


def api_reader_group(settings: Settings, instance: str) -> str:
    """A group id for one read of the queues topic by the API (never joined)."""
    return f"{api_reader_group_prefix(settings)}{instance}"


def registry_reader_group_prefix(settings: Settings) -> str:
    """What the group id of a client's read of the queue registry starts with (D25)."""
    return settings.topic("registry.")


def registry_reader_group(settings: Settings, instance: str) -> str:
    """A group id for one read of the queue registry by a client (never joined)."""
    return f"{registry_reader_group_prefix(settings)}{instance}"


def chaos_reader_group(settings: Settings, role: str, instance: str) -> str:
    """A group id for one read by the chaos harness (``role``: check, observer; never
    joined, D42)."""
    return settings.topic(f"chaos-{role}.{instance}")
