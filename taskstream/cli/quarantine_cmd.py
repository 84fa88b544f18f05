"""``taskstream quarantine``: what the platform set aside, from where, and why."""

from __future__ import annotations

import click

from taskstream.cli.common import echo_json, exits_on_error, json_option, load_settings_or_exit


@click.group()
def quarantine() -> None:
    """Records set aside on the quarantine topic (undecodable or refused), with reasons."""


@quarantine.command("list")
@click.option(
    "--limit",
    type=click.IntRange(0),
    default=50,
    show_default=True,
    help="the newest N records (0: only count them)",
)
@json_option
@exits_on_error
def list_quarantined(limit: int, as_json: bool) -> None:
    """The newest quarantined records: origin topic/partition@offset, reason, content."""
    from taskstream.cli.admin_cmds import fmt_time, render_table
    from taskstream.processors.replay.quarantine_log import read_quarantine

    records, total = read_quarantine(load_settings_or_exit(), newest=limit)
    if as_json:
        echo_json({"total": total, "items": [r.to_json() for r in records]})
        return
    if records:
        rows = []
        for r in records:
            origin = r.origin
            where = (
                f"{origin.topic}:{origin.partition}@{origin.offset}" if origin is not None else "?"
            )
            reason = origin.reason if origin is not None else f"({r.problem})"
            rows.append([fmt_time(r.timestamp_ms), where, r.event, _short(reason, 80)])
        click.echo(render_table(["QUARANTINED", "ORIGIN", "RECORD", "REASON"], rows))
    shown = f"; showing the newest {len(records)}" if len(records) < total else ""
    click.echo(f"{total} record(s) in quarantine{shown}", err=True)


def _short(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 3] + "..."
