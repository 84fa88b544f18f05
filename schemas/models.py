"""Public pydantic models: what a caller submits (:class:`TaskSpec`) and what the
HTTP API shows (:class:`TaskView`).

Limits (payload size, name pattern, priority range) are a :class:`SpecLimits`
value, never a global. Two equivalent ways to apply non-default limits:

* ``TaskSpec.build(limits, name=..., payload=...)``, which raises
  :class:`InvalidSpecError` (a TaskstreamError and a ValueError) whose message
  lists every bad field; this is what the producer SDK and the API use;
* ``TaskSpec.model_validate(data, context={"limits": limits})``, which raises
  pydantic's ValidationError (its entries carry the field name as ``loc``).

Plain ``TaskSpec(...)`` validates against ``SpecLimits()`` (the defaults).
Durations on the model are float seconds (what people write); on the wire they
are integer milliseconds (:meth:`TaskSpec.to_submitted`).

Payloads: ``bytes`` travel as they are, with ``content_type`` (default
``application/octet-stream``); any other value must be JSON-able and is encoded
as compact UTF-8 JSON with sorted keys (so equal values give equal bytes, which
the duplicate/conflict check compares), content type ``application/json``.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal, Self

import orjson
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from taskstream.schemas.entity_keys import (
    GROUP_PREFIX,
    LIMIT_NAME_PATTERN,
    MAX_KEY_LENGTH,
    group_key,
)
from taskstream.schemas.errors import InvalidSpecError
from taskstream.schemas.events import (
    Backoff,
    Dependent,
    FlowControl,
    ParentFailurePolicy,
    TaskSubmitted,
)
from taskstream.schemas.view import TaskView
from taskstream.topics import canonical_tags

if TYPE_CHECKING:
    from taskstream.settings import Settings

__all__ = [
    "BackoffSpec",
    "GroupSlot",
    "SpecLimits",
    "TaskSpec",
    "TaskView",
    "encode_json",
]

JSON_CONTENT_TYPE = "application/json"
BYTES_CONTENT_TYPE = "application/octet-stream"
DEFAULT_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_.:-]{0,199}$"
QUEUE_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
#: the queue of a task that names none
DEFAULT_QUEUE = "default"
TASK_ID_PATTERN = r"^[0-9A-HJKMNP-TV-Z]{26}$"
TASK_ID = re.compile(TASK_ID_PATTERN)
#: a group's own ID (its key is ``group:<id>``)
GROUP_ID_PATTERN = r"^[A-Za-z0-9_.:-]{1,128}$"
GROUP_ID = re.compile(GROUP_ID_PATTERN)
#: the most parents one task may have, and the most dependents: one setting
#: (``max_dependencies``), the security bounds use it too; a larger fan-in is a group
MAX_DEPENDENCIES = 1000
#: how long a task waits for a parent nobody has heard of (``dependency_timeout_s``)
DEPENDENCY_TIMEOUT_S = 300.0


#: the longest delay, lease, timeout or backoff a spec may ask for: ten years. Beyond
#: it the millisecond values would overflow Avro's long and nobody means it anyway.
MAX_DURATION_S = 10 * 365 * 24 * 3600.0
#: the shortest lease: a worker renews it from another process over Kafka; less than a
#: second would expire attempts that are alive (D28)
MIN_LEASE_S = 1.0
MAX_CONTENT_TYPE = 255
MAX_IDEMPOTENCY_KEY = 512


@dataclass(frozen=True, slots=True)
class SpecLimits:
    """The configurable rules a task is validated against: by TaskSpec in the SDK and the
    API, and again by the fold on the wire (processors/fold/validate.py, D28)."""

    max_payload_bytes: int = 900 * 1024
    name_pattern: str = DEFAULT_NAME_PATTERN
    priority_min: int = 0
    priority_max: int = 2
    max_headers: int = 64
    max_header_bytes: int = 4096
    max_tags: int = 64
    max_tag_bytes: int = 256
    max_dependencies: int = MAX_DEPENDENCIES
    dependency_timeout_s: float = DEPENDENCY_TIMEOUT_S

    @classmethod
    def from_settings(cls, settings: Settings) -> SpecLimits:
        return cls(
            max_payload_bytes=settings.max_payload_bytes,
            priority_max=settings.priority_levels - 1,
            max_headers=settings.max_headers,
            max_header_bytes=settings.max_header_bytes,
            max_tags=settings.max_tags,
            max_tag_bytes=settings.max_tag_bytes,
            max_dependencies=settings.max_dependencies,
            dependency_timeout_s=settings.dependency_timeout_s,
        )

    def check_headers(self, headers: dict[str, str]) -> str | None:
        """Why ``headers`` break the limits, or None."""
        if len(headers) > self.max_headers:
            return f"{len(headers)} headers; at most {self.max_headers} are allowed"
        for name, value in headers.items():
            size = len(name.encode()) + len(value.encode())
            if not name or size > self.max_header_bytes:
                return (f"header {name[:40]!r} is {size} bytes (name + value); each must be "
                        f"1 to {self.max_header_bytes}")
        return None

    def check_tags(self, tags: list[str]) -> str | None:
        if len(tags) > self.max_tags:
            return f"{len(tags)} tags; at most {self.max_tags} are allowed"
        for tag in tags:
            size = len(tag.encode())
            if not 1 <= size <= self.max_tag_bytes:
                return f"tag {tag[:40]!r} is {size} bytes; each must be 1 to {self.max_tag_bytes}"
        return None

    def check_depends_on(self, depends_on: list[str]) -> str | None:
        if len(depends_on) > self.max_dependencies:
            return (f"{len(depends_on)} parents; at most {self.max_dependencies} "
                    "(max_dependencies): for a larger fan-in, depend on a group "
                    "(producer.group)")
        for parent in depends_on:
            if parent.startswith(GROUP_PREFIX):
                if GROUP_ID.fullmatch(parent[len(GROUP_PREFIX):]) is None:
                    return f"depends_on entry {parent[:40]!r} is not group:<id>"
            elif TASK_ID.fullmatch(parent) is None:
                return (f"depends_on entry {parent[:40]!r} is not a 26-character task ID "
                        "or a group:<id> key")
        return None


_DEFAULT_LIMITS = SpecLimits()


def _limits(info: ValidationInfo) -> SpecLimits:
    context = info.context
    if isinstance(context, dict):
        limits = context.get("limits")
        if isinstance(limits, SpecLimits):
            return limits
    return _DEFAULT_LIMITS


#: orjson's options for payloads: sorted keys; datetimes, dataclasses and subclasses of
#: str/int/dict/list are refused (they go to the standard library, which decides)
_ORJSON_OPTIONS = (
    orjson.OPT_SORT_KEYS
    | orjson.OPT_PASSTHROUGH_DATETIME
    | orjson.OPT_PASSTHROUGH_DATACLASS
    | orjson.OPT_PASSTHROUGH_SUBCLASS
)


def _stdlib_json(value: Any) -> bytes:
    return json.dumps(
        value, separators=(",", ":"), sort_keys=True, ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def encode_json(value: Any) -> bytes:
    """Compact, key-sorted UTF-8 JSON; ValueError/TypeError if not JSON-able.

    orjson writes it (~0.2 us against ~2 us for the standard library, on the
    submit hot path). What orjson refuses (integers over 64 bits, non-string
    keys, subclasses such as IntEnum) and any output with a ``null`` in it (orjson
    writes NaN and infinities as null, where the standard library refuses
    them) goes through the standard library with ``allow_nan=False``. Either way
    one value always gives the same bytes. orjson also takes ``uuid.UUID`` and
    plain enum members (written as their values), and writes some floats in
    another exponent form than the standard library (``1e16``, not ``1e+16``):
    a duplicate submitted by an SDK older than this change with such a float
    counts as a payload conflict (the digests differ).
    """
    try:
        data = orjson.dumps(value, option=_ORJSON_OPTIONS)
    except orjson.JSONEncodeError:
        return _stdlib_json(value)
    if b"null" in data:
        return _stdlib_json(value)
    return data


class BackoffSpec(BaseModel):
    """Retry delay for attempt n: min(initial * multiplier**(n-1), max), +/- jitter."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    initial: float = Field(default=1.0, ge=0, le=MAX_DURATION_S, allow_inf_nan=False,
                           description="seconds before the first retry")
    multiplier: float = Field(default=2.0, ge=1, le=100)
    max: float = Field(default=300.0, ge=0, le=MAX_DURATION_S, allow_inf_nan=False,
                       description="cap on the delay, seconds")
    jitter: float = Field(default=0.1, ge=0, le=1, description="fraction of the delay")

    @model_validator(mode="after")
    def _max_not_below_initial(self) -> Self:
        if self.max < self.initial:
            raise ValueError(
                f"backoff.max ({self.max}) must be >= backoff.initial ({self.initial})"
            )
        return self

    def to_backoff(self) -> Backoff:
        return Backoff(_ms(self.initial), self.multiplier, _ms(self.max), self.jitter)


