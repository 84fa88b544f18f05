"""The admin CLI against a canned HTTP server (no Kafka): requests, tables, JSON, errors."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from click.testing import CliRunner

from taskstream.cli.admin_cmds import render_table
from taskstream.cli.main import main

VIEW = {"task_id": "01TASK", "name": "send", "queue": "emails", "priority": 1,
        "status": "DEAD", "attempt": 3, "submitted_at_ms": 1_700_000_000_000,
        "last_error": {"error_type": "ValueError", "message": "boom", "attempt": 3}}


class Recorder:
    def __init__(self) -> None:
        self.requests: list[tuple[str, str, Any, str | None]] = []
        self.answers: dict[tuple[str, str], tuple[int, Any]] = {}


def _handler(rec: Recorder) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def _answer(self, method: str) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length)) if length else None
            path = self.path.split("?")[0]
            rec.requests.append((method, self.path, body, self.headers.get("Authorization")))
            status, data = rec.answers.get((method, path), (404, {"error": {
                "code": "not_found", "message": "no such task", "field": None}}))
            raw = json.dumps(data).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

        def do_GET(self) -> None:
            self._answer("GET")

        def do_POST(self) -> None:
            self._answer("POST")

        def do_DELETE(self) -> None:
            self._answer("DELETE")

        def log_message(self, *args: Any) -> None:
            pass

    return Handler


@pytest.fixture
def api(monkeypatch: pytest.MonkeyPatch) -> Iterator[Recorder]:
    rec = Recorder()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(rec))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("TASKSTREAM_API_URL", f"http://127.0.0.1:{server.server_port}")
    monkeypatch.setenv("TASKSTREAM_API_TOKEN", "sekrit")
    try:
        yield rec
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def run(*args: str) -> Any:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_status_prints_a_table_and_sends_the_token(api: Recorder) -> None:
    api.answers[("GET", "/tasks/01TASK")] = (200, VIEW)
    result = run("status", "01TASK")
    assert result.exit_code == 0, result.output
    assert "DEAD" in result.output and "ValueError: boom" in result.output
    assert api.requests[0][3] == "Bearer sekrit"


def test_json_output_is_the_api_json(api: Recorder) -> None:
    api.answers[("GET", "/tasks/01TASK")] = (200, VIEW)
    result = run("status", "01TASK", "--json")
    assert json.loads(result.output) == VIEW


def test_api_errors_are_reported_with_code_and_field(api: Recorder) -> None:
    result = CliRunner().invoke(main, ["status", "nope"])
    assert result.exit_code == 1
    assert "404" in result.output and "no such task" in result.output


def test_unreachable_api_names_the_address(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("TASKSTREAM_API_URL", f"http://127.0.0.1:{port}")
    result = CliRunner().invoke(main, ["queues"])
    assert result.exit_code == 1
    assert f"127.0.0.1:{port}" in result.output and "cannot reach" in result.output


def test_list_passes_filters_and_shows_the_cursor(api: Recorder) -> None:
    api.answers[("GET", "/tasks")] = (200, {"items": [VIEW], "next_cursor": "01TASK"})
    result = run("list", "--queue", "emails", "--state", "DEAD", "--limit", "1")
    assert result.exit_code == 0, result.output
    assert "queue=emails" in api.requests[0][1] and "state=DEAD" in api.requests[0][1]
    assert "--cursor 01TASK" in result.output


def test_cancel_redrive_pause_resume_post_the_right_paths(api: Recorder) -> None:
    for path in ("/tasks/01TASK/cancel", "/tasks/01TASK/redrive"):
        api.answers[("POST", path)] = (202, {"task_id": "01TASK"})
    for verb in ("pause", "resume"):
        api.answers[("POST", f"/queues/emails/{verb}")] = (
            202, {"queue": "emails", "paused": verb == "pause"})
    assert run("cancel", "01TASK", "--reason", "stop").exit_code == 0
    assert run("redrive", "01TASK", "--max-attempts", "5").exit_code == 0
    assert "paused" in run("pause", "emails").output
    assert "resumed" in run("resume", "emails").output
    posted = [(m, p, b) for m, p, b, _ in api.requests]
    assert posted[0] == ("POST", "/tasks/01TASK/cancel", {"reason": "stop"})
    assert posted[1] == ("POST", "/tasks/01TASK/redrive", {"reason": "", "max_attempts": 5})
    assert posted[2][:2] == ("POST", "/queues/emails/pause")


def test_queues_table(api: Recorder) -> None:
    api.answers[("GET", "/queues")] = (200, {"queues": [
        {"name": "emails", "paused": True, "total": 3, "counts": {"READY": 2, "DEAD": 1},
         "by_priority": {}, "succeeded_per_s": 1.5},
        {"name": "default", "paused": False, "total": 0, "counts": {}, "by_priority": {},
         "succeeded_per_s": None}]})
    out = run("queues").output
    assert "emails" in out and "paused" in out and "1.5/s" in out and "READY" in out


def test_wait_exit_codes(api: Recorder) -> None:
    api.answers[("GET", "/tasks/01TASK/wait")] = (200, VIEW)
    assert CliRunner().invoke(main, ["wait", "01TASK"]).exit_code == 1  # DEAD
    api.answers[("GET", "/tasks/01TASK/wait")] = (200, {**VIEW, "status": "SUCCEEDED"})
    assert CliRunner().invoke(main, ["wait", "01TASK"]).exit_code == 0
    api.answers[("GET", "/tasks/01TASK/wait")] = (200, {**VIEW, "status": "RUNNING"})
    assert CliRunner().invoke(main, ["wait", "01TASK", "--timeout", "0"]).exit_code == 124


def test_dlq_redrive_all_pages_through_the_dlq(api: Recorder) -> None:
    api.answers[("GET", "/dlq")] = (200, {"items": [VIEW, {**VIEW, "task_id": "01B"}],
                                          "next_cursor": None})
    for task_id in ("01TASK", "01B"):
        api.answers[("POST", f"/tasks/{task_id}/redrive")] = (202, {"task_id": task_id})
    result = run("dlq", "redrive", "--all")
    assert result.exit_code == 0, result.output
    assert "2 task(s)" in result.output
    assert CliRunner().invoke(main, ["dlq", "redrive"]).exit_code == 2  # usage error


def test_dlq_list_shows_errors(api: Recorder) -> None:
    api.answers[("GET", "/dlq")] = (200, {"items": [VIEW], "next_cursor": None})
    out = run("dlq", "list").output
    assert "ValueError: boom" in out and "01TASK" in out


def test_render_table_aligns_columns() -> None:
    text = render_table(["A", "LONG"], [["xxx", 1], [None, 22]])
    assert text.splitlines() == ["A    LONG", "xxx  1", "-    22"]


def test_status_says_what_a_waiting_task_waits_for(api: Recorder) -> None:
    waiting = {**VIEW, "status": "WAITING", "last_error": None, "waiting_on": ["01A", "01B"],
               "unconfirmed": ["01B"], "dependency_deadline_ms": 1_700_000_300_000}
    api.answers[("GET", "/tasks/01TASK")] = (200, waiting)
    result = run("status", "01TASK")
    assert result.exit_code == 0, result.output
    line = next(x for x in result.output.splitlines() if x.startswith("waiting for"))
    assert "2 parent(s): 01A, 01B" in line and "not heard from yet: 01B" in line
    assert "2023-11-14 22:18:20" in line  # the deadline, UTC


SCHEDULE = {"schedule_id": "nightly", "status": "ACTIVE", "task_name": "reports.run",
            "queue": "default", "cron": "30 2 * * *", "every_ms": None,
            "timezone": "Europe/Berlin", "next_fire_times": ["2026-12-01T01:30:00.000Z"],
            "last_firings": [{"fire_at_ms": 1_764_552_600_000, "fire_at": "x",
                              "task_id": "01FIRED"}], "fired": 3, "skipped": 1, "reason": ""}


def test_schedule_commands_use_the_api(api: Recorder) -> None:
    api.answers[("GET", "/schedules")] = (200, {"items": [SCHEDULE]})
    api.answers[("GET", "/schedules/nightly")] = (200, SCHEDULE)
    api.answers[("POST", "/schedules")] = (202, {"schedule_id": "nightly"})
    for verb in ("pause", "resume"):
        api.answers[("POST", f"/schedules/nightly/{verb}")] = (202, {"schedule_id": "nightly"})
    api.answers[("DELETE", "/schedules/nightly")] = (202, {"schedule_id": "nightly"})
    listed = run("schedule", "list")
    assert "nightly" in listed.output and "30 2 * * *" in listed.output
    assert "2026-12-01 01:30:00" in listed.output
    shown = run("schedule", "show", "nightly")
    assert "01FIRED" in shown.output and "next fire" in shown.output
    assert json.loads(run("schedule", "show", "nightly", "--json").output) == SCHEDULE
    added = run("schedule", "add", "nightly", "reports.run", "--cron", "30 2 * * *",
                "--tz", "Europe/Berlin", "--payload", '{"a": 1}')
    assert added.exit_code == 0 and "written" in added.output
    for verb in ("pause", "resume", "delete"):
        assert run("schedule", verb, "nightly", "--reason", "r").exit_code == 0
    sent = [(m, p.split("?")[0], b) for m, p, b, _ in api.requests]
    assert ("POST", "/schedules", {"schedule_id": "nightly", "task_name": "reports.run",
                                   "payload": {"a": 1}, "cron": "30 2 * * *",
                                   "tz": "Europe/Berlin", "queue": "default",
                                   "misfire": "run_once", "catch_up_max": 10,
                                   "jitter": 0.0}) in sent
    assert ("DELETE", "/schedules/nightly", {"reason": "r"}) in sent
    assert ("POST", "/schedules/nightly/pause", {"reason": "r"}) in sent
