"""Large payloads and results end to end: SDK -> Kafka -> processor -> worker -> S3 -> API.

Given a processor replica, an in-process worker and the local S3Proxy, with an offload
threshold of 1 KB, when tasks with large payloads and results run, then the events carry
references, handle.result() and ``taskstream result`` stream the values back checked, the
API's cache answers repeats, and object store failures (down, missing, corrupted) end the
attempt with a clear error: retried when that can help, nothing lost.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from taskstream.locals3.server import LocalS3
from taskstream.objectstore.store import ObjectStore
from taskstream.producer.sync import TaskProducer
from taskstream.schemas.state import TaskStatus
from taskstream.settings import Settings, load_settings
from taskstream.workers import TaskApp, TaskContext
from tests.conftest import storage_fields
from tests.harness import ProcessorProcess, StateReader
from tests.test_worker_support import running_worker

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

app = TaskApp("storage-tests")
THRESHOLD = 1024


@app.task(name="storage.grow")
async def grow(payload: dict[str, Any]) -> dict[str, Any]:
    """A result of about payload["size"] bytes, and the size of the payload it read."""
    return {"seen": len(payload["blob"]), "blob": "r" * payload["size"]}


@app.task(name="storage.child")
async def child(payload: dict[str, Any], ctx: TaskContext) -> dict[str, Any]:
    """Reads its parent's result (ctx.parent_results, D37), which lives in object storage."""
    result = ctx.parent_results[payload["parent"]]
    return {"parent_blob": len(result["blob"])}


