"""``taskstream doctor``: check a deployment end to end, say what is wrong and what to do.

Four checks, in the order a platform depends on them (a check whose ground is
missing says so instead of running):

1. **brokers**: the cluster answers at ``bootstrap``, with enough brokers for the
   replication factor topics are created with;
2. **topics**: every platform topic (and each processor table's changelog) exists
   with the partitions, replication and settings ``taskstream topics create``
   gives it (taskstream/admin.py is the plan compared against);
3. **processors**: every events partition is folded by a replica that answers
   ``/healthz?verbose`` (the replica at ``api_url`` names the others);
4. **workers**: every queue has a running worker on the workers topic; lost ones
   (no heartbeat for 3 intervals) are named;
5. **storage** (only with ``storage_bucket`` set, D34): the bucket answers to these
   credentials. The finding names the bucket and the endpoint (a password in its
   URL masked), never the keys.

Each :class:`Finding` is ``ok``, ``warn`` or ``fail`` with a message and, when
something is wrong, the command or setting that fixes it. The comparisons are
pure functions of what was read (unit-tested without a broker); the reading is
the real thing.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient
from confluent_kafka.admin._config import ConfigResource
from confluent_kafka.admin._resource import ResourceType

from taskstream.admin import TopicSpec, admin_client, cluster_metadata, topic_specs
from taskstream.errors import KafkaUnavailableError
from taskstream.objectstore.errors import ObjectMissingError, ObjectStoreError
from taskstream.objectstore.store import ObjectStore
from taskstream.producer.api_client import ApiClient
from taskstream.producer.errors import ApiUnavailableError
from taskstream.settings import Settings, mask_url
from taskstream.statestore.tables import TABLE_NAMES
from taskstream.topics import changelog_topic, parse_ready_topic
from taskstream.workers.presence import WorkerRecord, now_ms
from taskstream.workers.roster import live_by_queue, read_workers

OK, WARN, FAIL = "ok", "warn", "fail"
#: topic settings whose value the plan fixes (others are the cluster's business)
CHECKED_CONFIGS = ("cleanup.policy", "retention.ms", "min.insync.replicas")


@dataclass(frozen=True, slots=True)
class Finding:
    check: str
    level: str
    message: str
    fix: str = ""

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class TopicFacts:
    """What the cluster says about one topic."""

    partitions: int
    replication: int
    config: Mapping[str, str]


# -- the comparisons (pure) -------------------------------------------------------------


def judge_brokers(settings: Settings, brokers: int) -> Finding:
    if brokers < settings.replication:
        return Finding("brokers", FAIL,
                       f"{brokers} broker(s) answer at {settings.bootstrap}, but topics are "
                       f"created with replication {settings.replication}",
                       f"add brokers, or set TASKSTREAM_REPLICATION={brokers}")
    return Finding("brokers", OK, f"{brokers} broker(s) answer at {settings.bootstrap}")


def judge_topic(settings: Settings, spec: TopicSpec, facts: TopicFacts | None) -> list[Finding]:
    """One topic against the plan: missing, partitions, replication, settings."""
    name = spec.name
    if facts is None:
        return [Finding("topics", FAIL, f"topic {name} does not exist",
                        "run `taskstream topics create` (with --queues for other queues)")]
    found = []
    if facts.partitions != spec.partitions:
        level = FAIL if facts.partitions < spec.partitions else WARN
        found.append(Finding(
            "topics", level, f"{name} has {facts.partitions} partitions; the settings say "
            f"{spec.partitions}",
            "set TASKSTREAM_PARTITIONS / TASKSTREAM_READY_PARTITIONS to what the topics have "
            "(the events topic's count cannot change once tasks exist: keys would move)"))
    if facts.replication < settings.replication:
        found.append(Finding(
            "topics", WARN, f"{name} has replication {facts.replication}, less than "
            f"TASKSTREAM_REPLICATION={settings.replication}",
            f"reassign its partitions (kafka-reassign-partitions.sh) to {settings.replication} "
            "replicas"))
    for key in CHECKED_CONFIGS:
        want = spec.config.get(key)
        have = facts.config.get(key)
        if want is not None and have != want:
            found.append(Finding(
                "topics", FAIL if key == "cleanup.policy" else WARN,
                f"{name}: {key}={have}, expected {want}",
                f"kafka-configs.sh --bootstrap-server {settings.bootstrap} --alter "
                f"--entity-type topics --entity-name {name} --add-config {key}={want}"))
    return found


def judge_processors(settings: Settings, answers: Mapping[str, Mapping[str, Any] | None],
                     api_url: str) -> list[Finding]:
    """``answers``: replica URL -> its /healthz?verbose body (None: it did not answer)."""
    if not answers or all(a is None for a in answers.values()):
        return [Finding("processors", FAIL, f"no processor answers at {api_url}",
                        "start one (`taskstream processor --data-dir DIR`) or set "
                        "TASKSTREAM_API_URL to a replica's address")]
    found = []
    owners: dict[int, list[str]] = {}
    for url, body in sorted(answers.items()):
        if body is None:
            found.append(Finding("processors", WARN, f"replica {url} did not answer",
                                 "check that it runs and that its advertised URL "
                                 "(TASKSTREAM_ADVERTISED_URL) is reachable from here"))
            continue
        if not body.get("ready"):
            found.append(Finding("processors", WARN,
                                 f"replica {url} is not ready: {body.get('reason', '?')}",
                                 "wait for it to restore; its log says how far it is"))
        for p in body.get("partitions", {}).get("active", []):
            owners.setdefault(int(p), []).append(url)
    missing = [p for p in range(settings.partitions) if p not in owners]
    doubled = {p: urls for p, urls in owners.items() if len(urls) > 1}
    if missing:
        found.append(Finding(
            "processors", FAIL, f"events partitions {missing} have no processor answering "
            f"({len(owners)} of {settings.partitions} are folded)",
            "start another replica or restart the one that held them; if a rebalance is "
            "under way, run doctor again in a few seconds"))
    if doubled:
        found.append(Finding("processors", WARN,
                             f"partitions claimed by two replicas at once: {doubled}",
                             "a rebalance is under way: run doctor again in a few seconds"))
    if not missing and not doubled:
        replicas = sum(1 for b in answers.values() if b is not None)
        found.append(Finding("processors", OK, f"all {settings.partitions} events partitions "
                             f"are folded by {replicas} answering replica(s)"))
    return found


def judge_workers(records: Sequence[WorkerRecord], required: Iterable[str],
                  seen: Iterable[str], at_ms: int) -> list[Finding]:
    """``required``: the configured queues (no worker: fail); ``seen``: other queues with
    ready topics (no worker: warn)."""
    live = live_by_queue(records, at_ms)
    found = []
    required = sorted(set(required))
    for queue in [*required, *sorted(set(seen) - set(required))]:
        n = live.get(queue, 0)
        if n:
            found.append(Finding("workers", OK, f"queue {queue}: {n} running worker(s)"))
        else:
            found.append(Finding(
                "workers", FAIL if queue in required else WARN,
                f"queue {queue} has no running worker: its tasks wait",
                f"start one: taskstream worker -A YOUR.TASKS --queues {queue}"))
    for record in records:
        if record.status(at_ms) == "lost":
            age = (at_ms - record.heartbeat_at_ms) / 1000
            found.append(Finding(
                "workers", WARN, f"worker {record.worker_id} on {record.host} is lost (last "
                f"heartbeat {age:.0f}s ago; queues {','.join(record.queues)})",
                "check that host and the worker's log; its running attempts are retried "
                "when their leases expire"))
    return found


def judge_storage(settings: Settings, problem: ObjectStoreError | None) -> list[Finding]:
    """The object store's answer (``problem`` None: the bucket answered); nothing to judge
    without ``storage_bucket``."""
    bucket = settings.storage_bucket
    if bucket is None:
        return []
    where = mask_url(settings.storage_endpoint) if settings.storage_endpoint else "AWS S3"
    keys = "TASKSTREAM_STORAGE_ACCESS_KEY / _SECRET_KEY"
    if problem is None:
        return [Finding("storage", OK, f"bucket {bucket} answers at {where}")]
    if isinstance(problem, ObjectMissingError):
        return [Finding("storage", FAIL, f"bucket {bucket} does not exist at {where}",
                        "create it, or set TASKSTREAM_STORAGE_BUCKET to the bucket in use")]
    return [Finding("storage", FAIL, f"bucket {bucket} at {where}: {mask_url(str(problem))}",
                    f"check that the server is up, TASKSTREAM_STORAGE_ENDPOINT and {keys} "
                    "(payloads and results over the offload threshold need it)")]


def ask_storage(settings: Settings) -> ObjectStoreError | None:
    """What the configured bucket answers (None: it is there and usable)."""
    store = ObjectStore.from_settings(settings)
    if store is None:
        return None
    try:
        store.check_bucket()
    except ObjectStoreError as exc:
        return exc
    return None


# -- reading the deployment ---------------------------------------------------------------


def topic_facts(settings: Settings, client: AdminClient, metadata: Any,
                names: Iterable[str]) -> dict[str, TopicFacts]:
    """The facts of each named topic that exists."""
    present = [n for n in names if n in metadata.topics and metadata.topics[n].error is None]
    configs: dict[str, dict[str, str]] = {}
    if present:
        futures = client.describe_configs(
            [ConfigResource(ResourceType.TOPIC, n) for n in present],
            request_timeout=settings.kafka_timeout_s)
        for resource, future in futures.items():
            entries = future.result(timeout=settings.kafka_timeout_s * 2)
            configs[resource.name] = {k: str(v.value) for k, v in entries.items()}
    facts = {}
    for name in present:
        parts = metadata.topics[name].partitions
        replication = min((len(p.replicas) for p in parts.values()), default=0)
        facts[name] = TopicFacts(len(parts), replication, configs.get(name, {}))
    return facts


def planned_topics(settings: Settings, metadata: Any) -> tuple[list[TopicSpec], list[str]]:
    """The plan for this deployment, and the queues found on the cluster beyond the settings."""
    seen = sorted({ready.queue for name in metadata.topics
                   if (ready := parse_ready_topic(settings, name)) is not None}
                  - set(settings.queues))
    specs = topic_specs(settings, [*settings.queues, *seen])
    changelog_config = {"cleanup.policy": "compact"}
    specs += [TopicSpec(changelog_topic(settings, t), settings.partitions, changelog_config)
              for t in TABLE_NAMES]
    return specs, seen


def _health(url: str, token: str | None, timeout_s: float) -> dict[str, Any] | None:
    client = ApiClient(url, token)
    try:
        resp = client.request("GET", "/healthz", params={"verbose": "1"}, timeout=timeout_s)
    except ApiUnavailableError:
        return None
    finally:
        client.close()
    return resp.data if resp.ok and isinstance(resp.data, dict) else None


def ask_replicas(api_url: str, token: str | None, timeout_s: float
                 ) -> dict[str, dict[str, Any] | None]:
    """Advertised URL -> /healthz?verbose of the replica at ``api_url`` and of every replica
    it names (None: it did not answer from here)."""
    answers: dict[str, dict[str, Any] | None] = {}
    asked: set[str] = set()
    pending = [api_url.rstrip("/")]
    while pending:
        url = pending.pop()
        if url in asked:
            continue
        asked.add(url)
        body = _health(url, token, timeout_s)
        key = str(body.get("url") or url).rstrip("/") if body is not None else url
        if body is None and key in answers:
            continue
        answers[key] = body
        if body is not None:
            pending += [str(r).rstrip("/") for r in body.get("replicas", [])]
    return answers


def examine(settings: Settings) -> list[Finding]:
    """Run every check against the deployment the settings describe."""
    storage = judge_storage(settings, ask_storage(settings))
    client = admin_client(settings)
    try:
        metadata = cluster_metadata(settings, client)
    except KafkaUnavailableError as exc:
        return [Finding("brokers", FAIL, str(exc),
                        "start Kafka (`taskstream kafka up`) or fix TASKSTREAM_BOOTSTRAP"),
                Finding("topics", WARN, "not checked: no broker answers"),
                Finding("workers", WARN, "not checked: no broker answers"), *storage]
    findings = [judge_brokers(settings, len(metadata.brokers))]
    specs, seen = planned_topics(settings, metadata)
    try:
        facts = topic_facts(settings, client.client, metadata, [s.name for s in specs])
    except (KafkaException, TimeoutError) as exc:
        findings.append(Finding("topics", WARN, f"topic settings not read: {exc}",
                                "check the client's DescribeConfigs rights on the topics"))
        facts = {}
    topic_findings = [f for s in specs for f in judge_topic(settings, s, facts.get(s.name))]
    findings += topic_findings or [Finding(
        "topics", OK, f"{len(specs)} topics exist with the expected settings")]
    token = settings.api_token.get_secret_value() if settings.api_token else None
    findings += judge_processors(settings, ask_replicas(settings.api_url, token,
                                                         settings.kafka_timeout_s),
                                 settings.api_url)
    try:
        records = read_workers(settings)
    except TimeoutError as exc:
        findings.append(Finding("workers", FAIL, str(exc),
                                "run `taskstream topics create`; check the broker"))
        return findings + storage
    findings += judge_workers(records, settings.queues, seen, now_ms())
    return findings + storage
