"""The HTTP API against the real broker, served by two processor replicas.

Given two ``taskstream processor`` replicas (subprocesses, tokens configured) on
their own topic prefix, when clients call either replica, then: a task owned by
the other replica is still answered; listings page without gaps or repeats while
tasks change state; wait returns as soon as the task ends; auth and bad inputs
get their status codes; every JSON body validates against /openapi.json.
"""

from __future__ import annotations

import dataclasses
import json
import os
import ssl
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import hypothesis
import jsonschema_rs
import pytest
import schemathesis
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient

from taskstream.admin import ensure_topics
from taskstream.api.auth import token_digest
from taskstream.localkafka.certs import make_ca, make_leaf
from taskstream.schemas.events import Envelope, EventBody, TaskFailed, TaskStarted, TaskSucceeded
from taskstream.schemas.ids import new_event_id, new_task_id
from taskstream.schemas.serde import encode_event
from taskstream.settings import Settings
from tests.harness import free_port, stop_process, wait_for
from tests.lifecycle_support import submitted

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

TOKENS = {"read-tok": ["read"], "submit-tok": ["submit"], "admin-tok": ["admin"]}
QUEUE = "apiq"




@dataclass(frozen=True)
class Tls:
    ca: Path
    cert: Path
    key: Path


class EventWriter:
    """Writes worker events the way a worker does (murmur2 partitioner, acks=all)."""

    def __init__(self, settings: Settings) -> None:
        self.topic = settings.topic("events")
        self.producer = Producer({"bootstrap.servers": settings.bootstrap, "acks": "all",
                                  "partitioner": "murmur2_random", "linger.ms": 1})

    def send(self, task_id: str, body: EventBody, attempt: int) -> None:
        env = Envelope(new_event_id(), task_id, int(time.time() * 1000), "test", attempt, body)
        self.producer.produce(self.topic, key=task_id.encode(), value=encode_event(env))
        assert self.producer.flush(10) == 0, "event not delivered in 10 s"


class Replica:
    """A replica serving HTTPS (D29): the certificate is for 127.0.0.1, signed by the test's
    CA, which every client and the peer replica check it against."""

    def __init__(self, settings: Settings, base: Path, index: int, tls: Tls) -> None:
        self.port = free_port()
        self.url = f"https://127.0.0.1:{self.port}"
        self.data_dir = base / f"replica{index}"
        self.log_path = base / f"replica{index}.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("TASKSTREAM_")}
        env.update(
            TASKSTREAM_BOOTSTRAP=settings.bootstrap,
            TASKSTREAM_TOPIC_PREFIX=settings.topic_prefix,
            TASKSTREAM_PARTITIONS=str(settings.partitions),
            TASKSTREAM_QUEUES=json.dumps(settings.queues),
            TASKSTREAM_API_TOKENS=json.dumps({token_digest(t): s for t, s in TOKENS.items()}),
            TASKSTREAM_TIMER_INTERVAL_S="0.05",
            TASKSTREAM_API_CA_FILE=str(tls.ca),
        )
        self.ca = tls.ca
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "taskstream", "processor", "--web-port", str(self.port),
                 "--data-dir", str(self.data_dir), "--loglevel", "warning",
                 "--tls-cert", str(tls.cert), "--tls-key", str(tls.key)],
                env=env, stdout=log, stderr=subprocess.STDOUT)

    def tls_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca))

    def ready(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"replica exited {self.proc.returncode}:\n"
                                 f"{self.log_path.read_text(errors='replace')[-3000:]}")
        try:
            return httpx.get(f"{self.url}/readyz", timeout=2,
                             verify=self.tls_context()).status_code == 200
        except httpx.TransportError:
            return False

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