@app.task(name="storage.grow_many", batch_size=10, batch_wait=0.5)
async def grow_many(payloads: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The batch twin of storage.grow (D39): one call, one result per payload."""
    return [{"seen": len(p["blob"]), "blob": "r" * p["size"]} for p in payloads]


def with_storage(settings: Settings, env: dict[str, str], **extra: Any) -> Settings:
    return load_settings(bootstrap=settings.bootstrap, topic_prefix=settings.topic_prefix,
                         data_dir=settings.data_dir, kafka_home=settings.kafka_home,
                         offload_threshold_bytes=THRESHOLD, **storage_fields(env), **extra)


@contextmanager
def platform(settings: Settings, tmp_path: Path) -> Iterator[ProcessorProcess]:
    replica = ProcessorProcess(settings, tmp_path / "replica0").start()
    try:
        with running_worker(app, settings, concurrency=4, queues=settings.queues):
            yield replica
    finally:
        replica.stop()


def cache_hits(url: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    for line in text.splitlines():
        if line.startswith('taskstream_result_cache_requests_total{outcome="hit"}'):
            return float(line.split()[-1])
    return 0.0


def test_large_payload_and_result_round_trip(topics: Settings, s3_env: dict[str, str],
                                             tmp_path: Path) -> None:
    settings = with_storage(topics, s3_env)
    store = ObjectStore.from_settings(settings)
    assert store is not None
    with platform(settings, tmp_path) as replica:
        with TaskProducer(settings.model_copy(update={"api_url": replica.url})) as producer:
            handle = producer.submit("storage.grow", {"blob": "p" * 300_000, "size": 2_000_000})
            small = producer.submit("storage.grow", {"blob": "p", "size": 10})
            value = handle.result(timeout=90)
            assert small.result(timeout=60) == {"seen": 1, "blob": "r" * 10}
        assert value == {"seen": 300_000, "blob": "r" * 2_000_000}

        state = StateReader(settings).wait(handle.task_id,
                                           lambda s: s.status is TaskStatus.SUCCEEDED, "done")
        assert state.payload_ref is not None and state.result_ref is not None
        assert state.payload == b"" and state.result == b""
        assert state.result_ref.key == (
            f"tasks/{handle.task_id}/result-{state.attempt}-{state.dispatch_id}")
        assert state.payload_ref.sha256 == state.payload_digest

        hits = cache_hits(replica.url)
        again = httpx.get(f"{replica.url}/tasks/{handle.task_id}/result", timeout=30)
        assert again.status_code == 200 and again.headers["content-type"].startswith(
            "application/json")
        assert hashlib.sha256(again.content).hexdigest() == state.result_ref.sha256
        assert cache_hits(replica.url) >= hits + 1  # the SDK's read filled the cache

        out = tmp_path / "result.json"
        env = {**os.environ, "TASKSTREAM_API_URL": replica.url}
        cli = subprocess.run([sys.executable, "-m", "taskstream", "result", handle.task_id,
                              "--out", str(out)], env=env, capture_output=True, timeout=120)
        assert cli.returncode == 0, cli.stderr.decode()
        assert json.loads(out.read_bytes()) == value


def test_object_store_failures_end_the_attempt_clearly(
        topics: Settings, s3_server: LocalS3, tmp_path: Path) -> None:
    """Its own S3Proxy, stopped under a waiting task and started again: the attempt fails
    retryable, the retry after the restart succeeds. A missing payload ends DEAD at once;
    a corrupted one fails its attempts with a checksum error."""
    own = LocalS3(tmp_path / "s3", s3_server.libs).start()
    try:
        env = own.settings_env("failures")
        settings = with_storage(topics, env, storage_timeout_s=2.0)
        store = ObjectStore.from_settings(settings)
        assert store is not None
        store.ensure_bucket()
        with TaskProducer(settings) as producer:
            spec = {"max_attempts": 2, "backoff": {"initial": 0.2, "max": 0.5}}
            missing = producer.submit("storage.grow", {"blob": "m" * 5000, "size": 1}, **spec)
            corrupt = producer.submit("storage.grow", {"blob": "c" * 5000, "size": 1}, **spec)
            producer.flush(30)
            keys = {t: [o.key for o in store.list(f"tasks/{t}/")]
                    for t in (missing.task_id, corrupt.task_id)}
            assert all(len(k) == 1 for k in keys.values()), keys  # the offloaded payloads
            store.delete(keys[missing.task_id])
            store.put(keys[corrupt.task_id][0], b"x" * 5000)
            with platform(settings, tmp_path):
                states = StateReader(settings)  # the changelog exists once the replica runs
                dead = states.wait(missing.task_id, lambda s: s.status is TaskStatus.DEAD,
                                   "missing payload to end DEAD", timeout=60)
                bad = states.wait(corrupt.task_id, lambda s: s.status is TaskStatus.DEAD,
                                  "corrupted payload to end DEAD", timeout=60)
                assert dead.attempt == 1 and dead.last_error is not None
                assert dead.last_error.error_type == "ObjectMissingError"
                assert bad.attempt == 2 and bad.last_error is not None
                assert bad.last_error.error_type == "ChecksumMismatchError"

                # delayed, so that its payload is stored and the server stopped before it runs
                retried = producer.submit("storage.grow", {"blob": "d" * 5000, "size": 5000},
                                          delay=3, max_attempts=40,
                                          backoff={"initial": 1, "max": 2})
                producer.flush(30)
                states.wait(retried.task_id, lambda s: s.payload_ref is not None, "folded")
                own.stop()
                failed = states.wait(retried.task_id,
                                     lambda s: s.last_error is not None, "a failed attempt",
                                     timeout=60)
                assert failed.last_error is not None
                assert failed.last_error.error_type == "ObjectStoreUnavailableError"
                assert "did not answer" in failed.last_error.message
                own = LocalS3(tmp_path / "s3", s3_server.libs, port=own.port,
                              credential=own.credential).start()
                done = states.wait(retried.task_id,
                                   lambda s: s.status is TaskStatus.SUCCEEDED,
                                   "the retry after the restart", timeout=90)
                assert done.attempt >= 2 and done.result_ref is not None
                assert len(store.read(done.result_ref)) > THRESHOLD  # stored after the restart
    finally:
        own.stop()


def run_cli(settings: Settings, *args: str) -> tuple[int, str]:
    from click.testing import CliRunner

    from taskstream.cli.main import main
    from tests.harness import settings_env

    env = {**settings_env(settings), "TASKSTREAM_API_URL": settings.api_url}
    result = CliRunner().invoke(main, list(args), env=env)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    assert result.exit_code == 0, (args, result.stdout, result.stderr)
    return result.exit_code, result.stdout


def test_retention_and_purge_remove_tasks_and_the_reaper_their_objects(
        topics: Settings, s3_env: dict[str, str], tmp_path: Path) -> None:
    """Queue "short" keeps finished tasks 1 s, "default" for ever; a purge removes one of
    those now. Removed tasks leave the API, their objects go with the reaper, the events
    keep their history and `replay verify` finds the live table the fold of the log."""
    settings = with_storage(topics, s3_env, retention_by_queue={"short": 1.0},
                            queues=["default", "short"])
    store = ObjectStore.from_settings(settings)
    assert store is not None
    with platform(settings, tmp_path) as replica:
        settings = settings.model_copy(update={"api_url": replica.url})
        with TaskProducer(settings) as producer:
            short = producer.submit("storage.grow", {"blob": "s" * 5000, "size": 5000},
                                    queue="short")
            kept = producer.submit("storage.grow", {"blob": "k" * 5000, "size": 5000})
            purged = producer.submit("storage.grow", {"blob": "p" * 5000, "size": 5000})
            for handle in (kept, purged):
                assert handle.result(timeout=60)["seen"] == 5000
        api = httpx.Client(base_url=replica.url, timeout=10)
        from tests.harness import wait_for
        wait_for("the short queue's task to store its payload and result",
                 lambda: len(list(store.list(f"tasks/{short.task_id}/"))) == 2, timeout=60)
        wait_for("the short queue's task to be removed by retention",
                 lambda: api.get(f"/tasks/{short.task_id}").status_code == 404, timeout=60)

        code, out = run_cli(settings, "purge", "--state", "SUCCEEDED", "--queue", "default",
                            "--dry-run", "--json")
        assert code == 0 and sorted(json.loads(out)["would_purge"]) == sorted(
            [kept.task_id, purged.task_id])
        assert api.get(f"/tasks/{purged.task_id}").status_code == 200  # a dry run
        assert api.post(f"/tasks/{purged.task_id}/purge", json={}).status_code == 202
        wait_for("the purged task to be removed",
                 lambda: api.get(f"/tasks/{purged.task_id}").status_code == 404, timeout=30)
        assert api.get(f"/tasks/{kept.task_id}").status_code == 200

        code, out = run_cli(settings, "storage", "reap", "--grace", "0", "--json")
        report = json.loads(out)
        assert code == 0 and report["deleted"] == 4, report
        left = {o.key.split("/")[1] for o in store.list("tasks/")}
        assert left == {kept.task_id}

        code, out = run_cli(settings, "replay", "verify", "--quiet", "--json",
                            "--wait-timeout", "60")
        verified = json.loads(out)
        assert code == 0 and verified["ok"] and verified["mismatches"] == [], verified
        assert verified["tasks"] == 1
        code, out = run_cli(settings, "replay", "history", purged.task_id, "--json")
        assert code == 0 and "PurgeRequested" in out
        api.close()


def test_sealed_values_are_stored_sealed_and_opened_where_the_keyring_is(
        topics: Settings, s3_env: dict[str, str], tmp_path: Path) -> None:
    """The SDK and the worker hold a payload keyring (D27), the processor does not: the
    large payload and result are stored sealed, the worker opens the payload, the API
    streams the result as stored (X-Taskstream-Sealed), and the SDK and the CLI open it;
    an SDK without the keyring is told which key is missing."""
    from taskstream.producer.errors import SealedResultError
    from taskstream.producer.results import ResultClient
    from taskstream.security.keyring import keyring_json, new_secret
    from taskstream.security.sealing import is_sealed

    keys = keyring_json({"k1": new_secret()}, "k1")
    settings = with_storage(topics, s3_env)
    keyed = with_storage(topics, s3_env, payload_keys=keys)
    store = ObjectStore.from_settings(settings)
    assert store is not None
    replica = ProcessorProcess(settings, tmp_path / "replica0").start()
    try:
        with running_worker(app, keyed, concurrency=2, queues=keyed.queues):
            keyed = keyed.model_copy(update={"api_url": replica.url})
            with TaskProducer(keyed) as producer:
                handle = producer.submit("storage.grow",
                                         {"blob": "p" * 300_000, "size": 2_000_000})
                value = handle.result(timeout=90)
            assert value == {"seen": 300_000, "blob": "r" * 2_000_000}
        state = StateReader(settings).wait(handle.task_id,
                                           lambda s: s.status is TaskStatus.SUCCEEDED, "done")
        assert state.payload_ref is not None and state.result_ref is not None
        assert is_sealed(bytes(store.read(state.payload_ref)[:4]))
        assert is_sealed(bytes(store.read(state.result_ref)[:4]))

        raw = httpx.get(f"{replica.url}/tasks/{handle.task_id}/result", timeout=30)
        assert raw.status_code == 200 and raw.headers.get("x-taskstream-sealed") == "1"
        assert is_sealed(raw.content[:4])
        plain = ResultClient(replica.url, None)
        try:
            with pytest.raises(SealedResultError, match="payload keyring"):
                plain.fetch(handle.task_id, 30)
        finally:
            plain.close()

        out = tmp_path / "result.json"
        code, _ = run_cli(keyed, "result", handle.task_id, "--out", str(out))
        assert code == 0 and json.loads(out.read_bytes()) == value
    finally:
        replica.stop()


def test_a_child_reads_its_parents_offloaded_result(
        topics: Settings, s3_env: dict[str, str], tmp_path: Path) -> None:
    """ctx.parent_results (D37) of a parent whose result went to object storage (D34): the
    worker's reader streams it from GET .../result, checked, like handle.result()."""
    from taskstream.producer.parents import parent_result_reader

    settings = with_storage(topics, s3_env)
    replica = ProcessorProcess(settings, tmp_path / "replica0").start()
    reader = None
    try:
        settings = settings.model_copy(update={"api_url": replica.url})
        reader = parent_result_reader(settings)
        with running_worker(app, settings, concurrency=2, queues=settings.queues,
                            fetch_result=reader), TaskProducer(settings) as producer:
            parent = producer.submit("storage.grow", {"blob": "p", "size": 500_000})
            kid = producer.submit("storage.child", {"parent": parent.task_id},
                                  depends_on=[parent.task_id])
            assert kid.result(timeout=90) == {"parent_blob": 500_000}
        state = StateReader(settings).wait(parent.task_id,
                                           lambda s: s.status is TaskStatus.SUCCEEDED, "done")
        assert state.result_ref is not None and state.result == b""
    finally:
        if reader is not None:
            reader.close()
        replica.stop()


def test_a_batch_handler_reads_and_writes_offloaded_sealed_values(
        topics: Settings, s3_env: dict[str, str], tmp_path: Path) -> None:
    """A batch (D39) of large sealed payloads (D27): each record's payload is fetched and
    opened on its own, each large result sealed and stored under its own run's key, and a
    small one stays inline beside them."""
    from taskstream.security.keyring import keyring_json, new_secret

    keyed = with_storage(topics, s3_env, payload_keys=keyring_json({"k1": new_secret()}, "k1"))
    replica = ProcessorProcess(keyed, tmp_path / "replica0").start()
    try:
        keyed = keyed.model_copy(update={"api_url": replica.url})
        with running_worker(app, keyed, concurrency=2, queues=keyed.queues), \
                TaskProducer(keyed) as producer:
            sizes = [(300_000, 200_000), (5, 2_000_000), (400_000, 3)]
            handles = [producer.submit("storage.grow_many", {"blob": "p" * n, "size": m})
                       for n, m in sizes]
            values = [h.result(timeout=90) for h in handles]
        assert values == [{"seen": n, "blob": "r" * m} for n, m in sizes]
        states = StateReader(keyed)
        done = [states.wait(h.task_id, lambda s: s.status is TaskStatus.SUCCEEDED, "done")
                for h in handles]
        assert [s.payload_ref is not None for s in done] == [True, False, True]
        assert [s.result_ref is not None for s in done] == [True, True, False]
    finally:
        replica.stop()
