"""``taskstream dev``: Kafka, a processor, a worker and a demo workload on this machine."""

from __future__ import annotations

from pathlib import Path

import click


@click.command()
@click.option("--tasks", "-n", default=200, show_default=True, type=click.IntRange(5, 1_000_000),
              help="size of the demo workload")
@click.option("--keep-running", is_flag=True,
              help="leave Kafka, the processor and the worker running at the end")
@click.option("--stop", "stop_only", is_flag=True,
              help="stop what an earlier `taskstream dev --keep-running` left running")
@click.option("--timeout", default=180.0, show_default=True, type=click.FloatRange(1, 3600),
              help="seconds the workload may take once submitted")
@click.option("--workdir", default=Path(".taskstream"), show_default=True,
              type=click.Path(file_okay=False, path_type=Path),
              help="where Kafka, the processor and the logs keep their data")
@click.option("--app", default="examples.tasks", show_default=True, metavar="MODULE",
              help="module with the demo's tasks (examples/tasks.py)")
@click.option("--app-path", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="directory to import --app from [default: the cwd or the source checkout]")
@click.option("--reload", "reload_", is_flag=True,
              help="the worker restarts (graceful drain) when the task modules change")
def dev(tasks: int, keep_running: bool, stop_only: bool, timeout: float, workdir: Path,
        app: str, app_path: Path | None, reload_: bool) -> None:
    """Run the platform locally with a demo workload and print a summary.

    Starts a local Kafka if none answers, creates the topics, starts one processor
    (which serves the HTTP API) and one worker, submits fast, slow, failing, poison,
    delayed and prioritised tasks, shows their progress and ends with throughput and
    latency figures. Ctrl-C stops everything it started.
    """
    from rich.console import Console

    from taskstream.cli.common import load_settings_or_exit
    from taskstream.dev.platform import DevOptions, run_dev, stop_recorded
    from taskstream.errors import TaskstreamError

    console = Console()
    try:
        if stop_only:
            if not stop_recorded(workdir, console):
                console.print(f"Nothing recorded in {workdir}: taskstream dev is not running.")
            return
        settings = load_settings_or_exit()
        run_dev(settings, DevOptions(tasks=tasks, keep_running=keep_running, workdir=workdir,
                                     app=app, app_path=app_path, timeout_s=timeout,
                                     reload=reload_), console)
    except TaskstreamError as exc:
        raise click.ClickException(str(exc)) from None
    except KeyboardInterrupt:
        raise SystemExit(130) from None