def _ms(seconds: float) -> int:
    return round(seconds * 1000)


class GroupSlot(BaseModel):
    """A task's place in a group (set by ``producer.group``): its ID derives from both."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    group_id: str = Field(pattern=GROUP_ID_PATTERN)
    slot: int = Field(ge=0)


class TaskSpec(BaseModel):
    """One task to submit. See the module docstring for limits and payloads."""

    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=False)

    name: str
    payload: Any = None
    content_type: str | None = Field(default=None, min_length=1, max_length=MAX_CONTENT_TYPE)
    queue: str = Field(default=DEFAULT_QUEUE, pattern=QUEUE_PATTERN)
    priority: int = 0
    delay: float | None = Field(default=None, ge=0, le=MAX_DURATION_S, allow_inf_nan=False,
                                description="seconds")
    eta: datetime | None = None
    max_attempts: int = Field(default=3, ge=1, le=1000)
    backoff: BackoffSpec = BackoffSpec()  # frozen, so sharing the default is safe
    timeout: float | None = Field(default=None, gt=0, le=MAX_DURATION_S, allow_inf_nan=False,
                                  description="seconds")
    lease: float = Field(default=30.0, ge=MIN_LEASE_S, le=MAX_DURATION_S, allow_inf_nan=False,
                         description="seconds, at least 1")
    idempotency_key: str | None = Field(default=None, min_length=1,
                                        max_length=MAX_IDEMPOTENCY_KEY)
    headers: dict[str, str] = Field(default_factory=dict)
    tags: list[str] = Field(default_factory=list)
    depends_on: list[str] = Field(
        default_factory=list,
        description="parents: task IDs, or group:<id> keys; the task waits in WAITING until "
                    "every parent has SUCCEEDED")
    on_parent_failure: Literal["cancel", "run"] = Field(
        default="cancel", description="when a parent ends DEAD or CANCELLED: cancel this task "
        "(with the reason) or run it anyway once every parent has settled")
    dependency_timeout: float | None = Field(
        default=None, gt=0, le=MAX_DURATION_S, allow_inf_nan=False,
        description="seconds to wait for a parent nobody has heard of before failing "
                    "(default: the dependency_timeout_s setting)")
    member_of: GroupSlot | None = Field(
        default=None, description="set by the group helper: the task's group and place in it")
    # --- flow control (issue 16; docs/flow-control.md) ---
    expires: float | datetime | None = Field(
        default=None, description="seconds from now, or a timezone-aware time: an attempt "
        "not started by then is never run (the task ends EXPIRED)")
    rate_limit: str | None = Field(default=None, pattern=LIMIT_NAME_PATTERN,
                                   description="a limit set with `taskstream limits set`")
    rate_key: str | None = Field(default=None, min_length=1, max_length=MAX_KEY_LENGTH,
                                 description="its own bucket under rate_limit")
    concurrency_key: str | None = Field(default=None, min_length=1, max_length=MAX_KEY_LENGTH,
                                        description="at most max_concurrency attempts with "
                                        "this key run at once")
    max_concurrency: int | None = Field(default=None, ge=1, le=1000,
                                        description="default 1 (a mutex)")

    _payload_bytes: bytes = PrivateAttr(default=b"")

    @field_validator("name")
    @classmethod
    def _check_name(cls, value: str, info: ValidationInfo) -> str:
        pattern = _limits(info).name_pattern
        if re.fullmatch(pattern, value) is None:
            raise ValueError(f"name {value!r} does not match {pattern}")
        return value

    @field_validator("priority")
    @classmethod
    def _check_priority(cls, value: int, info: ValidationInfo) -> int:
        limits = _limits(info)
        if not limits.priority_min <= value <= limits.priority_max:
            raise ValueError(
                f"priority {value} is outside {limits.priority_min}..{limits.priority_max} "
                "(higher runs first)"
            )
        return value

    @field_validator("eta")
    @classmethod
    def _check_eta(cls, value: datetime | None) -> datetime | None:
        if value is not None and value.utcoffset() is None:
            raise ValueError("eta must be timezone-aware (for example datetime.now(UTC))")
        return value

    @field_validator("headers", "tags", "depends_on")
    @classmethod
    def _check_bounded(cls, value: Any, info: ValidationInfo) -> Any:
        limits = _limits(info)
        checks: dict[str, Callable[[Any], str | None]] = {
            "headers": limits.check_headers, "tags": limits.check_tags,
            "depends_on": limits.check_depends_on}
        problem = checks[info.field_name or ""](value)
        if problem is not None:
            raise ValueError(problem)
        return value

    @field_validator("tags")
    @classmethod
    def _check_tags(cls, value: list[str]) -> list[str]:
        """Routing tags (D38): legal names, sorted, without repeats (after the bounds)."""
        return list(canonical_tags(value))

    @field_validator("rate_key", "concurrency_key")
    @classmethod
    def _check_key(cls, value: str | None) -> str | None:
        if value is not None and not value.isprintable():
            raise ValueError("a key is printable text (no control characters)")
        return value

    @field_validator("expires")
    @classmethod
    def _check_expires(cls, value: float | datetime | None) -> float | datetime | None:
        if isinstance(value, datetime) and value.utcoffset() is None:
            raise ValueError("expires must be timezone-aware (for example datetime.now(UTC)) "
                             "or a number of seconds from now")
        if isinstance(value, float | int) and not 0 < value <= MAX_DURATION_S:
            raise ValueError(f"expires in seconds must be > 0 and <= {MAX_DURATION_S:.0f}")
        return value

    @model_validator(mode="after")
    def _check_whole(self, info: ValidationInfo) -> Self:
        if self.delay is not None and self.eta is not None:
            raise ValueError("give delay or eta, not both")
        if self.depends_on and (self.delay is not None or self.eta is not None):
            raise ValueError("give depends_on or a delay/eta, not both: a task with parents "
                             "runs when they have succeeded")
        if self.member_of is not None and self.idempotency_key is not None:
            raise ValueError("a group member's ID derives from the group's ID and its slot; "
                             "give the group an ID instead of an idempotency_key")
        self._check_flow()
        self._payload_bytes = self._encode_payload(_limits(info).max_payload_bytes)
        return self

    def _check_flow(self) -> None:
        if self.rate_key is not None and self.rate_limit is None:
            raise ValueError("rate_key needs rate_limit (the key gets its own bucket of it)")
        if self.max_concurrency is not None and self.concurrency_key is None:
            raise ValueError("max_concurrency needs concurrency_key")
        if self.expires is not None:
            now_ms = math.floor(time.time() * 1000)
            expires_at = self.expires_at_ms(now_ms)
            starts_at = self.eta_ms(now_ms) or now_ms
            if expires_at is not None and expires_at <= starts_at:
                raise ValueError("expires must be after the task's eta (and in the future): "
                                 "it would expire before it may start")

    def _encode_payload(self, max_bytes: int) -> bytes:
        payload = self.payload
        if isinstance(payload, bytes | bytearray | memoryview):
            data = bytes(payload)
        else:
            if self.content_type not in (None, JSON_CONTENT_TYPE):
                raise ValueError(
                    f"payload: content_type {self.content_type!r} needs a bytes payload; "
                    "JSON values are always application/json"
                )
            try:
                data = encode_json(payload)
            except (TypeError, ValueError) as exc:
                raise ValueError(f"payload is neither bytes nor JSON-able: {exc}") from exc
        if len(data) > max_bytes:
            raise ValueError(f"payload is {len(data)} bytes encoded; the limit is {max_bytes}")
        return data

    @classmethod
    def build(cls, limits: SpecLimits | None = None, **fields: Any) -> TaskSpec:
        """Validate ``fields`` against ``limits``; InvalidSpecError names every bad field."""
        try:
            return cls.model_validate(fields, context={"limits": limits or _DEFAULT_LIMITS})
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'spec'}: {e['msg']}" for e in exc.errors()
            )
            raise InvalidSpecError(f"invalid task spec: {problems}") from exc

    @property
    def payload_bytes(self) -> bytes:
        """The payload as it travels."""
        return self._payload_bytes

    @property
    def resolved_content_type(self) -> str:
        if isinstance(self.payload, bytes | bytearray | memoryview):
            return self.content_type or BYTES_CONTENT_TYPE
        return JSON_CONTENT_TYPE

    def eta_ms(self, now_ms: int) -> int | None:
        """Absolute due time in ms, or None to run now (a zero delay is "now")."""
        if self.eta is not None:
            return math.floor(self.eta.timestamp() * 1000)
        if self.delay:
            return now_ms + _ms(self.delay)
        return None

    def expires_at_ms(self, now_ms: int) -> int | None:
        """The absolute expiry in ms, or None."""
        if isinstance(self.expires, datetime):
            return math.floor(self.expires.timestamp() * 1000)
        if self.expires is not None:
            return now_ms + _ms(self.expires)
        return None

    def flow(self) -> FlowControl | None:
        """The task's gates, or None when it names no limit or key."""
        if self.rate_limit is None and self.concurrency_key is None:
            return None
        return FlowControl(rate_limit=self.rate_limit, rate_key=self.rate_key,
                           concurrency_key=self.concurrency_key,
                           max_concurrency=self.max_concurrency or 1)

    def to_submitted(self, now_ms: int, limits: SpecLimits | None = None) -> TaskSubmitted:
        """The TaskSubmitted body (times in integer ms; a delay becomes an absolute eta).

        A task with parents carries its dependency timeout (this spec's, else the
        limits' default) so the fold never reads a setting (D37).
        """
        timeout_s = self.dependency_timeout or (limits or _DEFAULT_LIMITS).dependency_timeout_s
        member = self.member_of
        return TaskSubmitted(
            name=self.name,
            queue=self.queue,
            priority=self.priority,
            payload=self._payload_bytes,
            content_type=self.resolved_content_type,
            eta_ms=self.eta_ms(now_ms),
            max_attempts=self.max_attempts,
            backoff=self.backoff.to_backoff(),
            timeout_ms=None if self.timeout is None else _ms(self.timeout),
            lease_ms=_ms(self.lease),
            idempotency_key=self.idempotency_key,
            headers=dict(self.headers),
            tags=list(self.tags),
            depends_on=list(self.depends_on),
            on_parent_failure=ParentFailurePolicy(self.on_parent_failure.upper()),
            dependency_timeout_ms=_ms(timeout_s) if self.depends_on else None,
            dependents=[] if member is None else [
                Dependent(group_key(member.group_id), member.slot)],
            expires_at_ms=self.expires_at_ms(now_ms),
            flow=self.flow(),
        )
