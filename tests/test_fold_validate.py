"""The fold's record checks (processors/fold/validate.py, D26, D28): each hostile input is
refused with a clear reason, good ones pass, and nothing makes the check or the fold raise."""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from taskstream.processors.fold.effects import Effect, Rejected
from taskstream.processors.fold.kinds import KINDS, EntityKind, kind_of
from taskstream.processors.fold.lifecycle import apply
from taskstream.processors.fold.rules import Limits
from taskstream.processors.fold.validate import Checks, check_record
from taskstream.schemas.events import (
    Backoff,
    CancelRequested,
    Dependent,
    Envelope,
    EventBody,
    FlowControl,
    GroupCreated,
    LeaseRenewed,
    PurgeRequested,
    RedriveRequested,
    ScheduleCommand,
    ScheduleOp,
    ScheduleSet,
    ScheduleSpec,
    TaskFailed,
    TaskProgress,
    TaskStarted,
    TaskSubmitted,
    TaskSucceeded,
    TimerFired,
    TimerKind,
)
from taskstream.schemas.ids import new_task_id
from taskstream.schemas.models import SpecLimits
from taskstream.schemas.serde import decode_event, encode_event
from taskstream.security.keyring import Keyring, keyring_json, new_secret, parse_keyring
from taskstream.security.signing import Signer
from taskstream.settings import load_settings
from tests.flow_support import World, flow_submitted, task_id
from tests.test_schemas_serde import BODIES as ONE_OF_EACH_BODY

T0 = 1_800_000_000_000
TASK = new_task_id()
WORKER_KEY, PROCESSOR_KEY = new_secret(), new_secret()


def ring(current: str | None = None) -> Keyring:
    keys = {"w1": {"role": "worker", "key": WORKER_KEY},
            "p1": {"role": "processor", "key": PROCESSOR_KEY}}
    return parse_keyring(keyring_json(keys, current), "signing", "test")


def submitted(**changes: Any) -> TaskSubmitted:
    body = TaskSubmitted(
        name="demo.add", queue="default", priority=1, payload=b'{"n": 1}',
        content_type="application/json", eta_ms=None, max_attempts=3,
        backoff=Backoff(1_000, 2.0, 60_000, 0.1), timeout_ms=5_000, lease_ms=30_000,
        headers={"h": "v"}, tags=["t"], depends_on=[])
    return dataclasses.replace(body, **changes)


def envelope(body: EventBody, task_id: str = TASK, **changes: Any) -> Envelope:
    env = Envelope("01J0000000000000000000EVNT", task_id, T0, "test", 1, body)
    return dataclasses.replace(env, **changes)


def check(env: Envelope, checks: Checks | None = None, key: bytes | None = None,
          signer: str | None = None) -> str | None:
    value = encode_event(env)
    record_key = env.task_id.encode() if key is None else key
    headers = None
    if signer is not None:
        signing = Signer.from_keyring(ring(signer))
        assert signing is not None
        headers = [signing.header(record_key, value)]
    return check_record(checks or Checks(), record_key, value, headers, env)


# -- the entity is the record key -------------------------------------------------------------

def test_a_good_submission_passes() -> None:
    assert check(envelope(submitted())) is None


def test_an_envelope_for_another_entity_than_its_key_is_refused() -> None:
    reason = check(envelope(submitted()), key=new_task_id().encode())
    assert reason is not None and "record key" in reason and TASK in reason


def test_a_record_without_a_key_is_refused() -> None:
    env = envelope(submitted())
    reason = check_record(Checks(), None, encode_event(env), None, env)
    assert reason is not None and "record key is None" in reason


@pytest.mark.parametrize("entity", ["T1", "../../etc", "01j00000000000000000000001", "x" * 300])
def test_task_events_name_a_task_id(entity: str) -> None:
    reason = check(envelope(submitted(), entity))
    assert reason is not None and "neither a task ID" in reason


def test_a_timer_of_another_entity_kind_is_keyed_by_its_entity() -> None:
    timer = TimerFired(TimerKind.DELAY_DUE, T0)
    assert check(envelope(timer, "schedule:nightly-report")) is None
    assert check(envelope(timer, "Schedule:x")) is not None


