"""TaskHandle.result() over HTTP: the wait endpoint's answers and what they mean.

The API is a tiny http.server stand-in of the one endpoint (GET
/tasks/{id}/wait), not a fake broker; the meaning of each answer is also
checked on the pure ``interpret`` function.
"""

from __future__ import annotations

import asyncio
import base64
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest

from taskstream.producer.errors import (
    ApiBusyError,
    ApiUnavailableError,
    ResultTimeoutError,
    TaskCancelledError,
    TaskFailedError,
    TaskNotFoundError,
)
from taskstream.producer.results import (
    AsyncResultClient,
    Finished,
    Pending,
    ResultClient,
    interpret,
)

TID = "01J0000000000000000000TASK"
URL = "http://api/tasks/x/wait"


@dataclass
class Api:
    """Scripted answers: a list of (status code, JSON body) per task ID."""

    script: dict[str, list[tuple[int, Any]]] = field(default_factory=dict)
    seen: list[tuple[str, dict[str, list[str]], str | None]] = field(default_factory=list)
    url: str = ""


@pytest.fixture
def api() -> Iterator[Api]:
    state = Api()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            parsed = urlparse(self.path)
            parts = parsed.path.strip("/").split("/")
            state.seen.append((parsed.path, parse_qs(parsed.query), self.headers["Authorization"]))
            answers = state.script.get(parts[1], []) if len(parts) == 3 else []
            code, body = answers.pop(0) if len(answers) > 1 else (answers or [(404, {})])[0]
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


# --- the pure meaning of one answer ---------------------------------------------


def test_succeeded_json_result_is_returned_as_is() -> None:
    out = interpret(TID, URL, 200, {"status": "SUCCEEDED", "result": {"sum": 3}})
    assert out == Finished({"sum": 3})


def test_succeeded_json_null_result_is_none() -> None:
    assert interpret(TID, URL, 200, {"status": "SUCCEEDED", "result": None}) == Finished(None)


def test_succeeded_binary_result_is_bytes() -> None:
    body = {"status": "SUCCEEDED", "result_b64": base64.b64encode(b"\x00\xff").decode()}
    assert interpret(TID, URL, 200, body) == Finished(b"\x00\xff")


def test_dead_raises_task_failed_with_the_error_info() -> None:
    err = {
        "error_type": "ValueError",
        "message": "bad input",
        "traceback": "tb...",
        "attempt": 3,
        "timed_out": False,
    }
    with pytest.raises(TaskFailedError, match="ValueError: bad input") as info:
        interpret(TID, URL, 200, {"status": "DEAD", "last_error": err})
    assert (info.value.error_type, info.value.attempt, info.value.traceback) == (
        "ValueError",
        3,
        "tb...",
    )
    assert info.value.task_id == TID


def test_dead_by_timeout_says_so() -> None:
    err = {
        "error_type": "TimeoutError",
        "message": "",
        "traceback": "",
        "attempt": 1,
        "timed_out": True,
    }
    with pytest.raises(TaskFailedError, match="timed out"):
        interpret(TID, URL, 200, {"status": "DEAD", "last_error": err})


def test_cancelled_raises_with_reason() -> None:
    with pytest.raises(TaskCancelledError, match="operator said so"):
        interpret(TID, URL, 200, {"status": "CANCELLED", "cancel_reason": "operator said so"})


@pytest.mark.parametrize("status", ["SCHEDULED", "READY", "RUNNING", "RETRYING", "WAITING"])
def test_unfinished_statuses_are_pending(status: str) -> None:
    assert interpret(TID, URL, 200, {"status": status}) == Pending(status)


@pytest.mark.parametrize("code", [404, 502, 503, 504])
def test_not_yet_known_or_failover_is_retried(code: int) -> None:
    out = interpret(TID, URL, code, {})
    assert isinstance(out, Pending) and out.pause_s > 0


@pytest.mark.parametrize("code", [401, 403])
def test_refused_token_names_the_url_and_the_fix(code: int) -> None:
    with pytest.raises(ApiUnavailableError, match=r"http://api/tasks/x/wait.*TASKSTREAM_API_TOKEN"):
        interpret(TID, URL, code, {})


def test_garbage_answer_is_an_error_naming_the_url() -> None:
    with pytest.raises(ApiUnavailableError, match="unexpected answer from http://api"):
        interpret(TID, URL, 200, "<html>")


# --- the blocking client against the stand-in ----------------------------------------


