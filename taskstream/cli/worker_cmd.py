"""``taskstream worker``: run a worker for the tasks of a module."""

from __future__ import annotations

from pathlib import Path

import click


@click.command()
@click.option("-A", "--app", "target", required=True, metavar="MODULE[:ATTR]",
              help="module holding the TaskRegistry/TaskApp (attr defaults to 'app')")
@click.option("-Q", "--queues", default=None, metavar="Q1,Q2",
              help="queues to consume (default: the queues of the registered tasks)")
@click.option("-c", "--concurrency", default="16", show_default=True, metavar="N|auto",
              help="attempts (or batches) running at once; 'auto' sizes itself between "
                   "--concurrency-min and --concurrency-max from the backlog and the "
                   "machine's CPU and memory")
@click.option("--concurrency-min", default=2, show_default=True, type=click.IntRange(1, 10_000),
              help="with --concurrency auto: the least")
@click.option("--concurrency-max", default=64, show_default=True, type=click.IntRange(1, 10_000),
              help="with --concurrency auto: the most")
@click.option("--tags", default="", metavar="T1,T2",
              help="run tasks whose tags are a subset of these (untagged tasks too)")
@click.option("--pool", default="thread", show_default=True,
              type=click.Choice(["async", "thread", "process"]),
              help="where plain functions run (coroutines always run on the event loop)")
@click.option("--grace", default=30.0, show_default=True, type=click.FloatRange(0),
              help="seconds running attempts get to finish after SIGTERM")
@click.option("--metrics-port", default=None, type=click.IntRange(1, 65535),
              help="serve Prometheus /metrics on this port")
@click.option("--create-topics/--no-create-topics", default=None,
              help="create the queues' topics if missing [default: yes on a PLAINTEXT cluster; "
                   "no on a secured one, where the worker's principal may not create topics]")
@click.option("--loglevel", default="info", show_default=True,
              type=click.Choice(["debug", "info", "warning", "error"]))
@click.option("--reload", "reload_", is_flag=True,
              help="restart the worker (graceful drain) when the task modules change")
@click.option("--reload-dir", "reload_dirs", multiple=True,
              type=click.Path(exists=True, path_type=Path),
              help="with --reload: also watch this file or directory (repeatable)")
def worker(target: str, queues: str | None, concurrency: str, concurrency_min: int,
           concurrency_max: int, tags: str, pool: str, grace: float,
           metrics_port: int | None, create_topics: bool | None, loglevel: str, reload_: bool,
           reload_dirs: tuple[Path, ...]) -> None:
    """Run tasks from the queues' ready topics until SIGTERM (twice: stop at once)."""
    from taskstream.cli.common import load_settings_or_exit
    from taskstream.errors import TaskstreamError
    from taskstream.telemetry.logs import configure_logging
    from taskstream.workers.autoscale import Bounds, parse_concurrency
    from taskstream.workers.loader import load_registry
    from taskstream.workers.worker import Worker

    settings = load_settings_or_exit()
    configure_logging(loglevel, settings.log_format)
    if create_topics is None:
        create_topics = settings.security_protocol == "PLAINTEXT"
    if reload_:
        args = ["-A", target, "--concurrency", concurrency, "--pool", pool,
                "--concurrency-min", str(concurrency_min),
                "--concurrency-max", str(concurrency_max), "--tags", tags,
                "--grace", str(grace), "--loglevel", loglevel,
                "--create-topics" if create_topics else "--no-create-topics"]
        args += ["--queues", queues] if queues else []
        args += ["--metrics-port", str(metrics_port)] if metrics_port is not None else []
        raise SystemExit(_supervise(target, args, grace, reload_dirs))
    try:
        slots = parse_concurrency(concurrency)
        bounds = Bounds(concurrency_min, concurrency_max)
        registry = load_registry(target)
        queue_list = [q.strip() for q in queues.split(",") if q.strip()] if queues else None
        tag_list = [t.strip() for t in tags.split(",") if t.strip()]
        from taskstream.producer.parents import parent_result_reader

        w = Worker(registry, settings, queues=queue_list, concurrency=slots, pool=pool,
                   grace_s=grace, metrics_port=metrics_port, tags=tag_list,
                   auto_bounds=bounds, fetch_result=parent_result_reader(settings))
        if create_topics:
            from taskstream.admin import ensure_topics

            ensure_topics(settings, w.queues)
    except TaskstreamError as exc:
        raise click.ClickException(str(exc)) from None
    from taskstream.workers.errors import WorkerThreadDied

    try:
        w.run_sync()
    except WorkerThreadDied as exc:  # D47: a supervisor restarts it
        click.echo(f"Error: {exc}", err=True)
        raise SystemExit(exc.exit_code) from None


def _supervise(target: str, args: list[str], grace: float, extra: tuple[Path, ...]) -> int:
    from taskstream.dev.procs import taskstream_argv
    from taskstream.errors import TaskstreamError
    from taskstream.runners.reload import Reloader, ReloadOptions, watch_paths

    try:
        paths = watch_paths(target, extra)
    except TaskstreamError as exc:
        raise click.ClickException(str(exc)) from None
    options = ReloadOptions(argv=taskstream_argv("worker", *args), paths=tuple(paths),
                            grace_s=grace)
    return Reloader(options).run()
