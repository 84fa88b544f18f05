"""The states of the flow-control entities: rate-limit buckets and concurrency keys.

Each is stored in the processor's partition table beside the task states, under
its own entity key (``limit:<name>[:<key>]``, ``ckey:<key>``:
:mod:`taskstream.schemas.entity_keys`), as its own Avro record
(``io.taskstream.LimitState``, ``io.taskstream.ConcurrencyState``, schema v2). The
single-object fingerprint tells the kinds apart on decode. Both are bounded: the
waiting lists hold at most ``Limits.max_waiting`` entries (a request beyond it is
deferred, and the task asks again), the holders at most the key's
``max_concurrency``. docs/flow-control.md explains the fields; docs/decisions.md, D32,
why they are shaped this way.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class LimitWaiter:
    """One attempt waiting for a token, ordered by (submitted_at_ms, task_id)."""

    task_id: str
    attempt: int
    submitted_at_ms: int


@dataclass(frozen=True, slots=True)
class GateOut:
    """One event the last applied event made a limit or key send to a task (for redo).

    ``what`` is ``grant``, ``defer`` or ``refuse``; ``at_ms`` the emitted event's time.
    """

    what: str
    task_id: str
    attempt: int
    at_ms: int
    sequence: int | None = None  # a slot grant's fencing token
    retry_at_ms: int | None = None  # a deferral's time to ask again
    reason: str = ""


@dataclass(frozen=True, slots=True)
class LimitState:
    """A rate limit's definition (``limit:<name>``, which is also the bucket of requests
    without a key) or one key's bucket (``limit:<name>:<key>``).

    Tokens are counted in units of ``1/period_ms`` of a token, so refills stay integers:
    a bucket gains ``count`` units a millisecond and holds at most ``burst * period_ms``.
    """

    key: str  # the entity key
    name: str
    bucket_key: str | None  # None: the definition (and the key-less bucket)
    defined: bool = False  # a rate is known (set here, or forwarded with a request)
    count: int = 0  # tokens per period
    period_ms: int = 1000
    burst: int = 1  # the most tokens a full bucket holds
    set_at_ms: int | None = None  # when the definition was last set
    tokens: int = 0  # in units of 1/period_ms token
    refilled_at_ms: int = 0  # the time ``tokens`` was computed for; never goes back
    due_at_ms: int | None = None  # when the head of ``waiting`` gets a token
    waiting: list[LimitWaiter] = field(default_factory=list)  # in grant order
    granted: int = 0
    deferred: int = 0
    rejected: int = 0  # events that did not fit (counted, nothing else changed)
    last_out: list[GateOut] = field(default_factory=list)
    recent_event_ids: list[str] = field(default_factory=list)
    updated_at_ms: int = 0


@dataclass(frozen=True, slots=True)
class SlotHolder:
    task_id: str
    attempt: int
    sequence: int  # the fencing token of this hold
    granted_at_ms: int
    max_concurrency: int = 1  # as its request asked: no more holders while it holds


@dataclass(frozen=True, slots=True)
class SlotWaiter:
    task_id: str
    attempt: int
    submitted_at_ms: int
    max_concurrency: int


@dataclass(frozen=True, slots=True)
class ConcurrencyState:
    """A concurrency key (``ckey:<key>``): who holds its slots, who waits, in FIFO order."""

    key: str  # the entity key
    name: str  # the concurrency key as tasks name it
    holders: list[SlotHolder] = field(default_factory=list)
    waiting: list[SlotWaiter] = field(default_factory=list)
    sequence: int = 0  # the last fencing token handed out; grows by one per grant
    max_concurrency: int = 1  # as the newest request asked
    granted: int = 0
    released: int = 0
    deferred: int = 0
    rejected: int = 0
    last_out: list[GateOut] = field(default_factory=list)
    recent_event_ids: list[str] = field(default_factory=list)
    updated_at_ms: int = 0


FlowState = LimitState | ConcurrencyState
