"""What an events-topic record must be before the fold applies it (D26, D28).

``apply`` trusts its input's shape: it fences stale and late events, but a
record whose envelope names another entity than its key, a submission with a
priority no ready topic has, a zero lease that expires at once, or ten thousand
tags would be folded as given. And every principal that may write the topic can
write any event type on it (Kafka's ACLs stop at the topic). So before
``apply``, every record goes through :func:`check_record`, a pure function of
the record and the fold's configuration; a record it refuses is set aside for
the quarantine topic with the reason, like an undecodable one (D11), and the
entity's state stays as it was. Replay runs the same check, so the live tables
stay the fold of the log.

What is checked, in order:

1. **The entity is the record key.** ``envelope.task_id`` (the entity key,
   ENTITIES.md) equals the Kafka key, so an event can only reach the partition
   and the state of the entity it names. Task events name a task ID (26
   Crockford characters); other kinds name ``<kind>:<id>``, and their body must
   be one the kind takes: its ``events`` in the registry
   (:data:`~taskstream.processors.fold.kinds.KINDS`), which the kind's own module
   derives from the table its ``apply`` dispatches on, so the check refuses only
   types that ``apply`` refuses in every state (a ``TimerFired`` for a group or a
   key: they have no timers). This module imports the registry
   (kinds.py imports the kinds, none of which imports this module: no cycle).
   Under a task ID every body type still reaches ``apply``, which counts a
   rejection on the task (``KINDS``' task entry lists what it takes).
2. **Who wrote it** (only with a signing keyring, D26): worker events
   (``TaskStarted``, ``LeaseRenewed``, ``TaskSucceeded``, ``TaskFailed``) must be
   signed by a worker key, processor events (:data:`PROCESSOR_EVENTS`:
   ``TimerFired`` and what other entities emit) by a processor key.
   Submissions, cancels and redrives need no signature.
3. **Bounds** (D28): the queue-name pattern, the priority range, a lease of at
   least 1 s, attempts, durations, payload and text sizes, and the count and
   size of headers, tags and ``depends_on`` (the same :class:`SpecLimits` the
   SDK and the API check a TaskSpec against).
4. **Object references name the entity's own objects** (D34): a submission's
   ``payload_ref`` is ``tasks/<its task ID>/payload-<its sha256>`` and a
   result's ``result_ref`` ``tasks/<its task ID>/result-<attempt>-<its dispatch
   ID>``, with empty inline bytes beside them; so no event can make a worker
   read, or the API serve, another task's object.

Bounds and keys are configuration: replay must run with the same (a record that
breaks bounds set later would be refused on replay although the live fold took
it, and one signed by a key no longer in the keyring too); docs/security.md.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from taskstream.objectstore.keys import is_result_key, payload_key
from taskstream.processors.fold.kinds import KINDS, EntityKind
from taskstream.schemas.events import (
    CancelRequested,
    DependencyRegistered,
    Envelope,
    LeaseRenewed,
    LimitSet,
    ObjectRef,
    ParentUpdate,
    PurgeRequested,
    RateGranted,
    RateRefused,
    RateRequested,
    RateWithdrawn,
    RedriveRequested,
    ScheduleSet,
    SlotGranted,
    SlotReleased,
    SlotRequested,
    TaskFailed,
    TaskProgress,
    TaskStarted,
    TaskSubmitted,
    TaskSucceeded,
    TimerFired,
    WaitDeferred,
)
from taskstream.schemas.flowspec import MAX_BURST, MAX_PERIOD_MS, MAX_RATE_COUNT
from taskstream.schemas.models import (
    MAX_CONTENT_TYPE,
    MAX_DURATION_S,
    MAX_IDEMPOTENCY_KEY,
    MIN_LEASE_S,
    TASK_ID,
    SpecLimits,
)
from taskstream.security.keyring import Keyring, load_keyring
from taskstream.security.sealing import MAX_OVERHEAD
from taskstream.security.signing import RecordHeaders, signature_of, verify
from taskstream.settings import Settings
from taskstream.topics import QUEUE_NAME

#: the key of an entity other than a task: ``<kind>:<id>`` (ENTITIES.md)
ENTITY_KEY = re.compile(r"^[a-z][a-z0-9_-]{0,31}:[^\x00-\x1f]{1,200}$")
WORKER_EVENTS: frozenset[type] = frozenset({TaskStarted, LeaseRenewed, TaskSucceeded,
                                            TaskFailed, TaskProgress})
#: processor-only body types: timers, and what one entity's fold tells another (D37, D32)
PROCESSOR_EVENTS: frozenset[type] = frozenset({
    TimerFired, DependencyRegistered, ParentUpdate, RateRequested, RateWithdrawn,
    RateGranted, RateRefused, SlotRequested, SlotReleased, SlotGranted, WaitDeferred})
#: the kinds other than tasks by key prefix (``<kind>:``): what each takes is its ``events``
_KIND_BY_PREFIX: dict[str, EntityKind] = {kind.prefix: kind for kind in KINDS if kind.prefix}
#: the fields nobody needs longer: ids, names of workers and sources
MAX_ID = 128
MAX_SOURCE = 256
MAX_NAME = 200
#: error texts (sealed, they grow by 4/3 plus a header); a worker cuts tracebacks at 16k
MAX_TEXT = 64 * 1024
MAX_ATTEMPTS = 1000
MAX_ATTEMPT = 1_000_000
MAX_MS = int(MAX_DURATION_S * 1000)
MIN_LEASE_MS = int(MIN_LEASE_S * 1000)
#: an object reference's fields (D34): S3 bucket names, a KMS key ID or ARN, sizes
BUCKET = re.compile(r"^[A-Za-z0-9._-]{3,255}$")  # with legacy names (uppercase, _)
SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")
MAX_KEY_ID = 2048
MAX_OBJECT_BYTES = 5 * 1024**4
#: event times: after 2000-01-01 and before 2200 (an Avro long takes anything)
MIN_TIME_MS = 946_684_800_000
MAX_TIME_MS = 7_258_118_400_000


@dataclass(frozen=True, slots=True)
class Checks:
    """The fold's configuration of :func:`check_record`."""

    limits: SpecLimits = field(default_factory=SpecLimits)
    #: with a keyring, worker and processor events must be signed (D26)
    keyring: Keyring | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> Checks:
        """The checks a processor or a replay with these settings runs."""
        return cls(SpecLimits.from_settings(settings),
                   load_keyring(settings.signing_keys, settings.signing_keyring_file, "signing"))


