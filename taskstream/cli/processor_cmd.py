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
@click.option("--tls-cert", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="serve the API over HTTPS with this PEM certificate (chain) "
                   "[default: settings.api_tls_cert]")
@click.option("--tls-key", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="the PEM key of --tls-cert [default: settings.api_tls_key]")
@exits_on_error
def processor(web_port: int | None, data_dir: Path | None, loglevel: str,
              tls_cert: Path | None, tls_key: Path | None) -> None:
    """Run a processor replica: fold the events topic, dispatch, fire timers, serve the API."""
    from taskstream.runners.processor import run_processor

    overrides: dict[str, object] = {}
    if (tls_cert is None) != (tls_key is None):
        raise click.UsageError("--tls-cert and --tls-key go together")
    if tls_cert is not None:
        overrides["api_tls_cert"] = tls_cert
        overrides["api_tls_key"] = tls_key
    if web_port is not None:
        overrides["web_port"] = web_port
    if data_dir is not None:
        overrides["data_dir"] = data_dir
    settings = load_settings_or_exit(**overrides)
    if web_port is not None:
        settings = settings.model_copy(
            update={"api_url": f"{settings.api_scheme}://127.0.0.1:{web_port}"})
    run_processor(settings, loglevel=loglevel)
