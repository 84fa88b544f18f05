"""The HTTP API of a processor replica: what each request does (views.py: how it is served).

Every replica answers every request:

* a task by ID is read on the replica that owns its partition
  (``app.router.key_store``); another replica proxies the GET there. A task the
  owner has not folded yet is 503 ``pending``, never 404, while its fold lags; a
  lookup carrying the submit's position waits (bounded) for the fold to pass it
  (read-your-writes: api/progress.py, D46). At most ``api_max_waiters`` waits are
  held at once (D46);
* listings and queue counts are scatter-gather: each replica answers
  ``/internal/...`` from its *active* partitions and the replica that took the
  request merges. A page is only answered when the replicas' partitions cover
  every partition (else 503: a rebalance is in progress; retry). A listing scans
  at most ``api_list_scan_max`` rows per replica, on a thread (D46);
* writes (submit, cancel, redrive, pause, resume) are events produced to Kafka
  and answered 202 once the broker has acknowledged them. A submission must name a
  registered queue (400 ``unknown_queue`` otherwise, D31); ``POST /queues`` (admin)
  registers queues: their topics are made, then their registry records written
  (taskstream/queue_registry.py). Nothing else is written.

Peers are reached over the scheme they advertise (``https`` when the API serves
TLS), their certificates checked against ``api_ca_file``; a bearer token is never
forwarded over plain HTTP to a peer off the loopback (D29): such a request is
refused with 502 and the reason. Task IDs in proxied paths are percent-encoded,
so no ID can turn into another path.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import aiohttp
from confluent_kafka import KafkaException
from prometheus_client import Counter, Gauge, generate_latest
from yarl import URL

from taskstream.api.activity import STEP_S as ACTIVITY_STEP_S
from taskstream.api.auth import TokenAuth
from taskstream.api.bulk import BulkCancelBody, cancellable
from taskstream.api.console import Console
from taskstream.api.errors import ApiError
from taskstream.api.limits import limit_states, limit_view, merge_limits
from taskstream.api.observe import SAMPLE_S, Observer
from taskstream.api.progress import FoldProgress, Position, check_partition, pending_error
from taskstream.api.query import (
    ListQuery,
    Page,
    QueueStats,
    RateWindow,
    aggregate_queues,
    bounded_matches,
    count_rows,
    list_item,
    merge_by_id,
    merge_pages,
    missing_partitions,
    sum_rates,
    task_view,
)
from taskstream.api.ratelimit import RateLimiter
from taskstream.api.results import ResultCache
from taskstream.errors import KafkaUnavailableError, TopicError, UnknownQueueError
from taskstream.faults import fault_point
from taskstream.objectstore.offload import Offloader
from taskstream.processors.fold.schedule import upcoming
from taskstream.processors.live.guard import timer_round
from taskstream.processors.replay.read import partition_for
from taskstream.producer.build import EventBuilder
from taskstream.producer.errors import EventTooLargeError, InvalidTaskError
from taskstream.producer.tracing import SubmitTracing
from taskstream.queue_registry import KnownQueues, read_queues_topic, register_queues
from taskstream.schemas.entity_keys import (
    LIMIT_PREFIX,
    SCHEDULE_PREFIX,
    group_key,
    schedule_key,
)
from taskstream.schemas.events import ScheduleOp
from taskstream.schemas.flowspec import LimitSpec
from taskstream.schemas.models import SpecLimits, TaskSpec
from taskstream.schemas.schedules import ScheduleRequest, ScheduleView
from taskstream.schemas.serde import decode_entity, decode_state
from taskstream.schemas.state import TERMINAL, GroupState, ScheduleState, TaskState, TaskStatus
from taskstream.security.sealing import payload_sealer
from taskstream.security.tls import client_context, may_send_token
from taskstream.settings import Settings
from taskstream.statestore.errors import IndexNotReady
from taskstream.statestore.indexes import PartitionIndex
from taskstream.telemetry.context import TraceContext
from taskstream.telemetry.tracing import OFF, Telemetry
from taskstream.topics import api_reader_group, fold_group
from taskstream.workers.lag import QueueLag, read_lag
from taskstream.workers.queuectl import parse_command, set_paused

if TYPE_CHECKING:
    from taskstream.processors.live.app import Processor

log = logging.getLogger("taskstream.api")

#: bound on one call to another replica (the wait endpoint adds its own timeout)
PEER_TIMEOUT_S = 10.0
#: how often a waiting request looks at the task's state again
WAIT_POLL_S = 0.02
#: how often each replica samples its SUCCEEDED counts for the processing rate
RATE_SAMPLE_S = 10.0
#: header set on requests one replica sends another, so they are never proxied again
PROXIED = "X-Taskstream-Proxied"
SOURCE = "api"
#: what a waiter refused over api_max_waiters is asked to wait before it asks again
WAITERS_RETRY_S = 1.0
#: threads that run listing scans (each scan is bounded by api_list_scan_max rows)
SCAN_THREADS = 2


def _ident(url: URL) -> tuple[str, int]:
    return (url.host or "", url.port or 80)


def _segment(task_id: str) -> str:
    """``task_id`` as one percent-encoded path segment (never a ``/`` or a ``..``)."""
    if task_id in (".", ".."):
        raise ApiError(400, "invalid_parameter", "a task ID is not a path", "task_id")
    return quote(task_id, safe="")


class Api:
    """The operations behind the endpoints, bound to one processor replica."""

    def __init__(self, processor: Processor, telemetry: Telemetry = OFF,
                 events_group: str | None = None) -> None:
        self.processor = processor
        self.settings = processor.settings
        self.auth = TokenAuth.from_settings(processor.settings.api_tokens)
        limit = processor.settings.api_rate_limit
        self.rate_limiter = None if limit is None else RateLimiter(
            limit, processor.settings.api_rate_burst)
        self.rates = RateWindow(window_s=60.0)
        #: with a payload keyring the API seals submissions and opens what it shows (D27)
        self.sealer = payload_sealer(processor.settings)
        # POST /tasks keeps payloads inline (max_payload_bytes); the SDK offloads (D34)
        self.builder = EventBuilder(SOURCE, processor.settings.max_payload_bytes,
                                    limits=SpecLimits.from_settings(processor.settings),
                                    sealer=self.sealer,
                                    max_event_bytes=processor.settings.max_event_bytes)
        #: the queue registry as this replica last read it (a miss reads it again)
        self.known_queues = KnownQueues(processor.settings, api_reader_group)
        self._peer_tls = client_context(processor.settings)
        self.console = Console(self)
        self.tracing = SubmitTracing(telemetry, processor.events.get_topic_name())
        self.observer = Observer(processor, processor.metrics.registry,
                                 events_group or fold_group(processor.settings))
        self.offloader = Offloader.from_settings(processor.settings)
        self.result_cache = ResultCache(processor.settings.result_cache_bytes,
                                        processor.settings.result_cache_item_bytes,
                                        processor.metrics.registry)
        registry = processor.metrics.registry
        self.lag_gauge = Gauge("taskstream_consumer_lag",
                               "ready records not yet started, per queue and worker group",
                               ["queue", "group"], registry=registry)
        self.unserved_gauge = Gauge(
            "taskstream_consumer_lag_unserved",
            "ready records whose tags no live worker of the queue has (D38)",
            ["queue", "tags"], registry=registry)
        self._session: aiohttp.ClientSession | None = None
        #: waits in progress on this replica (bounded by api_max_waiters, D46)
        self.waiters = 0
        self.waiters_gauge = Gauge("taskstream_api_waiters",
                                   "GET /tasks/{id}/wait requests this replica holds now",
                                   registry=registry)
        self.waiters_refused = Counter(
            "taskstream_api_waiters_refused_total",
            "waits refused over api_max_waiters (503 too_many_waiters)", registry=registry)
        #: how far the fold has got, for read-your-writes (api/progress.py, D46)
        self.progress = FoldProgress(processor.settings, processor.events.get_topic_name(),
                                     events_group or fold_group(processor.settings),
                                     processor.engine.folded_offset)
        #: listing scans run here, off the event loop (D46)
        self._scans = ThreadPoolExecutor(SCAN_THREADS, thread_name_prefix="taskstream-api-scan")

    # -- the cluster ---------------------------------------------------------------

    @property
    def me(self) -> URL:
        return URL(str(self.processor.app.conf.canonical_url))

    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=self._peer_tls))
        return self._session

    async def close(self) -> None:
        self.observer.close()
        self._scans.shutdown(wait=False)
        self.progress.close()
        if self._session is not None:
            await self._session.close()

    def owner(self, task_id: str) -> URL | None:
        """The replica that owns a task's partition; None when that is this one."""
        try:
            url = URL(str(self.processor.app.router.key_store("tasks", task_id.encode())))
        except KeyError:
            raise ApiError(503, "unavailable", "the task's partition has no owner right now "
                           "(a rebalance is in progress); retry in a moment") from None
        return None if _ident(url) == _ident(self.me) else url

    def replicas(self, *, with_actives: bool = True) -> list[URL]:
        """Every replica that holds active partitions of the task table (this one included);
        with ``with_actives=False`` every member of the assignment, standbys-only too."""
        metadata = self.processor.app.router.table_metadata("tasks")
        urls = {_ident(self.me): self.me}
        for host, topics in metadata.items():
            if any(topics.values()) or not with_actives:
                url = URL(str(host))
                urls.setdefault(_ident(url), url)
        return [urls[k] for k in sorted(urls)]

    async def peer_get(self, url: URL, path: str, params: Mapping[str, str],
                       headers: Mapping[str, str], timeout_s: float = PEER_TIMEOUT_S
                       ) -> tuple[int, Any]:
        """GET another replica; (status, JSON body). Unreachable -> 502 ApiError."""
        target = url.with_path(path, encoded=True).with_query(dict(params))
        forward = {k: v for k, v in headers.items() if k.lower() == "authorization"}
        if forward and not may_send_token(str(target)):
            log.error("refused to forward a token to %s over plain HTTP", url)
            raise ApiError(502, "insecure_peer",
                           f"the replica at {url} is reached over plain HTTP, and a bearer "
                           "token is never forwarded over plain HTTP off the loopback; serve "
                           "the API over TLS (--tls-cert/--tls-key) on every replica")
        forward[PROXIED] = "1"
        try:
            async with self.session().get(
                    target, headers=forward,
                    timeout=aiohttp.ClientTimeout(total=timeout_s)) as resp:
                body = await resp.json(content_type=None)
                return resp.status, body
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            log.warning("replica %s did not answer %s: %r", url, path, exc)
            raise ApiError(502, "replica_unavailable",
                           f"the replica at {url} did not answer in time; retry") from None

    # -- one task ------------------------------------------------------------------

    def local_state(self, task_id: str) -> TaskState | None:
        return self.processor.get_local(task_id)

    async def get_task(self, task_id: str, headers: Mapping[str, str], proxied: bool,
                       after: Position | None = None) -> dict[str, Any]:
        """A task's view from its owner. Not in the owner's table: see :meth:`missing`."""
        owner = None if proxied else self.owner(task_id)
        if owner is not None:
            params = {} if after is None else {"after": f"{after.partition}:{after.offset}"}
            status, body = await self.peer_get(
                owner, f"/tasks/{_segment(task_id)}", params, headers,
                timeout_s=PEER_TIMEOUT_S + self.settings.api_read_wait_s)
            return self._peer_answer(status, body)
        state = self.local_state(task_id)
        if state is None:
            state = await self.missing(task_id, after)
        return task_view(state, self.sealer)

    async def missing(self, task_id: str, after: Position | None) -> TaskState:
        """A task not in this owner's table: the state once the fold has passed ``after``
        (or the partition's end), a 404 when it has and the task is not there, else a 503
        ``pending`` naming how far behind the fold is (api/progress.py, D46)."""
        partition = partition_for(task_id.encode(), self.settings.partitions)
        check_partition(after, partition, task_id)
        end = await self.progress.end(partition)  # before the fold is looked at
        if after is not None and after.offset >= end:
            raise ApiError(400, "invalid_parameter", f"after names offset {after.offset}, "
                           f"beyond partition {partition}'s end ({end}): pass the position "
                           "the submit answered", "after")
        target = after.offset + 1 if after is not None else end
        folded = await self.progress.wait_folded(partition, target,
                                                 self.settings.api_read_wait_s)
        state = self.local_state(task_id)
        if state is not None:
            return state
        if folded >= target:
            raise ApiError(404, "not_found", f"no task {task_id!r} is known")
        raise pending_error(task_id, partition, folded, end)

    async def wait_task(self, task_id: str, timeout_s: float, headers: Mapping[str, str],
                        proxied: bool, after: Position | None = None) -> dict[str, Any]:
        """The task's view once it is terminal or ``timeout_s`` has passed.

        A task not known yet is waited for too (a submit may still be on its way to
        the fold); still unknown when the time is up, it is answered as
        :meth:`missing` says. A replica holds at most ``api_max_waiters`` waits at once
        (those it proxies included): over it, 503 ``too_many_waiters`` with
        Retry-After (D46).
        """
        limit = self.settings.api_max_waiters
        if self.waiters >= limit:
            self.waiters_refused.inc()
            raise ApiError(503, "too_many_waiters", f"this replica already holds {limit} "
                           "waiting requests (api_max_waiters); retry after the Retry-After "
                           "seconds, or read GET /tasks/{id}", retry_after_s=WAITERS_RETRY_S)
        self.waiters += 1
        self.waiters_gauge.set(self.waiters)
        try:
            return await self._wait_task(task_id, timeout_s, headers, proxied, after)
        finally:
            self.waiters -= 1
            self.waiters_gauge.set(self.waiters)

    async def _wait_task(self, task_id: str, timeout_s: float, headers: Mapping[str, str],
                         proxied: bool, after: Position | None) -> dict[str, Any]:
        owner = None if proxied else self.owner(task_id)
        if owner is not None:
            params = {"timeout": f"{timeout_s:g}"}
            if after is not None:
                params["after"] = f"{after.partition}:{after.offset}"
            status, body = await self.peer_get(
                owner, f"/tasks/{_segment(task_id)}/wait", params, headers,
                timeout_s=timeout_s + self.settings.api_read_wait_s + PEER_TIMEOUT_S)
            return self._peer_answer(status, body)
        deadline = time.monotonic() + timeout_s
        while True:
            state = self.local_state(task_id)
            if state is not None and state.status.terminal:
                return task_view(state, self.sealer)
            if time.monotonic() >= deadline:
                if state is None:
                    state = await self.missing(task_id, after)
                return task_view(state, self.sealer)
            await asyncio.sleep(min(WAIT_POLL_S, max(0.0, deadline - time.monotonic())))

    @staticmethod
    def _peer_answer(status: int, body: Any) -> dict[str, Any]:
        if status == 200 and isinstance(body, dict):
            return body
        error = body.get("error") if isinstance(body, dict) else None
        if isinstance(error, dict):
            raise ApiError.from_body(status, error)
        raise ApiError(502, "replica_error", f"the owning replica answered HTTP {status}")

    # -- listings ------------------------------------------------------------------

    def _candidates(self, partition: int, query: ListQuery,
                    index: PartitionIndex | None) -> Iterator[TaskState]:
        """One partition's tasks after the cursor, in ID order: from the listing index when
        a state is asked for, else the task table itself."""
        tables = self.processor.tables
        if query.state is None or index is None:
            for value in tables.scan_tasks(partition, query.cursor):
                yield decode_state(value)
            return
        for task_id in index.scan_listing(query.queue, query.state.value, query.cursor):
            raw = tables.get_in(partition, task_id)
            if raw is not None:
                yield decode_state(raw)

    async def local_page(self, query: ListQuery) -> dict[str, Any]:
        """This replica's answer: the first ``limit`` matches over its active partitions,
        at most ``api_list_scan_max`` rows examined (``scanned_through``: where the
        bound stopped it), the scan on a thread of its own, off the event loop (D46).

        The listing indexes are looked up (built, or refused during a restore) here on
        the loop, where the fold builds them too; the thread only reads them."""
        partitions = self.processor.active_partitions()
        for partition in partitions:  # Faust opens a partition's DB on first use: here
            self.processor.tables.partition_db(partition)
        indexes: dict[int, PartitionIndex | None] = {p: None for p in partitions}
        if query.state is not None:
            indexes = {p: self.processor.tables.indexes.for_partition(p) for p in partitions}
        loop = asyncio.get_running_loop()
        page: dict[str, Any] = await loop.run_in_executor(
            self._scans, self._scan_page, query, indexes)
        return {**page, "partitions": partitions}

    def _scan_page(self, query: ListQuery, indexes: Mapping[int, PartitionIndex | None]
                   ) -> dict[str, Any]:
        """The bounded scan itself (runs on a scan thread)."""
        fault_point("api.list_scan")
        runs = [self._candidates(p, query, index) for p, index in indexes.items()]
        scan = bounded_matches(merge_by_id(runs), query, self.settings.api_list_scan_max)
        return {"items": [list_item(s, self.sealer) for s in scan.states],
                "scanned": scan.scanned, "scanned_through": scan.scanned_through}

    async def gather(self, path: str, params: Mapping[str, str], headers: Mapping[str, str],
                     local: Any) -> list[dict[str, Any]]:
        """Every replica's answer to an internal endpoint (this one's computed in place),
        checked to cover every partition exactly as the assignment says."""
        calls = [self.call_replica(url, path, params, headers, local)
                 for url in self.replicas()]
        answers = await asyncio.gather(*calls)
        covered = [p for answer in answers for p in answer.get("partitions", [])]
        missing = missing_partitions(covered, self.settings.partitions)
        if missing:
            raise ApiError(503, "unavailable", f"partitions {missing} are not served right now "
                           "(a rebalance or a restore is in progress); retry in a moment")
        return answers

    async def call_replica(self, url: URL, path: str, params: Mapping[str, str],
                           headers: Mapping[str, str], local: Any) -> dict[str, Any]:
        """One replica's answer to an internal endpoint; this one's is ``local()``."""
        if _ident(url) == _ident(self.me):
            result = local()
            if inspect.isawaitable(result):
                result = await result
            assert isinstance(result, dict)
            return result
        status, body = await self.peer_get(url, path, params, headers)
        return self._peer_answer(status, body)

    async def list_tasks(self, query: ListQuery, headers: Mapping[str, str]) -> Page:
        answers = await self.gather("/internal/tasks", query.to_params(), headers,
                                    lambda: self.local_page(query))
        return merge_pages([a["items"] for a in answers], query.limit,
                           [a.get("scanned_through") for a in answers])

    # -- queues --------------------------------------------------------------------

    def local_counts(self) -> dict[str, Any]:
        partitions = self.processor.active_partitions()
        counts = self.processor.tables.counts(partitions)
        return {"rows": count_rows(counts), "rates": self.rates.rates(),
                "partitions": partitions}

    def sample_rate(self) -> None:
        """One sample of SUCCEEDED counts per (partition, queue) for the rate window."""
        partitions = self.processor.active_partitions()
        succeeded: dict[tuple[int, str], int] = {}
        for partition in partitions:
            for (queue, status, _), n in self.processor.tables.counts([partition]).items():
                if status == TaskStatus.SUCCEEDED.value:
                    succeeded[(partition, queue)] = succeeded.get((partition, queue), 0) + n
        self.rates.add(time.monotonic(), partitions, succeeded)

    async def queues(self, headers: Mapping[str, str]) -> list[QueueStats]:
        answers = await self.gather("/internal/queues", {}, headers, self.local_counts)
        paused = await self.paused()
        rows = [row for a in answers for row in a["rows"]]
        rates = sum_rates(a["rates"] for a in answers)
        stats = aggregate_queues(rows, rates, paused, self.settings.queues)
        lags = {q.queue: q for q in await self.lag() or []}
        for qs in stats:
            if qs.name in lags:
                qs.lag = lags[qs.name].body()
        return stats

    async def lag(self) -> list[QueueLag] | None:
        """The worker groups' lag (workers/lag.py); None when Kafka did not answer in time
        (the caller answers without it rather than fail)."""
        timeout = self.settings.kafka_timeout_s
        try:
            return await asyncio.wait_for(asyncio.to_thread(read_lag, self.settings),
                                          timeout * 2)
        except (TimeoutError, KafkaUnavailableError) as exc:
            log.warning("consumer lag not read: %s", exc or "timed out")
            return None

    async def refresh_lag_metrics(self) -> None:
        """Set the lag gauges from a fresh read (left as they were when it fails)."""
        lags = await self.lag()
        if lags is None:
            return
        self.lag_gauge.clear()
        self.unserved_gauge.clear()
        for q in lags:
            self.lag_gauge.labels(q.queue, q.group).set(q.lag)
            for tags, n in q.unserved.items():
                self.unserved_gauge.labels(q.queue, ",".join(tags)).set(n)

    async def paused(self) -> dict[str, bool]:
        timeout = self.settings.kafka_timeout_s
        try:
            return await asyncio.wait_for(
                asyncio.to_thread(read_paused, self.settings, timeout), timeout + 1)
        except (TimeoutError, KafkaException):
            raise ApiError(503, "unavailable", "the queues topic could not be read in "
                           f"{timeout:g} s; retry") from None

    async def set_paused(self, queue: str, paused: bool) -> None:
        timeout = self.settings.kafka_timeout_s
        try:
            await asyncio.wait_for(asyncio.to_thread(set_paused, self.settings, queue, paused),
                                   timeout + 1)
        except (TimeoutError, KafkaUnavailableError):
            raise ApiError(503, "unavailable", f"the queue command was not acknowledged in "
                           f"{timeout:g} s; retry") from None

    # -- rate limits (issue 16) --------------------------------------------------------

    def local_limits(self) -> dict[str, Any]:
        """This replica's limits and buckets, from its active partitions."""
        partitions = self.processor.active_partitions()
        now_ms = int(time.time() * 1000)
        items = [limit_view(state, now_ms) for p in partitions
                 for state in limit_states(
                     v for _, v in self.processor.tables.scan_entities(p, LIMIT_PREFIX))]
        return {"items": items, "partitions": partitions}

    async def limits(self, headers: Mapping[str, str]) -> list[dict[str, Any]]:
        answers = await self.gather("/internal/limits", {}, headers, self.local_limits)
        return merge_limits(a["items"] for a in answers)

    async def set_limit(self, spec: LimitSpec) -> None:
        """Produce the limit's LimitSet."""
        try:
            key, value = self.builder.limit_set(spec.name, spec.rate, spec.burst,
                                                int(time.time() * 1000))
        except InvalidTaskError as exc:
            raise ApiError(400, "invalid_parameter", str(exc),
                           exc.fields[0] if exc.fields else None) from None
        await self._produce(key, value)

    # -- commands --------------------------------------------------------------------

    async def submit(self, spec: TaskSpec, caller: TraceContext | None = None
                     ) -> tuple[str, Position]:
        """Produce the TaskSubmitted of a validated TaskSpec (the SDK's own encoding), for
        a registered queue only (D31); the task ID and where its record is (a lookup
        passes that back as ``?after``: read-your-writes, D46).

        ``caller``: the request's ``traceparent``, linked from the task's submit span."""
        start_ns = time.time_ns()
        await self.require_queue(spec.queue)
        try:
            task_id, value = self.builder.submitted(spec, int(time.time() * 1000))
        except InvalidTaskError as exc:
            field = exc.fields[0] if exc.fields else None
            status = 413 if field == "payload" or isinstance(exc, EventTooLargeError) else 400
            raise ApiError(status, "payload_too_large" if status == 413 else "invalid_parameter",
                           str(exc), field) from None
        position = await self._produce(task_id, value)
        if self.tracing.enabled:
            self.tracing.submitted(task_id, spec.name, start_ns, queue=spec.queue,
                                   depends_on=spec.depends_on, caller=caller)
        return task_id, position

    async def require_queue(self, queue: str) -> None:
        """400 ``unknown_queue`` unless ``queue`` is registered (the cache, then a read)."""
        if queue in self.known_queues:
            return
        timeout = self.settings.kafka_timeout_s
        try:
            unknown = await asyncio.wait_for(
                asyncio.to_thread(self.known_queues.missing, [queue]), timeout + 1)
        except (TimeoutError, KafkaUnavailableError):
            raise ApiError(503, "unavailable", "the queue registry could not be read in "
                           f"{timeout:g} s; retry") from None
        if unknown:
            raise ApiError(400, "unknown_queue", str(UnknownQueueError(unknown)), "queue")

    async def register_queues(self, queues: list[str]) -> list[str]:
        """Register queues (admin): their topics made, then their registry records
        written and acknowledged (taskstream/queue_registry.py)."""
        timeout = self.settings.kafka_timeout_s
        try:
            names = await asyncio.wait_for(
                asyncio.to_thread(register_queues, self.settings, queues), 2 * timeout + 1)
        except (TimeoutError, KafkaUnavailableError, TopicError) as exc:
            raise ApiError(503, "unavailable", f"the queues were not registered in time "
                           f"({exc or 'timed out'}); retry (registering is idempotent)"
                           ) from None
        self.known_queues.add(names)
        return names

    async def cancel(self, task_id: str, reason: str, headers: Mapping[str, str],
                     proxied: bool) -> None:
        await self.get_task(task_id, headers, proxied)  # 404 for an unknown task
        await self._produce(task_id, self.builder.cancel(task_id, reason,
                                                         int(time.time() * 1000)))

    async def cancel_matching(self, query: ListQuery, body: BulkCancelBody,
                              headers: Mapping[str, str]) -> dict[str, Any]:
        """Bulk cancel (api/bulk.py): walk the listing, one CancelRequested per live match,
        each page's events acknowledged before the next page is read."""
        matched = 0
        truncated = False
        cursor = ""
        while True:
            page = await self.list_tasks(replace(query, cursor=cursor), headers)
            ids = [str(item["task_id"]) for item in page.items
                   if cancellable(item.get("status"))]
            if matched + len(ids) > body.max_tasks:
                ids, truncated = ids[:body.max_tasks - matched], True
            matched += len(ids)
            if not body.dry_run and ids:
                now = int(time.time() * 1000)
                await self._produce_many(
                    [(i, self.builder.cancel(i, body.reason, now)) for i in ids])
            if truncated or page.next_cursor is None:
                break
            cursor = page.next_cursor
        return {"matched": matched, "cancelled": 0 if body.dry_run else matched,
                "dry_run": body.dry_run, "truncated": truncated}

    async def redrive(self, task_id: str, reason: str, max_attempts: int | None,
                      headers: Mapping[str, str], proxied: bool) -> None:
        await self.get_task(task_id, headers, proxied)
        await self.produce_redrive(task_id, reason, max_attempts)

    async def produce_redrive(self, task_id: str, reason: str, max_attempts: int | None
                              ) -> None:
        """The RedriveRequested of a task known to exist (the fold refuses it unless the
        task is DEAD when it arrives)."""
        await self._produce(task_id, self.builder.redrive(task_id, max_attempts, reason,
                                                          int(time.time() * 1000)))

    async def purge(self, task_id: str, reason: str, headers: Mapping[str, str],
                    proxied: bool) -> None:
        """Ask the fold to remove a finished task now (D35); 409 for one in flight."""
        view = await self.get_task(task_id, headers, proxied)
        if view["status"] not in TERMINAL:
            raise ApiError(409, "not_finished", f"task {task_id} is {view['status']}; only "
                           "finished tasks are purged (cancel it first)")
        await self._produce(task_id, self.builder.purge(task_id, reason,
                                                        int(time.time() * 1000)))

    async def _produce_many(self, records: list[tuple[str, bytes]]) -> None:
        """Send events and wait for every acknowledgement (bounded)."""
        timeout = self.settings.kafka_timeout_s
        tracing = self.tracing.enabled
        try:
            pending = [await self.processor.events.send(
                key=k.encode(), value=v,
                headers=[self.tracing.root(k).header()] if tracing else None)
                for k, v in records]
            await asyncio.wait_for(asyncio.gather(*pending), timeout)
        except TimeoutError:
            raise ApiError(503, "unavailable", f"Kafka did not acknowledge the events in "
                           f"{timeout:g} s; some may have been written: run the same request "
                           "again (cancelling twice changes nothing)") from None

    async def _produce(self, task_id: str, value: bytes) -> Position:
        """Send one event and wait for the broker's acknowledgement (bounded); where the
        record is."""
        timeout = self.settings.kafka_timeout_s
        headers = [self.tracing.root(task_id).header()] if self.tracing.enabled else None
        try:
            pending = await self.processor.events.send(key=task_id.encode(), value=value,
                                                       headers=headers)
            metadata = await asyncio.wait_for(asyncio.ensure_future(pending), timeout)
            return Position(int(metadata.partition), int(metadata.offset))
        except TimeoutError:
            raise ApiError(503, "unavailable", f"Kafka did not acknowledge the event in "
                           f"{timeout:g} s; it may or may not have been written: check "
                           "GET /tasks/{id} before retrying") from None

    # -- schedules (D37) ----------------------------------------------------------------

    def local_schedule(self, schedule_id: str) -> ScheduleState | None:
        raw = self.processor.tables.get_any(schedule_key(schedule_id).encode())
        state = decode_entity(raw) if raw is not None else None
        return state if isinstance(state, ScheduleState) else None

    async def owned(self, key: str, path: str, headers: Mapping[str, str], proxied: bool,
                    local: Callable[[], dict[str, Any] | None], what: str) -> dict[str, Any]:
        """An entity's view from the replica owning ``key``: proxied there, or ``local()``
        here (None: 404 naming ``what``)."""
        owner = None if proxied else self.owner(key)
        if owner is not None:
            status, body = await self.peer_get(owner, path, {}, headers)
            return self._peer_answer(status, body)
        view = local()
        if view is None:
            raise ApiError(404, "not_found", f"no {what} is known")
        return view

    async def get_schedule(self, schedule_id: str, headers: Mapping[str, str], proxied: bool
                           ) -> dict[str, Any]:
        """A schedule with its next fire times and its last firings' task IDs."""
        def local() -> dict[str, Any] | None:
            state = self.local_schedule(schedule_id)
            return None if state is None else schedule_view(state)

        return await self.owned(schedule_key(schedule_id), f"/schedules/{schedule_id}",
                                headers, proxied, local, f"schedule {schedule_id!r}")

    def local_schedules(self) -> dict[str, Any]:
        """This replica's schedules: their keys sort after every task ID (D37)."""
        partitions = self.processor.active_partitions()
        items = []
        for partition in partitions:
            for _, value in self.processor.tables.scan_entities(partition, SCHEDULE_PREFIX):
                state = decode_entity(value)
                if isinstance(state, ScheduleState):
                    items.append(schedule_view(state))
        return {"items": items, "partitions": partitions}

    async def list_schedules(self, headers: Mapping[str, str]) -> list[dict[str, Any]]:
        answers = await self.gather("/internal/schedules", {}, headers, self.local_schedules)
        items = [item for a in answers for item in a["items"]]
        return sorted(items, key=lambda item: str(item["schedule_id"]))

    async def set_schedule(self, request: ScheduleRequest) -> str:
        await self.require_queue(request.queue)  # its firings' queue: registered only (D31)
        try:
            key, value = self.builder.schedule_set(request, int(time.time() * 1000))
        except InvalidTaskError as exc:
            raise ApiError(400, "invalid_parameter", str(exc),
                           exc.fields[0] if exc.fields else None) from None
        await self._produce(key, value)
        return request.schedule_id

    async def schedule_command(self, schedule_id: str, op: ScheduleOp, reason: str) -> None:
        try:
            key, value = self.builder.schedule_command(schedule_id, op, reason,
                                                       int(time.time() * 1000))
        except InvalidTaskError as exc:
            raise ApiError(400, "invalid_parameter", str(exc), "schedule_id") from None
        await self._produce(key, value)

    async def get_group(self, group_id: str, headers: Mapping[str, str], proxied: bool
                        ) -> dict[str, Any]:
        """A group's counts (its members' IDs derive from the group ID and the slot)."""
        key = group_key(group_id)

        def local() -> dict[str, Any] | None:
            raw = self.processor.tables.get_any(key.encode())
            state = decode_entity(raw) if raw is not None else None
            return group_view(state) if isinstance(state, GroupState) else None

        return await self.owned(key, f"/groups/{group_id}", headers, proxied, local,
                                f"group {group_id!r}")

    # -- metrics ---------------------------------------------------------------------

    def metrics_text(self) -> bytes:
        """Prometheus text; the ``taskstream_tasks`` gauge is refreshed now."""
        metrics = self.processor.metrics
        counts = self.processor.tables.counts(self.processor.active_partitions())
        by_state: dict[tuple[str, str], int] = {}
        for (queue, status, _), n in counts.items():
            by_state[(queue, status)] = by_state.get((queue, status), 0) + n
        metrics.tasks.clear()
        for (queue, status), n in by_state.items():
            metrics.tasks.labels(queue, status).set(n)
        self.observer.refresh()
        return generate_latest(metrics.registry)


