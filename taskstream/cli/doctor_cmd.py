"""``taskstream doctor``: is the deployment whole? (checks in taskstream/cli/doctor.py)."""

from __future__ import annotations

import json

import click

from taskstream.cli.common import exits_on_error, json_option, load_settings_or_exit

_MARK = {"ok": "ok  ", "warn": "WARN", "fail": "FAIL"}


@click.command()
@click.option("--api-url", default=None, help="a replica's API address (default: api_url)")
@json_option
@exits_on_error
def doctor(api_url: str | None, as_json: bool) -> None:
    """Check brokers, topics, processors, workers (and object storage when configured); say
    what is wrong and what to do.

    Exit 0 when nothing failed (warnings allowed), 1 otherwise.
    """
    from taskstream.cli.doctor import FAIL, examine

    overrides = {"api_url": api_url} if api_url else {}
    findings = examine(load_settings_or_exit(**overrides))
    if as_json:
        click.echo(json.dumps([f.as_dict() for f in findings], indent=2))
    else:
        width = max(len(f.check) for f in findings)
        for f in findings:
            click.echo(f"{_MARK[f.level]}  {f.check.ljust(width)}  {f.message}")
            if f.fix and f.level != "ok":
                click.echo(f"      {' ' * width}  -> {f.fix}")
    failed = sum(1 for f in findings if f.level == FAIL)
    if failed:
        if not as_json:
            click.echo(f"\n{failed} problem(s) found.")
        raise SystemExit(1)
