"""Least privilege: what each role's principal may do on the brokers, as data (D25).

Kafka's StandardAuthorizer (KRaft) grants per resource (a topic, a consumer group,
the cluster) and per operation; it cannot tell one event type from another on the
same topic, and a consumer cannot see who wrote a record. So the ACLs below fence
*topics* and *groups*; who may write which *event* on the shared events topic is
decided by signatures the fold checks (D26, docs/security.md).

One principal per role, every name derived from the topic prefix ``P``:

============  ==========================================================================
submitter     writes ``P events`` (submit, cancel, redrive), reads ``P queues`` (the
              registry of known queues) and the events topic's config (the size budget)
processor     reads and writes ``P events`` (timer events), writes the ready topics
              (``P ready.*``, which it may create when a queue is registered), ``P dlq``,
              ``P cancellations``, ``P quarantine`` and ``P queues`` (the API's queue
              commands), owns its changelogs and Faust's internal topics
              (``P processor-*``: create, read, write) and its groups (``P processor*``,
              ``P api.*``); describes the workers' groups ``P workers.*`` (lag, queue
              depth); reads broker configs (the session bounds, D14)
worker        reads its queues' ready topics (``P ready.<queue>.*``, or every queue),
              ``P cancellations`` and ``P queues``; writes ``P events`` (outcomes) and
              ``P quarantine``; its groups are ``P workers.*``
admin         everything under ``P`` (topics and groups), replay's group, and the
              cluster: create topics, read and change configs, manage ACLs
============  ==========================================================================

Nothing is granted to anyone else (``allow.everyone.if.no.acl.found=false``).
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from confluent_kafka import KafkaException
from confluent_kafka.admin._acl import AclBinding, AclOperation, AclPermissionType
from confluent_kafka.admin._resource import ResourcePatternType, ResourceType

from taskstream import topics
from taskstream.admin import admin_client
from taskstream.errors import KafkaAuthError
from taskstream.settings import Settings

CLUSTER = "kafka-cluster"


class Role(enum.StrEnum):
    SUBMITTER = "submitter"
    PROCESSOR = "processor"
    WORKER = "worker"
    ADMIN = "admin"


class Kind(enum.StrEnum):
    TOPIC = "topic"
    GROUP = "group"
    CLUSTER = "cluster"


_R = AclOperation.READ
_W = AclOperation.WRITE
_D = AclOperation.DESCRIBE
_DC = AclOperation.DESCRIBE_CONFIGS
_C = AclOperation.CREATE


@dataclass(frozen=True)
class Grant:
    """Operations on one resource (``prefixed``: every name that starts with ``name``)."""

    kind: Kind
    name: str
    operations: tuple[AclOperation, ...]
    prefixed: bool = False


def _topic(name: str, *ops: AclOperation, prefixed: bool = False) -> Grant:
    return Grant(Kind.TOPIC, name, ops, prefixed)


def _group(name: str, *ops: AclOperation, prefixed: bool = True) -> Grant:
    return Grant(Kind.GROUP, name, ops, prefixed)


def role_grants(settings: Settings, role: Role, queues: Sequence[str] | None = None
                ) -> list[Grant]:
    """What ``role`` may do under ``settings.topic_prefix``. ``queues`` narrows a worker to
    the ready topics of those queues (default: every queue)."""
    events, queues_t = topics.events_topic(settings), topics.queues_topic(settings)
    ready = topics.ready_topic_prefix(settings)
    match role:
        case Role.SUBMITTER:
            return [_topic(events, _W, _D, _DC), _topic(queues_t, _R, _D),
                    _group(topics.registry_reader_group_prefix(settings), _R, _D)]
        case Role.WORKER:
            readable = ([_topic(topics.ready_topic_prefix(settings, q), _R, _D, prefixed=True)
                         for q in queues] if queues else [_topic(ready, _R, _D, prefixed=True)])
            return [*readable,
                    _topic(events, _W, _D), _topic(topics.quarantine_topic(settings), _W, _D),
                    _topic(topics.cancellations_topic(settings), _R, _D),
                    _topic(queues_t, _R, _D),
                    _topic(topics.workers_topic(settings), _W, _D),  # its heartbeat (D23)
                    _group(topics.worker_group_prefix(settings), _R, _D)]
        case Role.PROCESSOR:
            app = topics.processor_app_id(settings)
            return [
                _topic(events, _R, _W, _D, _DC),
                _topic(ready, _W, _D, _C, _DC, prefixed=True),
                _topic(topics.dlq_topic(settings), _W, _D),
                _topic(topics.cancellations_topic(settings), _W, _D),
                _topic(topics.quarantine_topic(settings), _W, _D),
                _topic(queues_t, _R, _W, _D),
                _topic(topics.processor_topic_prefix(settings), _C, _R, _W, _D, _DC,
                       prefixed=True),
                _group(app, _R, _D),
                _group(topics.api_reader_group_prefix(settings), _R, _D),
                # the workers' groups described, never joined: their lag and each
                # queue's depth (D24, workers/lag.py)
                _group(topics.worker_group_prefix(settings), _D),
                # the API's workers roster (D23)
                _topic(topics.workers_topic(settings), _R, _D),
                _group(topics.ROSTER_GROUP_PREFIX, _R, _D),
                Grant(Kind.CLUSTER, CLUSTER, (_D, _DC)),
            ]
        case Role.ADMIN:
            every = (AclOperation.ALL,)
            return [_topic(settings.topic_prefix, *every, prefixed=True),
                    _group(settings.topic_prefix, *every),
                    _group(topics.REPLAY_GROUP, *every, prefixed=False),
                    Grant(Kind.CLUSTER, CLUSTER, (AclOperation.CREATE, AclOperation.ALTER,
                                                  _D, _DC, AclOperation.ALTER_CONFIGS,
                                                  AclOperation.IDEMPOTENT_WRITE))]
    raise ValueError(f"unknown role {role!r}")


_RESOURCE = {Kind.TOPIC: ResourceType.TOPIC, Kind.GROUP: ResourceType.GROUP,
             Kind.CLUSTER: ResourceType.BROKER}


def bindings(principal: str, grants: Iterable[Grant]) -> list[AclBinding]:
    """Kafka ALLOW bindings of ``grants`` for ``principal`` (``User:<name>``), any host."""
    return [
        AclBinding(_RESOURCE[g.kind], g.name,
                   ResourcePatternType.PREFIXED if g.prefixed else ResourcePatternType.LITERAL,
                   principal, "*", op, AclPermissionType.ALLOW)
        for g in grants for op in g.operations
    ]


def apply_acls(settings: Settings, principals: Mapping[Role, str],
               worker_queues: Sequence[str] | None = None) -> int:
    """Create the ACLs of each role for its principal (idempotent: Kafka keeps one copy of
    an existing binding). Needs a principal allowed to alter ACLs (admin or a super user).
    Returns how many bindings were sent."""
    wanted = [b for role, principal in principals.items()
              for b in bindings(principal, role_grants(settings, role, worker_queues))]
    admin = admin_client(settings)
    futures = admin.client.create_acls(wanted, request_timeout=settings.kafka_timeout_s)
    for binding, future in futures.items():
        try:
            future.result(timeout=settings.kafka_timeout_s * 2)
        except KafkaException as exc:
            raise KafkaAuthError(
                f"could not create the ACL {binding}: {exc.args[0]}; run this with a "
                "principal that may alter ACLs (the admin role or a super user)") from None
    return len(wanted)