# -- bounds ------------------------------------------------------------------------------------

LIMITS = SpecLimits(priority_max=2, max_headers=2, max_header_bytes=16, max_tags=2,
                    max_tag_bytes=8, max_dependencies=2, max_payload_bytes=100)


@pytest.mark.parametrize(("changes", "says"), [
    ({"priority": 3}, "priority 3 is outside 0..2"),
    ({"priority": -1}, "priority -1"),
    ({"lease_ms": 999}, "lease_ms 999 is outside 1000"),
    ({"lease_ms": 0}, "lease_ms 0"),
    ({"queue": "../ready"}, "not a queue name"),
    ({"queue": "q" * 65}, "not a queue name"),
    ({"name": ""}, "name must be"),
    ({"name": "n" * 201}, "name must be"),
    ({"max_attempts": 0}, "max_attempts 0"),
    ({"max_attempts": 1001}, "max_attempts 1001"),
    ({"timeout_ms": 0}, "timeout_ms 0"),
    ({"backoff": Backoff(5_000, 2.0, 1_000, 0.1)}, "backoff"),
    ({"backoff": Backoff(1, float("nan"), 10, 0.1)}, "backoff"),
    ({"payload": b"x" * 500}, "payload is 500 bytes"),
    ({"headers": {"a": "1", "b": "2", "c": "3"}}, "3 headers; at most 2"),
    ({"headers": {"a": "v" * 20}}, "each must be 1 to 16"),
    ({"tags": ["a", "b", "c"]}, "3 tags; at most 2"),
    ({"tags": ["x" * 9]}, "each must be 1 to 8"),
    ({"depends_on": [new_task_id() for _ in range(3)]}, "3 parents; at most 2"),
    ({"depends_on": ["nope"]}, "not a 26-character task ID"),
    ({"content_type": "c" * 300}, "content_type"),
    ({"idempotency_key": "k" * 600}, "idempotency_key"),
])
def test_a_submission_out_of_bounds_is_refused_naming_the_bound(
        changes: dict[str, Any], says: str) -> None:
    reason = check(envelope(submitted(**changes)), Checks(LIMITS))
    assert reason is not None and reason.startswith("TaskSubmitted refused: ")
    assert says in reason


def test_depends_on_is_bounded_by_the_one_setting_shared_with_dependencies() -> None:
    checks = Checks.from_settings(load_settings(max_dependencies=3))
    ok = envelope(submitted(depends_on=[new_task_id() for _ in range(3)]))
    too_many = envelope(submitted(depends_on=[new_task_id() for _ in range(4)]))
    assert check(ok, checks) is None
    reason = check(too_many, checks)
    assert reason is not None and "at most 3" in reason
    assert load_settings().max_dependencies == 1000


@pytest.mark.parametrize(("env", "says"), [
    (envelope(submitted(), event_id=""), "event_id"),
    (envelope(submitted(), source="s" * 300), "source"),
    (envelope(submitted(), attempt=-1), "attempt -1"),
    (envelope(submitted(), occurred_at_ms=-5), "not a time"),
    (envelope(TaskStarted("d" * 200, "w")), "dispatch_id"),
    (envelope(TaskFailed("d", "w", "E", "m" * 70_000)), "message"),
    (envelope(TaskFailed("d", "w", "E", "m", retry_after_ms=-1)), "retry_after_ms"),
    (envelope(CancelRequested("r" * 1001)), "reason"),
    (envelope(RedriveRequested(max_attempts=0)), "max_attempts 0"),
])
def test_other_out_of_bounds_fields_are_refused(env: Envelope, says: str) -> None:
    reason = check(env)
    assert reason is not None and says in reason


# -- who wrote it --------------------------------------------------------------------------

WORKER_BODIES = [TaskStarted("d1", "w"), LeaseRenewed("d1", "w"), TaskSucceeded("d1", "w", b"1"),
                 TaskFailed("d1", "w", "E", "m")]


@pytest.mark.parametrize("body", WORKER_BODIES, ids=lambda b: type(b).__name__)
def test_with_a_keyring_worker_events_need_a_worker_signature(body: EventBody) -> None:
    checks = Checks(keyring=ring())
    env = envelope(body)
    unsigned = check(env, checks)
    assert unsigned is not None and "not signed" in unsigned and "only a worker" in unsigned
    by_processor = check(env, checks, signer="p1")
    assert by_processor is not None and "signed by a processor key" in by_processor
    assert check(env, checks, signer="w1") is None


