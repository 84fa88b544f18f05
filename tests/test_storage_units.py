"""Issue 22 without I/O: retention and purge in the fold, object keys, the reaper's decision,
the API's result cache, the SDK's offload decision."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st

from taskstream.api.results import ResultCache
from taskstream.objectstore.keys import payload_key, result_key, task_of
from taskstream.objectstore.offload import should_offload
from taskstream.objectstore.reaper import TaskRefs, by_task, doomed
from taskstream.objectstore.store import StoredObject
from taskstream.processors.fold.effects import Dispatch, Removed
from taskstream.processors.fold.errors import LifecycleError
from taskstream.processors.fold.lifecycle import apply, fold
from taskstream.processors.fold.retention import (
    RetentionPolicy,
    removal_due_at,
    retention_timer,
)
from taskstream.producer.results import Finished, interpret
from taskstream.schemas.events import (
    Backoff,
    Envelope,
    EventBody,
    ObjectRef,
    PurgeRequested,
    TaskStarted,
    TaskSubmitted,
    TaskSucceeded,
    TimerKind,
)
from taskstream.schemas.state import TaskState, TaskStatus

T = "01HZX00000000000000000TASK"
AT = 1_700_000_000_000
PAYLOAD_REF = ObjectRef("b", payload_key(T, "ab" * 32), 300_000, "ab" * 32)
RESULT_REF = ObjectRef("b", result_key(T, 1, "d"), 10_000_000, "cd" * 32)


def env(body: EventBody, at: int, event_id: str, attempt: int = 0) -> Envelope:
    return Envelope(event_id, T, at, "test", attempt, body)


def submitted(ref: ObjectRef | None = PAYLOAD_REF, queue: str = "default") -> TaskSubmitted:
    return TaskSubmitted("n", queue, 0, b"" if ref else b"{}", "application/json", None, 3,
                         Backoff(), None, 30_000, payload_ref=ref)


def finished_state(ref: ObjectRef | None = RESULT_REF) -> tuple[TaskState, list[Envelope]]:
    """A task submitted with an offloaded payload and SUCCEEDED with an offloaded result."""
    s0, effects = apply(None, env(submitted(), AT, "e1"))
    assert s0 is not None
    dispatch = effects[0]
    assert isinstance(dispatch, Dispatch)
    assert dispatch.envelope.body.payload_ref == PAYLOAD_REF  # type: ignore[union-attr]
    d = s0.dispatch_id or ""
    events = [env(submitted(), AT, "e1"), env(TaskStarted(d, "w"), AT + 1, "e2", 1),
              env(TaskSucceeded(d, "w", b"", "application/json", ref), AT + 2, "e3", 1)]
    state = fold(events)[T]
    return state, events


def test_references_flow_into_the_state_and_the_digest_is_the_objects() -> None:
    state, _ = finished_state()
    assert state.status is TaskStatus.SUCCEEDED
    assert state.payload_ref == PAYLOAD_REF and state.result_ref == RESULT_REF
    assert state.payload_digest == PAYLOAD_REF.sha256
    assert state.result == b"" and not state.result_truncated


def test_same_offloaded_payload_again_is_a_duplicate_another_is_a_conflict() -> None:
    state, _ = finished_state()
    again, _ = apply(state, env(submitted(), AT + 5, "e4"))
    other = dataclasses.replace(PAYLOAD_REF, sha256="ef" * 32)
    clash, _ = apply(again, env(submitted(other), AT + 6, "e5"))
    assert again is not None and clash is not None
    assert (again.duplicates, again.conflicts) == (1, 0)
    assert (clash.duplicates, clash.conflicts) == (2, 1)


def test_purge_removes_a_finished_task_and_names_its_objects() -> None:
    state, _ = finished_state()
    after, effects = apply(state, env(PurgeRequested("ops"), AT + 10, "p1"))
    assert after is None
    assert effects == [Removed("ops", (PAYLOAD_REF, RESULT_REF))]


def test_purge_of_a_task_in_flight_is_refused_and_counted() -> None:
    s0, _ = apply(None, env(submitted(None), AT, "e1"))
    assert s0 is not None and s0.status is TaskStatus.READY
    after, effects = apply(s0, env(PurgeRequested(), AT + 1, "p1"))
    assert after is not None and after.status is TaskStatus.READY and after.rejected == 1
    assert "cancel it first" in effects[0].reason  # type: ignore[union-attr]


def test_a_removal_read_again_after_the_task_is_gone_sends_the_tombstone_again() -> None:
    after, effects = apply(None, env(PurgeRequested(), AT, "p1"))
    assert after is None and effects == [Removed("PurgeRequested for a task already removed")]


def test_retention_due_time_is_event_time_plus_the_queues_retention() -> None:
    state, _ = finished_state()
    assert removal_due_at(state, RetentionPolicy()) is None
    policy = RetentionPolicy(default_ms=1000, per_queue={"keep": None, "short": 10})
    assert removal_due_at(state, policy) == (state.finished_at_ms or 0) + 1000
    assert removal_due_at(dataclasses.replace(state, queue="keep"), policy) is None
    assert removal_due_at(dataclasses.replace(state, queue="short"), policy) == (
        (state.finished_at_ms or 0) + 10)
    running = dataclasses.replace(state, status=TaskStatus.RUNNING)
    assert removal_due_at(running, policy) is None
    with pytest.raises(LifecycleError, match="retention"):
        RetentionPolicy(default_ms=-1)


def test_a_retention_timer_removes_only_the_finish_it_was_set_for() -> None:
    state, _ = finished_state()
    due = (state.finished_at_ms or 0) + 1000
    timer = retention_timer(state, due)
    assert timer.kind is TimerKind.RETENTION_DUE
    early, effects = apply(state, env(timer, due - 1, "t0"))
    assert early is not None and early.rejected == 1
    stale = dataclasses.replace(timer, dispatch_id="another-dispatch")
    kept, _ = apply(state, env(stale, due, "t1"))
    assert kept is not None and kept.status is TaskStatus.SUCCEEDED
    gone, effects = apply(state, env(timer, due, "t2"))
    assert gone is None and isinstance(effects[0], Removed)


@given(st.lists(st.sampled_from(["purge", "timer", "late_start"]), max_size=6))
def test_replay_of_any_removal_sequence_ends_where_the_fold_does(steps: list[str]) -> None:
    """fold() (replay's loop) and apply one by one agree on whether the task is there."""
    state, events = finished_state()
    due = (state.finished_at_ms or 0) + 5
    for i, step in enumerate(steps):
        at = due + i
        if step == "purge":
            events.append(env(PurgeRequested(), at, f"x{i}"))
        elif step == "timer":
            events.append(env(retention_timer(state, due), at, f"x{i}"))
        else:
            events.append(env(TaskStarted(state.dispatch_id or "", "w"), at, f"x{i}", 1))
    live: TaskState | None = None
    for event in events:
        after, made = apply(live, event)
        if after is None and made and isinstance(made[0], Removed):
            live = None
        elif after is not None:
            live = after
    replayed = fold(events).get(T)
    assert replayed == live
    assert (live is None) == any(s in ("purge", "timer") for s in steps)


def test_keys_carry_task_attempt_and_dispatch() -> None:
    assert result_key(T, 2, "abc") == f"tasks/{T}/result-2-abc"
    assert result_key(T, 1, "a") != result_key(T, 1, "b") != result_key(T, 2, "a")
    assert task_of(result_key(T, 3, "d9")) == T
    assert task_of(payload_key(T, "0" * 64)) == T
    assert task_of("other/thing") is None and task_of(f"tasks/{T}/payload-x") is None


def _obj(key: str, age_ms: int, now: int = 10_000_000) -> StoredObject:
    return StoredObject(key, 10, now - age_ms)


def test_the_reaper_keeps_young_objects_and_those_of_tasks_in_flight() -> None:
    now, grace = 10_000_000, 1000
    payload, result, dup = (_obj(payload_key(T, "0" * 64), 5000), _obj(result_key(T, 1, "a"),
                            5000), _obj(result_key(T, 1, "b"), 5000))
    young = _obj(result_key(T, 2, "c"), 10)
    objects = [payload, result, dup, young]
    assert doomed(objects, None, now, grace) == [payload, result, dup]
    assert doomed(objects, TaskRefs(False, frozenset()), now, grace) == []
    refs = TaskRefs(True, frozenset({payload.key, result.key}))
    assert doomed(objects, refs, now, grace) == [dup]


def test_objects_are_grouped_by_task_in_listing_order() -> None:
    other = "01HZX00000000000000000OTHR"
    objects = [_obj(payload_key(T, "0" * 64), 1), _obj(result_key(T, 1, "a"), 1),
               _obj("stray-key", 1), _obj(result_key(other, 1, "a"), 1)]
    assert [(t, len(o)) for t, o in by_task(objects)] == [(T, 2), (other, 1)]


def test_result_cache_is_bounded_in_bytes_and_counts_hits() -> None:
    cache = ResultCache(max_bytes=100, max_item_bytes=60)
    refs = [ObjectRef("b", f"k{i}", 40, f"{i:064x}") for i in range(4)]
    assert cache.get(refs[0]) is None
    cache.put(refs[0], b"a" * 40)
    cache.put(refs[1], b"b" * 40)
    assert cache.get(refs[0]) == b"a" * 40  # now the most recent
    cache.put(refs[2], b"c" * 40)  # evicts refs[1], the least recent
    assert cache.get(refs[1]) is None and cache.get(refs[2]) == b"c" * 40
    assert cache.size <= 100
    cache.put(refs[3], b"d" * 61)  # over the item bound: not cached
    assert cache.get(refs[3]) is None
    assert cache.hit_rate == pytest.approx(2 / 5)


def test_offload_threshold_and_the_sdk_sees_an_offloaded_result() -> None:
    assert not should_offload(256, 256) and should_offload(257, 256)
    view = {"status": "SUCCEEDED", "result": None,
            "result_ref": {"bucket": "b", "key": "k", "size": 1, "sha256": "0" * 64}}
    assert interpret(T, "u", 200, view) == Finished(None, offloaded=True)
    assert interpret(T, "u", 200, {"status": "SUCCEEDED", "result": 3}) == Finished(3)


def test_the_batched_fold_turns_a_removal_into_a_tombstone_and_sends_it_again() -> None:
    from taskstream.processors.fold.lifecycle import Limits
    from taskstream.processors.fold.validate import Checks
    from taskstream.processors.live.batch import fold_partition
    from taskstream.schemas.serde import encode_event, encode_state
    from tests.test_fold_batch import Rec

    state, _ = finished_state()
    stored = {T.encode(): encode_state(state)}
    purge = env(PurgeRequested(), AT + 10, "p1")
    first = fold_partition(0, [Rec(T.encode(), encode_event(purge), 7)], stored.get, Limits(),
                           Checks())
    change = first.changes[T.encode()]
    assert change.before == state and change.after is None  # a tombstone and index removal
    again = fold_partition(0, [Rec(T.encode(), encode_event(purge), 7)], {}.get, Limits(), Checks())
    assert again.changes[T.encode()].after is None  # read again after a crash: sent again


def test_a_finished_tasks_timer_is_its_retention_when_a_policy_is_given() -> None:
    from taskstream.processors.live.app import due_entries

    state, _ = finished_state()
    assert due_entries(RetentionPolicy())(state) is None  # kept for ever: no timer
    policy = RetentionPolicy(default_ms=60_000)
    timer = due_entries(policy)(state)
    assert timer is not None and timer.kind is TimerKind.RETENTION_DUE
    assert timer.due_at_ms == (state.finished_at_ms or 0) + 60_000
    assert timer.dispatch_id == state.dispatch_id


def test_the_s3_clients_request_headers_never_reach_the_logs() -> None:
    """botocore's DEBUG lines carry the Authorization header (it names the access key): its
    loggers stay at INFO even at --loglevel debug, and never below the root's level."""
    from taskstream.telemetry.logs import HEADER_LOGGERS, dict_config

    assert "botocore" in HEADER_LOGGERS and "urllib3" in HEADER_LOGGERS
    for level, quiet in (("debug", "INFO"), ("info", "INFO"), ("warning", "WARNING"),
                         ("error", "ERROR")):
        config = dict_config(level, "json")
        assert config["root"]["level"] == level.upper()
        assert {config["loggers"][name]["level"] for name in HEADER_LOGGERS} == {quiet}


# -- the fold's record check of references and purges (D34, D35 on D28) ----------------------


def test_the_record_check_takes_only_references_to_the_entitys_own_objects() -> None:
    import hashlib

    from taskstream.objectstore.keys import payload_key, result_key
    from taskstream.schemas.events import ObjectRef, TaskSucceeded
    from taskstream.schemas.ids import new_task_id
    from tests.test_fold_validate import TASK, check, envelope, submitted

    digest = hashlib.sha256(b"large").hexdigest()

    def ref(key: str) -> ObjectRef:
        return ObjectRef("bucket-1", key, 5, digest)

    own = ref(payload_key(TASK, digest))
    assert check(envelope(submitted(payload=b"", payload_ref=own))) is None
    other = check(envelope(submitted(payload=b"", payload_ref=ref(
        payload_key(new_task_id(), digest)))))
    assert other is not None and "may only refer to its own object" in other
    renamed = check(envelope(submitted(payload=b"", payload_ref=ref(
        payload_key(TASK, "0" * 64)))))  # the key must carry the reference's own sha256
    assert renamed is not None and "payload_ref" in renamed
    both = check(envelope(submitted(payload=b"{}", payload_ref=own)))
    assert both is not None and "inline too" in both

    def succeeded(key: str, dispatch_id: str = "d1") -> TaskSucceeded:
        return TaskSucceeded(dispatch_id=dispatch_id, worker_id="w", result=b"",
                             result_content_type="application/json", result_ref=ref(key))

    assert check(envelope(succeeded(result_key(TASK, 3, "d1")))) is None
    for key in (result_key(TASK, 3, "d2"), result_key(new_task_id(), 3, "d1"),
                f"tasks/{TASK}/result-x/../3-d1", "elsewhere/secret"):
        refused = check(envelope(succeeded(key)))
        assert refused is not None and "result_ref" in refused, key


def test_the_record_check_bounds_a_purges_reason() -> None:
    from tests.test_fold_validate import check, envelope

    assert check(envelope(PurgeRequested(reason="gdpr request 12"))) is None
    refused = check(envelope(PurgeRequested(reason="x" * 1001)))
    assert refused is not None and "reason" in refused
