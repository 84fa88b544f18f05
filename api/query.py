"""The pure half of the query API: parameters, filters, merging, rates.

Nothing here touches Kafka, RocksDB or HTTP, so all of it is unit-tested.

Listings are ordered by task ID, which never changes. Each replica answers
from its active partitions the first ``limit`` matching tasks with an ID above
the cursor; the coordinator merges the replicas' pages by ID and keeps the first
``limit``. A task that changes state between two pages is therefore neither
skipped nor repeated by the *ID* walk; it may of course no longer match a state
filter when its page is read.

A replica examines at most ``api_list_scan_max`` rows per request (D46): a filter
that matches little would otherwise decode a whole table for one page. A replica
that stops at the bound says how far it got (``scanned_through``, the last ID it
examined); the coordinator keeps only items up to the lowest such ID, and when the
page is not full it answers that ID as ``next_cursor`` with ``scan_limit_reached``:
the walk goes on from there, nothing skipped.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from taskstream.api.errors import ApiError
from taskstream.schemas.state import TaskState, TaskStatus
from taskstream.schemas.view import Opener, TaskView

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
DEFAULT_WAIT_S = 30.0
MAX_WAIT_S = 300.0
#: queues one POST /queues may register (each gets its ready topics made)
MAX_REGISTERED_AT_ONCE = 100
_MAX_CURSOR = 200


def bad_request(field: str, message: str) -> ApiError:
    return ApiError(400, "invalid_parameter", message, field)


@dataclass(frozen=True)
class ListQuery:
    """What ``GET /tasks`` (and ``/internal/tasks``) asks for."""

    queue: str | None = None
    state: TaskStatus | None = None
    name: str | None = None
    since_ms: int | None = None
    limit: int = DEFAULT_LIMIT
    cursor: str = ""
    before_ms: int | None = None  # submitted strictly before

    def matches(self, state: TaskState) -> bool:
        if self.queue is not None and state.queue != self.queue:
            return False
        if self.state is not None and state.status != self.state:
            return False
        if self.name is not None and state.name != self.name:
            return False
        if self.before_ms is not None and state.submitted_at_ms >= self.before_ms:
            return False
        return self.since_ms is None or state.submitted_at_ms >= self.since_ms

    def to_params(self) -> dict[str, str]:
        """Query parameters that parse back into this query (for the internal calls)."""
        params = {"limit": str(self.limit)}
        if self.queue is not None:
            params["queue"] = self.queue
        if self.state is not None:
            params["state"] = self.state.value
        if self.name is not None:
            params["name"] = self.name
        if self.since_ms is not None:
            params["since"] = str(self.since_ms)
        if self.cursor:
            params["cursor"] = self.cursor
        if self.before_ms is not None:
            params["before"] = str(self.before_ms)
        return params


#: TaskView fields left out of listings (they can be megabytes; GET /tasks/{id} has them)
LIST_OMITTED = frozenset({"payload", "payload_b64", "result", "result_b64"})


def task_view(state: TaskState, opener: Opener | None = None) -> dict[str, Any]:
    """The public JSON of a task: the schemas package's TaskView (sealed values opened
    with ``opener`` when the API holds the payload keyring)."""
    return TaskView.from_state(state, opener).model_dump(mode="json")


def list_item(state: TaskState, opener: Opener | None = None) -> dict[str, Any]:
    """A task's JSON in a listing: the TaskView without payload and result."""
    return {k: v for k, v in task_view(state, opener).items() if k not in LIST_OMITTED}


def redact(body: dict[str, Any], *, admin: bool) -> dict[str, Any]:
    """An answer holding task views (one, or a page of ``items``) with each dispatch ID
    left out unless the caller is an admin: with a task's dispatch ID, whoever may write
    the events topic could report its outcome (D26)."""
    if admin:
        return body
    if "items" in body and isinstance(body["items"], list):
        return {**body, "items": [redact(item, admin=False) if isinstance(item, dict) else item
                                  for item in body["items"]]}
    if body.get("dispatch_id") is not None:
        return {**body, "dispatch_id": None}
    return body


def parse_since(raw: str, field: str = "since") -> int:
    """Milliseconds since the epoch, or an ISO-8601 time (naive = UTC)."""
    text = raw.strip()
    if text.isascii() and text.isdigit():  # "¹".isdigit() is True and int("¹") raises
        return int(text)
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise bad_request(field, f"{field} must be milliseconds since the epoch or an "
                                 "ISO-8601 time such as 2026-01-31T12:00:00Z") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return int(when.timestamp() * 1000)


def parse_limit(raw: str | None, default: int = DEFAULT_LIMIT) -> int:
    if raw is None or raw == "":
        return default
    if not (raw.strip().isascii() and raw.strip().isdigit()) or not 1 <= int(raw) <= MAX_LIMIT:
        raise bad_request("limit", f"limit must be an integer from 1 to {MAX_LIMIT}")
    return int(raw)


