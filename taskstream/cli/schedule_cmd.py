"""``taskstream schedule add|list|show|pause|resume|delete``: schedules through the HTTP API.

Each command takes ``--json`` (the API's JSON) and ``--api-url``; ``add`` needs the
``submit`` scope, ``pause``, ``resume`` and ``delete`` the ``admin`` scope (D37).
"""

from __future__ import annotations

import json
from typing import Any

import click

from taskstream.cli.admin_cmds import api_options, client_from, emit, fmt_time, render_table


def schedule_rows(items: list[dict[str, Any]]) -> str:
    return render_table(
        ["SCHEDULE", "STATUS", "TASK", "QUEUE", "WHEN", "TZ", "NEXT FIRE", "FIRED", "SKIPPED"],
        [[i.get("schedule_id"), i.get("status"), i.get("task_name"), i.get("queue"),
          i.get("cron") or f"every {(i.get('every_ms') or 0) / 1000:g}s", i.get("timezone"),
          fmt_time((i.get("next_fire_times") or [None])[0]), i.get("fired"), i.get("skipped")]
         for i in items])


def schedule_detail(view: dict[str, Any]) -> str:
    rows: list[list[Any]] = []
    for key, value in view.items():
        if key in ("next_fire_times", "last_firings") or value is None or value == "":
            continue
        rows.append([key, fmt_time(value) if key.endswith(("_at", "_at_ms")) else value])
    for at in view.get("next_fire_times") or []:
        rows.append(["next fire", fmt_time(at)])
    for firing in reversed(view.get("last_firings") or []):
        rows.append(["fired", f"{fmt_time(firing.get('fire_at_ms'))}  {firing.get('task_id')}"])
    return render_table(["FIELD", "VALUE"], rows)


@click.group()
def schedule() -> None:
    """Recurring tasks: cron or interval schedules, fired exactly once per fire time."""


@schedule.command("add")
@click.argument("schedule_id")
@click.argument("task_name")
@click.option("--cron", help="5 fields (minute hour day month weekday), optional 6th: seconds")
@click.option("--every", type=click.FloatRange(min=0, min_open=True),
              help="seconds between firings")
@click.option("--tz", default="UTC", show_default=True, help="IANA time zone of the cron")
@click.option("--payload", default="null", show_default=True, help="the task's JSON payload")
@click.option("--queue", default="default", show_default=True)
@click.option("--misfire", type=click.Choice(["skip", "run_once", "catch_up"]),
              default="run_once", show_default=True,
              help="fire times missed while down or paused")
@click.option("--catch-up-max", type=click.IntRange(1, 1000), default=10, show_default=True)
@click.option("--jitter", type=click.FloatRange(0), default=0.0, show_default=True,
              help="seconds; a hash of (schedule, fire time)")
@click.option("--start-at", help="ISO-8601 with a time zone: no firing before")
@click.option("--end-at", help="ISO-8601 with a time zone: no firing after")
@api_options
def add(schedule_id: str, task_name: str, cron: str | None, every: float | None, tz: str,
        payload: str, queue: str, misfire: str, catch_up_max: int, jitter: float,
        start_at: str | None, end_at: str | None, as_json: bool, api_url: str | None) -> None:
    """Create or replace a schedule that submits TASK_NAME at each fire time."""
    try:
        value = json.loads(payload)
    except ValueError as exc:
        raise click.BadParameter(f"not JSON: {exc}", param_hint="--payload") from None
    body = {"schedule_id": schedule_id, "task_name": task_name, "payload": value, "cron": cron,
            "every": every, "tz": tz, "queue": queue, "misfire": misfire,
            "catch_up_max": catch_up_max, "jitter": jitter, "start_at": start_at,
            "end_at": end_at}
    client = client_from(api_url)
    answer = client.call("POST", "/schedules", body={k: v for k, v in body.items()
                                                     if v is not None})
    emit(answer, as_json, lambda a: f"schedule {a['schedule_id']} written")


@schedule.command("list")
@api_options
def list_schedules(as_json: bool, api_url: str | None) -> None:
    """Every schedule, with its next fire time."""
    emit(client_from(api_url).call("GET", "/schedules"), as_json,
         lambda data: schedule_rows(data["items"]))


@schedule.command("show")
@click.argument("schedule_id")
@api_options
def show(schedule_id: str, as_json: bool, api_url: str | None) -> None:
    """One schedule: its spec, next fire times and its last firings' task IDs."""
    emit(client_from(api_url).call("GET", f"/schedules/{schedule_id}"), as_json,
         schedule_detail)


def _verb(name: str, method: str, suffix: str, done: str, doc: str) -> click.Command:
    """``taskstream schedule <name> ID [--reason]``: one command event through the API."""

    @click.argument("schedule_id")
    @click.option("--reason", default="", help="recorded with the command")
    @api_options
    def command(schedule_id: str, reason: str, as_json: bool, api_url: str | None) -> None:
        answer = client_from(api_url).call(method, f"/schedules/{schedule_id}{suffix}",
                                           body={"reason": reason})
        emit(answer, as_json, lambda _: f"schedule {schedule_id}: {done}")

    command.__doc__ = doc
    return schedule.command(name)(command)


pause = _verb("pause", "POST", "/pause", "pause requested",
              "Pause a schedule: no firings until it is resumed.")
resume = _verb("resume", "POST", "/resume", "resume requested",
               "Resume a schedule; fire times missed while paused meet its misfire policy.")
delete = _verb("delete", "DELETE", "", "delete requested",
               "Delete a schedule: it fires no more (tasks it submitted are not touched).")