def check_record(checks: Checks, key: bytes | None, value: bytes,
                 headers: RecordHeaders | None, envelope: Envelope
                 ) -> str | None:
    """None when the decoded record may be folded, else why it must be set aside."""
    entity = envelope.task_id
    if key is None or key != entity.encode():
        shown = key[:64].decode("utf-8", "replace") if key is not None else None
        return (f"the envelope is about {entity[:64]!r} but the record key is {shown!r}: an "
                "event must be keyed by the entity it names")
    body = envelope.body
    body_type = type(body)
    if TASK_ID.fullmatch(entity) is None:
        problem = _entity_key_problem(entity, body_type)
        if problem is not None:
            return problem
    problem = _envelope_problem(envelope)
    if problem is not None:
        return problem
    if checks.keyring is not None:
        problem = _signature_problem(checks.keyring, body_type, key, value, headers)
        if problem is not None:
            return f"{envelope.type_name} refused: {problem}"
    problem = _body_problem(checks, body, entity)
    return None if problem is None else f"{envelope.type_name} refused: {problem}"


def _entity_key_problem(entity: str, body_type: type) -> str | None:
    """Why a record under a key that is not a task ID may not be folded, or None."""
    if ENTITY_KEY.match(entity) is None:
        return (f"{entity[:64]!r} is neither a task ID (26 Crockford base32 characters) nor "
                "an entity key <kind>:<id>")
    prefix = entity[:entity.index(":") + 1]
    kind = _KIND_BY_PREFIX.get(prefix)
    if kind is None:
        return f"{entity[:64]!r}: no entity kind has the prefix {prefix!r}"
    if body_type not in kind.events:
        takes = ", ".join(sorted(t.__name__ for t in kind.events))
        why = f" (a {kind.name} has no timers)" if body_type is TimerFired else ""
        return (f"a {kind.name} does not take {body_type.__name__} events{why}; it takes "
                f"{takes}")
    return None


