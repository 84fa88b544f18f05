"""The query API under load and lag (issue 21), against the real broker.

Given one ``taskstream processor`` replica (a subprocess, armed with fault points and
small bounds through its environment), then:

* a listing scans at most ``api_list_scan_max`` rows per request, answers where it
  stopped (``scan_limit_reached``, ``next_cursor``), and a walk of its cursors finds
  every match; the scan runs off the event loop: a cheap request completes while a
  listing is stalled inside its scan (the ``api.list_scan`` fault point sleeps);
* ``/wait`` holds at most ``api_max_waiters`` waiters: the next one is answered 503
  ``too_many_waiters`` with Retry-After (the SDK: a retriable TaskstreamError), and
  nothing is lost;
* read-your-writes: with the fold held back (the ``fold.start`` fault point sleeps
  before the replica folds anything), a just-submitted task answers 503 ``pending``
  with how far the replica is behind, never 404; a lookup that carries the submit's
  position (``?after=<partition>:<offset>``) waits until the fold passes it; 404
  only once the replica has folded to the end.

No timing is asserted: every wait has a generous timeout.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from taskstream.errors import TaskstreamError
from taskstream.faults import ENV as FAULTS_ENV
from taskstream.processors.replay.read import partition_for
from taskstream.producer import ResultTimeoutError, TaskProducer
from taskstream.schemas.ids import new_task_id
from taskstream.settings import Settings
from tests.harness import ProcessorProcess, wait_for

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

#: the fold of the lag test starts this long after the replica is up
FOLD_STALL_S = 25


def _replica(settings: Settings, base: Path, env: dict[str, str]) -> ProcessorProcess:
    return ProcessorProcess(settings, base / "replica", env=env).start(ready_timeout=120)


@pytest.fixture
def stopped() -> Iterator[list[ProcessorProcess]]:
    """Replicas started by a test, stopped whatever happens."""
    replicas: list[ProcessorProcess] = []
    yield replicas
    for replica in replicas:
        replica.stop()


def _total(url: str) -> int:
    body = httpx.get(f"{url}/queues", timeout=30).json()
    return sum(int(q["total"]) for q in body["queues"])


def _submit(settings: Settings, url: str, n: int) -> list[str]:
    with TaskProducer(settings.model_copy(update={"api_url": url})) as producer:
        ids = [producer.submit("examples.noop", None).task_id for _ in range(n)]
    return ids


def test_listing_is_bounded_and_off_the_event_loop(
        topics: Settings, tmp_path: Path, stopped: list[ProcessorProcess]) -> None:
    bound = 50
    replica = _replica(topics, tmp_path, {
        "TASKSTREAM_API_LIST_SCAN_MAX": str(bound),
        FAULTS_ENV: "api.list_scan=sleep:20@1",
    })
    stopped.append(replica)
    ids = _submit(topics, replica.url, 300)
    wait_for("300 tasks folded", lambda: _total(replica.url) == 300, timeout=60)

    # the first listing's scan stalls 20 s; meanwhile a cheap request is answered
    listing: dict[str, Any] = {}

    def first_listing() -> None:
        listing["response"] = httpx.get(f"{replica.url}/tasks", params={"limit": "10"},
                                        timeout=90)

    thread = threading.Thread(target=first_listing, daemon=True)
    thread.start()
    wait_for("the listing to reach its scan",
             lambda: "taskstream fault: api.list_scan hit 1" in replica.log(), timeout=30)
    health = httpx.get(f"{replica.url}/healthz", timeout=10)
    assert health.status_code == 200
    assert thread.is_alive(), "the listing should still be stalled in its scan"
    thread.join(90)
    assert listing["response"].status_code == 200

    # a filter that matches nothing: each page stops at the bound and says where
    pages, cursor = 0, ""
    while True:
        params = {"name": "no.such.task", "limit": "1000"}
        if cursor:
            params["cursor"] = cursor
        body = httpx.get(f"{replica.url}/tasks", params=params, timeout=30).json()
        assert body["items"] == []
        pages += 1
        assert pages <= 300 // bound + 2, "the cursor walk does not end"
        if body["next_cursor"] is None:
            assert body["scan_limit_reached"] is False
            break
        assert body["scan_limit_reached"] is True
        cursor = body["next_cursor"]
    assert pages >= 300 // bound

    # a filter that matches everything: no page over the bound, the walk finds them all
    found: list[str] = []
    cursor = ""
    while True:
        params = {"name": "examples.noop", "limit": "1000"}
        if cursor:
            params["cursor"] = cursor
        body = httpx.get(f"{replica.url}/tasks", params=params, timeout=30).json()
        assert len(body["items"]) <= bound
        found += [item["task_id"] for item in body["items"]]
        if body["next_cursor"] is None:
            break
        cursor = body["next_cursor"]
    assert sorted(found) == sorted(ids)


def test_waiters_are_bounded(topics: Settings, tmp_path: Path,
                             stopped: list[ProcessorProcess]) -> None:
    replica = _replica(topics, tmp_path, {"TASKSTREAM_API_MAX_WAITERS": "2"})
    stopped.append(replica)
    sdk = TaskProducer(topics.model_copy(update={"api_url": replica.url}))
    try:
        handle = sdk.submit("examples.noop", None)  # no worker: it never finishes
        handle.delivered(30)
        wait_for("the task folded", lambda: httpx.get(
            f"{replica.url}/tasks/{handle.task_id}", timeout=10).status_code == 200)

        answers: list[int] = []

        def long_wait() -> None:
            answers.append(httpx.get(f"{replica.url}/tasks/{handle.task_id}/wait",
                                     params={"timeout": "15"}, timeout=60).status_code)

        waiters = [threading.Thread(target=long_wait, daemon=True) for _ in range(2)]
        for thread in waiters:
            thread.start()
        wait_for("both long waits held", lambda: "taskstream_api_waiters 2.0" in httpx.get(
            f"{replica.url}/metrics", timeout=30).text, timeout=30)

        def refused() -> httpx.Response | None:
            resp = httpx.get(f"{replica.url}/tasks/{handle.task_id}/wait",
                             params={"timeout": "0.5"}, timeout=30)
            return resp if resp.status_code == 503 else None

        resp = wait_for("a third waiter to be refused", refused, timeout=30)
        assert resp.json()["error"]["code"] == "too_many_waiters"
        assert int(resp.headers["Retry-After"]) >= 1

        # the SDK: a retriable error of the platform's tree, never a lost task
        with pytest.raises(TaskstreamError) as caught:
            handle.result(timeout=3)
        assert caught.value.retriable is True
        assert "waiters" in str(caught.value)

        for thread in waiters:
            thread.join(60)
        assert answers == [200, 200]
        # the cap is free again, the task still there
        again = httpx.get(f"{replica.url}/tasks/{handle.task_id}/wait",
                          params={"timeout": "0.1"}, timeout=30)
        assert again.status_code == 200
        assert again.json()["task_id"] == handle.task_id
    finally:
        sdk.close(10)


def test_read_your_writes_under_lag(topics: Settings, tmp_path: Path,
                                    stopped: list[ProcessorProcess]) -> None:
    replica = _replica(topics, tmp_path, {
        FAULTS_ENV: f"fold.start=sleep:{FOLD_STALL_S}@1",
        "TASKSTREAM_API_READ_WAIT_S": "1",
    })
    stopped.append(replica)
    assert "taskstream fault: fold.start hit 1" in replica.log()
    sdk = TaskProducer(topics.model_copy(update={"api_url": replica.url}))
    try:
        handle = sdk.submit("examples.noop", None)
        handle.delivered(30)

        # the fold is held back: pending, with how far behind; never 404
        resp = httpx.get(f"{replica.url}/tasks/{handle.task_id}", timeout=30)
        assert resp.status_code == 503, resp.text
        error = resp.json()["error"]
        assert error["code"] == "pending"
        assert handle.partition is not None and handle.offset is not None
        assert error["partition"] == handle.partition
        assert error["behind"] >= 1
        assert "Retry-After" in resp.headers
        with pytest.raises(ResultTimeoutError) as waited:  # the SDK keeps waiting
            handle.result(timeout=3)
        assert "behind" in str(waited.value)
        # an ID nobody submitted, on the lagging partition: pending too, not 404
        unknown = next(i for i in iter(new_task_id, None)
                       if partition_for(i.encode(), topics.partitions) == handle.partition)
        assert httpx.get(f"{replica.url}/tasks/{unknown}", timeout=30).status_code == 503

        # a REST submit answers its record's position too
        rest = httpx.post(f"{replica.url}/tasks", json={"name": "examples.noop"}, timeout=30)
        assert rest.status_code == 202
        position = rest.json()
        assert isinstance(position["partition"], int) and isinstance(position["offset"], int)

        # carrying the position: waits (bounded) until the fold has passed it
        after = f"{handle.partition}:{handle.offset}"
        view = wait_for("the lookup with ?after to answer the task", lambda: (
            lambda r: r.json() if r.status_code == 200 else None)(
                httpx.get(f"{replica.url}/tasks/{handle.task_id}", params={"after": after},
                          timeout=30)), timeout=FOLD_STALL_S + 60)
        assert view["task_id"] == handle.task_id
        rest_view = httpx.get(f"{replica.url}/tasks/{position['task_id']}", params={
            "after": f"{position['partition']}:{position['offset']}"}, timeout=30)
        assert rest_view.status_code == 200

        # folded to the end: an unknown task is a 404 again
        wait_for("an unknown task to answer 404", lambda: httpx.get(
            f"{replica.url}/tasks/{unknown}", timeout=30).status_code == 404, timeout=60)
        # the SDK passes the position itself: a cancelled task's result is its cancellation
        sdk.cancel(handle.task_id, "test").delivered(30)
        with pytest.raises(TaskstreamError, match="cancelled"):
            handle.result(timeout=60)
    finally:
        sdk.close(10)
