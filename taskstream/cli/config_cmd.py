"""``taskstream config``: show the effective settings."""

from __future__ import annotations

import json

import click

from taskstream.cli.common import echo_json, json_option, load_settings_or_exit
from taskstream.settings import masked


@click.group()
def config() -> None:
    """Inspect settings (TASKSTREAM_* variables and the TASKSTREAM_CONFIG file)."""


@config.command()
@json_option
def show(as_json: bool) -> None:
    """Print the effective settings, secrets masked."""
    data = masked(load_settings_or_exit())
    if as_json:
        echo_json(data)
        return
    width = max(len(k) for k in data)
    for key in sorted(data):
        value = data[key]
        text = value if isinstance(value, str) else json.dumps(value)
        click.echo(f"{key.ljust(width)}  {text}")