def _envelope_problem(envelope: Envelope) -> str | None:
    if not 1 <= len(envelope.event_id) <= MAX_ID or not envelope.event_id.isprintable():
        return f"event_id must be 1 to {MAX_ID} printable characters"
    if len(envelope.source) > MAX_SOURCE:
        return f"source is over {MAX_SOURCE} characters"
    if not 0 <= envelope.attempt <= MAX_ATTEMPT:
        return f"attempt {envelope.attempt} is outside 0..{MAX_ATTEMPT}"
    if not MIN_TIME_MS <= envelope.occurred_at_ms <= MAX_TIME_MS:
        return f"occurred_at_ms {envelope.occurred_at_ms} is not a time this century"
    return None


def _signature_problem(keyring: Keyring, body_type: type, key: bytes, value: bytes,
                       headers: RecordHeaders | None) -> str | None:
    if body_type in WORKER_EVENTS:
        wanted = "worker"
    elif body_type in PROCESSOR_EVENTS:
        wanted = "processor"
    else:
        return None
    role, why = verify(keyring, key, value, signature_of(headers))
    if role is None:
        return f"{why}; only a {wanted} may write it (docs/security.md)"
    if role != wanted:
        return f"it is signed by a {role} key; only a {wanted} may write it"
    return None


def _body_problem(checks: Checks, body: object, entity: str) -> str | None:
    match body:
        case TaskSubmitted():
            ref = body.payload_ref
            return _submitted_problem(checks.limits, body) or (None if ref is None else (
                _ref_problem("payload_ref", ref, body.payload,
                             ref.key == payload_key(entity, ref.sha256),
                             payload_key(entity, "<sha256>"))))
        case TaskStarted() | LeaseRenewed():
            return _worker_ids_problem(body.dispatch_id, body.worker_id)
        case TaskSucceeded():
            return (_worker_ids_problem(body.dispatch_id, body.worker_id)
                    or _text("result_content_type", body.result_content_type,
                             MAX_CONTENT_TYPE)
                    or (None if body.result_ref is None else _ref_problem(
                        "result_ref", body.result_ref, body.result,
                        is_result_key(body.result_ref.key, entity, body.dispatch_id),
                        f"the result key of task {entity}, dispatch {body.dispatch_id}")))
        case TaskFailed():
            return (_worker_ids_problem(body.dispatch_id, body.worker_id)
                    or _text("error_type", body.error_type, MAX_NAME)
                    or _text("message", body.message, MAX_TEXT)
                    or _text("traceback", body.traceback, MAX_TEXT)
                    or _duration("retry_after_ms", body.retry_after_ms, zero_ok=True))
        case CancelRequested() | PurgeRequested():
            return _text("reason", body.reason, 1000)
        case RedriveRequested():
            if body.max_attempts is not None and not 1 <= body.max_attempts <= MAX_ATTEMPTS:
                return f"max_attempts {body.max_attempts} is outside 1..{MAX_ATTEMPTS}"
            return _text("reason", body.reason, 1000)
        case TimerFired():
            return _text("dispatch_id", body.dispatch_id, MAX_ID)
    return _entity_body_problem(checks, body)


def _entity_body_problem(checks: Checks, body: object) -> str | None:
    """The bounds of what clients and workers write about other entities (D37, D32)."""
    match body:
        case ScheduleSet():
            if body.spec.task.payload_ref is not None:  # an object belongs to one task (D34)
                return ("a schedule's task carries its payload inline: every firing is a task "
                        "of its own, and a stored object is named for one task")
            return (_text("cron", body.spec.cron or "", MAX_NAME)
                    or _text("timezone", body.spec.timezone, MAX_NAME)
                    or _submitted_problem(checks.limits, body.spec.task))
        case LimitSet():
            if not (1 <= body.count <= MAX_RATE_COUNT and 1 <= body.period_ms <= MAX_PERIOD_MS
                    and 1 <= body.burst <= MAX_BURST):
                return (f"a limit is 1..{MAX_RATE_COUNT} tokens per 1..{MAX_PERIOD_MS} ms "
                        f"with a burst of 1..{MAX_BURST}")
            return _text("name", body.name, MAX_NAME)
        case TaskProgress():
            return (_worker_ids_problem(body.dispatch_id, body.worker_id)
                    or _text("note", body.note, 1000))
    return None


