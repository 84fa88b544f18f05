"""What the dashboard needs beside the basic API (issue 19; docs/decisions.md, D30).

* ``GET /tasks/{id}/history``: the task's events from the log, each with the
  fold's verdict, read by the replay code (processors/replay/history.py) on
  whichever replica takes the request. It reads the task's partition from its
  start (the log has no index by key), so it costs what that partition holds:
  at most :data:`HISTORY_READS` run at once per replica, each bounded in time.
  Dispatch IDs (a worker's outcome must name one; nobody else needs it) are
  shown to callers with the admin scope only.
* ``GET /processors``: every replica of the assignment with the partitions it
  folds (active) and follows (standby), asked one by one; one that does not
  answer is listed with the error instead of failing the page.
* ``GET /activity``: rates and dispatch latency over the last minutes
  (api/activity.py), merged from every replica that answers.
* ``POST /dlq/redrive``: redrive many dead tasks at once, or with ``dry_run``
  only say what would be redriven. Each task is read first (on its owner); only
  one that is DEAD now gets a RedriveRequested.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field
from yarl import URL

from taskstream.api.activity import ActivityWindow, merge_activity, sample_registry
from taskstream.api.errors import ApiError
from taskstream.processors.replay.history import task_history
from taskstream.schemas.state import TaskStatus

if TYPE_CHECKING:
    from taskstream.api.service import Api

#: history reads one replica runs at once (each reads a whole partition)
HISTORY_READS = 2
#: bound on one history read, waiting for a free slot included
HISTORY_TIMEOUT_S = 60.0
#: task IDs one POST /dlq/redrive takes
MAX_REDRIVE_IDS = 500
#: task reads a batch redrive runs at once
REDRIVE_CONCURRENCY = 16

WOULD_REDRIVE = "would_redrive"
REDRIVEN = "redriven"
SKIPPED = "skipped"
NOT_FOUND = "not_found"
FAILED = "failed"
OUTCOMES = (WOULD_REDRIVE, REDRIVEN, SKIPPED, NOT_FOUND, FAILED)
#: the dispatch ID in a history decision: "dispatched attempt 2 (<dispatch id>)"
_DISPATCHED = re.compile(r"^(dispatched attempt \S+) \(.*\)$")
HIDDEN = "(hidden: admin scope only)"


class RedriveMany(BaseModel):
    """The body of ``POST /dlq/redrive``."""

    model_config = ConfigDict(extra="forbid", strict=True)
    task_ids: list[str] = Field(min_length=1, max_length=MAX_REDRIVE_IDS)
    dry_run: bool = False
    reason: str = Field("", max_length=1000)
    max_attempts: int | None = Field(None, ge=1, le=1000)


class Console:
    """The dashboard's extra operations, on top of one replica's :class:`Api`."""

    def __init__(self, api: Api) -> None:
        self.api = api
        self.settings = api.settings
        self.activity_window = ActivityWindow()
        self._history_slots: asyncio.Semaphore | None = None

    # -- activity ----------------------------------------------------------------------

    def sample_activity(self) -> None:
        sample, bounds = sample_registry(self.api.processor.metrics.registry, time.time())
        self.activity_window.add(sample, bounds)

    def local_activity(self) -> dict[str, Any]:
        return self.activity_window.deltas()

    async def activity(self, headers: Mapping[str, str]) -> dict[str, Any]:
        answers = await self._each("/internal/activity", headers, self.local_activity)
        merged = merge_activity([a for _, a, _ in answers if a is not None],
                                int(time.time() * 1000), self.activity_window.step_s,
                                self.activity_window.window_s)
        merged["replicas"] = len(answers)
        merged["unanswered"] = [str(url) for url, a, _ in answers if a is None]
        return merged

    # -- processors ----------------------------------------------------------------------

    def local_processor(self) -> dict[str, Any]:
        """This replica: the partitions it folds and follows, and whether it is restored."""
        processor = self.api.processor
        app = processor.app
        # the fold's own follower keeps the standby copies, not Faust (D19)
        standby = sorted(processor.standby.partitions)
        return {"url": str(self.api.me), "active": processor.active_partitions(),
                "standby": standby, "ready": processor.is_ready(),
                "rebalancing": bool(app.rebalancing), "restoring": bool(app.in_recovery)}

    async def processors(self, headers: Mapping[str, str]) -> dict[str, Any]:
        answers = await self._each("/internal/processor", headers, self.local_processor)
        rows: list[dict[str, Any]] = []
        active: set[int] = set()
        for url, answer, error in answers:
            if answer is None:
                rows.append({"url": str(url), "error": error})
            else:
                rows.append(answer)
                active.update(answer.get("active", []))
        return {"partitions": self.settings.partitions, "processors": rows,
                "unowned": sorted(set(range(self.settings.partitions)) - active)}

    async def _each(self, path: str, headers: Mapping[str, str],
                    local: Callable[[], dict[str, Any]]
                    ) -> list[tuple[URL, dict[str, Any] | None, str | None]]:
        """Every member's answer to an internal endpoint, None with the error for a
        member that did not answer (this replica's own is computed in place)."""
        async def one(url: URL) -> tuple[URL, dict[str, Any] | None, str | None]:
            try:
                return url, await self.api.call_replica(url, path, {}, headers, local), None
            except ApiError as exc:
                return url, None, exc.message
        return list(await asyncio.gather(*(one(u) for u in
                                           self.api.replicas(with_actives=False))))

    # -- history -------------------------------------------------------------------------

    async def history(self, task_id: str, show_dispatch_ids: bool) -> dict[str, Any]:
        """The task's events with the fold's verdicts; 404 when the log has none."""
        if self._history_slots is None:
            self._history_slots = asyncio.Semaphore(HISTORY_READS)
        slots = self._history_slots
        deadline = time.monotonic() + HISTORY_TIMEOUT_S
        try:
            await asyncio.wait_for(slots.acquire(), HISTORY_TIMEOUT_S)
        except TimeoutError:
            raise ApiError(503, "busy", "other history reads are running on this replica; "
                           "retry in a moment") from None
        try:
            entries = await asyncio.wait_for(
                asyncio.to_thread(task_history, self.settings, task_id),
                max(1.0, deadline - time.monotonic()))
        except TimeoutError:
            raise ApiError(503, "unavailable", "the task's partition was not read in "
                           f"{HISTORY_TIMEOUT_S:g} s; retry") from None
        finally:
            slots.release()
        if not entries:
            raise ApiError(404, "not_found", f"no events of task {task_id!r} are in the log")
        events = [e.to_json() for e in entries]
        if not show_dispatch_ids:
            events = [hide_dispatch_ids(e) for e in events]
        return {"task_id": task_id, "events": events}

    # -- redrive many ----------------------------------------------------------------------

    async def redrive_many(self, body: RedriveMany, headers: Mapping[str, str]
                           ) -> dict[str, Any]:
        """Read each task; redrive those DEAD now (or, dry run, say that it would)."""
        gate = asyncio.Semaphore(REDRIVE_CONCURRENCY)

        async def one(task_id: str) -> dict[str, Any]:
            async with gate:
                return await self._redrive_one(task_id, body, headers)

        ids = list(dict.fromkeys(body.task_ids))  # each once, in the order given
        results = list(await asyncio.gather(*(one(t) for t in ids)))
        counts: dict[str, int] = {}
        for result in results:
            counts[result["outcome"]] = counts.get(result["outcome"], 0) + 1
        return {"dry_run": body.dry_run, "counts": counts, "results": results}

    async def _redrive_one(self, task_id: str, body: RedriveMany, headers: Mapping[str, str]
                           ) -> dict[str, Any]:
        try:
            view = await self.api.get_task(task_id, headers, proxied=False)
        except ApiError as exc:
            outcome = NOT_FOUND if exc.status == 404 else FAILED
            return {"task_id": task_id, "outcome": outcome, "status": None,
                    "message": exc.message}
        status = str(view.get("status"))
        if status != TaskStatus.DEAD.value:
            return {"task_id": task_id, "outcome": SKIPPED, "status": status,
                    "message": f"the task is {status}, not DEAD"}
        if body.dry_run:
            return {"task_id": task_id, "outcome": WOULD_REDRIVE, "status": status,
                    "message": "would be redriven"}
        try:
            await self.api.produce_redrive(task_id, body.reason, body.max_attempts)
        except ApiError as exc:
            return {"task_id": task_id, "outcome": FAILED, "status": status,
                    "message": exc.message}
        return {"task_id": task_id, "outcome": REDRIVEN, "status": status,
                "message": "redrive requested"}


def hide_dispatch_ids(event: dict[str, Any]) -> dict[str, Any]:
    """A history entry's JSON without the dispatch IDs in its fields and decisions."""
    fields = dict(event.get("fields") or {})
    if "dispatch_id" in fields:
        fields["dispatch_id"] = HIDDEN
    decisions = [_DISPATCHED.sub(rf"\1 {HIDDEN}", d) for d in event.get("decisions", [])]
    return {**event, "fields": fields, "decisions": decisions}