def parse_state(raw: str) -> TaskStatus:
    try:
        return TaskStatus(raw.strip().upper())
    except ValueError:
        names = ", ".join(s.value for s in TaskStatus)
        raise bad_request("state", f"state must be one of {names}") from None


def parse_list_query(params: Mapping[str, str], *, allowed: Sequence[str] | None = None
                     ) -> ListQuery:
    """A :class:`ListQuery` from query parameters; unknown parameters are a 400."""
    allowed = allowed or ("queue", "state", "name", "since", "before", "limit", "cursor")
    for key in params:
        if key not in allowed:
            raise bad_request(key, f"unknown query parameter {key!r}; "
                                   f"known: {', '.join(allowed)}")
    cursor = params.get("cursor", "")
    if len(cursor) > _MAX_CURSOR or any(ord(c) < 0x21 for c in cursor):
        raise bad_request("cursor", "cursor must be the next_cursor of a previous page")
    queue = params.get("queue") or None
    name = params.get("name") or None
    since = params.get("since")
    before = params.get("before")
    state = params.get("state")
    return ListQuery(
        queue=queue,
        state=parse_state(state) if state else None,
        name=name,
        since_ms=parse_since(since) if since else None,
        limit=parse_limit(params.get("limit")),
        cursor=cursor,
        before_ms=parse_since(before, "before") if before else None,
    )


def parse_wait_timeout(raw: str | None) -> float:
    if raw is None or raw == "":
        return DEFAULT_WAIT_S
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0 <= value <= MAX_WAIT_S:  # also rejects nan
        raise bad_request("timeout", f"timeout must be a number of seconds from 0 to "
                                     f"{MAX_WAIT_S:g}")
    return value


def first_matches(candidates: Iterable[TaskState], query: ListQuery) -> list[TaskState]:
    """The first ``query.limit`` candidates that match (candidates come in ID order)."""
    out: list[TaskState] = []
    for state in candidates:
        if state.task_id <= query.cursor or not query.matches(state):
            continue
        out.append(state)
        if len(out) >= query.limit:
            break
    return out


@dataclass(frozen=True)
class Scan:
    """One replica's bounded scan: the matches, the rows examined, and the last ID
    examined when the bound stopped the scan (None: the page filled or the rows ran out)."""

    states: list[TaskState]
    scanned: int
    scanned_through: str | None


def bounded_matches(candidates: Iterable[TaskState], query: ListQuery, max_scanned: int
                    ) -> Scan:
    """:func:`first_matches` examining at most ``max_scanned`` candidates (D46)."""
    out: list[TaskState] = []
    scanned = 0
    for state in candidates:
        scanned += 1
        if state.task_id > query.cursor and query.matches(state):
            out.append(state)
            if len(out) >= query.limit:
                return Scan(out, scanned, None)
        if scanned >= max_scanned:
            return Scan(out, scanned, state.task_id)
    return Scan(out, scanned, None)


def merge_by_id(runs: Iterable[Iterator[TaskState]]) -> Iterator[TaskState]:
    """Merge runs that are each in task-ID order into one run in ID order."""
    return heapq.merge(*runs, key=lambda s: s.task_id)


@dataclass(frozen=True)
class Page:
    items: list[dict[str, Any]]
    next_cursor: str | None
    #: the page ended early: a replica examined ``api_list_scan_max`` rows (D46)
    scan_limit_reached: bool = False

    def body(self) -> dict[str, Any]:
        return {"items": self.items, "next_cursor": self.next_cursor,
                "scan_limit_reached": self.scan_limit_reached}


def merge_pages(pages: Iterable[Sequence[Mapping[str, Any]]], limit: int,
                scanned_through: Iterable[str | None] = ()) -> Page:
    """The coordinator's merge: replicas' pages (each in ID order) -> one page.

    A task that appears twice (a partition that moved during the request) is kept
    once. ``next_cursor`` is the last ID when the page is full, else None.
    ``scanned_through``: each replica's, when its scan stopped at the bound; items
    past the lowest are left out (a replica that stopped there has not looked
    beyond), and a page that is not full continues from it (``scan_limit_reached``).
    """
    stops = [s for s in scanned_through if s is not None]
    horizon = min(stops) if stops else None
    merged = heapq.merge(*pages, key=lambda item: str(item["task_id"]))
    items: list[dict[str, Any]] = []
    last: str | None = None
    for item in merged:
        task_id = str(item["task_id"])
        if task_id == last:
            continue
        if horizon is not None and task_id > horizon:
            break
        items.append(dict(item))
        last = task_id
        if len(items) >= limit:
            break
    if len(items) >= limit:
        return Page(items, items[-1]["task_id"])
    if horizon is not None:
        return Page(items, horizon, scan_limit_reached=True)
    return Page(items, None)


