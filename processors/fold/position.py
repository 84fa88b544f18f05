"""An entity's position in the events topic: a re-read record is never applied twice
(docs/decisions.md, D45).

Idempotency used to rest on the last ``Limits.recent_events`` (16) applied event ids
alone: a record read again after more than 16 later events of the same entity (a
crash between the state write and the offset commit, a rebalance, a fold group
rewound) was applied a second time. A cancel refused while the task was DEAD then
cancelled it after its redrive; a rate-limit request granted long ago was granted
again under the same derived id (a second token spent); a stale submission counted
a duplicate nobody sent.

Every entity's events live in one partition of the events topic (the record key is
the entity key), so their offsets only grow. Each state therefore remembers the
offset of the newest record folded into it, its *position*. The fold (live,
processors/live/batch.py, and replay, processors/replay/folding.py, alike) applies a
record only when its offset is past the position; a record *at* the position is
the last one applied and is applied again for its redo (D4: its id is the last in
``recent_event_ids``, so ``apply`` returns the effects the state implies and
changes nothing); a record before it is already in the state and changes nothing,
however many events came after it. A record applied to no state (an event for an
unknown entity that is not a creation) leaves no position, as before.

The position rides in ``recent_event_ids`` as its first entry, ``"@<offset>"``: no
event id starts with ``@`` (ULIDs and ids derived from them are base32, dots and
names), so the id checks never match it, and no state schema version is needed (a
later state version can give it a field of its own). States written before D45 have
no position until their next event.

A copy of the state's last event at a later offset (a client that sent the same
submission again) is applied like any other known id, but without the redo: only the
record at the position is a re-read (processors/live/batch.py, ``_unless_a_copy``).

Not covered by the position: a *new* record carrying an old event id (a client that
sends the same event again, a redo that re-sends a derived event): that is a new
offset, and stays the business of the id window and the fences (dispatch id,
attempt, timer due time, "already waiting").
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, TypeVar

from taskstream.schemas.state import POSITION_MARK as MARK

__all__ = ["MARK", "at_position", "mark_in_place", "position_of"]

S = TypeVar("S")


def position_of(state: Any) -> int | None:
    """The offset of the newest record folded into ``state``; None when it has none."""
    ids = state.recent_event_ids
    if ids and ids[0][:1] == MARK:
        return int(ids[0][1:])
    return None


def at_position(state: S, offset: int) -> S:
    """``state`` remembering ``offset`` as its position (a new state; ``state`` is kept)."""
    ids: list[str] = state.recent_event_ids  # type: ignore[attr-defined]
    mark = f"{MARK}{offset}"
    if ids and ids[0] == mark:
        return state
    return replace(state, recent_event_ids=[mark, *[i for i in ids if i[:1] != MARK]])  # type: ignore[type-var]


def mark_in_place(state: Any, offset: int) -> None:
    """Give ``state`` the position ``offset`` in place (no copy), for a caller that is
    the state's only holder (replay's cache, which folds millions of events); no state
    (None) is left alone."""
    if state is None:
        return
    ids: list[str] = state.recent_event_ids
    mark = f"{MARK}{offset}"
    if not (ids and ids[0] == mark):
        object.__setattr__(state, "recent_event_ids",
                           [mark, *[i for i in ids if i[:1] != MARK]])
