"""``taskstream processor``: run one processor replica (Faust worker + HTTP API)."""

from __future__ import annotations

from pathlib import Path

import click

from taskstream.cli.common import exits_on_error, load_settings_or_exit


@click.command()
@click.option("--web-port", type=click.IntRange(1, 65535), help="HTTP API port of this replica")
@click.option("--data-dir", type=click.Path(path_type=Path),
              help="RocksDB data directory; never share one between replicas")
@click.option("--loglevel", default="info", show_default=True,
              type=click.Choice(["debug", "info", "warning", "error"]))
@exits_on_error
def processor(web_port: int | None, data_dir: Path | None, loglevel: str) -> None:
    """Run a processor replica: fold the events topic, dispatch, fire timers, serve the API."""
    from taskstream.runners.processor import run_processor

    overrides: dict[str, object] = {}
    if web_port is not None:
        overrides["web_port"] = web_port
        overrides["api_url"] = f"http://127.0.0.1:{web_port}"
    if data_dir is not None:
        overrides["data_dir"] = data_dir
    settings = load_settings_or_exit(**overrides)
    run_processor(settings, loglevel=loglevel)
