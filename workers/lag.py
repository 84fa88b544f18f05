"""Consumer lag of the worker groups, per queue, and the tasks no live worker can take.

Lag of a ready partition is its end offset minus the group's committed offset
(the start offset when the group never committed there): records dispatched and
not yet started by a worker of the queue. Summed per queue (one group per queue,
``<prefix>workers.<queue>``) it is what an outside autoscaler scales on
(``taskstream_consumer_lag`` on the API's /metrics, ``GET /queues``,
``taskstream queues --lag``).

Routing by tags (D38) adds one question: a tagged ready topic whose partitions
no live member of the group holds has no worker with those tags. Its records
wait (they are never lost and never taken by a worker without the tags), and
``taskstream queues`` says so: ``unserved`` lists those tag sets with their lag.

:func:`queue_lag` is pure; :func:`read_lag` gathers its inputs with the admin
client's offset calls (taskstream/admin.py, the ones the API's queue-depth gauge
uses too; bounded by the Kafka timeout) and is called from a thread.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient

from taskstream.admin import (
    admin_client,
    cluster_metadata,
    committed_offsets,
    end_offsets,
    start_offsets,
)
from taskstream.errors import KafkaUnavailableError
from taskstream.settings import Settings
from taskstream.topics import ReadyTopic, parse_ready_topic, worker_group

TP = tuple[str, int]
RETRY_PAUSE_S = 0.2


@dataclass(frozen=True, slots=True)
class TopicLag:
    topic: str
    tags: tuple[str, ...]
    level: int
    lag: int
    served: bool  # a live member of the group holds a partition of it

    def body(self) -> dict[str, Any]:
        return {"topic": self.topic, "tags": list(self.tags), "priority": self.level,
                "lag": self.lag, "served": self.served}


@dataclass
class QueueLag:
    queue: str
    group: str
    lag: int = 0
    members: int = 0
    topics: list[TopicLag] = field(default_factory=list)

    @property
    def unserved(self) -> dict[tuple[str, ...], int]:
        """Tag sets with records waiting and no live worker to take them -> their lag."""
        out: dict[tuple[str, ...], int] = {}
        for t in self.topics:
            if t.lag > 0 and not t.served:
                out[t.tags] = out.get(t.tags, 0) + t.lag
        return dict(sorted(out.items()))

    def body(self) -> dict[str, Any]:
        return {"queue": self.queue, "group": self.group, "lag": self.lag,
                "members": self.members, "topics": [t.body() for t in self.topics],
                "unserved": [{"tags": list(tags), "lag": n}
                             for tags, n in self.unserved.items()]}


def partition_lag(end: int, start: int, committed: int | None) -> int:
    """Records after the group's position (its committed offset, else the start)."""
    position = committed if committed is not None and committed >= 0 else start
    return max(0, end - max(position, start))


def queue_lag(queue: str, group: str, topics: Mapping[str, ReadyTopic],
              partitions: Mapping[str, int], ends: Mapping[TP, int], starts: Mapping[TP, int],
              committed: Mapping[TP, int], assigned: Iterable[TP], members: int) -> QueueLag:
    """One queue's lag from offsets and the group's assignment (pure)."""
    held = {t for t, _ in assigned}
    result = QueueLag(queue, group, members=members)
    for name in sorted(topics, key=lambda n: (topics[n].tags, -topics[n].level)):
        info = topics[name]
        lag = sum(partition_lag(ends.get((name, p), 0), starts.get((name, p), 0),
                                committed.get((name, p)))
                  for p in range(partitions.get(name, 0)))
        result.topics.append(TopicLag(name, info.tags, info.level, lag, name in held))
        result.lag += lag
    return result


def ready_topics_by_queue(settings: Settings, names: Mapping[str, int]
                          ) -> dict[str, dict[str, ReadyTopic]]:
    """queue -> {topic name: what it is} for every ready topic in ``names``."""
    out: dict[str, dict[str, ReadyTopic]] = {}
    for name in names:
        info = parse_ready_topic(settings, name)
        if info is not None:
            out.setdefault(info.queue, {})[name] = info
    return out


def read_lag(settings: Settings, queues: Iterable[str] | None = None, *, tries: int = 3
             ) -> list[QueueLag]:
    """Every queue's lag (the queues with ready topics, or those named), read from Kafka.

    A retriable broker error (a leader moving, a topic just made) is tried again after a
    short pause, ``tries`` times in all. Raises :class:`KafkaUnavailableError` when the
    brokers do not answer in time.
    """
    attempt = 1
    while True:
        try:
            return _read_lag(settings, queues)
        except KafkaException as exc:
            error = exc.args[0] if exc.args else None
            if attempt >= tries or not (isinstance(error, KafkaError) and error.retriable()):
                raise KafkaUnavailableError(
                    f"the worker groups' offsets could not be read from {settings.bootstrap} "
                    f"({exc}); retry, or check `taskstream kafka status`") from None
            time.sleep(RETRY_PAUSE_S * attempt)
            attempt += 1


def _read_lag(settings: Settings, queues: Iterable[str] | None) -> list[QueueLag]:
    admin = admin_client(settings)
    client = admin.client
    metadata = cluster_metadata(settings, admin)
    partitions = {name: len(meta.partitions) for name, meta in metadata.topics.items()}
    by_queue = ready_topics_by_queue(settings, partitions)
    wanted = sorted(by_queue) if queues is None else sorted(set(queues))
    result = []
    for queue in wanted:
        group = worker_group(settings, queue)
        tps = [(name, p) for name in sorted(by_queue.get(queue, {}))
               for p in range(partitions[name])]
        ends = end_offsets(settings, client, tps)
        starts = start_offsets(settings, client, tps)
        committed = committed_offsets(settings, client, group, tps)
        assigned, members = _assignment(settings, client, group)
        result.append(queue_lag(queue, group, by_queue.get(queue, {}), partitions, ends,
                                starts, committed, assigned, members))
    return result


def _assignment(settings: Settings, client: AdminClient, group: str
                ) -> tuple[set[TP], int]:
    futures = client.describe_consumer_groups([group], request_timeout=settings.kafka_timeout_s)
    description = futures[group].result(timeout=settings.kafka_timeout_s)
    held: set[TP] = set()
    for member in description.members or []:
        assignment = member.assignment
        for tp in (assignment.topic_partitions if assignment is not None else []) or []:
            held.add((tp.topic, tp.partition))
    return held, len(description.members or [])
