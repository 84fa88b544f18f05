"""Admin commands: read task state and steer queues through the HTTP API.

``taskstream status|list|cancel|redrive|queues|workers|pause|resume|wait`` and
``taskstream dlq list|redrive``. The API address and token come from the
settings (``TASKSTREAM_API_URL``, ``TASKSTREAM_API_TOKEN``) or ``--api-url``.
Output is an aligned table for people; ``--json`` prints the API's JSON for
scripts. Sealed payloads, results and error texts (D27) are opened here when the
CLI has the payload keyring (the API may not), and shown sealed otherwise.
Exit codes: 0 success; 1 an error (the message says which and what to
do); ``wait``: 1 when the task ended DEAD or CANCELLED, 124 when it had not
finished when the timeout passed.
"""

from __future__ import annotations

import json
import ssl
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

import click

from taskstream.errors import TaskstreamError
from taskstream.producer.api_client import REQUEST_TIMEOUT_S, ApiClient, ApiResponse
from taskstream.producer.errors import ApiUnavailableError
from taskstream.schemas.state import TERMINAL, TaskStatus
from taskstream.schemas.view import Opener, open_view
from taskstream.security.errors import SealError
from taskstream.security.sealing import payload_sealer
from taskstream.security.tls import client_context

EXIT_TIMEOUT = 124
#: one long poll at most; longer waits are several polls
POLL_S = 30.0


class CommandClient:
    """The API client (:class:`~taskstream.producer.api_client.ApiClient`) as commands use it."""

    def __init__(self, url: str, token: str | None, opener: Opener | None = None,
                 verify: ssl.SSLContext | bool = True) -> None:
        self._api = ApiClient(url, token, verify)
        self.url = self._api.url
        self._opener = opener

    def close(self) -> None:
        self._api.close()

    def raw(self, method: str, path: str) -> ApiResponse:
        """The answer whatever its status (ApiUnavailableError when none came)."""
        return self._api.request(method, path)

    def call(self, method: str, path: str, *, params: dict[str, Any] | None = None,
             body: dict[str, Any] | None = None, timeout: float | None = None) -> Any:
        """The JSON of a 2xx answer; anything else is a ClickException with the API's message."""
        try:
            resp = self._api.request(method, path, params=params, body=body, timeout=timeout)
        except ApiUnavailableError as exc:
            raise click.ClickException(str(exc)) from None
        data = resp.data
        if resp.ok:
            return self._opened(data)
        error = data.get("error") if isinstance(data, dict) else None
        if isinstance(error, dict):
            field = f" (field: {error['field']})" if error.get("field") else ""
            raise click.ClickException(
                f"{method} {path}: HTTP {resp.status_code} {error.get('code')}: "
                f"{error.get('message')}{field}")
        raise click.ClickException(f"{method} {path}: HTTP {resp.status_code} "
                                   f"{resp.text[:200]!r} from {self.url}")

    def _opened(self, data: Any) -> Any:
        """Task views (one, or a page's items) with their sealed fields opened."""
        if self._opener is None or not isinstance(data, dict):
            return data
        try:
            if isinstance(data.get("items"), list):
                return {**data, "items": [open_view(item, self._opener)
                                          if isinstance(item, dict) else item
                                          for item in data["items"]]}
            return open_view(data, self._opener) if "sealed" in data else data
        except SealError as exc:
            raise click.ClickException(f"a sealed value does not open: {exc}") from None


# -- output ------------------------------------------------------------------------


def fmt_time(value: Any) -> str:
    """An ISO or epoch-ms time as 'YYYY-mm-dd HH:MM:SS' UTC; '-' for none."""
    if value is None or value == "":
        return "-"
    if isinstance(value, int | float):
        return datetime.fromtimestamp(value / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S")
    text = str(value)
    return text.replace("T", " ")[:19]


def render_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[str(h) for h in headers]] + [["-" if c is None else str(c) for c in r]
                                           for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
             for row in cells]
    return "\n".join(lines)


def _time_field(view: dict[str, Any], name: str) -> Any:
    return view.get(name, view.get(f"{name}_ms"))