def test_a_submitter_cannot_forge_a_timer_even_with_a_worker_key() -> None:
    checks = Checks(keyring=ring())
    timer = envelope(TimerFired(TimerKind.LEASE_EXPIRED, T0, "d1"))
    assert "not signed" in (check(timer, checks) or "")
    assert "signed by a worker key" in (check(timer, checks, signer="w1") or "")
    assert check(timer, checks, signer="p1") is None


def test_a_signature_from_a_key_outside_the_keyring_is_refused() -> None:
    stranger = parse_keyring(keyring_json({"w1": {"role": "worker", "key": new_secret()}}, "w1"),
                             "signing", "attacker")
    env = envelope(TaskSucceeded("d1", "w", b"forged"))
    value = encode_event(env)
    signer = Signer.from_keyring(stranger)
    assert signer is not None
    reason = check_record(Checks(keyring=ring()), env.task_id.encode(), value,
                          [signer.header(env.task_id.encode(), value)], env)
    assert reason is not None and "does not match" in reason


def test_a_signature_moved_to_another_record_is_refused() -> None:
    signer = Signer.from_keyring(ring("w1"))
    assert signer is not None
    good = encode_event(envelope(TaskSucceeded("d1", "w", b"1")))
    header = signer.header(TASK.encode(), good)
    forged = envelope(TaskSucceeded("d1", "w", b"a different result"))
    reason = check_record(Checks(keyring=ring()), TASK.encode(), encode_event(forged), [header],
                          forged)
    assert reason is not None and "does not match" in reason


@pytest.mark.parametrize("body", [submitted(), CancelRequested("x"), RedriveRequested()],
                         ids=lambda b: type(b).__name__)
def test_client_events_need_no_signature(body: EventBody) -> None:
    assert check(envelope(body), Checks(keyring=ring())) is None


def test_without_a_keyring_signatures_are_not_checked() -> None:
    assert check(envelope(TaskSucceeded("d1", "w", b"1"))) is None


# -- a hostile corpus: nothing raises ---------------------------------------------------------

_TEXT = st.text(max_size=80)
_INT = st.integers(-(2**63), 2**63 - 1)
_INT32 = st.integers(-(2**31), 2**31 - 1)
BODIES = st.one_of(
    st.builds(TaskSubmitted, name=_TEXT, queue=_TEXT, priority=_INT32,
              payload=st.binary(max_size=64), content_type=_TEXT,
              eta_ms=st.none() | _INT, max_attempts=_INT32,
              backoff=st.builds(Backoff, _INT, st.floats(allow_nan=True), _INT,
                                st.floats(allow_nan=True)),
              timeout_ms=st.none() | _INT, lease_ms=_INT,
              idempotency_key=st.none() | _TEXT,
              headers=st.dictionaries(_TEXT, _TEXT, max_size=4),
              tags=st.lists(_TEXT, max_size=4), depends_on=st.lists(_TEXT, max_size=4)),
    st.builds(TaskStarted, _TEXT, _TEXT),
    st.builds(LeaseRenewed, _TEXT, _TEXT),
    st.builds(TaskSucceeded, _TEXT, _TEXT, st.binary(max_size=64), _TEXT),
    st.builds(TaskFailed, _TEXT, _TEXT, _TEXT, _TEXT, _TEXT, st.booleans(), st.booleans(),
              st.none() | _INT),
    st.builds(CancelRequested, _TEXT),
    st.builds(RedriveRequested, _TEXT, st.none() | _INT32),
    st.builds(TimerFired, st.sampled_from(list(TimerKind)), _INT, _TEXT),
)
ENVELOPES = st.builds(Envelope, _TEXT, st.sampled_from([TASK, "x", "schedule:a"]) | _TEXT,
                      _INT, _TEXT, _INT32, BODIES)


@settings(max_examples=400, deadline=None)
@given(ENVELOPES, st.sampled_from([None, TASK.encode(), b"other"]),
       st.sampled_from([None, "w1", "p1"]))