def group_view(state: GroupState) -> dict[str, Any]:
    return {"group_id": state.group_id, "status": state.status.value, "size": state.size,
            "succeeded": state.succeeded, "failed": state.failed,
            "first_failure": state.first_failure, "finished_at_ms": state.finished_at_ms,
            "dependents": [d.key for d in state.dependents]}


def schedule_view(state: ScheduleState) -> dict[str, Any]:
    view: dict[str, Any] = ScheduleView.from_state(state, upcoming(state, 5)).model_dump()
    return view


# -- the queues topic ---------------------------------------------------------------


def read_paused(settings: Settings, timeout_s: float) -> dict[str, bool]:
    """Queue name -> paused, from the compacted queues topic read to its end (blocking).

    Pause records are ``key = queue name``, ``value = {"paused": bool, "updated_at_ms":
    n}``; the last record of a key wins (workers/queuectl.py parses them, and skips the
    registry's records).
    """
    paused: dict[str, bool] = {}
    for key, value in read_queues_topic(settings, timeout_s,
                                        api_reader_group(settings, uuid.uuid4().hex)):
        command = parse_command(key, value)
        if command is not None:
            paused[command.queue] = command.paused
    return paused


def register_api(processor: Processor, telemetry: Telemetry = OFF,
                 events_group: str | None = None) -> Api:
    """Add the API's routes, middleware and samplers (processing rate, the dashboard's
    activity; lag and queue depth) to the processor's Faust app. ``events_group``: the
    group whose committed offsets on the events topic are the fold's progress (default:
    the fold's own group, ``fold_group``).

    Must run before the app starts (aiohttp freezes its routes at start-up).
    """
    from taskstream.api.views import install

    api = Api(processor, telemetry, events_group)
    install(api)
    # during a recovery the indexes refuse (IndexNotReady): that sample is skipped
    processor.app.timer(RATE_SAMPLE_S, name="taskstream.api.rates")(
        timer_round(_sampler(api), "taskstream.api.rates", skip=(IndexNotReady,)))
    processor.app.timer(SAMPLE_S, name="taskstream.api.lag")(
        timer_round(_lag_sampler(api), "taskstream.api.lag"))
    processor.app.task(_start_roster(api))
    processor.app.timer(ACTIVITY_STEP_S, name="taskstream.api.activity")(
        timer_round(_activity_sampler(api), "taskstream.api.activity"))
    return api


def _start_roster(api: Api) -> Callable[[], Awaitable[None]]:
    async def start() -> None:  # the workers topic is read from start, not at first request
        api.observer.roster()
    return start


def _sampler(api: Api) -> Callable[[], Awaitable[None]]:
    async def sample() -> None:
        api.sample_rate()
    return sample


def _lag_sampler(api: Api) -> Callable[[], Awaitable[None]]:
    async def sample() -> None:
        await asyncio.to_thread(api.observer.sample_kafka)
    return sample


def _activity_sampler(api: Api) -> Callable[[], Awaitable[None]]:
    async def sample() -> None:
        api.console.sample_activity()
    return sample
