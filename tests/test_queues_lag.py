"""Consumer lag per queue and group, tasks no live worker can take, bulk cancel: against a
real broker and processor replica.

Given records in the ready topic of tag ``ssd`` and a worker without tags, then
``GET /queues`` and ``taskstream queues`` say those tasks wait for a worker with ``ssd``,
and ``/metrics`` has their lag; once a worker with ``ssd`` starts, they run and the lag
goes to 0. Given tasks in SCHEDULED (delayed), a dry-run bulk cancel counts them and
changes nothing; the real one cancels exactly the matching ones.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from taskstream.admin import TopicSpec, create_topics
from taskstream.cli.main import main
from taskstream.schemas.events import Backoff, TaskSubmitted
from taskstream.schemas.ids import new_task_id
from taskstream.schemas.state import TaskStatus
from taskstream.settings import Settings
from taskstream.topics import ready_topic
from taskstream.workers import TaskApp
from tests.harness import EventWriter, ProcessorProcess, StateReader, wait_for
from tests.test_worker_support import Events, ReadyWriter, ready_envelope, running_worker

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


def _queue(http: httpx.Client, name: str = "default") -> dict[str, Any]:
    body = http.get("/queues").json()
    return next(q for q in body["queues"] if q["name"] == name)


def test_lag_and_tasks_waiting_for_a_tag(topics: Settings, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    ssd_topic = ready_topic(topics, "default", 0, ["ssd"])
    create_topics(topics, [TopicSpec(ssd_topic, topics.ready_partitions)])
    app = TaskApp("lag")
    app.add(lambda payload: payload, name="lag.work")
    replica = ProcessorProcess(topics, tmp_path / "replica0").start()
    events = Events(topics)
    try:
        envs = [ready_envelope("lag.work", i) for i in range(3)]
        for env in envs:
            ReadyWriter(topics).send_to(ssd_topic, env)
        with httpx.Client(base_url=replica.url, timeout=30) as http, \
                running_worker(app, topics):
            lag = wait_for("the ssd records to show as unserved", lambda: (
                _queue(http)["lag"] or {}).get("unserved"), timeout=30)
            assert lag == [{"tags": ["ssd"], "lag": 3}]
            metrics = http.get("/metrics").text
            group = f"{topics.topic_prefix}workers.default"
            assert f'taskstream_consumer_lag{{group="{group}",queue="default"}} 3.0' in metrics
            assert 'taskstream_consumer_lag_unserved{queue="default",tags="ssd"} 3.0' in metrics
            monkeypatch.setenv("TASKSTREAM_API_URL", replica.url)
            monkeypatch.setenv("TASKSTREAM_TOPIC_PREFIX", topics.topic_prefix)
            out = CliRunner().invoke(main, ["queues"], catch_exceptions=False).output
            assert "queue default: 3 task(s) tagged ssd waiting: no live worker has tags ssd" \
                in out
            out = CliRunner().invoke(main, ["queues", "--lag"], catch_exceptions=False).output
            assert "NO WORKER" in out and group in out
            with running_worker(app, topics, tags=["ssd"]):
                events.wait("the ssd records to run", lambda seen: {e.task_id for e in envs} <= {
                    e.task_id for e in seen if e.type_name == "TaskSucceeded"}, timeout=60)
                wait_for("the lag to reach 0", lambda: (_queue(http)["lag"] or {}).get(
                    "lag") == 0, timeout=30)
                assert _queue(http)["lag"]["unserved"] == []
    finally:
        events.close()
        replica.stop()


def _delayed(queue: str, name: str) -> TaskSubmitted:
    return TaskSubmitted(
        name=name, queue=queue, priority=0, payload=b"null", content_type="application/json",
        eta_ms=int(time.time() * 1000) + 3_600_000, max_attempts=1,
        backoff=Backoff(), timeout_ms=None, lease_ms=30_000)


def test_bulk_cancel_by_filter_with_a_dry_run(topics: Settings, tmp_path: Path) -> None:
    replica = ProcessorProcess(topics, tmp_path / "replica0").start()
    try:
        writer, states = EventWriter(topics), StateReader(topics)
        targets = [new_task_id() for _ in range(5)]
        others = [new_task_id() for _ in range(3)]
        for task_id in targets:
            writer.send(task_id, _delayed("default", "bulk.target"))
        for task_id in others:
            writer.send(task_id, _delayed("default", "bulk.other"))
        wait_for("every task to be SCHEDULED", lambda: all(
            (s := states.refresh().get(t)) is not None and s.status is TaskStatus.SCHEDULED
            for t in targets + others), timeout=60)
        with httpx.Client(base_url=replica.url, timeout=30) as http:
            flt = {"queue": "default", "name": "bulk.target", "state": "SCHEDULED"}
            dry = http.post("/tasks/cancel", json={**flt, "dry_run": True})
            assert dry.status_code == 200, dry.text
            assert dry.json() == {"matched": 5, "cancelled": 0, "dry_run": True,
                                  "truncated": False}
            assert http.post("/tasks/cancel", json={}).status_code == 400
            assert http.post("/tasks/cancel", json={"state": "DEAD"}).status_code == 400
            time.sleep(0.5)
            assert all(states.refresh()[t].status is TaskStatus.SCHEDULED for t in targets)
            done = http.post("/tasks/cancel", json={**flt, "reason": "cleanup"})
            assert done.status_code == 202, done.text
            assert done.json()["cancelled"] == 5
            wait_for("the targets to be CANCELLED", lambda: all(
                states.refresh()[t].status is TaskStatus.CANCELLED for t in targets),
                timeout=30)
            assert {states.refresh()[t].status for t in others} == {TaskStatus.SCHEDULED}
            future = http.post("/tasks/cancel", json={
                "submitted_before": "2000-01-01T00:00:00Z", "dry_run": True})
            assert future.json()["matched"] == 0
            assert json.loads(done.text)["truncated"] is False
    finally:
        replica.stop()