def test_hostile_events_never_make_the_check_or_the_fold_raise(
        env: Envelope, key: bytes | None, signer: str | None) -> None:
    try:
        value = encode_event(env)
    except Exception:  # not encodable: never reaches the topic as such
        return
    decoded = decode_event(value)
    headers = None
    if signer is not None:
        signing = Signer.from_keyring(ring(signer))
        assert signing is not None
        headers = [signing.header(key or b"", value)]
    for checks in (Checks(), Checks(keyring=ring())):
        reason = check_record(checks, key, value, headers, decoded)
        if reason is None:  # what passes the check is folded without raising
            state, _ = apply(None, decoded)
            if state is not None:
                apply(state, decoded)


# -- other entity kinds (D37, D32) ------------------------------------------------------------

def test_each_entity_kind_takes_only_its_own_events() -> None:
    from taskstream.schemas.events import LimitSet, ScheduleSet, ScheduleSpec

    good = [envelope(LimitSet("emails", 5, 1000, 1), "limit:emails"),
            envelope(ScheduleSet(ScheduleSpec(submitted(), every_ms=60_000)), "schedule:n")]
    assert [check(env) for env in good] == [None, None]
    assert "a limit does not take TaskSubmitted" in (
        check(envelope(submitted(), "limit:emails")) or "")
    assert "a schedule does not take LimitSet" in (
        check(envelope(LimitSet("emails", 5, 1000, 1), "schedule:n")) or "")
    assert "no entity kind has the prefix 'nosuch:'" in (
        check(envelope(CancelRequested("x"), "nosuch:thing")) or "")


def test_a_forged_limit_or_schedule_out_of_bounds_is_refused() -> None:
    from taskstream.schemas.events import LimitSet, ScheduleSet, ScheduleSpec

    assert "a limit is 1.." in (check(envelope(LimitSet("emails", 0, 1000, 1),
                                               "limit:emails")) or "")
    spec = ScheduleSpec(submitted(priority=99), every_ms=60_000)
    assert "priority 99" in (check(envelope(ScheduleSet(spec), "schedule:n")) or "")


def test_with_a_keyring_grants_and_notifications_need_a_processor_signature() -> None:
    """A client that may write the events topic cannot hand itself a token, a slot or a
    parent's success: those are the processor's events (D26)."""
    from taskstream.schemas.events import ParentOutcome, ParentUpdate, RateGranted, SlotGranted

    checks = Checks(keyring=ring())
    for body in (RateGranted("emails", None), SlotGranted("acct-7", 3),
                 ParentUpdate(new_task_id(), ParentOutcome.SUCCEEDED)):
        env = envelope(body)
        assert "not signed" in (check(env, checks) or ""), body
        assert "only a processor" in (check(env, checks, signer="w1") or ""), body
        assert check(env, checks, signer="p1") is None, body


# -- what each kind takes: one statement, EntityKind.events (processors/fold/kinds.py) ---------

@dataclasses.dataclass
class _Recording(World):
    """A world that notes, per kind, the body types its apply took without a rejection."""

    took: dict[str, set[type]] = dataclasses.field(default_factory=dict)

    def apply(self, env: Envelope) -> list[Effect]:
        effects = super().apply(env)
        if not any(isinstance(e, Rejected) for e in effects):
            self.took.setdefault(kind_of(env.task_id).name, set()).add(type(env.body))
        return effects


def _deliver_all(world: World) -> None:
    while world.inflight:
        world.deliver(0)


