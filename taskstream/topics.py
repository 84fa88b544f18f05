"""Names of the platform's topics and consumer groups (DESIGN.md, "Topics"), derived here only.

Every topic name carries the configured prefix. Ready topics are one per queue
and priority level: ``<prefix>ready.<queue>.p<level>``; a higher level runs first.
The processors are one Faust app, ``<prefix>processor``: that id is their
consumer group and the prefix of their tables' changelogs
(``<app id>-<table>-changelog``), which replay verify reads.
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


def ready_topic(settings: Settings, queue: str, level: int) -> str:
    return settings.topic(f"ready.{queue}.p{level}")


def ready_topic_prefix(settings: Settings, queue: str | None = None) -> str:
    """What the ready topics of ``queue`` (of every queue when None) start with (ACLs, D25)."""
    return settings.topic("ready.") if queue is None else settings.topic(f"ready.{queue}.")
def ready_topic_parts(settings: Settings, name: str) -> tuple[str, int] | None:
    """``<prefix>ready.<queue>.p<level>`` -> (queue, level); None for any other name."""
    head = settings.topic("ready.")
    if not name.startswith(head):
        return None
    queue, _, level = name[len(head):].rpartition(".p")
    if not QUEUE_NAME.match(queue) or not level.isdigit():
        return None
    return queue, int(level)


def ready_topics(settings: Settings, queue: str) -> list[str]:
    """The queue's ready topics, highest priority first."""
    return [ready_topic(settings, queue, lvl) for lvl in reversed(range(settings.priority_levels))]


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
