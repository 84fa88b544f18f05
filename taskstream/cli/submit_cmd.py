"""``taskstream submit``: submit tasks from the shell and print their IDs.

The events go straight to Kafka with the producer SDK (not through the HTTP
API), so this works whenever the broker is up; the command returns once every
event is acknowledged (acks=all) and exits non-zero if any was not.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from taskstream.cli.common import exits_on_error, load_settings_or_exit
from taskstream.producer.errors import InvalidTaskError

# TaskSpec field each option sets, for error messages that name the option
_OPTION_OF_FIELD = {
    "payload": "--payload",
    "queue": "--queue",
    "priority": "--priority",
    "delay": "--delay",
    "idempotency_key": "--key",
    "max_attempts": "--max-attempts",
    "timeout": "--timeout",
    "tags": "--tags",
    "name": "NAME",
    "rate_limit": "--rate-limit",
    "rate_key": "--rate-key",
    "concurrency_key": "--concurrency-key",
    "max_concurrency": "--max-concurrency",
    "expires": "--expires",
}


def parse_payload(text: str | None) -> Any:
    """``--payload``: JSON text, or ``@path`` to a JSON file (``@-`` is stdin)."""
    if text is None:
        return None
    source = "--payload"
    if text.startswith("@"):
        path = text[1:]
        try:
            text = click.get_text_stream("stdin").read() if path == "-" else Path(path).read_text()
        except OSError as exc:
            raise click.BadParameter(
                f"cannot read {path}: {exc.strerror}", param_hint="--payload"
            ) from None
        source = f"--payload file {path}"
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(
            f"{source} is not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno}); "
            "quote it for the shell, e.g. --payload '{\"a\": 1}'",
            param_hint="--payload",
        ) from None


@click.command()
@click.argument("name")
@click.option("--payload", metavar="JSON|@FILE", help="task arguments as JSON, or @file")
@click.option("--queue", default=None, help="queue name (default: 'default')")
@click.option("--priority", type=int, default=None, help="priority level, higher runs first")
@click.option("--delay", type=float, default=None, metavar="SECONDS", help="run after a delay")
@click.option("--key", default=None, help="idempotency key: the same NAME and KEY run once")
@click.option("--max-attempts", type=int, default=None, help="attempts before DEAD")
@click.option("--timeout", type=float, default=None, metavar="S", help="execution timeout")
@click.option("--tags", default=None, metavar="T1,T2",
              help="run only on workers started with these tags (--tags on the worker)")
@click.option("--rate-limit", default=None, help="wait for a token of this rate limit")
@click.option("--rate-key", default=None, help="its own bucket under --rate-limit")
@click.option("--concurrency-key", default=None, help="at most --max-concurrency run at once")
@click.option("--max-concurrency", type=int, default=None, help="default 1 (a mutex)")
@click.option("--expires", type=float, default=None, metavar="S",
              help="not started within S seconds: EXPIRED, never run")
@click.option(
    "--count", type=click.IntRange(min=1, max=10_000_000), default=1, help="submit N copies"
)
@exits_on_error
def submit(
    name: str,
    payload: str | None,
    queue: str | None,
    priority: int | None,
    delay: float | None,
    key: str | None,
    max_attempts: int | None,
    timeout: float | None,
    tags: str | None,
    rate_limit: str | None,
    rate_key: str | None,
    concurrency_key: str | None,
    max_concurrency: int | None,
    expires: float | None,
    count: int,
) -> None:
    """Submit task NAME and print its task ID (one line per task)."""
    from taskstream.producer.sync import TaskProducer

    if key is not None and count > 1:
        raise click.UsageError(
            "--key with --count > 1 would submit one task (the key derives the task ID); "
            "drop --key or --count"
        )
    options = {
        k: v
        for k, v in {
            "queue": queue,
            "priority": priority,
            "delay": delay,
            "idempotency_key": key,
            "max_attempts": max_attempts,
            "timeout": timeout,
            "tags": [t.strip() for t in tags.split(",") if t.strip()] if tags else None,
            "rate_limit": rate_limit,
            "rate_key": rate_key,
            "concurrency_key": concurrency_key,
            "max_concurrency": max_concurrency,
            "expires": expires,
        }.items()
        if v is not None
    }
    value = parse_payload(payload)
    settings = load_settings_or_exit()
    producer = TaskProducer(settings, source="cli")
    try:
        with producer:
            if count == 1:
                handles = [producer.submit(name, value, **options)]
            else:
                spec = {"name": name, "payload": value, **options}
                handles = producer.submit_many(spec for _ in range(count))
    except InvalidTaskError as exc:
        field = exc.fields[0].split(".")[0] if exc.fields else ""
        raise click.BadParameter(str(exc), param_hint=_OPTION_OF_FIELD.get(field)) from None
    click.echo("\n".join(h.task_id for h in handles))
