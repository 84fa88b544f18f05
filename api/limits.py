"""The pure half of ``/limits`` (issue 16): rate-limit states as the API shows them.

Each replica reads the ``limit:`` entities of its active partitions (definitions and
keys' buckets; processors/fold/limits.py) and renders them with their fill at the time
of the read; the replica that took the request merges the answers by (name, key).
Setting a limit is an event (``LimitSet`` keyed by ``limit:<name>``), refused while the
processors of this version do not enforce limits (schemas/flowspec.py).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from taskstream.processors.fold.limits import fill_at
from taskstream.schemas.errors import DecodeError
from taskstream.schemas.flowspec import LimitView, format_rate
from taskstream.schemas.flowstate import LimitState
from taskstream.schemas.serde import decode_entity

log = logging.getLogger("taskstream.api")


class LimitBody(BaseModel):
    """The body of ``PUT /limits/{name}`` (the name is in the path)."""

    model_config = ConfigDict(extra="forbid")
    rate: str = Field(description="COUNT/PERIOD, for example 100/s, 5/min, 10/2s")
    burst: int = Field(default=1, description="tokens a full bucket holds (at least 1)")


def limit_states(values: Iterable[bytes]) -> Iterator[LimitState]:
    """The limit states among ``values`` (a partition's ``limit:`` entities, in key
    order); a value that is not one is skipped (logged: a bug or a newer version)."""
    for value in values:
        try:
            state = decode_entity(value)
        except DecodeError as exc:
            log.warning("a limit: entity that does not decode: %s", exc)
            continue
        if isinstance(state, LimitState):
            yield state


def limit_view(state: LimitState, now_ms: int) -> dict[str, Any]:
    """One limit or bucket as JSON, its fill computed for ``now_ms``."""
    view = LimitView(
        name=state.name, key=state.bucket_key, defined=state.defined,
        rate=format_rate(state.count, state.period_ms) if state.defined else None,
        count=state.count, period_ms=state.period_ms, burst=state.burst,
        tokens=round(fill_at(state, now_ms), 3), waiting=len(state.waiting),
        granted=state.granted, deferred=state.deferred, rejected=state.rejected,
        set_at_ms=state.set_at_ms, set_at=LimitView.iso(state.set_at_ms),
        updated_at_ms=state.updated_at_ms, as_of_ms=now_ms)
    return view.model_dump(mode="json")


def merge_limits(answers: Iterable[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Every replica's limits in one list, ordered by name, the definition first."""
    rows = [row for answer in answers for row in answer]
    return sorted(rows, key=lambda r: (r["name"], r["key"] is not None, r["key"] or ""))
