"""From a caller's arguments to the bytes of one event: validation and encoding.

Pure (no Kafka): the options are checked by :class:`TaskSpec` (pydantic), the
task ID comes from ``(name, idempotency_key)`` when a key is given (so
duplicates share a partition and meet in one fold) and is a fresh ULID
otherwise, and the envelope is Avro-encoded by the schemas package.

No Kafka here; the one I/O is the offload of a payload over the threshold to
object storage (D34), before its event is built, so the event never refers to
an object that was not stored.

With a payload sealer (D27) the payload is sealed for its task ID before it is
encoded (the template fast path, which writes payloads straight into bytes, is
skipped then); a payload that is offloaded is sealed first, so the bucket holds
sealed bytes only. Every encoded event is held to the size budget
(``max_event_bytes``, D28): over it, :class:`EventTooLargeError`, before
anything is sent.
"""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from pydantic import ValidationError

from taskstream.objectstore.offload import Offloader, should_offload
from taskstream.producer.errors import EventTooLargeError, InvalidTaskError
from taskstream.producer.fastspec import SimpleSpecs
from taskstream.producer.fastwire import SubmittedEncoder, encode_submitted, simple_encoder
from taskstream.producer.templates import TemplateItems
from taskstream.schemas.entity_keys import group_key, limit_key, schedule_key
from taskstream.schemas.errors import InvalidSpecError
from taskstream.schemas.events import (
    CancelRequested,
    Envelope,
    GroupCreated,
    PurgeRequested,
    RedriveRequested,
    ScheduleCommand,
    ScheduleOp,
    ScheduleSet,
)
from taskstream.schemas.flowspec import LimitSpec
from taskstream.schemas.ids import (
    ID_LENGTH,
    derived_task_id,
    member_task_id,
    new_event_id,
    new_task_id,
    new_ulids,
)
from taskstream.schemas.models import SpecLimits, TaskSpec
from taskstream.schemas.schedules import SCHEDULE_ID_PATTERN, ScheduleRequest
from taskstream.schemas.serde import encode_event
from taskstream.security.sealing import Sealer


def _no_template(*_args: Any) -> None:
    return None


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def invalid(exc: ValidationError, what: str) -> InvalidTaskError:
    """A ValidationError as an InvalidTaskError that names each bad field."""
    fields: list[str] = []
    problems: list[str] = []
    for err in exc.errors():
        field = ".".join(str(p) for p in err["loc"]) or "task"
        fields.append(field)
        problems.append(f"{field}: {err['msg']}")
    return InvalidTaskError(f"invalid {what}: " + "; ".join(problems), fields)


def task_id_for(name: str, idempotency_key: str | None) -> str:
    """The Kafka key of a task: derived from (name, key) when keyed, else new."""
    if idempotency_key is not None:
        return derived_task_id(name, idempotency_key)
    return new_task_id()


def check_task_id(task_id: str) -> str:
    if not isinstance(task_id, str) or len(task_id) != ID_LENGTH:
        raise InvalidTaskError(
            f"task_id: {task_id!r} is not a task ID (26 characters, as submit() returns)",
            ["task_id"],
        )
    return task_id