def _error_text(view: dict[str, Any], width: int = 60) -> str:
    err = view.get("last_error")
    if not isinstance(err, dict):
        return "-"
    text = f"{err.get('error_type', '')}: {err.get('message', '')}".strip(": ")
    return text if len(text) <= width else text[: width - 1] + "…"


def task_rows(items: Sequence[dict[str, Any]]) -> str:
    return render_table(
        ["TASK ID", "NAME", "QUEUE", "PRI", "STATE", "ATTEMPT", "SUBMITTED", "UPDATED"],
        [[i.get("task_id"), i.get("name"), i.get("queue"), i.get("priority"), i.get("status"),
          i.get("attempt"), fmt_time(_time_field(i, "submitted_at")),
          fmt_time(_time_field(i, "updated_at"))] for i in items])


def dlq_rows(items: Sequence[dict[str, Any]]) -> str:
    return render_table(
        ["TASK ID", "NAME", "QUEUE", "ATTEMPT", "FINISHED", "LAST ERROR"],
        [[i.get("task_id"), i.get("name"), i.get("queue"), i.get("attempt"),
          fmt_time(_time_field(i, "finished_at")), _error_text(i)] for i in items])


def waiting_text(view: dict[str, Any]) -> str | None:
    """What a WAITING task waits for, in words (None for any other task)."""
    if view.get("status") != "WAITING":
        return None
    parents = list(view.get("waiting_on") or [])
    silent = list(view.get("unconfirmed") or [])
    text = f"{len(parents)} parent(s): {', '.join(parents[:10])}"
    if len(parents) > 10:
        text += f" and {len(parents) - 10} more"
    if silent:
        text += f"; not heard from yet: {', '.join(silent[:10])}"
        deadline = view.get("dependency_deadline_ms")
        if deadline is not None:
            text += f" (unknown IDs fail the task at {fmt_time(deadline)})"
    return text


def task_detail(view: dict[str, Any]) -> str:
    skip = {"payload", "payload_b64", "result_b64", "last_error", "recent_event_ids"}
    waiting = waiting_text(view)
    rows: list[list[Any]] = [["waiting for", waiting]] if waiting else []
    for key, value in view.items():
        if key in skip or value is None or value == [] or value == {}:
            continue
        shown = fmt_time(value) if key.endswith(("_at", "_at_ms")) else value
        if isinstance(shown, dict | list):
            shown = json.dumps(shown)
        rows.append([key, shown])
    if isinstance(view.get("last_error"), dict):
        rows.append(["last_error", _error_text(view, 200)])
    return render_table(["FIELD", "VALUE"], rows)


def queue_rows(queues: Sequence[dict[str, Any]]) -> str:
    states = [s.value for s in TaskStatus]
    present = [s for s in states if any(q.get("counts", {}).get(s) for q in queues)]
    rows = []
    for q in queues:
        rate = q.get("succeeded_per_s")
        rows.append([q["name"], "paused" if q.get("paused") else "running", q.get("total", 0),
                     *[q.get("counts", {}).get(s, 0) for s in present],
                     "-" if rate is None else f"{rate:g}/s"])
    table = render_table(["QUEUE", "STATUS", "TOTAL", *present, "SUCCEEDED/S (1 MIN)"], rows)
    return "\n".join([table, *unserved_notes(queues)])


def unserved_notes(queues: Sequence[dict[str, Any]]) -> list[str]:
    """A line per tag set whose tasks wait because no live worker has those tags (D38)."""
    notes = []
    for q in queues:
        lag = q.get("lag") or {}
        for entry in lag.get("unserved", []):
            tags = ",".join(entry.get("tags", []))
            who = f"no live worker has tags {tags}" if tags else "no live worker"
            notes.append(f"queue {q['name']}: {entry.get('lag', 0)} task(s) "
                         f"{'tagged ' + tags + ' ' if tags else ''}waiting: {who}")
    return notes


