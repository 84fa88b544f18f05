"""Bulk cancel by filter: ``POST /tasks/cancel`` (the pure half: the request and its rules).

The body names a filter, ANDed: ``queue``, ``name``, ``state``, ``submitted_before``
(and ``submitted_since``), at least one of them, so an empty body never cancels
everything. ``dry_run: true`` only counts what would be cancelled. Tasks already
SUCCEEDED, DEAD or CANCELLED are not counted (a cancellation would change
nothing); asking for such a state is a 400.

The replica that takes the request walks the task listing (scatter-gather, in
task-ID order, pages of :data:`PAGE`) and writes one ``CancelRequested`` per
match, acknowledged by the broker before it answers. A task that finishes or is
submitted during the walk may or may not be counted: the answer says what was
matched when its page was read. A very large cancel is better cut into several
calls by ``submitted_before``; ``max_tasks`` bounds one call (the answer then says
``truncated``; call again for the rest).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

from taskstream.api.query import ListQuery, bad_request, parse_since, parse_state
from taskstream.schemas.state import TERMINAL

#: tasks read per listing page during a bulk cancel
PAGE = 1000
MAX_TASKS = 1_000_000


class BulkCancelBody(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    queue: str | None = Field(None, min_length=1, max_length=64)
    name: str | None = Field(None, min_length=1, max_length=512)
    state: str | None = None
    submitted_before: str | int | None = None
    submitted_since: str | int | None = None
    dry_run: bool = False
    reason: str = Field("", max_length=1000)
    max_tasks: int = Field(MAX_TASKS, ge=1, le=MAX_TASKS)

    @model_validator(mode="after")
    def _some_filter(self) -> BulkCancelBody:
        if all(v is None for v in (self.queue, self.name, self.state, self.submitted_before)):
            raise ValueError("give at least one of queue, name, state or submitted_before "
                             "(an empty filter would cancel every task)")
        return self


def bulk_query(body: BulkCancelBody) -> ListQuery:
    """The listing query a bulk cancel walks (the body validated by the view); 400 for a
    finished state or a bad time."""
    state = parse_state(body.state) if body.state is not None else None
    if state is not None and state.value in TERMINAL:
        raise bad_request("state", f"{state.value} tasks are finished; cancelling them "
                                   "changes nothing")
    return ListQuery(
        queue=body.queue, name=body.name, state=state, limit=PAGE,
        since_ms=_time(body.submitted_since, "submitted_since"),
        before_ms=_time(body.submitted_before, "submitted_before"))


def _time(value: str | int | None, field: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, int):
        if value < 0:
            raise bad_request(field, f"{field} must be >= 0 milliseconds since the epoch")
        return value
    return parse_since(value, field)


def cancellable(status: object) -> bool:
    """May a task in this state (a listing item's ``status``) still be cancelled?"""
    return status not in TERMINAL
