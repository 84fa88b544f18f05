"""Topic administration: create the platform's topics (DESIGN.md, "Topics").

``ensure_topics`` is idempotent: it creates what is missing and leaves what
exists alone (it never alters an existing topic's partitions or configs, with one
exception below), so the processor, the test fixtures, ``taskstream topics create``
and ``taskstream dev`` can all call it at start-up.

The exception (docs/decisions.md, D44): the events topic's records carry the
broker's append time (``message.timestamp.type=LogAppendTime``), which the fold
holds event times to. An events topic made before D44 has Kafka's default
CreateTime (the writer's clock, which is what D44 distrusts); ``ensure_topics``
switches it to LogAppendTime (an online config change: records already written
keep their timestamps, and replay reads those same ones). A principal that may
not alter topic configs gets a :class:`ConfigError` naming the command to run (one
that may not even read them, a worker's, is warned and goes on).

Partitions: ``events``, ``cancellations``, ``dlq`` and ``quarantine`` are keyed
by task ID and get ``settings.partitions``; ready topics get
``settings.ready_partitions``; ``queues`` holds a handful of commands per queue
that every worker reads whole, so it has one partition (total order per queue
for free); ``workers`` holds one small record per live worker, read whole by
every API replica, so one partition too.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, cast

from confluent_kafka import (
    ConsumerGroupTopicPartitions,
    KafkaError,
    KafkaException,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient
from confluent_kafka.admin._config import AlterConfigOpType, ConfigEntry, ConfigResource
from confluent_kafka.admin._listoffsets import OffsetSpec
from confluent_kafka.admin._resource import ResourceType
from confluent_kafka.cimpl import NewTopic

from taskstream import topics
from taskstream.errors import ConfigError, KafkaAuthError, KafkaUnavailableError, TopicError
from taskstream.kafka_config import ClientErrors, admin_config
from taskstream.settings import Settings

log = logging.getLogger("taskstream.admin")


@dataclass(frozen=True)
class TopicSpec:
    """What one topic should look like when we create it."""

    name: str
    partitions: int
    config: Mapping[str, str] = field(default_factory=dict)


def _min_insync(replication: int) -> str:
    # a 3-node dev cluster defaults min.insync.replicas to 2; a topic with fewer
    # replicas than that could never take an acks=all write, so set it per topic
    return str(max(1, min(2, replication - 1)))


#: the events topic's records are stamped by the broker, never by the writer (D44)
TIMESTAMP_TYPE = "message.timestamp.type"
LOG_APPEND_TIME = "LogAppendTime"


def _delete(retention_ms: int, replication: int) -> dict[str, str]:
    return {
        "cleanup.policy": "delete",
        "retention.ms": str(retention_ms),
        "min.insync.replicas": _min_insync(replication),
    }


def _compact(replication: int) -> dict[str, str]:
    return {"cleanup.policy": "compact", "min.insync.replicas": _min_insync(replication)}


#: the workers topic keeps a worker's last record for a day after it stops heartbeating
#: (compact: one record per worker; delete: a worker gone for good leaves the list)
WORKERS_RETENTION_MS = 24 * 3600 * 1000
#: segments roll hourly so compaction and retention reach records in hours, not weeks
WORKERS_SEGMENT_MS = 3600 * 1000


def _workers(replication: int) -> dict[str, str]:
    return {"cleanup.policy": "compact,delete", "retention.ms": str(WORKERS_RETENTION_MS),
            "segment.ms": str(WORKERS_SEGMENT_MS), "min.insync.replicas": _min_insync(replication)}


#: room for a record's framing around an event (batch and record headers, key, signature
#: header): a topic that carries events takes max_event_bytes plus this (D28)
RECORD_OVERHEAD = 4096
MAX_MESSAGE_BYTES = "max.message.bytes"


def _sized(settings: Settings, config: dict[str, str]) -> dict[str, str]:
    """``config`` with room for the largest event the size budget allows."""
    return {**config, MAX_MESSAGE_BYTES: str(settings.max_event_bytes + RECORD_OVERHEAD)}


def queue_topic_specs(settings: Settings, queue: str, tags: Iterable[str] = ()
                      ) -> list[TopicSpec]:
    """The ready topics of one queue (and tag set, routed as the processor routes it:
    ``topics.dispatch_topic``, D38), highest priority first."""
    if not topics.QUEUE_NAME.match(queue):
        raise TopicError(
            f"queue name {queue!r} is not valid: use 1-64 letters, digits, '_' or '-'"
        )
    config = _sized(settings, _delete(settings.ready_retention_ms, settings.replication))
    return [
        TopicSpec(topics.dispatch_topic(settings, queue, level, tags), settings.ready_partitions,
                  config)
        for level in reversed(range(settings.priority_levels))
    ]


def topic_specs(settings: Settings, queues: Iterable[str] | None = None) -> list[TopicSpec]:
    """Every topic the platform needs, ready topics for ``queues`` (default: settings.queues)."""
    rf, n = settings.replication, settings.partitions
    specs = [
        TopicSpec(topics.events_topic(settings), n,
                  {**_sized(settings, _delete(settings.events_retention_ms, rf)),
                   TIMESTAMP_TYPE: LOG_APPEND_TIME}),
        TopicSpec(topics.queues_topic(settings), 1, _compact(rf)),
        TopicSpec(topics.cancellations_topic(settings), n, _compact(rf)),
        TopicSpec(topics.dlq_topic(settings), n,
                  _sized(settings, _delete(settings.dlq_retention_ms, rf))),
        TopicSpec(topics.quarantine_topic(settings), n,
                  _sized(settings, _delete(settings.dlq_retention_ms, rf))),
        TopicSpec(topics.workers_topic(settings), 1, _workers(rf)),
    ]
    for queue in settings.queues if queues is None else queues:
        specs.extend(queue_topic_specs(settings, queue))
    return specs


@dataclass(frozen=True)
class Admin:
    """An admin client with what it reported (to explain a refused connection)."""

    client: AdminClient
    errors: ClientErrors


def admin_client(settings: Settings) -> Admin:
    errors = ClientErrors()
    return Admin(AdminClient(admin_config(settings, {"error_cb": errors})), errors)


def cluster_metadata(settings: Settings, admin: Admin) -> Any:
    """The cluster's metadata (brokers, topics), or a clear error within the Kafka timeout:
    :class:`KafkaAuthError` when the brokers refused the credentials or the certificate."""
    try:
        return admin.client.list_topics(timeout=settings.kafka_timeout_s)
    except KafkaException as exc:
        admin.client.poll(0)  # serve error_cb: it says why
        hint = admin.errors.hint()
        if hint:
            raise KafkaAuthError(
                f"Kafka at {settings.bootstrap} refused this client: {hint}") from None
        raise KafkaUnavailableError(
            f"Kafka at {settings.bootstrap} did not answer within {settings.kafka_timeout_s}s "
            f"({exc}); start it with `taskstream kafka up` or fix TASKSTREAM_BOOTSTRAP"
        ) from None


def list_topics(settings: Settings, admin: Admin | None = None) -> dict[str, int]:
    """Topic name -> partition count, internal topics left out."""
    metadata = cluster_metadata(settings, admin or admin_client(settings))
    return {
        name: len(meta.partitions)
        for name, meta in metadata.topics.items()
        if not name.startswith("__")
    }


def create_topics(settings: Settings, specs: list[TopicSpec]) -> dict[str, bool]:
    """Create the topics in ``specs`` that do not exist. Name -> True when created now."""
    admin = admin_client(settings)
    existing = list_topics(settings, admin)
    missing = [s for s in specs if s.name not in existing]
    result = {s.name: False for s in specs}
    if not missing:
        return result
    futures = admin.client.create_topics(
        [
            NewTopic(s.name, s.partitions, settings.replication, config=dict(s.config))
            for s in missing
        ],
        operation_timeout=settings.kafka_timeout_s,
        request_timeout=settings.kafka_timeout_s,
    )
    for name, future in futures.items():
        try:
            future.result(timeout=settings.kafka_timeout_s * 2)
            result[name] = True
        except KafkaException as exc:
            error = exc.args[0]
            if isinstance(error, KafkaError) and error.code() == KafkaError.TOPIC_ALREADY_EXISTS:
                continue  # somebody else created it meanwhile: fine
            if isinstance(error, KafkaError) and error.code() in _DENIED:
                raise KafkaAuthError(
                    f"could not create topic {name}: {error.str()}; this principal "
                    f"({settings.sasl_username or 'anonymous'}) may not create topics: run it "
                    "with the admin credential (docs/security.md)") from None
            raise TopicError(
                f"could not create topic {name} with {settings.replication} replica(s): {error}; "
                "check that the cluster has that many brokers (TASKSTREAM_REPLICATION)"
            ) from None
        except TimeoutError:
            raise KafkaUnavailableError(
                f"creating topic {name} on {settings.bootstrap} timed out; is the broker healthy? "
                "see `taskstream kafka status`"
            ) from None
    _wait_for_leaders(settings, admin.client, [n for n, created in result.items() if created])
    return result


_DENIED = frozenset({KafkaError.TOPIC_AUTHORIZATION_FAILED,
                     KafkaError.CLUSTER_AUTHORIZATION_FAILED})


def _wait_for_leaders(settings: Settings, client: AdminClient, names: list[str]) -> None:
    """Wait until every partition of the new topics has a leader, so producing works at once."""
    deadline = time.monotonic() + settings.kafka_timeout_s
    pending = set(names)
    while pending:
        metadata = client.list_topics(timeout=settings.kafka_timeout_s)
        for name in list(pending):
            meta = metadata.topics.get(name)
            if meta is not None and meta.error is None and meta.partitions and all(
                p.leader >= 0 for p in meta.partitions.values()
            ):
                pending.discard(name)
        if not pending:
            return
        if time.monotonic() > deadline:
            raise TopicError(
                f"topics {sorted(pending)} were created but have no leader after "
                f"{settings.kafka_timeout_s}s; check the broker log (`taskstream kafka status`)"
            )
        time.sleep(0.1)


def ensure_topics(settings: Settings, queues: Iterable[str] | None = None) -> dict[str, bool]:
    """Create every platform topic that is missing, and make sure the events topic is
    stamped with LogAppendTime (D44). Name -> True when created now."""
    created = create_topics(settings, topic_specs(settings, queues))
    if not created.get(topics.events_topic(settings)):
        ensure_log_append_time(settings)
    return created


def ensure_log_append_time(settings: Settings) -> bool:
    """Switch an existing events topic to ``message.timestamp.type=LogAppendTime``;
    True when it was switched now (False: it already was).

    Raises :class:`ConfigError` when the topic is on CreateTime and this principal may not
    alter it (the fold would hold event times to the writers' own clocks); one that may
    not even read the topic's configs is warned and goes on."""
    name = topics.events_topic(settings)
    admin = admin_client(settings)
    resource = ConfigResource(ResourceType.TOPIC, name)
    command = (f"kafka-configs.sh --bootstrap-server {settings.bootstrap} --alter --entity-type "
               f"topics --entity-name {name} --add-config {TIMESTAMP_TYPE}={LOG_APPEND_TIME}")
    try:
        futures = admin.client.describe_configs([resource],
                                                request_timeout=settings.kafka_timeout_s)
        entries = next(iter(futures.values())).result(timeout=settings.kafka_timeout_s * 2)
        current = entries[TIMESTAMP_TYPE].value
    except (KafkaException, KeyError, TimeoutError) as exc:
        # a principal without DescribeConfigs on it (a worker's, say) cannot tell; the
        # processor's role may read it and checks at its start
        log.warning("could not read the events topic's %s (%s); if it is not %s, run `%s`",
                    TIMESTAMP_TYPE, exc, LOG_APPEND_TIME, command)
        return False
    if current == LOG_APPEND_TIME:
        return False
    try:
        change = ConfigResource(ResourceType.TOPIC, name, incremental_configs=[
            ConfigEntry(TIMESTAMP_TYPE, LOG_APPEND_TIME,
                        incremental_operation=AlterConfigOpType.SET)])
        for future in admin.client.incremental_alter_configs(
                [change], request_timeout=settings.kafka_timeout_s).values():
            future.result(timeout=settings.kafka_timeout_s * 2)
    except (KafkaException, KeyError, TimeoutError) as exc:
        raise ConfigError(
            f"the events topic {name} must stamp records with the broker's time "
            f"({TIMESTAMP_TYPE}={LOG_APPEND_TIME}, D44), not {current}, and it could not be "
            f"switched ({exc}); run with the admin credential, or run `{command}`") from None
    log.warning("events topic %s switched to %s=%s (D44): event times are held to the "
                "broker's clock", name, TIMESTAMP_TYPE, LOG_APPEND_TIME)
    return True


def ensure_queue_topics(settings: Settings, queue: str) -> dict[str, bool]:
    """Create the ready topics of one queue if missing. Name -> True when created now."""
    return create_topics(settings, queue_topic_specs(settings, queue))


def events_max_message_bytes(settings: Settings) -> int | None:
    """The events topic's ``max.message.bytes``; None when this principal may not read
    topic configs (no DescribeConfigs right) or the topic is not there."""
    admin = admin_client(settings)
    resource = ConfigResource(ResourceType.TOPIC, topics.events_topic(settings))
    try:
        futures = admin.client.describe_configs([resource],
                                                request_timeout=settings.kafka_timeout_s)
        entries = next(iter(futures.values())).result(timeout=settings.kafka_timeout_s * 2)
        return int(entries[MAX_MESSAGE_BYTES].value)
    except (KafkaException, KeyError, TypeError, ValueError, TimeoutError):
        return None


def check_event_budget(settings: Settings) -> int | None:
    """Refuse a size budget the events topic cannot take (D28), where the credential may
    read the topic's configs. Returns the topic's limit, or None when it cannot be read."""
    limit = events_max_message_bytes(settings)
    if limit is not None and settings.max_event_bytes + RECORD_OVERHEAD > limit:
        raise ConfigError(
            f"max_event_bytes={settings.max_event_bytes} does not fit the events topic "
            f"{topics.events_topic(settings)} (max.message.bytes={limit}, and a record needs "
            f"{RECORD_OVERHEAD} bytes of framing): lower TASKSTREAM_MAX_EVENT_BYTES to at most "
            f"{limit - RECORD_OVERHEAD} or raise the topic's max.message.bytes")
    return limit


SESSION_BOUNDS = ("group.min.session.timeout.ms", "group.max.session.timeout.ms")


def session_timeout_bounds(settings: Settings) -> tuple[int, int] | None:
    """The session timeouts (ms) every broker accepts from a consumer group member:
    the highest ``group.min.session.timeout.ms`` and the lowest ``...max...``.
    None when the brokers' configs cannot be read (no DescribeConfigs right, say)."""
    admin = admin_client(settings)
    brokers = cluster_metadata(settings, admin).brokers
    resources = [ConfigResource(ResourceType.BROKER, str(b)) for b in sorted(brokers)]
    lows, highs = [], []
    try:
        futures = admin.client.describe_configs(resources, request_timeout=settings.kafka_timeout_s)
        for future in futures.values():
            entries = future.result(timeout=settings.kafka_timeout_s * 2)
            lows.append(int(entries[SESSION_BOUNDS[0]].value))
            highs.append(int(entries[SESSION_BOUNDS[1]].value))
    except (KafkaException, KeyError, TypeError, ValueError, TimeoutError):
        return None
    return (max(lows), min(highs)) if lows else None


#: the shortest session a processor asks for unless told otherwise: heartbeats go every
#: quarter of it from Faust's consumer thread, so a busy 2-core machine still keeps it alive
SESSION_FLOOR_S = 3.0
#: what a broker accepts by default, used when its configs cannot be read
STOCK_SESSION_MIN_S = 6.0


def choose_session_timeout(settings: Settings) -> float:
    """The processor's session timeout in seconds: ``settings.session_timeout_s`` when set,
    refused with a clear error if the brokers would refuse it at every join (Faust only logs
    their INVALID_SESSION_TIMEOUT, and the replica would never be given a partition); else
    the shortest the brokers accept, but at least SESSION_FLOOR_S."""
    bounds = session_timeout_bounds(settings)
    wanted = settings.session_timeout_s
    if wanted is None:
        if bounds is None:
            return STOCK_SESSION_MIN_S
        low, high = bounds
        return min(max(SESSION_FLOOR_S, low / 1000), high / 1000)
    if bounds is None:
        return wanted  # cannot tell: the join itself is the check
    wanted_ms = round(wanted * 1000)
    low, high = bounds
    if low <= wanted_ms <= high:
        return wanted
    raise ConfigError(
        f"session_timeout_s={wanted:g} ({wanted_ms} ms) is outside what the "
        f"brokers at {settings.bootstrap} accept ({SESSION_BOUNDS[0]}={low}, "
        f"{SESSION_BOUNDS[1]}={high}); set TASKSTREAM_SESSION_TIMEOUT_S between "
        f"{low / 1000:g} and {high / 1000:g} (or unset it), or change those broker settings "
        "(`taskstream kafka up` allows down to 1 s)"
    )


# -- lag: how far a consumer group is behind the end of its partitions -----------------


def _spec(which: Any) -> OffsetSpec:
    """``OffsetSpec.latest()`` or ``.earliest()`` (untyped class methods in the client)."""
    return cast(Callable[[], OffsetSpec], which)()


def _list_offsets(settings: Settings, client: AdminClient, partitions: Iterable[tuple[str, int]],
                  spec: OffsetSpec) -> dict[tuple[str, int], int]:
    wanted = {TopicPartition(t, p): spec for t, p in partitions}
    if not wanted:
        return {}
    futures = client.list_offsets(wanted, request_timeout=settings.kafka_timeout_s)
    return {(tp.topic, tp.partition): int(future.result(timeout=settings.kafka_timeout_s * 2)
                                          .offset)
            for tp, future in futures.items()}


def end_offsets(settings: Settings, client: AdminClient,
                partitions: Iterable[tuple[str, int]]) -> dict[tuple[str, int], int]:
    """(topic, partition) -> the offset the next record will get (the high watermark)."""
    return _list_offsets(settings, client, partitions, _spec(OffsetSpec.latest))


def start_offsets(settings: Settings, client: AdminClient,
                  partitions: Iterable[tuple[str, int]]) -> dict[tuple[str, int], int]:
    """(topic, partition) -> the earliest offset retention kept."""
    return _list_offsets(settings, client, partitions, _spec(OffsetSpec.earliest))


def committed_offsets(settings: Settings, client: AdminClient, group: str,
                      partitions: Iterable[tuple[str, int]]) -> dict[tuple[str, int], int]:
    """(topic, partition) -> the group's committed offset, -1 where it has none."""
    tps = [TopicPartition(t, p) for t, p in partitions]
    if not tps:
        return {}
    futures = client.list_consumer_group_offsets(
        [ConsumerGroupTopicPartitions(group, tps)], request_timeout=settings.kafka_timeout_s)
    result = futures[group].result(timeout=settings.kafka_timeout_s * 2)
    return {(tp.topic, tp.partition): tp.offset if tp.offset >= 0 else -1
            for tp in result.topic_partitions or []}


def group_lag(settings: Settings, client: AdminClient, group: str,
              partitions: Iterable[tuple[str, int]]) -> dict[tuple[str, int], int]:
    """(topic, partition) -> records past the group's committed offset (past the start of
    what retention kept where the group has not committed yet). Raises KafkaException."""
    parts = list(partitions)
    ends = end_offsets(settings, client, parts)
    committed = committed_offsets(settings, client, group, parts)
    starts = start_offsets(settings, client, [tp for tp in parts if committed.get(tp, -1) < 0])
    return {tp: max(0, end - (committed[tp] if committed.get(tp, -1) >= 0 else starts.get(tp, 0)))
            for tp, end in ends.items()}
