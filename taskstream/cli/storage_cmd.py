"""``taskstream result``, ``taskstream purge`` and ``taskstream storage ...`` (issue 22).

* ``result ID [--out FILE]`` streams a SUCCEEDED task's result (``GET
  /tasks/{id}/result``) to stdout or a file, never holding it whole; the
  sha256 is checked as it arrives and a file is renamed into place only then.
* ``purge --queue Q --state S --finished-before T [--dry-run]`` removes
  finished tasks from the state (a ``PurgeRequested`` each, D35); the dry run
  lists what would go.
* ``storage reap [--grace S] [--dry-run]`` deletes the objects no task needs
  (objectstore/reaper.py); ``storage install`` resolves S3Proxy, the local
  S3-compatible server of the tests (D36).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click

from taskstream.cli.admin_cmds import (
    CommandClient,
    api_options,
    client_from,
    emit,
    fmt_time,
    render_table,
)
from taskstream.errors import TaskstreamError
from taskstream.producer.errors import ApiUnavailableError, ResultError
from taskstream.producer.results import ResultClient
from taskstream.schemas.state import TERMINAL
from taskstream.security.sealing import payload_sealer
from taskstream.security.tls import client_context


def _settings() -> Any:
    from taskstream.cli.common import load_settings_or_exit

    return load_settings_or_exit()


@click.command()
@click.argument("task_id")
@click.option("--out", "out", type=click.Path(dir_okay=False, path_type=Path),
              help="write to this file (default: stdout)")
@click.option("--timeout", type=click.FloatRange(0), default=600.0, show_default=True)
@click.option("--api-url", default=None, help="API address (default: the api_url setting)")
def result(task_id: str, out: Path | None, timeout: float, api_url: str | None) -> None:
    """Stream a SUCCEEDED task's result (stdout, or --out FILE)."""
    settings = _settings()
    token = settings.api_token.get_secret_value() if settings.api_token else None
    try:  # sealed results (D27) are opened with the payload keyring when the CLI has it
        client = ResultClient(api_url or settings.api_url, token, payload_sealer(settings),
                              client_context(settings))
    except TaskstreamError as exc:
        raise click.ClickException(str(exc)) from None
    try:
        if out is None:
            sink = sys.stdout.buffer
            client.stream(task_id, sink.write, timeout)
            sink.flush()
            return
        partial = out.with_name(out.name + ".partial")
        with open(partial, "wb") as handle:
            client.stream(task_id, handle.write, timeout)
        os.replace(partial, out)
    except (ResultError, ApiUnavailableError) as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        client.close()


def iter_tasks(client: CommandClient, params: dict[str, Any], page_size: int = 500
               ) -> Iterator[dict[str, Any]]:
    cursor = None
    while True:
        page = client.call("GET", "/tasks", params={**params, "limit": page_size,
                                                    "cursor": cursor})
        yield from page["items"]
        cursor = page.get("next_cursor")
        if not cursor:
            return


def purge_candidates(items: Iterator[dict[str, Any]], before_ms: int | None
                     ) -> Iterator[dict[str, Any]]:
    """The finished tasks of a listing, finished before ``before_ms`` if given."""
    for item in items:
        if item.get("status") not in TERMINAL:
            continue
        finished = item.get("finished_at_ms")
        if before_ms is not None and (finished is None or finished >= before_ms):
            continue
        yield item


def _parse_time(raw: str | None) -> int | None:
    if raw is None:
        return None
    from taskstream.api.query import parse_since

    return parse_since(raw)


@click.command()
@click.option("--queue", help="only this queue")
@click.option("--state", type=click.Choice(sorted(s.value for s in TERMINAL)),
              help="only this finished state")
@click.option("--name", help="only tasks of this name")
@click.option("--finished-before", help="only tasks finished before this time "
              "(ISO-8601 or epoch ms)")
