"""The object store against a real S3-compatible server (S3Proxy, started by the session).

Given the local S3Proxy and a bucket of the test's own, when payloads and results are
stored, read, corrupted, deleted or the server is stopped, then the store says so
clearly, checks every byte, and the reaper deletes exactly what no task needs.
"""

from __future__ import annotations

import hashlib
import time

import pytest

from taskstream.locals3.server import free_port
from taskstream.objectstore.errors import (
    ChecksumMismatchError,
    ObjectMissingError,
    ObjectStoreUnavailableError,
)
from taskstream.objectstore.keys import payload_key, result_key
from taskstream.objectstore.offload import Offloader
from taskstream.objectstore.reaper import LookupFailed, TaskRefs, reap
from taskstream.objectstore.store import ObjectStore
from taskstream.settings import load_settings
from tests.conftest import storage_fields

T1 = "01HZX0000000000000000TASK1"
T2 = "01HZX0000000000000000TASK2"
T3 = "01HZX0000000000000000TASK3"


def store_of(env: dict[str, str], **extra: object) -> ObjectStore:
    store = ObjectStore.from_settings(load_settings(**storage_fields(env), **extra))
    assert store is not None
    return store


def test_a_value_goes_in_and_comes_back_checked_in_chunks(s3_env: dict[str, str]) -> None:
    store = store_of(s3_env)
    data = bytes(range(256)) * 20_000  # 5 MB
    ref = store.put(result_key(T1, 1, "d1"), data)
    assert (ref.size, ref.sha256) == (len(data), hashlib.sha256(data).hexdigest())
    assert store.read(ref) == data
    chunks = list(store.stream(ref, chunk_bytes=1 << 20))
    assert len(chunks) >= 5 and b"".join(chunks) == data


def test_offload_keeps_small_values_inline_and_stores_large_ones(
        s3_env: dict[str, str]) -> None:
    offloader = Offloader.from_settings(load_settings(**storage_fields(s3_env),
                                                      offload_threshold_bytes=1000))
    assert offloader is not None
    assert offloader.payload(T1, b"x" * 1000) is None
    ref = offloader.payload(T1, b"x" * 1001)
    assert ref is not None and ref.key == payload_key(T1, hashlib.sha256(b"x" * 1001).hexdigest())
    first = offloader.result(T1, 1, "run-a", b"a" * 2000)
    second = offloader.result(T1, 1, "run-b", b"b" * 2000)  # a duplicate run of attempt 1
    assert first is not None and second is not None and first.key != second.key
    assert offloader.store.read(first) == b"a" * 2000  # never overwritten by the duplicate


def test_an_object_changed_behind_its_reference_is_refused(s3_env: dict[str, str]) -> None:
    store = store_of(s3_env)
    ref = store.put(result_key(T1, 1, "d1"), b"the accepted result")
    store.put(ref.key, b"something else entirely")  # same size or not: the digest differs
    with pytest.raises(ChecksumMismatchError, match="overwritten or corrupted") as caught:
        store.read(ref)
    assert caught.value.retriable
    same_size = store.put(result_key(T1, 2, "d2"), b"aaaa")
    store.put(same_size.key, b"bbbb")
    with pytest.raises(ChecksumMismatchError):
        list(store.stream(same_size))


def test_a_missing_object_says_so_and_is_not_retriable(s3_env: dict[str, str]) -> None:
    store = store_of(s3_env)
    ref = store.put(payload_key(T1, "0" * 64), b"payload")
    store.delete([ref.key])
    with pytest.raises(ObjectMissingError, match="does not exist") as caught:
        store.read(ref)
    assert not caught.value.retriable