@functools.cache
def _every_kind_at_work() -> _Recording:
    """Tasks, a schedule, a group, a limit and a key, each sent every event it folds."""
    world = _Recording(limits=Limits(max_waiting=1))
    # a task that fails once (a worker renews its lease and reports progress first)
    failing = world.submit(1)
    _deliver_all(world)
    world.take(0)
    attempt = world.running[failing].attempt
    dispatch = world.task(failing).dispatch_id or ""
    world.send(failing, LeaseRenewed(dispatch, "w"), attempt=attempt, source="worker")
    world.send(failing, TaskProgress(dispatch, "w", 0.5, "half"), attempt=attempt,
               source="worker")
    _deliver_all(world)
    world.finish(failing, ok=False)  # RETRYING: its timer fires later
    world.submit(2, delay_ms=5_000)  # SCHEDULED: a timer
    # a schedule: set, paused, resumed, fired until it ends
    spec = ScheduleSpec(flow_submitted(), every_ms=60_000, end_at_ms=world.now + 150_000)
    world.send("schedule:s", ScheduleSet(spec))
    world.send("schedule:s", ScheduleCommand(ScheduleOp.PAUSE))
    world.send("schedule:s", ScheduleCommand(ScheduleOp.RESUME))
    # a group of two members and a callback; a child of a task
    world.send("group:g", GroupCreated(2))
    for slot in (0, 1):
        world.send(task_id(10 + slot), dataclasses.replace(
            flow_submitted(), dependents=[Dependent("group:g", slot)]))
    world.send(task_id(12), dataclasses.replace(
        flow_submitted(), depends_on=["group:g"], dependency_timeout_ms=600_000))
    world.send(task_id(13), dataclasses.replace(
        flow_submitted(), depends_on=[task_id(2)], dependency_timeout_ms=600_000))
    # a limit of one token a second: one task waits for a token, one is deferred (the
    # bucket keeps one waiting), one is cancelled while it waits; a limit nobody set
    world.set_limit("emails", 1, 1_000, 1)
    emails = FlowControl(rate_limit="emails")
    for n in (20, 21, 22, 23):
        world.submit(n, flow=emails)
    world.cancel(task_id(23))
    refused = world.submit(24, flow=FlowControl(rate_limit="nosuch"))
    # a concurrency key of one: the second task waits for the first one's release
    for n in (30, 31):
        world.submit(n, flow=FlowControl(concurrency_key="acct", max_concurrency=1))
    world.settle()
    world.send(refused, RedriveRequested("again"))  # DEAD again: no such limit
    world.settle()
    world.send(refused, PurgeRequested("done"))
    world.settle()
    return world




@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.name)
def test_every_event_a_kind_takes_is_folded_and_no_other(kind: EntityKind) -> None:
    """A kind's ``events`` (what the record check lets through under its keys) is exactly
    what its apply folds: every type in it is folded somewhere in a world where every kind
    is at work, and a body of any other type is refused by its apply, for a new entity
    and for one that exists."""
    world = _every_kind_at_work()
    assert world.took[kind.name] == kind.events, (
        sorted(t.__name__ for t in world.took[kind.name] ^ kind.events))
    states = [(key, state) for key, state in world.states.items() if kind_of(key) is kind]
    assert states, kind.name
    key, live = states[0]
    for body in ONE_OF_EACH_BODY:
        if type(body) in kind.events:
            continue
        for state in (None, live):
            env = envelope(body, key, attempt=0)
            after, effects = kind.apply(state, env, Limits())
            assert any(isinstance(e, Rejected) for e in effects), (kind.name, body)
            assert (after is None) if state is None else (  # refused: nothing folded
                getattr(after, "status", None) == getattr(state, "status", None))


@pytest.mark.parametrize("kind", [k for k in KINDS if k.prefix], ids=lambda k: k.name)
def test_the_check_lets_through_under_a_kinds_key_exactly_its_events(kind: EntityKind) -> None:
    for body in ONE_OF_EACH_BODY:
        reason = check(envelope(body, f"{kind.prefix}thing")) or ""
        assert ("does not take" in reason) is (type(body) not in kind.events), (kind, reason)


def test_a_timer_for_a_group_or_a_key_is_refused_at_the_check() -> None:
    """Groups and concurrency keys have no timers: their apply refuses every TimerFired,
    and so does the check, with the reason; schedules and limits have timers."""
    for key in ("group:g", "ckey:acct"):
        reason = check(envelope(TimerFired(TimerKind.RETRY_DUE, T0, "d"), key)) or ""
        assert "does not take TimerFired events" in reason and "has no timers" in reason, reason
    for key, kind in (("schedule:s", TimerKind.SCHEDULE_DUE),
                      ("limit:emails", TimerKind.TOKEN_DUE)):
        assert check(envelope(TimerFired(kind, T0, ""), key)) is None, key