class Cluster:
    def __init__(self, settings: Settings, replicas: list[Replica]) -> None:
        self.settings = settings
        self.replicas = replicas
        self.writer = EventWriter(settings)
        self.doc: dict[str, Any] = {}

    def client(self, index: int = 0, token: str | None = "admin-tok") -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.replicas[index].url, headers=headers, timeout=40,
                            verify=self.replicas[index].tls_context())

    def validate(self, schema: str, body: Any) -> None:
        validator = jsonschema_rs.Draft202012Validator(
            {"$ref": f"#/components/schemas/{schema}", "components": self.doc["components"]})
        errors = [str(e) for e in validator.iter_errors(body)]
        assert not errors, f"{schema} does not validate: {errors[:3]}"

    def submit(self, client: httpx.Client, **spec: Any) -> str:
        body = {"name": "api.test", "queue": QUEUE, "payload": {"n": 1}, **spec}
        resp = client.post("/tasks", json=body)
        assert resp.status_code == 202, resp.text
        self.validate("Accepted", resp.json())
        return str(resp.json()["task_id"])

    def view(self, client: httpx.Client, task_id: str) -> dict[str, Any]:
        resp = client.get(f"/tasks/{task_id}")
        assert resp.status_code == 200, resp.text
        self.validate("TaskView", resp.json())
        return dict(resp.json())

    def when(self, client: httpx.Client, task_id: str, status: str, timeout: float = 30
             ) -> dict[str, Any]:
        def check() -> dict[str, Any] | None:
            resp = client.get(f"/tasks/{task_id}")
            if resp.status_code == 200 and resp.json()["status"] == status:
                return dict(resp.json())
            return None
        return wait_for(f"{task_id} to be {status}", check, timeout=timeout, interval=0.05)

    def finish(self, client: httpx.Client, task_id: str, ok: bool = True) -> None:
        view = self.when(client, task_id, "READY")
        dispatch_id, attempt = view["dispatch_id"], view["attempt"]
        self.writer.send(task_id, TaskStarted(dispatch_id, "w-test"), attempt)
        if ok:
            self.writer.send(task_id, TaskSucceeded(dispatch_id, "w-test", b'{"ok": true}'),
                             attempt)
        else:
            self.writer.send(task_id, TaskFailed(dispatch_id, "w-test", "ValueError", "boom",
                                                 retryable=False), attempt)