def lag_rows(queues: Sequence[dict[str, Any]]) -> str:
    """``queues --lag``: each ready topic's lag and whether a live worker holds it."""
    rows = []
    for q in queues:
        lag = q.get("lag")
        if not lag:
            rows.append([q["name"], "-", "-", "-", "-", "lag not read (Kafka slow?)"])
            continue
        rows.append([q["name"], lag["group"], lag["members"], "", lag["lag"], "total"])
        for t in lag["topics"]:
            rows.append(["", "", "", ",".join(t["tags"]) or "-", t["lag"],
                         f"p{t['priority']} " + ("served" if t["served"] else "NO WORKER")])
    table = render_table(["QUEUE", "GROUP", "MEMBERS", "TAGS", "LAG", ""], rows)
    return "\n".join([table, *unserved_notes(queues)])


def worker_rows(workers: Sequence[dict[str, Any]]) -> str:
    if not workers:
        return "no workers have announced themselves (start one: taskstream worker -A MODULE)"
    return render_table(
        ["WORKER", "STATUS", "QUEUES", "TAGS", "IN FLIGHT", "DONE", "FAILED", "STARTED",
         "LAST HEARTBEAT"],
        [[w.get("worker_id"), w.get("status"), ",".join(w.get("queues", [])),
          ",".join(w.get("tags", [])) or "-",
          f"{w.get('in_flight', 0)}/{w.get('concurrency', 0)}", w.get("tasks_succeeded", 0),
          w.get("tasks_failed", 0), fmt_time(w.get("started_at_ms")),
          f"{w.get('heartbeat_age_s', 0):.1f}s ago"] for w in workers])


def emit(data: Any, as_json: bool, human: Callable[[Any], str]) -> None:
    click.echo(json.dumps(data, indent=2) if as_json else human(data))


# -- shared plumbing --------------------------------------------------------------------


def client_from(api_url: str | None) -> CommandClient:
    from taskstream.cli.common import load_settings_or_exit

    settings = load_settings_or_exit()
    token = settings.api_token.get_secret_value() if settings.api_token else None
    try:
        client = CommandClient(api_url or settings.api_url, token, payload_sealer(settings),
                               client_context(settings))
    except TaskstreamError as exc:
        raise click.ClickException(str(exc)) from None
    click.get_current_context().call_on_close(client.close)  # no socket outlives the command
    return client


def api_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    fn = click.option("--api-url", default=None,
                      help="API address (default: the api_url setting)")(fn)
    return click.option("--json", "as_json", is_flag=True, help="print JSON for scripts")(fn)


