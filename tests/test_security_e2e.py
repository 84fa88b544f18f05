"""The whole platform on the secured broker: a processor, a worker and the SDK each under
its own principal, workers signing their events, payloads sealed end to end, and a key
rotation in the middle (D25-D29). One run: starting a replica is the slow part."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from taskstream.acls import Role
from taskstream.admin import list_topics
from taskstream.api.auth import token_digest
from taskstream.cli.main import main
from taskstream.producer import TaskProducer
from taskstream.producer.errors import SealedResultError, TaskFailedError
from taskstream.producer.results import ResultClient
from taskstream.schemas.serde import decode_event
from taskstream.schemas.view import open_view
from taskstream.security.errors import SealError
from taskstream.security.keyring import keyring_json, load_keyring, new_secret, parse_keyring
from taskstream.security.sealing import Sealer, sealed_key_id
from taskstream.security.signing import signature_of, verify
from taskstream.settings import Settings
from taskstream.topics import events_topic, ready_topic
from taskstream.workers import TaskApp
from tests.conftest import Roles
from tests.harness import ProcessorProcess, read_to_end
from tests.test_worker_support import running_worker

pytestmark = [pytest.mark.slow]

K1, K2 = new_secret(), new_secret()
# a rotation: every holder gets k2 first (RING1), then writers switch to it (RING2); k1 stays
# to open what it sealed. The worker switched already, the first submitter not yet.
RING1 = keyring_json({"k1": K1, "k2": K2}, "k1")
RING2 = keyring_json({"k1": K1, "k2": K2}, "k2")
TOKENS = {"read-tok": ["read"], "admin-tok": ["admin"]}

app = TaskApp("sec")


@app.task(name="sec.echo", queue="default")
async def echo(payload: Any) -> dict[str, Any]:
    return {"got": payload}


@app.task(name="sec.fail", queue="default", max_attempts=1)
async def fail(payload: Any) -> None:
    raise ValueError(f"declined card {payload['card']}")


def test_secured_platform_seals_signs_and_rotates(secure_roles: Roles, tmp_path: Path) -> None:
    processor = secure_roles(Role.PROCESSOR, api_tokens={
        token_digest(t): s for t, s in TOKENS.items()})  # no payload keyring: sees no plaintext
    replica = ProcessorProcess(processor, tmp_path / "replica0").start(ready_timeout=120)
    worker = secure_roles(Role.WORKER, payload_keys=RING2)
    try:
        with running_worker(app, worker, concurrency=4):
            first = submitter(secure_roles, RING1, replica)
            with TaskProducer(first) as producer:
                old = producer.submit("sec.echo", {"card": "4111"})
                assert old.result(timeout=90) == {"got": {"card": "4111"}}  # the SDK opens it
                dead = producer.submit("sec.fail", {"card": "4111"})
                with pytest.raises(TaskFailedError) as failed:
                    dead.result(timeout=90)
                assert failed.value.error_message == "declined card 4111"  # opened too

            rotated = submitter(secure_roles, RING2, replica)
            with TaskProducer(rotated) as producer:
                new = producer.submit("sec.echo", {"card": "5500"})
                assert new.result(timeout=90) == {"got": {"card": "5500"}}
                assert producer.submit("sec.echo", {"n": 1}).result(timeout=90) == {
                    "got": {"n": 1}}

        with httpx.Client(base_url=replica.url, timeout=30) as http:
            admin_h = {"Authorization": "Bearer admin-tok"}
            read_h = {"Authorization": "Bearer read-tok"}
            old_view = http.get(f"/tasks/{old.task_id}", headers=admin_h).json()
            new_view = http.get(f"/tasks/{new.task_id}", headers=admin_h).json()
            dead_view = http.get(f"/tasks/{dead.task_id}", headers=admin_h).json()
            read_view = http.get(f"/tasks/{new.task_id}", headers=read_h).json()
            queues = http.get("/queues", headers=read_h)  # reads the queues topic over SASL
            assert queues.status_code == 200, queues.text

        # the API holds no payload key: it shows sealed values and names them
        for view in (old_view, new_view, dead_view):
            assert "4111" not in json.dumps(view) and "5500" not in json.dumps(view)
        assert old_view["sealed"] == ["payload", "result"]
        assert "last_error.message" in dead_view["sealed"]
        # a read token never sees the dispatch ID an outcome needs; an admin does
        assert read_view["dispatch_id"] is None and new_view["dispatch_id"]

        # rotation: new writes use k2, values written under k1 still open with the keyring
        ring2 = Sealer(parse_keyring(RING2, "payload", "test"))
        assert key_of(old_view) == "k1" and key_of(new_view) == "k2"
        assert open_view(old_view, ring2)["payload"] == {"card": "4111"}
        assert open_view(new_view, ring2)["result"] == {"got": {"card": "5500"}}
        only_k2 = Sealer(parse_keyring(keyring_json({"k2": K2}, "k2"), "payload", "test"))
        with pytest.raises(SealError, match="'k1'"):
            open_view(old_view, only_k2)

        # the CLI opens what it holds the key for
        shown = CliRunner().invoke(main, ["status", old.task_id, "--json"], env={
            "TASKSTREAM_API_URL": replica.url, "TASKSTREAM_API_TOKEN": "read-tok",
            "TASKSTREAM_PAYLOAD_KEYS": RING2})
        assert shown.exit_code == 0, shown.output
        assert json.loads(shown.output)["payload"] == {"card": "4111"}

        # an SDK without the keyring hears why it cannot read the result
        waits = ResultClient(replica.url, "read-tok")
        try:
            with pytest.raises(SealedResultError, match="payload keyring"):
                waits.wait(old.task_id, 30)
        finally:
            waits.close()

        # the log itself: no plaintext anywhere, every worker event signed by a worker key
        admin = secure_roles(Role.ADMIN)
        records = [(m.key(), m.value(), m.headers() or [])
                   for m in read_to_end(admin, events_topic(admin))]
        assert records and all(b"4111" not in v and b"5500" not in v for _, v, _ in records)
        admin_ring = load_keyring(None, secure_roles.files.keyring("admin"), "signing")
        assert admin_ring is not None
        worker_events = [(k, v, h) for k, v, h in records
                         if decode_event(v).type_name in ("TaskStarted", "TaskSucceeded",
                                                          "TaskFailed", "LeaseRenewed")]
        assert worker_events
        for key, value, headers in worker_events:
            assert verify(admin_ring, key, value, signature_of(headers))[0] == "worker"
    finally:
        replica.stop()


def test_a_tag_set_is_routed_under_the_roles_acls(secure_roles: Roles, tmp_path: Path) -> None:
    """Tags on a secured cluster (D38 with D25, D31): the processor makes a registered
    queue's tag-set topics under the ``ready.<queue>.`` prefix its ACLs let it create, a
    worker with the tag reads them by pattern under its own prefix, and the queue's lag
    (per tag set) is read with the processor's Describe on the workers' groups."""
    processor = secure_roles(Role.PROCESSOR, api_tokens={
        token_digest(t): s for t, s in TOKENS.items()})
    replica = ProcessorProcess(processor, tmp_path / "replica0").start(ready_timeout=120)
    admin = secure_roles(Role.ADMIN)
    gpu_topic = ready_topic(admin, "default", 0, ["gpu"])
    assert gpu_topic not in list_topics(admin)
    try:
        with running_worker(app, secure_roles(Role.WORKER), concurrency=2, tags=["gpu"]), \
                TaskProducer(secure_roles(Role.SUBMITTER, api_url=replica.url,
                                          api_token="read-tok")) as producer:
            handle = producer.submit("sec.echo", {"n": 7}, tags=["gpu"])
            assert handle.result(timeout=90) == {"got": {"n": 7}}
        assert gpu_topic in list_topics(admin)  # made by the processor, off the fold
        with httpx.Client(base_url=replica.url, timeout=30) as http:
            answer = http.get("/queues", headers={"Authorization": "Bearer read-tok"})
        assert answer.status_code == 200, answer.text
        lag = next(q for q in answer.json()["queues"] if q["name"] == "default")["lag"]
        assert lag is not None, "the workers' group offsets were not readable"
        gpu = [t for t in lag["topics"] if t["tags"] == ["gpu"]]
        assert gpu and all(t["lag"] == 0 for t in gpu), lag
    finally:
        replica.stop()


def submitter(roles: Roles, ring: str, replica: ProcessorProcess) -> Settings:
    return roles(Role.SUBMITTER, api_url=replica.url, api_token="read-tok", payload_keys=ring)


def key_of(view: dict[str, Any]) -> str | None:
    import base64

    return sealed_key_id(base64.b64decode(view["payload_b64"]))