def _ref_problem(field: str, ref: ObjectRef, inline: bytes | None, owned: bool, shape: str
                 ) -> str | None:
    """None if ``ref`` names the entity's own object (``owned``: its key is ``shape``) with
    nothing inline beside it, else why not."""
    if not owned:
        return (f"{field} names {ref.key[:120]!r}; an event may only refer to its own "
                f"object ({shape})")
    if BUCKET.match(ref.bucket) is None:
        return f"{field}.bucket {ref.bucket[:80]!r} is not a bucket name"
    if SHA256_HEX.match(ref.sha256) is None:
        return f"{field}.sha256 is not 64 lowercase hex digits"
    if not 0 <= ref.size <= MAX_OBJECT_BYTES:
        return f"{field}.size {ref.size} is outside 0..{MAX_OBJECT_BYTES}"
    if ref.key_id is not None and not 1 <= len(ref.key_id) <= MAX_KEY_ID:
        return f"{field}.key_id must be 1 to {MAX_KEY_ID} characters"
    if inline:
        return f"{field} is set and the value is inline too: one or the other"
    return None


def _text(field: str, value: str, limit: int) -> str | None:
    if len(value) > limit:
        return f"{field} is {len(value)} characters; the limit is {limit}"
    return None


def _worker_ids_problem(dispatch_id: str, worker_id: str) -> str | None:
    return _text("dispatch_id", dispatch_id, MAX_ID) or _text("worker_id", worker_id, MAX_SOURCE)


def _duration(field: str, value: int | None, *, zero_ok: bool, low: int = 1) -> str | None:
    if value is None:
        return None
    floor = 0 if zero_ok else low
    if not floor <= value <= MAX_MS:
        return f"{field} {value} is outside {floor}..{MAX_MS} ms"
    return None


def _submitted_problem(limits: SpecLimits, body: TaskSubmitted) -> str | None:
    if not body.name or len(body.name) > MAX_NAME or not body.name.isprintable():
        return f"name must be 1 to {MAX_NAME} printable characters"
    if QUEUE_NAME.match(body.queue) is None:
        return f"queue {body.queue[:80]!r} is not a queue name (1-64 letters, digits, '_', '-')"
    if not limits.priority_min <= body.priority <= limits.priority_max:
        return (f"priority {body.priority} is outside {limits.priority_min}.."
                f"{limits.priority_max}")
    if len(body.payload) > limits.max_payload_bytes + MAX_OVERHEAD:
        return (f"payload is {len(body.payload)} bytes; the limit is "
                f"{limits.max_payload_bytes}")
    if not 1 <= body.max_attempts <= MAX_ATTEMPTS:
        return f"max_attempts {body.max_attempts} is outside 1..{MAX_ATTEMPTS}"
    b = body.backoff
    if not (0 <= b.initial_ms <= b.max_ms <= MAX_MS and math.isfinite(b.multiplier)
            and 1 <= b.multiplier <= 100 and math.isfinite(b.jitter) and 0 <= b.jitter <= 1):
        return "backoff is out of bounds (0 <= initial <= max, multiplier 1..100, jitter 0..1)"
    return (_duration("lease_ms", body.lease_ms, zero_ok=False, low=MIN_LEASE_MS)
            or _duration("timeout_ms", body.timeout_ms, zero_ok=False)
            or _text("content_type", body.content_type, MAX_CONTENT_TYPE)
            or (None if body.idempotency_key is None else
                _text("idempotency_key", body.idempotency_key, MAX_IDEMPOTENCY_KEY))
            or (limits.check_headers(body.headers) if body.headers else None)
            or (limits.check_tags(body.tags) if body.tags else None)
            or (limits.check_depends_on(body.depends_on) if body.depends_on else None))