def test_a_server_that_is_down_is_a_clear_retriable_error(s3_env: dict[str, str]) -> None:
    """Nothing listens at the endpoint: the store fails fast and says what to check (the
    end-to-end test stops a server under a running task: tests/test_storage_e2e.py)."""
    ref = store_of(s3_env).put(payload_key(T1, "1" * 64), b"kept")
    dead = {**s3_env, "TASKSTREAM_STORAGE_ENDPOINT": f"http://127.0.0.1:{free_port()}"}
    store = store_of(dead, storage_timeout_s=2.0)
    started = time.monotonic()
    with pytest.raises(ObjectStoreUnavailableError, match="did not answer") as caught:
        store.read(ref)
    assert caught.value.retriable
    assert time.monotonic() - started < 30  # bounded (timeouts and two tries), not a hang
    with pytest.raises(ObjectStoreUnavailableError, match="storage_endpoint"):
        store.put(payload_key(T1, "2" * 64), b"new")
    assert store_of(s3_env).read(ref) == b"kept"


def test_the_reaper_deletes_what_no_task_needs_and_keeps_the_rest(
        s3_env: dict[str, str]) -> None:
    store = store_of(s3_env)
    removed = [store.put(payload_key(T1, "1" * 64), b"p"),
               store.put(result_key(T1, 1, "a"), b"r")]
    accepted = store.put(result_key(T2, 2, "b"), b"accepted")
    duplicate = store.put(result_key(T2, 2, "c"), b"duplicate run")
    in_flight = store.put(result_key(T3, 1, "x"), b"running")
    states = {T2: TaskRefs(True, frozenset({accepted.key})), T3: TaskRefs(False)}

    def lookup(task_id: str) -> TaskRefs | None:
        return states.get(task_id)

    now = int(time.time() * 1000) + 10_000
    young = reap(store, lookup, now, grace_ms=3_600_000)
    assert young.deleted == 0 and young.objects == 5

    dry = reap(store, lookup, now, grace_ms=0, dry_run=True)
    assert sorted(dry.deleted_keys) == sorted([*(r.key for r in removed), duplicate.key])
    assert len(list(store.list("tasks/"))) == 5

    def flaky(task_id: str) -> TaskRefs | None:
        if task_id == T1:
            raise LookupFailed("API down")
        return lookup(task_id)

    careful = reap(store, flaky, now, grace_ms=0)
    assert careful.kept_unknown == 1 and careful.deleted_keys == [duplicate.key]
    done = reap(store, lookup, now, grace_ms=0)
    assert sorted(done.deleted_keys) == sorted(r.key for r in removed)
    left = sorted(o.key for o in store.list("tasks/"))
    assert left == sorted([accepted.key, in_flight.key])


def test_doctor_checks_the_bucket_and_never_names_the_keys(s3_env: dict[str, str]) -> None:
    """taskstream doctor's storage check (with storage_bucket set) against the real server:
    the bucket answers; a missing bucket and a wrong secret each fail, saying what to fix."""
    from taskstream.cli.doctor import FAIL, OK, ask_storage, judge_storage

    def findings(env: dict[str, str]) -> list[tuple[str, str, str]]:
        settings = load_settings(**storage_fields(env))
        return [(f.level, f.message, f.fix) for f in judge_storage(settings,
                                                                  ask_storage(settings))]

    assert [level for level, _, _ in findings(s3_env)] == [OK]
    missing = findings({**s3_env, "TASKSTREAM_STORAGE_BUCKET": "no-such-bucket-here"})
    assert missing[0][0] == FAIL and "does not exist" in missing[0][1]
    secret = "wrong-secret-" + "x" * 20
    denied = findings({**s3_env, "TASKSTREAM_STORAGE_SECRET_KEY": secret})
    assert denied[0][0] == FAIL and "TASKSTREAM_STORAGE_ACCESS_KEY" in denied[0][2]
    shown = " ".join(" ".join(f) for f in [*missing, *denied])
    assert secret not in shown and s3_env["TASKSTREAM_STORAGE_ACCESS_KEY"] not in shown
    assert judge_storage(load_settings(), None) == []  # no bucket: nothing to check