@click.option("--dry-run", is_flag=True, help="list what would be purged, purge nothing")
@click.option("--reason", default="purged by an operator", show_default=True)
@api_options
def purge(queue: str | None, state: str | None, name: str | None,
          finished_before: str | None, dry_run: bool, reason: str, as_json: bool,
          api_url: str | None) -> None:
    """Remove finished tasks from the state now (the events topic keeps their history)."""
    try:
        before = _parse_time(finished_before)
    except Exception as exc:  # the API's parser raises its ApiError: say it plainly
        raise click.BadParameter(str(exc), param_hint="--finished-before") from None
    client = client_from(api_url)
    params = {"queue": queue, "state": state, "name": name}
    chosen = list(purge_candidates(iter_tasks(client, params), before))
    if not dry_run:
        for item in chosen:
            client.call("POST", f"/tasks/{item['task_id']}/purge", body={"reason": reason})
    data = {"dry_run": dry_run, "purged" if not dry_run else "would_purge":
            [item["task_id"] for item in chosen]}
    rows = [(i["task_id"], i.get("queue"), i.get("status"), fmt_time(i.get("finished_at_ms")))
            for i in chosen]
    verb = "would purge" if dry_run else "purge requested for"
    emit(data, as_json, lambda _: "\n".join(filter(None, [
        render_table(["TASK", "QUEUE", "STATE", "FINISHED"], rows) if rows else "",
        f"{verb} {len(chosen)} task(s)"])))


@click.group()
def storage() -> None:
    """Object storage of large payloads and results."""


@storage.command("reap")
@click.option("--grace", type=click.FloatRange(0), default=None,
              help="keep objects younger than this many seconds (default: reaper_grace_s)")
@click.option("--dry-run", is_flag=True, help="report what would be deleted, delete nothing")
@api_options
def reap_cmd(grace: float | None, dry_run: bool, as_json: bool, api_url: str | None) -> None:
    """Delete the objects of removed tasks and the unreferenced ones of finished tasks."""
    from taskstream.objectstore.reaper import reap
    from taskstream.objectstore.store import ObjectStore

    settings = _settings()
    store = ObjectStore.from_settings(settings)
    if store is None:
        raise click.ClickException("storage_bucket is not set: nothing to reap")
    client = client_from(api_url)
    grace_s = settings.reaper_grace_s if grace is None else grace
    report = reap(store, api_lookup(client), int(time.time() * 1000), int(grace_s * 1000),
                  dry_run=dry_run)
    data = {"dry_run": dry_run, "tasks": report.tasks, "objects": report.objects,
            "deleted": report.deleted, "freed_bytes": report.freed_bytes,
            "kept_unknown": report.kept_unknown, "keys": report.deleted_keys}
    verb = "would delete" if dry_run else "deleted"
    emit(data, as_json, lambda d: f"{d['tasks']} task(s), {d['objects']} object(s): {verb} "
                                  f"{d['deleted']} ({d['freed_bytes']} bytes); "
                                  f"{d['kept_unknown']} task(s) not looked up (kept)")


def api_lookup(client: CommandClient) -> Any:
    """The reaper's lookup through GET /tasks/{id}: 404 = gone, anything else unusable
    keeps the task's objects (LookupFailed)."""
    from taskstream.objectstore.reaper import LookupFailed, TaskRefs

    def lookup(task_id: str) -> TaskRefs | None:
        try:
            resp = client.raw("GET", f"/tasks/{task_id}")
        except ApiUnavailableError as exc:
            raise LookupFailed(str(exc)) from None
        if resp.status_code == 404:
            return None
        if not resp.ok or not isinstance(resp.data, dict):
            raise LookupFailed(f"HTTP {resp.status_code}")
        view = resp.data
        keys = frozenset(ref["key"] for ref in (view.get("payload_ref"), view.get("result_ref"))
                         if ref)
        return TaskRefs(view.get("status") in TERMINAL, keys)

    return lookup


@storage.command("install")
def install() -> None:
    """Resolve S3Proxy (the local S3-compatible server of tests and dev) once with Maven."""
    from taskstream.locals3.server import ensure_s3proxy

    settings = _settings()
    libs = ensure_s3proxy(settings.s3proxy_home, settings.s3proxy_version)
    click.echo(f"S3Proxy {settings.s3proxy_version}: {libs}")