def missing_partitions(covered: Iterable[int], total: int) -> list[int]:
    return sorted(set(range(total)) - set(covered))


# -- queues ---------------------------------------------------------------------


@dataclass
class QueueStats:
    """One queue's row in ``GET /queues``."""

    name: str
    counts: dict[str, int] = field(default_factory=dict)
    by_priority: dict[str, dict[str, int]] = field(default_factory=dict)
    succeeded_per_s: float | None = None
    paused: bool = False
    lag: dict[str, Any] | None = None  # workers/lag.py QueueLag.body(); None: not read

    def body(self) -> dict[str, Any]:
        return {
            "lag": self.lag,
            "name": self.name,
            "paused": self.paused,
            "total": sum(self.counts.values()),
            "counts": dict(sorted(self.counts.items())),
            "by_priority": {
                p: dict(sorted(c.items())) for p, c in sorted(self.by_priority.items())},
            "succeeded_per_s": self.succeeded_per_s,
        }


def count_rows(counts: Mapping[tuple[str, str, int], int]) -> list[list[Any]]:
    """Counter[(queue, status, priority)] as JSON rows [queue, status, priority, n]."""
    return [[q, s, p, n] for (q, s, p), n in sorted(counts.items()) if n]


def aggregate_queues(
    rows: Iterable[Sequence[Any]],
    rates: Mapping[str, float | None],
    paused: Mapping[str, bool],
    known: Iterable[str],
) -> list[QueueStats]:
    """Rows ``[queue, status, priority, n]`` from every replica -> one QueueStats per queue."""
    stats: dict[str, QueueStats] = {}

    def get(name: str) -> QueueStats:
        if name not in stats:
            stats[name] = QueueStats(name)
        return stats[name]

    for queue, status, priority, n in rows:
        qs = get(str(queue))
        qs.counts[str(status)] = qs.counts.get(str(status), 0) + int(n)
        per = qs.by_priority.setdefault(str(priority), {})
        per[str(status)] = per.get(str(status), 0) + int(n)
    for name in [*known, *rates, *paused]:
        get(name)
    for name, qs in stats.items():
        qs.succeeded_per_s = rates.get(name)
        qs.paused = paused.get(name, False)
    return [stats[name] for name in sorted(stats)]


def sum_rates(per_replica: Iterable[Mapping[str, float | None]]) -> dict[str, float | None]:
    """Add the replicas' rates per queue; a queue no replica could measure stays None."""
    total: dict[str, float | None] = {}
    for rates in per_replica:
        for queue, rate in rates.items():
            if rate is None:
                total.setdefault(queue, None)
                continue
            total[queue] = (total.get(queue) or 0.0) + rate
    return total


@dataclass
class RateWindow:
    """Succeeded tasks per second over the last ``window_s``, per queue, on one replica.

    Fed by samples of the SUCCEEDED count per (partition, queue) taken from the
    listing index. The rate of a queue is the sum over partitions of (newest count
    - count at the oldest sample inside the window) divided by the time between
    them; only partitions active in both samples count, so a partition that moves
    between replicas does not look like a burst or a drop. None until two samples
    at least ``min_span_s`` apart exist.
    """

    window_s: float = 60.0
    min_span_s: float = 1.0
    samples: list[tuple[float, frozenset[int], dict[tuple[int, str], int]]] = field(
        default_factory=list)

    def add(self, now: float, partitions: Iterable[int],
            succeeded: Mapping[tuple[int, str], int]) -> None:
        """One sample: the active partitions and their SUCCEEDED counts by (partition, queue)."""
        self.samples.append((now, frozenset(partitions), dict(succeeded)))
        # keep the newest sample at or before the window's start as the baseline
        start = now - self.window_s
        while len(self.samples) > 2 and self.samples[1][0] <= start:
            self.samples.pop(0)

    def rates(self, queues: Iterable[str] = ()) -> dict[str, float | None]:
        result: dict[str, float | None] = {q: None for q in queues}
        if not self.samples:
            return result
        t0, parts0, old = self.samples[0]
        t1, parts1, new = self.samples[-1]
        for (_, queue) in (*old, *new):
            result.setdefault(queue, None)
        span = t1 - t0
        if span < self.min_span_s:
            return result
        both = parts0 & parts1
        deltas: dict[str, int] = {}
        for (partition, queue), n in new.items():
            if partition in both:
                gained = max(0, n - old.get((partition, queue), 0))
                deltas[queue] = deltas.get(queue, 0) + gained
        for queue in result:
            result[queue] = round(deltas.get(queue, 0) / span, 3)
        return result
