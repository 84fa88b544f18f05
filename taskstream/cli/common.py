"""Helpers every ``taskstream`` subcommand shares.

A user never sees a traceback for a mistake they can fix: bad settings and any
:class:`~taskstream.errors.TaskstreamError` end the command with its message
and a non-zero exit code (click prints ``Error: <message>``, exit 1).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

import click

from taskstream.errors import TaskstreamError
from taskstream.settings import Settings, load_settings

P = ParamSpec("P")
R = TypeVar("R")


def load_settings_or_exit(**overrides: Any) -> Settings:
    """The effective settings; on a bad value exit 1 with the message naming the field."""
    try:
        return load_settings(**overrides)
    except TaskstreamError as exc:
        raise click.ClickException(str(exc)) from None


def exits_on_error(func: Callable[P, R]) -> Callable[P, R]:
    """Turn a TaskstreamError raised by a command into ``Error: <message>`` and exit 1."""

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return func(*args, **kwargs)
        except TaskstreamError as exc:
            raise click.ClickException(str(exc)) from None

    return wrapper


def echo_json(data: Any) -> None:
    """Print ``data`` as indented JSON (paths and other objects as strings)."""
    click.echo(json.dumps(data, indent=2, sort_keys=True, default=str))


json_option = click.option("--json", "as_json", is_flag=True, help="print JSON instead of text")