class EventBuilder:
    """Builds and encodes the three client events for one producer."""

    __slots__ = (
        "_context",
        "_encode",
        "_encode_simple",
        "_offloader",
        "_sealer",
        "_simple",
        "_templates",
        "inline_limits",
        "limits",
        "max_event_bytes",
        "max_payload_bytes",
        "source",
    )

    def __init__(
        self,
        source: str,
        max_payload_bytes: int,
        *,
        limits: SpecLimits | None = None,
        encoder: SubmittedEncoder | None = None,
        offloader: Offloader | None = None,
        sealer: Sealer | None = None,
        max_event_bytes: int | None = None,
    ) -> None:
        self.source = source
        self.max_payload_bytes = max_payload_bytes
        self.max_event_bytes = max_event_bytes
        self._sealer = sealer if sealer is not None and sealer.can_seal else None
        self.limits = limits if limits is not None else SpecLimits(max_payload_bytes)
        #: what stays inline whatever the store: a schedule's task (each firing is a task
        #: of its own, and an object is named for one task)
        self.inline_limits = self.limits
        self._offloader = offloader
        # With object storage (D34) a task spec may carry up to max_offload_bytes; the fast
        # paths keep to what stays inline, so a large payload takes the general path,
        # which stores it (submitted()).
        fast = self.limits
        if offloader is not None:
            fast = replace(
                self.limits, max_payload_bytes=min(self.limits.max_payload_bytes,
                                                   offloader.threshold))
            self.limits = replace(self.limits, max_payload_bytes=offloader.max_bytes)
        self._context = {"limits": self.limits}
        self._encode = encoder if encoder is not None else encode_submitted
        self._simple = SimpleSpecs(fast)
        self._encode_simple = simple_encoder()
        self._templates = TemplateItems(
            self._simple, self._encode_simple, fast.max_payload_bytes, source
        )

    def spec(self, name: str, payload: Any, options: Mapping[str, Any]) -> TaskSpec:
        """A validated TaskSpec; InvalidTaskError names every bad field."""
        return self._validate({**options, "name": name, "payload": payload}, f"task {name!r}")

    def _validate(self, fields: Mapping[str, Any], what: str) -> TaskSpec:
        try:
            return TaskSpec.model_validate(fields, context=self._context)
        except ValidationError as exc:
            raise invalid(exc, what) from None

    def from_fields(self, fields: Mapping[str, Any], at_ms: int, what: str) -> tuple[str, bytes]:
        """(task ID, encoded TaskSubmitted) of TaskSpec fields: the submit hot path.

        Simple options take the cheap path (:mod:`taskstream.producer.fastspec`);
        everything else, and every error, goes through TaskSpec.
        """
        simple = self._simple.fields(fields, at_ms)
        if simple is None:
            return self.submitted(self._validate(fields, what), at_ms)
        event_id, task_id = new_ulids(2, at_ms)
        key = simple[9]
        if key is not None:
            task_id = derived_task_id(simple[0], key)
        if self._sealer is not None:
            simple = simple._replace(payload=self._sealer.seal(simple.payload, task_id))
        return task_id, self.budget(
            self._encode_simple(event_id, task_id, at_ms, self.source, simple), what)

    def budget(self, value: bytes, what: str) -> bytes:
        """``value`` if it fits the size budget, else :class:`EventTooLargeError`."""
        limit = self.max_event_bytes
        if limit is not None and len(value) > limit:
            raise EventTooLargeError(
                f"{what}: the event is {len(value)} bytes encoded, over the size budget "
                f"max_event_bytes={limit}; make the payload, headers or tags smaller (store "
                "large data elsewhere and pass a reference)", ["payload"])
        return value

    def from_call(
        self, name: str, payload: Any, options: Mapping[str, Any], at_ms: int
    ) -> tuple[str, bytes]:
        """submit(name, payload, **options) as (task ID, encoded TaskSubmitted)."""
        if not options and self._sealer is None:
            event_id, task_id = new_ulids(2, at_ms)
            value = self._templates.encode_call(name, payload, event_id, task_id, at_ms)
            if value is not None:
                return task_id, self.budget(value, f"task {name!r}")
        return self.from_fields(
            {**options, "name": name, "payload": payload}, at_ms, f"task {name!r}"
        )

    def from_item(
        self, item: TaskSpec | Mapping[str, Any], index: int, at_ms: int
    ) -> tuple[str, bytes]:
        """One element of submit_many() as (task ID, encoded TaskSubmitted)."""
        if isinstance(item, TaskSpec):
            return self.submitted(item, at_ms)
        if not isinstance(item, Mapping):
            raise InvalidTaskError(
                f"task #{index}: expected a TaskSpec or a mapping, got {type(item).__name__}",
                [f"[{index}]"],
            )
        return self.from_fields(item, at_ms, f"task #{index} ({item.get('name')!r})")

    def many(
        self, items: Sequence[TaskSpec | Mapping[str, Any]], at_ms: int
    ) -> tuple[list[str], list[bytes]]:
        """submit_many()'s items as (task IDs, encoded TaskSubmitted events), in order.

        Like :meth:`from_item` for each item, with the IDs made in one go
        (:func:`new_ulids`: event IDs first, then the task IDs of unkeyed items).
        Raises InvalidTaskError for the first bad item, before anything is sent.
        Two flat lists rather than pairs: nothing per task for the garbage
        collector to track.
        """
        n = len(items)
        limit = self.max_event_bytes if self.max_event_bytes is not None else sys.maxsize
        ids = new_ulids(2 * n, at_ms)
        fields, encode, source = self._simple.fields, self._encode_simple, self.source
        sealer = self._sealer
        # the templates write payloads straight into bytes: not when payloads are sealed
        from_template = self._templates.encode if sealer is None else _no_template
        task_ids: list[str] = []
        values: list[bytes] = []
        add_id, add_value = task_ids.append, values.append
        for i, item in enumerate(items):
            if type(item) is dict:
                task_id = ids[n + i]
                value = from_template(item, ids[i], task_id, at_ms)
                if value is None:
                    simple = fields(item, at_ms)
                    if simple is None:
                        task_id, value = self.from_item(item, i, at_ms)
                    else:
                        key = simple[9]
                        if key is not None:
                            task_id = derived_task_id(simple[0], key)
                        if sealer is not None:
                            simple = simple._replace(payload=sealer.seal(simple[3], task_id))
                        value = encode(ids[i], task_id, at_ms, source, simple)
            else:
                task_id, value = self.from_item(item, i, at_ms)
            if len(value) > limit:
                self.budget(value, f"task #{i}")
            add_id(task_id)
            add_value(value)
        return task_ids, values

    def spec_from(self, item: TaskSpec | Mapping[str, Any], index: int) -> TaskSpec:
        if isinstance(item, TaskSpec):
            return item  # validated when it was built (with the caller's limits)
        if not isinstance(item, Mapping):
            raise InvalidTaskError(
                f"task #{index}: expected a TaskSpec or a mapping, got {type(item).__name__}",
                [f"[{index}]"],
            )
        try:
            return TaskSpec.model_validate(item, context=self._context)
        except ValidationError as exc:
            raise invalid(exc, f"task #{index} ({item.get('name')!r})") from None

    def submitted(self, spec: TaskSpec, at_ms: int, *,
                  task_id: str | None = None) -> tuple[str, bytes]:
        """(task ID, encoded TaskSubmitted envelope) of one spec (``task_id``: a graph
        helper's chosen ID, else derived or new)."""
        body = spec.to_submitted(at_ms, self.limits)
        member = spec.member_of
        if member is not None:
            task_id = member_task_id(member.group_id, member.slot)
        elif task_id is None:
            task_id = task_id_for(body.name, body.idempotency_key)
        if task_id in body.depends_on:
            raise InvalidTaskError(f"depends_on: task {task_id} would depend on itself",
                                   ["depends_on"])
        offloader = self._offloader
        if len(body.payload) > self.max_payload_bytes and (
                offloader is None or not should_offload(len(body.payload), offloader.threshold)):
            raise InvalidTaskError(
                f"payload: {len(body.payload)} bytes is over max_payload_bytes "
                f"({self.max_payload_bytes}); store large data elsewhere and pass a reference",
                ["payload"],
            )
        if self._sealer is not None:
            # sealed first, so the object store holds the sealed bytes only (D27, D34)
            body = replace(body, payload=self._sealer.seal(body.payload, task_id))
        if offloader is not None:
            ref = offloader.payload(task_id, body.payload)
            if ref is not None:
                body = replace(body, payload=b"", payload_ref=ref)
        return task_id, self.budget(
            self._encode(new_event_id(), task_id, at_ms, self.source, body),
            f"task {body.name!r}")

    # -- groups and schedules (D37) ----------------------------------------------------

    def group_created(self, group_id: str, size: int, at_ms: int) -> tuple[str, bytes]:
        """(group key, encoded GroupCreated) of a group of ``size`` members."""
        key = group_key(group_id)
        env = Envelope(new_event_id(), key, at_ms, self.source, 0, GroupCreated(size))
        return key, encode_event(env)

    def schedule_request(self, fields: Mapping[str, Any]) -> ScheduleRequest:
        try:
            return ScheduleRequest.build(**fields)
        except InvalidSpecError as exc:
            raise InvalidTaskError(str(exc), ["schedule"]) from None

    def schedule_set(self, request: ScheduleRequest, at_ms: int) -> tuple[str, bytes]:
        """(schedule key, encoded ScheduleSet) of a validated request."""
        if self._sealer is not None:
            raise InvalidTaskError(
                "schedules cannot carry sealed payloads yet: a payload is sealed for one task "
                "ID and a schedule's firings are new tasks; submit from a timer of your own "
                "or run this schedule without the payload keyring (docs/security.md)",
                ["schedule"])
        try:
            task = request.task_spec(self.inline_limits).to_submitted(at_ms, self.limits)
        except InvalidSpecError as exc:
            raise InvalidTaskError(str(exc), ["task"]) from None
        key = schedule_key(request.schedule_id)
        body = ScheduleSet(request.to_spec(task))
        return key, encode_event(Envelope(new_event_id(), key, at_ms, self.source, 0, body))

    def schedule_command(self, schedule_id: str, op: ScheduleOp, reason: str,
                         at_ms: int) -> tuple[str, bytes]:
        """(schedule key, encoded ScheduleCommand): pause, resume or delete."""
        if not isinstance(schedule_id, str) or re.fullmatch(SCHEDULE_ID_PATTERN,
                                                             schedule_id) is None:
            raise InvalidTaskError(f"schedule_id: {schedule_id!r} does not match "
                                   f"{SCHEDULE_ID_PATTERN}", ["schedule_id"])
        key = schedule_key(schedule_id)
        body = ScheduleCommand(op, str(reason))
        return key, encode_event(Envelope(new_event_id(), key, at_ms, self.source, 0, body))

    def cancel(self, task_id: str, reason: str, at_ms: int) -> bytes:
        check_task_id(task_id)
        body = CancelRequested(reason=str(reason))
        return encode_event(Envelope(new_event_id(), task_id, at_ms, self.source, 0, body))

    def purge(self, task_id: str, reason: str, at_ms: int) -> bytes:
        """A ``PurgeRequested``: the fold removes the task if it is finished (D35)."""
        check_task_id(task_id)
        body = PurgeRequested(reason=str(reason))
        return encode_event(Envelope(new_event_id(), task_id, at_ms, self.source, 0, body))

    def redrive(self, task_id: str, max_attempts: int | None, reason: str, at_ms: int) -> bytes:
        check_task_id(task_id)
        if max_attempts is not None and (
            not isinstance(max_attempts, int) or isinstance(max_attempts, bool) or max_attempts < 1
        ):
            raise InvalidTaskError(
                f"max_attempts: must be a positive integer or None, got {max_attempts!r}",
                ["max_attempts"],
            )
        body = RedriveRequested(reason=str(reason), max_attempts=max_attempts)
        return encode_event(Envelope(new_event_id(), task_id, at_ms, self.source, 0, body))

    def limit_set(self, name: str, rate: str, burst: int, at_ms: int) -> tuple[str, bytes]:
        """(record key, encoded LimitSet) of a rate limit (issue 16); InvalidTaskError names
        the bad field."""
        try:
            spec = LimitSpec(name=name, rate=rate, burst=burst)
        except ValidationError as exc:
            raise invalid(exc, f"limit {name!r}") from None
        key = limit_key(spec.name)
        return key, encode_event(Envelope(new_event_id(), key, at_ms, self.source, 0,
                                          spec.to_body()))