def test_result_waits_through_pending_answers(api: Api) -> None:
    api.script[TID] = [
        (404, {}),
        (200, {"status": "RUNNING"}),
        (200, {"status": "SUCCEEDED", "result": [1, 2]}),
    ]
    client = ResultClient(api.url, token="s3cret")
    try:
        assert client.wait(TID, timeout=10) == [1, 2]
    finally:
        client.close()
    paths = {p for p, _, _ in api.seen}
    assert paths == {f"/tasks/{TID}/wait"}
    assert all(auth == "Bearer s3cret" for _, _, auth in api.seen)
    assert all(float(q["timeout"][0]) <= 10 for _, q, _ in api.seen)


def test_no_token_sends_no_authorization(api: Api) -> None:
    api.script[TID] = [(200, {"status": "SUCCEEDED", "result": 1})]
    client = ResultClient(api.url, token=None)
    try:
        client.wait(TID, timeout=5)
    finally:
        client.close()
    assert api.seen[0][2] is None


def test_result_times_out_with_the_last_status(api: Api) -> None:
    api.script[TID] = [(200, {"status": "RUNNING"})]
    client = ResultClient(api.url, token=None)
    try:
        with pytest.raises(ResultTimeoutError, match="RUNNING") as info:
            client.wait(TID, timeout=0.3)
    finally:
        client.close()
    assert isinstance(info.value, TimeoutError)


def test_dead_task_raises_through_the_client(api: Api) -> None:
    api.script[TID] = [
        (
            200,
            {
                "status": "DEAD",
                "last_error": {
                    "error_type": "KeyError",
                    "message": "'x'",
                    "traceback": "",
                    "attempt": 2,
                },
            },
        )
    ]
    client = ResultClient(api.url, token=None)
    try:
        with pytest.raises(TaskFailedError, match="KeyError"):
            client.wait(TID, timeout=5)
    finally:
        client.close()


def test_unreachable_api_names_the_url() -> None:
    import socket

    with socket.socket() as s:  # a port where nothing listens
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    client = ResultClient(f"http://127.0.0.1:{port}", token=None)
    try:
        with pytest.raises(ApiUnavailableError, match=f"127.0.0.1:{port}/tasks/{TID}/wait"):
            client.wait(TID, timeout=5)
    finally:
        client.close()


def test_async_client_returns_the_result(api: Api) -> None:
    api.script[TID] = [(200, {"status": "READY"}), (200, {"status": "SUCCEEDED", "result": "ok"})]

    async def go() -> Any:
        client = AsyncResultClient(api.url, token="t")
        try:
            return await client.wait(TID, timeout=5)
        finally:
            await client.aclose()

    assert asyncio.run(go()) == "ok"


def test_async_client_raises_cancelled(api: Api) -> None:
    api.script[TID] = [(200, {"status": "CANCELLED", "cancel_reason": ""})]

    async def go() -> Any:
        client = AsyncResultClient(api.url, token=None)
        try:
            return await client.wait(TID, timeout=5)
        finally:
            await client.aclose()

    with pytest.raises(TaskCancelledError):
        asyncio.run(go())


# --- read-your-writes and busy answers (D46) -----------------------------------------


def test_pending_fold_is_waited_through_with_the_servers_pause() -> None:
    body = {"error": {"code": "pending", "message": "m", "behind": 7, "retry_after_s": 1.0}}
    out = interpret(TID, URL, 503, body, after=True)
    assert isinstance(out, Pending) and out.pause_s == 1.0 and "7 record(s) behind" in out.status


def test_not_found_after_the_position_was_folded_is_final() -> None:
    body = {"error": {"code": "not_found", "message": "no task is known"}}
    with pytest.raises(TaskNotFoundError):
        interpret(TID, URL, 404, body, after=True)
    assert isinstance(interpret(TID, URL, 404, body), Pending)  # no position: not seen yet


@pytest.mark.parametrize("code", [429, 503])
def test_busy_api_is_retried_then_a_retriable_error(api: Api, code: int) -> None:
    error = {"code": "too_many_waiters" if code == 503 else "rate_limited",
             "message": "too many waiters", "retry_after_s": 0.1}
    api.script[TID] = [(code, {"error": error})]
    client = ResultClient(api.url, token=None)
    try:
        with pytest.raises(ApiBusyError, match="too many waiters") as info:
            client.wait(TID, timeout=0.5, after="1:5")
    finally:
        client.close()
    assert info.value.retriable
    assert len(api.seen) >= 2  # asked again after the pause
    assert all(q["after"] == ["1:5"] for _, q, _ in api.seen)