def wait_for(client: CommandClient, task_id: str, timeout: float,
             on_change: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Long-poll until the task is terminal or ``timeout`` passes; the last view seen."""
    deadline = time.monotonic() + timeout
    last_status = None
    while True:
        left = max(0.0, deadline - time.monotonic())
        poll = min(left, POLL_S if on_change is None else 2.0)
        view: dict[str, Any] = client.call("GET", f"/tasks/{task_id}/wait",
                                           params={"timeout": f"{poll:.3f}"},
                                           timeout=poll + REQUEST_TIMEOUT_S)
        if on_change is not None and view.get("status") != last_status:
            on_change(view)
        last_status = view.get("status")
        if last_status in TERMINAL or time.monotonic() >= deadline:
            return view


def iter_dlq(client: CommandClient, page_size: int = 500) -> Iterator[dict[str, Any]]:
    cursor = None
    while True:
        page = client.call("GET", "/dlq", params={"limit": page_size, "cursor": cursor})
        yield from page["items"]
        cursor = page.get("next_cursor")
        if not cursor:
            return


# -- the commands -------------------------------------------------------------------------


@click.command()
@click.argument("task_id")
@click.option("--watch", is_flag=True, help="follow the task until it finishes")
@click.option("--timeout", type=click.FloatRange(0), default=3600.0, show_default=True,
              help="with --watch: stop following after this many seconds")
@api_options
def status(task_id: str, watch: bool, timeout: float, as_json: bool, api_url: str | None
           ) -> None:
    """Show a task: state, attempts, times, last error and result."""
    client = client_from(api_url)
    if not watch:
        emit(client.call("GET", f"/tasks/{task_id}"), as_json, task_detail)
        return

    def show(view: dict[str, Any]) -> None:
        if as_json:
            click.echo(json.dumps(view))
        else:
            click.echo(f"{fmt_time(time.time() * 1000)}  {view.get('status')}  "
                       f"attempt {view.get('attempt')}  {_error_text(view)}")

    wait_for(client, task_id, timeout, on_change=show)


@click.command("list")
@click.option("--queue", help="only this queue")
@click.option("--state", help="only this state (READY, RUNNING, DEAD, ...)")
@click.option("--name", help="only tasks of this name")
@click.option("--since", help="submitted at or after (ISO-8601 or epoch ms)")
@click.option("--limit", type=click.IntRange(1, 1000), default=50, show_default=True)
@click.option("--cursor", help="next_cursor of a previous page")
@api_options
def list_tasks(queue: str | None, state: str | None, name: str | None, since: str | None,
               limit: int, cursor: str | None, as_json: bool, api_url: str | None) -> None:
    """List tasks in task-ID order, one page at a time."""
    page = client_from(api_url).call("GET", "/tasks", params={
        "queue": queue, "state": state, "name": name, "since": since, "limit": limit,
        "cursor": cursor})

    def human(data: dict[str, Any]) -> str:
        text = task_rows(data["items"])
        if data.get("next_cursor"):
            text += f"\n(more: --cursor {data['next_cursor']})"
        return text

    emit(page, as_json, human)


@click.command()
@click.argument("task_id", required=False)
@click.option("--reason", default="", help="recorded with the cancellation")
@click.option("--queue", help="bulk: tasks of this queue")
@click.option("--name", help="bulk: tasks of this name")
@click.option("--state", help="bulk: tasks in this state (SCHEDULED, READY, RUNNING, ...)")
@click.option("--submitted-before", help="bulk: submitted before (ISO-8601 or epoch ms)")
@click.option("--dry-run", is_flag=True, help="bulk: only count what would be cancelled")
@api_options
def cancel(task_id: str | None, reason: str, queue: str | None, name: str | None,
           state: str | None, submitted_before: str | None, dry_run: bool, as_json: bool,
           api_url: str | None) -> None:
    """Cancel a task (workers running it are told to stop), or every live task matching
    --queue/--name/--state/--submitted-before (try --dry-run first)."""
    filters = {"queue": queue, "name": name, "state": state,
               "submitted_before": submitted_before}
    bulk = any(v is not None for v in filters.values())
    if bulk == (task_id is not None):
        raise click.UsageError("give a TASK_ID or a filter (--queue, --name, --state, "
                               "--submitted-before), not both")
    client = client_from(api_url)
    if task_id is not None:
        if dry_run:
            raise click.UsageError("--dry-run applies to a cancel by filter")
        data = client.call("POST", f"/tasks/{task_id}/cancel", body={"reason": reason})
        emit(data, as_json, lambda d: f"cancel requested for {d['task_id']}")
        return
    body = {k: v for k, v in filters.items() if v is not None}
    data = client.call("POST", "/tasks/cancel",
                       body={**body, "dry_run": dry_run, "reason": reason})

    def human(d: dict[str, Any]) -> str:
        more = " (max_tasks reached: run it again for the rest)" if d.get("truncated") else ""
        if d["dry_run"]:
            return f"{d['matched']} task(s) would be cancelled (dry run){more}"
        return f"cancel requested for {d['cancelled']} task(s){more}"

    emit(data, as_json, human)


@click.command()
@click.argument("task_id")
@click.option("--reason", default="", help="recorded with the redrive")
@click.option("--max-attempts", type=click.IntRange(1, 1000), help="a fresh attempt budget")
@api_options
def redrive(task_id: str, reason: str, max_attempts: int | None, as_json: bool,
            api_url: str | None) -> None:
    """Run a DEAD task again with a fresh attempt budget."""
    data = client_from(api_url).call("POST", f"/tasks/{task_id}/redrive",
                                     body={"reason": reason, "max_attempts": max_attempts})
    emit(data, as_json, lambda d: f"redrive requested for {d['task_id']}")


@click.command()
@click.option("--lag", is_flag=True,
              help="the worker groups' consumer lag per queue and ready topic instead")
@api_options
def queues(lag: bool, as_json: bool, api_url: str | None) -> None:
    """Every queue: tasks by state, processing rate, paused or not, and tasks waiting for a
    worker with their tags."""
    data = client_from(api_url).call("GET", "/queues")
    emit(data, as_json, lambda d: lag_rows(d["queues"]) if lag else queue_rows(d["queues"]))


@click.command()
@click.option("--all", "include_stopped", is_flag=True,
              help="also workers that stopped cleanly (kept for a day)")
@api_options
def workers(include_stopped: bool, as_json: bool, api_url: str | None) -> None:
    """Workers on the workers topic: running, stopping, or lost (3 heartbeats missed)."""
    data = client_from(api_url).call("GET", "/workers",
                                     params={"all": "1"} if include_stopped else None)
    emit(data, as_json, lambda d: worker_rows(d["workers"]))


@click.command()
@click.argument("queue")
@api_options
def pause(queue: str, as_json: bool, api_url: str | None) -> None:
    """Pause a queue: workers stop taking its tasks until it is resumed."""
    data = client_from(api_url).call("POST", f"/queues/{queue}/pause")
    emit(data, as_json, lambda d: f"queue {d['queue']} paused")


@click.command()
@click.argument("queue")
@api_options
def resume(queue: str, as_json: bool, api_url: str | None) -> None:
    """Resume a paused queue."""
    data = client_from(api_url).call("POST", f"/queues/{queue}/resume")
    emit(data, as_json, lambda d: f"queue {d['queue']} resumed")


@click.command()
@click.argument("task_id")
@click.option("--timeout", type=click.FloatRange(0), default=60.0, show_default=True,
              help="seconds to wait at most")
@api_options
def wait(task_id: str, timeout: float, as_json: bool, api_url: str | None) -> None:
    """Wait until a task finishes; exit 0 if it SUCCEEDED, 1 if DEAD/CANCELLED, 124 on timeout."""
    view = wait_for(client_from(api_url), task_id, timeout)
    emit(view, as_json, task_detail)
    state = view.get("status")
    if state == TaskStatus.SUCCEEDED.value:
        return
    raise SystemExit(1 if state in TERMINAL else EXIT_TIMEOUT)


@click.group()
def dlq() -> None:
    """Dead tasks: list them, run them again."""


@dlq.command("list")
@click.option("--queue", help="only this queue")
@click.option("--limit", type=click.IntRange(1, 1000), default=50, show_default=True)
@click.option("--cursor", help="next_cursor of a previous page")
@api_options
def dlq_list(queue: str | None, limit: int, cursor: str | None, as_json: bool,
             api_url: str | None) -> None:
    """Dead tasks with their last error."""
    page = client_from(api_url).call("GET", "/dlq", params={
        "queue": queue, "limit": limit, "cursor": cursor})

    def human(data: dict[str, Any]) -> str:
        text = dlq_rows(data["items"])
        if data.get("next_cursor"):
            text += f"\n(more: --cursor {data['next_cursor']})"
        return text

    emit(page, as_json, human)


@dlq.command("redrive")
@click.argument("task_ids", nargs=-1)
@click.option("--all", "redrive_all", is_flag=True, help="every dead task")
@click.option("--reason", default="", help="recorded with each redrive")
@click.option("--max-attempts", type=click.IntRange(1, 1000), help="a fresh attempt budget")
@api_options
def dlq_redrive(task_ids: tuple[str, ...], redrive_all: bool, reason: str,
                max_attempts: int | None, as_json: bool, api_url: str | None) -> None:
    """Run dead tasks again: the IDs given, or --all."""
    if redrive_all == bool(task_ids):
        raise click.UsageError("give task IDs or --all (not both)")
    client = client_from(api_url)
    ids = [item["task_id"] for item in iter_dlq(client)] if redrive_all else list(task_ids)
    for task_id in ids:
        client.call("POST", f"/tasks/{task_id}/redrive",
                    body={"reason": reason, "max_attempts": max_attempts})
    emit({"redriven": ids}, as_json, lambda d: f"redrive requested for {len(d['redriven'])} "
                                               "task(s)")
