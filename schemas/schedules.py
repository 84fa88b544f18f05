"""Public models of schedules: what a caller asks for (:class:`ScheduleRequest`, the SDK's
``producer.schedule`` and ``POST /schedules``) and what the API shows
(:class:`ScheduleView`). See docs/schedules-and-dependencies.md (D37).

Times people write are seconds and timezone-aware datetimes; on the wire
(:class:`~taskstream.schemas.events.ScheduleSpec`) they are integer milliseconds.
The task each firing submits is validated by :class:`TaskSpec` itself, so its
rules (name pattern, queue, priority range, payload size) are the same as a submit's.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Literal, Self

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from taskstream.schemas.cron import Cron, check_spec, zone
from taskstream.schemas.errors import CronError, InvalidSpecError
from taskstream.schemas.events import Backoff, MisfirePolicy, ScheduleSpec, TaskSubmitted
from taskstream.schemas.models import MAX_DURATION_S, BackoffSpec, SpecLimits, TaskSpec
from taskstream.schemas.state import ScheduleState
from taskstream.schemas.view import iso

SCHEDULE_ID_PATTERN = r"^[A-Za-z0-9_.:-]{1,128}$"
Misfire = Literal["skip", "run_once", "catch_up"]
_NO_TASK = TaskSubmitted("x", "default", 0, b"", "", None, 1, Backoff(), None, 1)


def _ms(value: float) -> int:
    return round(value * 1000)


def _at_ms(value: dt.datetime | None) -> int | None:
    return None if value is None else int(value.timestamp() * 1000)


class ScheduleRequest(BaseModel):
    """Create or replace a schedule: when it fires, and the task each firing submits."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    schedule_id: str = Field(pattern=SCHEDULE_ID_PATTERN)
    task_name: str
    payload: Any = None
    cron: str | None = Field(
        default=None, description="5 fields (minute hour day-of-month month day-of-week) and "
        "optionally a 6th, second, at the end")
    every: float | None = Field(default=None, gt=0, le=MAX_DURATION_S, allow_inf_nan=False,
                                description="seconds between firings")
    tz: str = Field(default="UTC", description="IANA time zone of the cron fields")
    queue: str = "default"
    priority: int = 0
    max_attempts: int = 3
    backoff: BackoffSpec = BackoffSpec()
    timeout: float | None = None
    lease: float = 30.0
    headers: dict[str, str] = Field(default_factory=dict)
    tags: list[str] = Field(default_factory=list)
    start_at: dt.datetime | None = None
    end_at: dt.datetime | None = None
    jitter: float = Field(default=0.0, ge=0, le=86_400, allow_inf_nan=False,
                          description="seconds: each fire time is delayed by up to this, "
                          "a hash of (schedule ID, fire time)")
    misfire: Misfire = Field(default="run_once", description="fire times missed while the "
                             "platform was down or the schedule paused: skip them, run the "
                             "latest once, or catch up (at most catch_up_max)")
    catch_up_max: int = Field(default=10, ge=1, le=1000)
    misfire_grace: float = Field(default=60.0, ge=0, le=MAX_DURATION_S, allow_inf_nan=False,
                                 description="skip: a fire time this late (seconds) still runs")

    @field_validator("cron")
    @classmethod
    def _check_cron(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                Cron.parse(value)
            except CronError as exc:
                raise ValueError(str(exc)) from None
        return value

    @field_validator("tz")
    @classmethod
    def _check_tz(cls, value: str) -> str:
        try:
            zone(value)
        except CronError as exc:
            raise ValueError(str(exc)) from None
        return value

    @model_validator(mode="after")
    def _check_timing(self) -> Self:
        for name in ("start_at", "end_at"):
            value = getattr(self, name)
            if value is not None and value.utcoffset() is None:
                raise ValueError(f"{name} must be timezone-aware")
        try:
            check_spec(self.to_spec(_NO_TASK))  # the timing alone
        except CronError as exc:
            raise ValueError(str(exc)) from None
        return self

    def task_spec(self, limits: SpecLimits | None = None) -> TaskSpec:
        """The task each firing submits, validated like a submit (InvalidSpecError)."""
        return TaskSpec.build(
            limits, name=self.task_name, payload=self.payload, queue=self.queue,
            priority=self.priority, max_attempts=self.max_attempts, backoff=self.backoff,
            timeout=self.timeout, lease=self.lease, headers=self.headers, tags=self.tags)

    def to_spec(self, task: TaskSubmitted) -> ScheduleSpec:
        """The wire spec around ``task`` (a TaskSubmitted: the template of every firing)."""
        return ScheduleSpec(
            task=task,
            cron=self.cron,
            every_ms=None if self.every is None else max(1, _ms(self.every)),
            timezone=self.tz,
            start_at_ms=_at_ms(self.start_at),
            end_at_ms=_at_ms(self.end_at),
            jitter_ms=_ms(self.jitter),
            misfire=MisfirePolicy(self.misfire.upper()),
            catch_up_max=self.catch_up_max,
            misfire_grace_ms=_ms(self.misfire_grace),
        )

    @classmethod
    def build(cls, **fields: Any) -> ScheduleRequest:
        """Validate ``fields``; InvalidSpecError names every bad field."""
        try:
            return cls.model_validate(fields)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'schedule'}: {e['msg']}"
                for e in exc.errors())
            raise InvalidSpecError(f"invalid schedule: {problems}") from exc


class FiringView(BaseModel):
    fire_at_ms: int
    fire_at: str | None
    task_id: str


class ScheduleView(BaseModel):
    """One schedule as ``GET /schedules/{id}`` shows it."""

    model_config = ConfigDict(frozen=True)

    schedule_id: str
    status: str
    task_name: str
    queue: str
    cron: str | None
    every_ms: int | None
    timezone: str
    start_at_ms: int | None
    end_at_ms: int | None
    jitter_ms: int
    misfire: str
    catch_up_max: int
    revision: int
    created_at: str | None
    updated_at: str | None
    next_fire_times: list[str] = Field(
        default_factory=list, description="the next fire times (the schedule's times, before "
        "jitter), ISO-8601 UTC")
    last_firings: list[FiringView] = Field(
        default_factory=list, description="the latest firings, newest last, with their task IDs")
    fired: int
    skipped: int
    reason: str

    @classmethod
    def from_state(cls, s: ScheduleState, upcoming: list[int]) -> ScheduleView:
        spec = s.spec
        return cls(
            schedule_id=s.schedule_id, status=s.status.value, task_name=spec.task.name,
            queue=spec.task.queue, cron=spec.cron, every_ms=spec.every_ms,
            timezone=spec.timezone, start_at_ms=spec.start_at_ms, end_at_ms=spec.end_at_ms,
            jitter_ms=spec.jitter_ms, misfire=spec.misfire.value.lower(),
            catch_up_max=spec.catch_up_max, revision=s.revision,
            created_at=iso(s.created_at_ms), updated_at=iso(s.updated_at_ms),
            next_fire_times=[t for t in (iso(at) for at in upcoming) if t is not None],
            last_firings=[FiringView(fire_at_ms=f.fire_at_ms, fire_at=iso(f.fire_at_ms),
                                     task_id=f.task_id) for f in s.last_firings],
            fired=s.fired, skipped=s.skipped, reason=s.reason)