@pytest.fixture(scope="module")
def cluster(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    settings = Settings(bootstrap=kafka_bootstrap, topic_prefix=f"t{uuid.uuid4().hex[:8]}.",
                        partitions=4, queues=["default", QUEUE])
    ensure_topics(settings)
    base = tmp_path_factory.mktemp("api")
    ca = make_ca(base / "tls")
    leaf = make_leaf(ca, base / "tls", "api", "api")
    tls = Tls(ca.cert, leaf.cert, leaf.key)
    replicas = [Replica(settings, base, 0, tls)]
    try:
        wait_for("replica 0 ready", replicas[0].ready, timeout=90, interval=0.3)
        replicas.append(Replica(settings, base, 1, tls))
        wait_for("replica 1 ready", replicas[1].ready, timeout=90, interval=0.3)
        cluster = Cluster(settings, replicas)
        with cluster.client() as c:
            cluster.doc = c.get("/openapi.json").json()

            def both_serving() -> bool:
                # ready again after replica 1's rebalance (D24), and answering
                if not all(r.ready() for r in replicas):
                    return False
                for r in (0, 1):
                    with cluster.client(r) as rc:
                        if rc.get("/tasks", params={"limit": 1}).status_code != 200:
                            return False
                return True

            wait_for("both replicas serving every partition", both_serving, timeout=90,
                     interval=0.5)
        yield cluster
    finally:
        for r in replicas:
            r.stop()


def test_probes_are_open_and_everything_else_needs_a_token(cluster: Cluster) -> None:
    with cluster.client(0, token=None) as anon:
        assert anon.get("/healthz").status_code == 200
        assert anon.get("/readyz").status_code == 200
        resp = anon.get("/tasks")
        assert resp.status_code == 401
        cluster.validate("Error", resp.json())
        assert resp.headers["WWW-Authenticate"] == "Bearer"
    with cluster.client(0, token="wrong") as bad:
        assert bad.get("/queues").status_code == 401


def test_scopes(cluster: Cluster) -> None:
    with cluster.client(0, "read-tok") as reader, cluster.client(0, "submit-tok") as submitter:
        assert reader.get("/tasks", params={"limit": 1}).status_code == 200
        denied = reader.post("/tasks", json={"name": "x"})
        assert denied.status_code == 403
        cluster.validate("Error", denied.json())
        task_id = cluster.submit(submitter)
        assert submitter.get(f"/tasks/{task_id}").status_code == 403  # submit is not read
        assert submitter.post(f"/tasks/{task_id}/cancel").status_code == 403
        assert reader.post(f"/queues/{QUEUE}/pause").status_code == 403


def test_a_task_owned_by_the_other_replica_is_answered_by_both(cluster: Cluster) -> None:
    with cluster.client(0) as a, cluster.client(1) as b:
        ids = [cluster.submit(a) for _ in range(12)]
        wait_for("all tasks known", lambda: all(
            a.get(f"/tasks/{t}").status_code == 200 for t in ids), timeout=30)
        local = a.get("/internal/tasks", params={"limit": 1000})
        assert local.status_code == 200, local.text
        local_a = {i["task_id"] for i in local.json()["items"]}
        assert set(ids) - local_a, "every task landed on replica 0: ownership not split"
        for task_id in ids:
            assert cluster.view(a, task_id)["task_id"] == task_id
            assert cluster.view(b, task_id)["task_id"] == task_id
        missing = a.get("/tasks/01J0000000000000000000000Z")
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"


def test_listing_pages_without_gaps_or_repeats_while_states_change(cluster: Cluster) -> None:
    name = f"page.{uuid.uuid4().hex[:6]}"
    with cluster.client(0) as a, cluster.client(1) as b:
        ids = sorted(cluster.submit(a, name=name) for _ in range(23))
        wait_for("all listed", lambda: len(a.get("/tasks", params={
            "name": name, "limit": 100}).json()["items"]) == len(ids), timeout=30)
        seen: list[str] = []
        cursor = None
        for page_no in range(20):
            client = (a, b)[page_no % 2]
            params = {"name": name, "limit": 5, **({"cursor": cursor} if cursor else {})}
            resp = client.get("/tasks", params=params)
            assert resp.status_code == 200, resp.text
            cluster.validate("TaskPage", resp.json())
            page = resp.json()
            seen.extend(item["task_id"] for item in page["items"])
            # states change under the walk: finish two of the tasks of this page
            for item in page["items"][:2]:
                cluster.finish(a, item["task_id"])
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert seen == ids
        done = a.get("/tasks", params={"name": name, "state": "SUCCEEDED", "limit": 100})
        cluster.validate("TaskPage", done.json())
        assert {i["status"] for i in done.json()["items"]} <= {"SUCCEEDED"}


def test_wait_returns_as_soon_as_the_task_ends(cluster: Cluster) -> None:
    with cluster.client(0) as a, cluster.client(1) as b:
        task_id = cluster.submit(a)
        cluster.when(a, task_id, "READY")
        # a short wait on an unfinished task: 200 with the unfinished view
        started = time.monotonic()
        early = b.get(f"/tasks/{task_id}/wait", params={"timeout": "0.5"})
        assert early.status_code == 200 and early.json()["status"] == "READY"
        assert 0.4 <= time.monotonic() - started < 5
        results: dict[str, Any] = {}

        def waiter(client: httpx.Client, key: str) -> None:
            resp = client.get(f"/tasks/{task_id}/wait", params={"timeout": "30"})
            results[key] = (resp.status_code, resp.json(), time.monotonic())

        threads = [threading.Thread(target=waiter, args=(c, k)) for c, k in ((a, "a"), (b, "b"))]
        for t in threads:
            t.start()
        time.sleep(1.0)
        finished_at = time.monotonic()
        cluster.finish(a, task_id)
        for t in threads:
            t.join(35)
        for key in ("a", "b"):
            status, body, at = results[key]
            assert status == 200 and body["status"] == "SUCCEEDED"
            assert body["result"] == {"ok": True}
            cluster.validate("TaskView", body)
            assert at - finished_at < 5, f"wait on replica {key} returned late"


@pytest.mark.parametrize(("method", "path", "kwargs", "status", "field"), [
    ("GET", "/tasks", {"params": {"limit": "0"}}, 400, "limit"),
    ("GET", "/tasks", {"params": {"state": "NOPE"}}, 400, "state"),
    ("GET", "/tasks", {"params": {"since": "last week"}}, 400, "since"),
    ("GET", "/tasks", {"params": {"bogus": "1"}}, 400, "bogus"),
    ("GET", "/tasks/01J0000000000000000000000Z", {}, 404, None),
    ("GET", "/tasks/01J0000000000000000000000Z/wait", {"params": {"timeout": "999"}}, 400,
     "timeout"),
    ("POST", "/tasks", {"content": b"name=x", "headers": {"Content-Type": "text/plain"}}, 415,
     None),
    ("POST", "/tasks", {"content": b"{not json", "headers": {"Content-Type":
                                                             "application/json"}}, 400, "body"),
    ("POST", "/tasks", {"json": {"payload": 1}}, 400, "name"),
    ("POST", "/tasks", {"json": {"name": "x", "priority": 99}}, 400, "priority"),
    ("POST", "/tasks", {"json": {"name": "x", "surprise": 1}}, 400, "surprise"),
    ("POST", "/tasks", {"json": {"name": "x", "payload": "y" * 1_100_000}}, 413, "payload"),
    ("POST", "/tasks", {"content": b"{" + b" " * 3_000_000 + b"}",
                        "headers": {"Content-Type": "application/json"}}, 413, None),
    ("POST", "/tasks", {"json": []}, 400, "body"),
    ("POST", "/tasks", {"json": {"name": "x", "lease": 1e308}}, 400, "lease"),  # found by fuzz
    ("DELETE", "/tasks", {}, 405, None),
    ("GET", "/tasks/01J0000000000000000000000Z/cancel", {}, 405, None),
    ("POST", "/tasks/01J0000000000000000000000Z/cancel", {}, 404, None),
    ("POST", "/tasks/01J0000000000000000000000Z/redrive", {"json": {"max_attempts": 0}}, 400,
     "max_attempts"),
    ("POST", "/queues/bad.name/pause", {}, 400, "name"),
    # flow control (issue 16)
    ("POST", "/tasks", {"json": {"name": "x", "rate_limit": "no:colon"}}, 400, "rate_limit"),
    ("POST", "/tasks", {"json": {"name": "x", "concurrency_key": "a",
                                 "max_concurrency": 0}}, 400, "max_concurrency"),
    ("POST", "/tasks", {"json": {"name": "x", "expires": -1}}, 400, "expires"),
    ("PUT", "/limits/emails", {"json": {"rate": "fast"}}, 400, "rate"),
    ("PUT", "/limits/emails", {"json": {"rate": "1/s", "burst": 0}}, 400, "burst"),
    ("PUT", "/limits/bad%20name", {"json": {"rate": "1/s"}}, 400, "name"),
    ("GET", "/no/such/thing", {}, 404, None),
    # dependencies and schedules
    ("POST", "/tasks", {"json": {"name": "x", "depends_on": ["not-an-id"]}}, 400, "depends_on"),
    ("POST", "/schedules", {"json": {"schedule_id": "s1", "task_name": "x",
                                     "cron": "0 25 * * *"}}, 400, "cron"),
    ("GET", "/schedules/s1", {}, 404, None),
    ("GET", "/schedules/bad%20id", {}, 400, "schedule_id"),
    # hostile input (issue 17): no path through a proxied task ID, every bound enforced
    ("GET", "/tasks/..%2Finternal%2Ftasks", {}, 400, "task_id"),
    ("GET", "/tasks/..%2F..%2Fqueues/wait", {}, 400, "task_id"),
    ("POST", "/tasks/..%2Finternal%2Fqueues/cancel", {}, 400, "task_id"),
    ("GET", "/tasks/not-a-task-id", {}, 400, "task_id"),
    ("POST", "/tasks", {"json": {"name": "x", "lease": 0.5}}, 400, "lease"),
    ("POST", "/tasks", {"json": {"name": "x", "queue": "../ready"}}, 400, "queue"),
    ("POST", "/tasks", {"json": {"name": "x", "tags": ["t"] * 65}}, 400, "tags"),
    ("POST", "/tasks", {"json": {"name": "x", "tags": ["t" * 257]}}, 400, "tags"),
    ("POST", "/tasks", {"json": {"name": "x", "headers": {f"h{i}": "v" for i in range(65)}}},
     400, "headers"),
    ("POST", "/tasks", {"json": {"name": "x", "headers": {"h": "v" * 5000}}}, 400, "headers"),
    ("POST", "/tasks", {"json": {"name": "x", "depends_on": ["01J0000000000000000000000Z"]
                                 * 1001}}, 400, "depends_on"),
    # the one size budget: fields that fit one by one, an event that does not -> 413
    ("POST", "/tasks", {"json": {"name": "x", "payload": "p" * 850_000,
                                 "headers": {f"h{i}": "v" * 4000 for i in range(60)}}},
     413, "payload"),
])
def test_bad_inputs_get_their_status_code(cluster: Cluster, method: str, path: str,
                                          kwargs: dict[str, Any], status: int,
                                          field: str | None) -> None:
    with cluster.client(1) as c:
        resp = c.request(method, path, **kwargs)
    assert resp.status_code == status, resp.text
    body = resp.json()
    cluster.validate("Error", body)
    if field is not None:
        assert body["error"]["field"] == field
    assert "Traceback" not in resp.text


def test_cancel_dead_letter_dlq_and_redrive(cluster: Cluster) -> None:
    with cluster.client(0) as a, cluster.client(1) as b:
        to_cancel = cluster.submit(a, delay=60)
        cluster.when(a, to_cancel, "SCHEDULED")
        resp = b.post(f"/tasks/{to_cancel}/cancel", json={"reason": "not needed"})
        assert resp.status_code == 202, resp.text
        assert cluster.when(a, to_cancel, "CANCELLED")["cancel_reason"] == "not needed"

        dead = cluster.submit(a, max_attempts=1)
        cluster.finish(a, dead, ok=False)
        cluster.when(a, dead, "DEAD")
        page = b.get("/dlq", params={"limit": 1000}).json()
        cluster.validate("TaskPage", page)
        item = next(i for i in page["items"] if i["task_id"] == dead)
        assert item["last_error"]["message"] == "boom"
        assert {i["status"] for i in page["items"]} == {"DEAD"}

        resp = a.post(f"/tasks/{dead}/redrive", json={"max_attempts": 2})
        assert resp.status_code == 202, resp.text
        cluster.when(a, dead, "READY")


def test_redrive_many_with_a_dry_run_redrives_only_dead_tasks(cluster: Cluster) -> None:
    """POST /dlq/redrive (the dashboard's DLQ page): a dry run sends nothing."""
    with cluster.client(0) as a, cluster.client(1) as b:
        dead = [cluster.submit(a, max_attempts=1) for _ in range(2)]
        for task_id in dead:
            cluster.finish(a, task_id, ok=False)
            cluster.when(a, task_id, "DEAD")
        alive = cluster.submit(a, delay=60)
        cluster.when(a, alive, "SCHEDULED")
        ids = [*dead, alive, "01ZZZZZZZZZZZZZZZZZZZZZZZZ"]
        dry = b.post("/dlq/redrive", json={"task_ids": ids, "dry_run": True})
        assert dry.status_code == 200, dry.text
        cluster.validate("RedriveResults", dry.json())
        outcome = {r["task_id"]: r["outcome"] for r in dry.json()["results"]}
        assert outcome == {dead[0]: "would_redrive", dead[1]: "would_redrive",
                           alive: "skipped", ids[3]: "not_found"}
        assert dry.json()["counts"] == {"would_redrive": 2, "skipped": 1, "not_found": 1}
        assert all(cluster.view(a, t)["status"] == "DEAD" for t in dead)  # nothing was sent

        with cluster.client(1, "read-tok") as reader:
            assert reader.post("/dlq/redrive", json={"task_ids": dead}).status_code == 403
        done = b.post("/dlq/redrive", json={"task_ids": ids, "max_attempts": 2,
                                            "reason": "fixed"})
        assert done.status_code == 200, done.text
        assert done.json()["counts"] == {"redriven": 2, "skipped": 1, "not_found": 1}
        for task_id in dead:
            assert cluster.when(a, task_id, "READY")["redrives"] == 1
        assert b.post("/dlq/redrive", json={"task_ids": []}).status_code == 400


def test_history_processors_and_activity(cluster: Cluster) -> None:
    """The endpoints behind the dashboard's task page and overview, on either replica."""
    with cluster.client(0) as a, cluster.client(1) as b:
        task_id = cluster.submit(a)
        cluster.finish(a, task_id)
        cluster.when(a, task_id, "SUCCEEDED")

        resp = b.get(f"/tasks/{task_id}/history")
        assert resp.status_code == 200, resp.text
        cluster.validate("TaskHistory", resp.json())
        events = resp.json()["events"]
        assert [e["type"] for e in events] == ["TaskSubmitted", "TaskStarted", "TaskSucceeded"]
        assert [e["status_after"] for e in events] == ["READY", "RUNNING", "SUCCEEDED"]
        dispatch_id = events[1]["fields"]["dispatch_id"]
        assert dispatch_id in events[0]["decisions"][0]
        with cluster.client(1, "read-tok") as reader:
            seen = reader.get(f"/tasks/{task_id}/history").text
        assert dispatch_id not in seen and "admin scope only" in seen
        assert b.get("/tasks/01ZZZZZZZZZZZZZZZZZZZZZZZZ/history").status_code == 404

        procs = a.get("/processors")
        assert procs.status_code == 200, procs.text
        cluster.validate("Processors", procs.json())
        rows = procs.json()["processors"]
        assert {r["url"] for r in rows} == {r.url for r in cluster.replicas}
        active = sorted(p for r in rows for p in r["active"])
        assert active == list(range(cluster.settings.partitions))
        assert procs.json()["unowned"] == []

        def standbys_kept() -> bool:
            # one standby copy (the default) of every partition, on the replica that
            # does not fold it (the fold's own follower keeps them, not Faust)
            rows = a.get("/processors").json()["processors"]
            assert all(not set(r["active"]) & set(r["standby"]) for r in rows)
            return sorted(p for r in rows for p in r["standby"]) == \
                list(range(cluster.settings.partitions))

        wait_for("a standby copy of every partition in /processors", standbys_kept,
                 timeout=60, interval=0.5)

        def succeeded_in_a_step() -> bool:
            body = b.get("/activity").json()
            cluster.validate("Activity", body)
            assert body["replicas"] == 2 and body["unanswered"] == []
            return any(p["rates"] and p["rates"]["succeeded"] > 0 for p in body["points"])

        wait_for("a step with a success in /activity", succeeded_in_a_step, timeout=30,
                 interval=0.5)


def test_queues_counts_and_pause_resume(cluster: Cluster) -> None:
    with cluster.client(0) as a, cluster.client(1) as b:
        cluster.submit(a)
        resp = b.get("/queues")
        assert resp.status_code == 200, resp.text
        cluster.validate("Queues", resp.json())
        row = next(q for q in resp.json()["queues"] if q["name"] == QUEUE)
        assert row["total"] >= 1
        assert a.post(f"/queues/{QUEUE}/pause").status_code == 202
        paused = next(q for q in b.get("/queues").json()["queues"] if q["name"] == QUEUE)
        assert paused["paused"] is True
        assert b.post(f"/queues/{QUEUE}/resume").status_code == 202
        resumed = next(q for q in a.get("/queues").json()["queues"] if q["name"] == QUEUE)
        assert resumed["paused"] is False


def test_submissions_only_to_registered_queues_and_post_queues_registers(
        cluster: Cluster) -> None:
    """An unregistered queue is a 400 naming it; POST /queues (admin only) registers it
    and a submission to it, on another replica, is accepted (its cache reads the registry
    again on the miss, D31)."""
    queue = f"reg{uuid.uuid4().hex[:6]}"
    with cluster.client(0, "submit-tok") as submitter, cluster.client(1) as admin:
        refused = submitter.post("/tasks", json={"name": "x", "queue": queue})
        assert refused.status_code == 400, refused.text
        cluster.validate("Error", refused.json())
        error = refused.json()["error"]
        assert (error["code"], error["field"]) == ("unknown_queue", "queue")
        assert "POST /queues" in error["message"]
        assert submitter.post("/queues", json={"queues": [queue]}).status_code == 403
        bad = admin.post("/queues", json={"queues": ["../ready"]})
        assert bad.status_code == 400, bad.text
        assert admin.post("/queues", json={"queues": []}).status_code == 400
        done = admin.post("/queues", json={"queues": [queue, queue]})
        assert done.status_code == 200, done.text
        cluster.validate("Registered", done.json())
        assert done.json() == {"registered": [queue]}
        accepted = submitter.post("/tasks", json={"name": "x", "queue": queue})
        assert accepted.status_code == 202, accepted.text
        cluster.when(admin, accepted.json()["task_id"], "READY")


def test_a_forged_submission_to_an_unregistered_queue_is_cancelled_without_topics(
        cluster: Cluster) -> None:
    """A submission that reaches the log for a queue nobody registered (written straight
    to the events topic, past the SDK and the API) makes no topic: the replica reads the
    registry off the fold and cancels the task with the reason (D31)."""
    ghost = f"ghost{uuid.uuid4().hex[:6]}"
    task_id = new_task_id()
    cluster.writer.send(task_id, dataclasses.replace(submitted(), queue=ghost), 0)
    with cluster.client(0) as a:
        view = cluster.when(a, task_id, "CANCELLED", timeout=60)
    assert f"queue {ghost!r} is not registered" in view["cancel_reason"]
    admin = AdminClient({"bootstrap.servers": cluster.settings.bootstrap})
    made = [t for t in admin.list_topics(timeout=10).topics if ghost in t]
    assert made == []


def test_metrics_are_prometheus_text_with_task_counts(cluster: Cluster) -> None:
    with cluster.client(0) as a:
        cluster.submit(a)
        text = a.get("/metrics").text
    assert "# TYPE taskstream_tasks gauge" in text
    assert "taskstream_tasks{" in text


def test_schedules_list_is_empty_and_valid(cluster: Cluster) -> None:
    with cluster.client(0) as a:
        resp = a.get("/schedules")
        assert resp.status_code == 200, resp.text
        cluster.validate("Schedules", resp.json())
        assert resp.json() == {"items": []}


def test_openapi_paths_answer_with_documented_statuses(cluster: Cluster) -> None:
    """Each documented GET without path parameters answers with a documented status."""
    with cluster.client(0) as a:
        for path, ops in cluster.doc["paths"].items():
            if "get" not in ops or "{" in path:
                continue
            resp = a.get(path)
            assert str(resp.status_code) in ops["get"]["responses"], (path, resp.status_code)


# -- property-based: schemathesis generates requests from /openapi.json ------------------


@schemathesis.check
def not_a_server_error_at_all(ctx: Any, response: Any, case: Any) -> bool | None:
    """No 5xx."""
    result: bool | None = schemathesis.checks.not_a_server_error(ctx, response, case)
    return result


@pytest.mark.parametrize("mode", ["positive", "negative"])
def test_generated_requests_find_no_server_error(cluster: Cluster, mode: str) -> None:
    """Schemathesis makes requests (valid ones, then invalid ones) for every documented
    operation; none may answer 5xx, an undocumented status, or a body off its schema."""
    schema = schemathesis.openapi.from_dict(cluster.doc)
    checks = [not_a_server_error_at_all,
              schemathesis.checks.status_code_conformance,
              schemathesis.checks.content_type_conformance,
              schemathesis.checks.response_schema_conformance]
    generation = schemathesis.GenerationMode(mode)
    skipped: list[str] = []
    for result in schema.get_all_operations():
        operation = result.ok()
        if operation.path == "/tasks/{task_id}/wait":
            continue  # waits out its timeout for unknown tasks; covered above
        if (operation.method.upper(), operation.path, mode) == ("POST", "/queues", "positive"):
            continue  # would make topics for every generated queue name; covered above

        @hypothesis.given(case=operation.as_strategy(generation))
        @hypothesis.settings(max_examples=8, deadline=None, database=None,
                             suppress_health_check=list(hypothesis.HealthCheck))
        def call(case: Any) -> None:
            case.call_and_validate(base_url=cluster.replicas[1].url,
                                   headers={"Authorization": "Bearer admin-tok"}, checks=checks,
                                   verify=str(cluster.replicas[1].ca))

        try:
            call()
        except hypothesis.errors.Unsatisfiable:
            skipped.append(f"{operation.method.upper()} {operation.path}")
    # only operations without any input have no invalid input to make
    no_inputs = {f"{m.upper()} {p}" for p, ops in cluster.doc["paths"].items()
                 for m, op in ops.items() if not op.get("parameters") and "requestBody" not in op}
    assert set(skipped) <= no_inputs, skipped


def test_pause_stops_dispatch_to_workers_and_resume_restarts_it(cluster: Cluster,
                                                                tmp_path: Path) -> None:
    """A real ``taskstream worker`` on the default queue obeys pause and resume."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKSTREAM_")}
    env.update(TASKSTREAM_BOOTSTRAP=cluster.settings.bootstrap,
               TASKSTREAM_TOPIC_PREFIX=cluster.settings.topic_prefix,
               TASKSTREAM_PARTITIONS=str(cluster.settings.partitions),
               TASKSTREAM_QUEUES=json.dumps(cluster.settings.queues),
               # the processor's aiokafka cannot read lz4 (the default) without the lz4 package
               TASKSTREAM_COMPRESSION="gzip")
    log_path = tmp_path / "worker.log"
    with open(log_path, "ab") as log:
        worker = subprocess.Popen(
            [sys.executable, "-m", "taskstream", "worker", "-A", "examples.tasks", "-Q",
             "default", "--loglevel", "warning"],
            env=env, stdout=log, stderr=subprocess.STDOUT, cwd=Path(__file__).parent.parent)
    try:
        with cluster.client(0) as a:
            first = cluster.submit(a, name="examples.noop", queue="default")
            cluster.when(a, first, "SUCCEEDED", timeout=60)
            assert a.post("/queues/default/pause").status_code == 202
            time.sleep(3)  # the worker reads the queues topic and pauses its consumer
            held = cluster.submit(a, name="examples.noop", queue="default")
            cluster.when(a, held, "READY")
            time.sleep(4)
            assert cluster.view(a, held)["status"] == "READY", "a paused queue was worked"
            assert a.post("/queues/default/resume").status_code == 202
            cluster.when(a, held, "SUCCEEDED", timeout=30)
    finally:
        stop_process(worker)
        assert worker.returncode is not None, log_path.read_text()


def test_cli_against_the_live_api(cluster: Cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    from taskstream.cli.main import main

    monkeypatch.setenv("TASKSTREAM_API_URL", cluster.replicas[1].url)
    monkeypatch.setenv("TASKSTREAM_API_TOKEN", "admin-tok")
    monkeypatch.setenv("TASKSTREAM_API_CA_FILE", str(cluster.replicas[1].ca))
    with cluster.client(0) as a:
        task_id = cluster.submit(a, delay=120)
        cluster.when(a, task_id, "SCHEDULED")
    runner = CliRunner()
    status = runner.invoke(main, ["status", task_id, "--json"])
    assert status.exit_code == 0, status.output
    assert json.loads(status.output)["status"] == "SCHEDULED"
    listed = runner.invoke(main, ["list", "--queue", QUEUE, "--state", "SCHEDULED"])
    assert listed.exit_code == 0 and task_id in listed.output
    assert runner.invoke(main, ["cancel", task_id]).exit_code == 0
    waited = runner.invoke(main, ["wait", task_id, "--timeout", "20"])
    assert waited.exit_code == 1 and "CANCELLED" in waited.output  # ended, not succeeded
    queues = runner.invoke(main, ["queues"])
    assert queues.exit_code == 0 and QUEUE in queues.output


def test_schedule_cli_against_the_live_api(cluster: Cluster,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """``taskstream schedule ...`` through the API: add, show (the next fire times),
    pause, resume, delete; a bad cron expression names its field."""
    from click.testing import CliRunner

    from taskstream.cli.main import main

    monkeypatch.setenv("TASKSTREAM_API_URL", cluster.replicas[0].url)
    monkeypatch.setenv("TASKSTREAM_API_CA_FILE", str(cluster.replicas[0].ca))
    monkeypatch.setenv("TASKSTREAM_API_TOKEN", "admin-tok")
    runner = CliRunner()
    listed = runner.invoke(main, ["schedule", "list", "--json"])
    assert listed.exit_code == 0, listed.output
    assert json.loads(listed.output) == {"items": []}
    missing = runner.invoke(main, ["schedule", "show", "nightly"])
    assert missing.exit_code == 1 and "404" in missing.output
    bad = runner.invoke(main, ["schedule", "add", "nightly", "reports.run", "--cron", "0 24 * * *"])
    assert bad.exit_code == 1 and "field 2 (hour)" in bad.output
    added = runner.invoke(main, ["schedule", "add", "nightly", "reports.run", "--cron",
                                 "30 2 * * *", "--json"])
    assert added.exit_code == 0, added.output

    def status() -> str | None:
        shown = runner.invoke(main, ["schedule", "show", "nightly", "--json"])
        return json.loads(shown.output)["status"] if shown.exit_code == 0 else None

    wait_for("the schedule is there", lambda: status() == "ACTIVE", timeout=30)
    shown = json.loads(runner.invoke(main, ["schedule", "show", "nightly", "--json"]).output)
    assert shown["next_fire_times"], shown
    for verb, after in (("pause", "PAUSED"), ("resume", "ACTIVE"), ("delete", "DELETED")):
        done = runner.invoke(main, ["schedule", verb, "nightly"])
        assert done.exit_code == 0, done.output
        wait_for(f"the schedule is {after}", lambda after=after: status() == after, timeout=30)


def test_limits_set_and_list_through_the_api_and_the_cli(
        cluster: Cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    from taskstream.cli.main import main

    with cluster.client(1, token="read-tok") as b:
        resp = b.get("/limits")
        assert resp.status_code == 200, resp.text
        cluster.validate("Limits", resp.json())
        assert resp.json() == {"limits": []}
        assert b.put("/limits/emails", json={"rate": "1/s"}).status_code == 403  # admin only
    monkeypatch.setenv("TASKSTREAM_API_URL", cluster.replicas[0].url)
    monkeypatch.setenv("TASKSTREAM_API_CA_FILE", str(cluster.replicas[0].ca))
    monkeypatch.setenv("TASKSTREAM_API_TOKEN", "admin-tok")
    runner = CliRunner()
    listed = runner.invoke(main, ["limits", "list"])
    assert listed.exit_code == 0 and "no limits set" in listed.output
    done = runner.invoke(main, ["limits", "set", "emails", "--rate", "100/s", "--burst", "20"])
    assert done.exit_code == 0, done.output
    wait_for("the limit is listed", lambda: "emails" in runner.invoke(
        main, ["limits", "list"]).output, timeout=30)
    with cluster.client(1, token="read-tok") as b:
        (limit,) = b.get("/limits").json()["limits"]
        assert (limit["name"], limit["rate"], limit["burst"]) == ("emails", "100/s", 20)
