"""``taskstream replay``: audit the events topic (history, rebuild, verify, export).

Every subcommand reads the log with an assign-only consumer (no group, no commits),
prints progress on stderr when it is a terminal (``--quiet`` silences it), reports
records it could not decode with partition and offset, and says at the end how
many it skipped. See docs/replay.md.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import click

from taskstream.cli.common import echo_json, exits_on_error, json_option, load_settings_or_exit
from taskstream.cli.progress import progress_for
from taskstream.cli.replay_args import parse_offsets_spec, parse_time

#: mismatches ``verify`` explains in full; the rest it lists one line each
EXPLAINED = 5

quiet_option = click.option("--quiet", "-q", is_flag=True, help="no progress bar")
workers_option = click.option(
    "--workers", type=click.IntRange(1, 64), default=None,
    help="fold processes (default: one per core, up to 2, for large topics)")


def _report_skipped(skipped: int, details: Iterable[object]) -> None:
    for record in details:
        describe = getattr(record, "describe", None)
        click.echo(f"skipped {describe() if describe else record}", err=True)
    if skipped:
        click.echo(f"{skipped} record(s) skipped (could not be decoded or do not belong "
                   "on the events topic)", err=True)


@click.group()
def replay() -> None:
    """Audit the events topic: what happened to a task, rebuild, verify, export."""


@replay.command()
@click.argument("task_id")
@json_option
@quiet_option
@exits_on_error
def history(task_id: str, as_json: bool, quiet: bool) -> None:
    """Every event of TASK_ID in order, and what the fold made of each."""
    from taskstream.processors.replay.history import format_entry, task_history, to_json_lines

    entries = task_history(load_settings_or_exit(), task_id, progress=progress_for(quiet))
    if as_json:
        for line in to_json_lines(entries):
            click.echo(line)
    else:
        if not entries:
            click.echo(f"no events for task {task_id}", err=True)
        for entry in entries:
            click.echo(format_entry(entry))
    skipped = [e for e in entries if e.envelope is None]
    if skipped and not as_json:
        click.echo(f"{len(skipped)} record(s) of this task skipped", err=True)


@replay.command()
@click.option("--until", "until", metavar="TIME",
              help="fold each partition up to the first record stamped later than TIME "
                   "(epoch ms or ISO 8601)")
@click.option("--until-offsets", metavar="SPEC",
              help='fold records with offset < N per partition, e.g. "0:1200,1:900"')
@click.option("--out", required=True, type=click.Path(path_type=Path),
              help="a new directory for the RocksDB (task ID -> encoded TaskState)")
@click.option("--cache-size", default=200_000, show_default=True,
              help="task states kept in memory while folding")
@workers_option
@json_option
@quiet_option
@exits_on_error
def rebuild(until: str | None, until_offsets: str | None, out: Path, cache_size: int,
            workers: int | None, as_json: bool, quiet: bool) -> None:
    """Fold the events topic from the beginning into a fresh RocksDB."""
    from taskstream.processors.replay.rebuild import rebuild as run_rebuild

    result = run_rebuild(
        load_settings_or_exit(), out,
        until_ms=parse_time(until) if until else None,
        until_offsets=parse_offsets_spec(until_offsets) if until_offsets else None,
        progress=progress_for(quiet), cache_size=cache_size, workers=workers,
    )
    _report_skipped(result.skipped, result.skipped_details)
    if as_json:
        echo_json(result.summary())
    else:
        click.echo(f"rebuilt {result.tasks} task(s) from {result.events} event(s) in "
                   f"{result.seconds:.2f}s ({result.events_per_s:,.0f} events/s) into {out}")


@replay.command()
@click.option("--wait-timeout", default=30.0, show_default=True,
              help="seconds to wait for the processors to catch up")
@workers_option
@json_option
@quiet_option
@exits_on_error
def verify(wait_timeout: float, workers: int | None, as_json: bool, quiet: bool) -> None:
    """Check that the live task table is exactly the fold of the log (exit 1 if not)."""
    from taskstream.processors.replay.verify import explain
    from taskstream.processors.replay.verify import verify as run_verify

    settings = load_settings_or_exit()
    report = run_verify(settings, wait_timeout=wait_timeout,
                        progress=progress_for(quiet), workers=workers)
    _report_skipped(report.skipped, report.skipped_details)
    for record in report.changelog_skipped:
        click.echo(f"skipped changelog {record.describe()}", err=True)
    if as_json:
        echo_json({"ok": report.ok, "tasks": report.tasks, "events": report.events,
                   "ends": {str(p): o for p, o in sorted(report.ends.items())},
                   "skipped": report.skipped,
                   "mismatches": [m.to_json() for m in report.mismatches]})
    else:
        for n, mismatch in enumerate(report.mismatches):
            # the first few explained in full (their events, both states), the rest listed
            click.echo(explain(settings, mismatch) if n < EXPLAINED
                       else f"MISMATCH {mismatch.describe()}")
        click.echo(f"{report.tasks} task(s) from {report.events} event(s): "
                   f"{len(report.mismatches)} mismatch(es)")
    if not report.ok:
        raise SystemExit(1)


@replay.command()
@click.option("--format", "fmt", type=click.Choice(["avro", "jsonl"]), required=True)
@click.option("--out", required=True, type=click.Path(path_type=Path, dir_okay=False))
@click.option("--since", metavar="TIME", help="first record timestamp (epoch ms or ISO 8601)")
@click.option("--until", metavar="TIME", help="last record timestamp (epoch ms or ISO 8601)")
@quiet_option
@exits_on_error
def export(fmt: str, out: Path, since: str | None, until: str | None, quiet: bool) -> None:
    """Write the events topic to an Avro container file or JSON lines."""
    from taskstream.processors.replay.export import export as run_export

    result = run_export(load_settings_or_exit(), fmt, out,
                        since_ms=parse_time(since) if since else None,
                        until_ms=parse_time(until) if until else None,
                        progress=progress_for(quiet))
    _report_skipped(result.skipped, result.skipped_details)
    click.echo(f"exported {result.events} event(s) to {out} ({fmt}) in {result.seconds:.2f}s",
               err=True)
