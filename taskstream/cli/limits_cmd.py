"""``taskstream limits set|list``: rate limits through the HTTP API (issue 16).

``set NAME --rate 100/s [--burst 20]`` writes a ``LimitSet`` event (``PUT
/limits/{name}``, admin scope); ``list`` shows every limit and every key's bucket with
the tokens it holds now (``GET /limits``). docs/flow-control.md explains both.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import click

from taskstream.cli.admin_cmds import api_options, client_from, emit, fmt_time, render_table


def limit_rows(limits: Sequence[dict[str, Any]]) -> str:
    return render_table(
        ["NAME", "KEY", "RATE", "BURST", "TOKENS", "WAITING", "GRANTED", "DEFERRED", "UPDATED"],
        [[row.get("name"), row.get("key") or "-", row.get("rate") or "(not set)",
          row.get("burst"), f"{row.get('tokens', 0):g}", row.get("waiting"), row.get("granted"),
          row.get("deferred"), fmt_time(row.get("updated_at_ms") or None)] for row in limits])


@click.group()
def limits() -> None:
    """Rate limits: set them, list them with their buckets' fill."""


@limits.command("set")
@click.argument("name")
@click.option("--rate", required=True, metavar="COUNT/PERIOD",
              help="tokens per period: 100/s, 5/min, 10/2s, 1000/h")
@click.option("--burst", type=click.IntRange(1), default=1, show_default=True,
              help="tokens a full bucket holds: how many may start at once after a quiet spell")
@api_options
def set_limit(name: str, rate: str, burst: int, as_json: bool, api_url: str | None) -> None:
    """Set rate limit NAME; tasks name it with rate_limit=NAME (and a rate_key for a
    bucket of their own)."""
    data = client_from(api_url).call("PUT", f"/limits/{name}",
                                     body={"rate": rate, "burst": burst})
    emit(data, as_json, lambda d: f"limit {d['name']} set: {d['rate']}, burst {d['burst']}")


@limits.command("list")
@api_options
def list_limits(as_json: bool, api_url: str | None) -> None:
    """Every limit and key bucket: rate, burst, tokens now, waiting requests."""
    data = client_from(api_url).call("GET", "/limits")
    emit(data, as_json, lambda d: limit_rows(d["limits"]) if d["limits"] else "no limits set")
