"""Logs: text for people, or JSON lines for machines, each line with its task's context.

``TASKSTREAM_LOG_FORMAT=json`` turns every log line of a taskstream process into
one JSON object: ``ts`` (UTC, ISO 8601 with milliseconds), ``level``, ``logger``,
``message``, and always ``task_id``, ``attempt``, ``queue`` and ``trace_id``
(null on lines that are about no task), plus ``task_name`` on lines about a task
and ``span_id`` when a span is current,
whatever the line passed in ``extra=``, and ``exc`` for an exception.

Where the task context comes from: :func:`task_context` sets it for the code
that runs one attempt (a context variable, so each asyncio task and each thread
started with ``contextvars.copy_context()`` has its own); any logger used inside
it, a handler's ``ctx.logger`` or a plain ``logging.getLogger(...)``, carries the
task's fields. ``extra={"task_id": ...}`` on a single line overrides it. The
trace id is the task's (context.py): the same with tracing on or off, so a log
line finds its trace.

Levels mean the same in every component (docs/observability.md): DEBUG for
per-record detail, INFO for what a process does (started, assigned, a task
finished), WARNING for something that went wrong and is being handled (a retry,
a quarantined record, a lost worker, a slow broker), ERROR for work that may be
lost or needs a person (a delivery that failed for good, a crash).
"""

from __future__ import annotations

import contextvars
import json
import logging
import logging.config
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from opentelemetry import trace

from taskstream.telemetry.context import task_trace_hex

LEVELS = ("debug", "info", "warning", "error")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"
#: the fields every JSON line has, null when the line is about no task
TASK_FIELDS = ("task_id", "attempt", "queue", "trace_id")
#: LogRecord attributes that are not ``extra=`` fields
_RESERVED = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message", "asctime", "taskName"}


@dataclass(frozen=True, slots=True)
class TaskLogContext:
    task_id: str
    attempt: int
    queue: str
    name: str = ""

    @property
    def trace_id(self) -> str:
        return task_trace_hex(self.task_id)

    def fields(self) -> dict[str, Any]:
        return {"task_id": self.task_id, "attempt": self.attempt, "queue": self.queue,
                "trace_id": self.trace_id, "task_name": self.name}


_TASK: contextvars.ContextVar[TaskLogContext | None] = contextvars.ContextVar(
    "taskstream_task_log_context", default=None)


def set_task_context(ctx: TaskLogContext | None) -> contextvars.Token[TaskLogContext | None]:
    """Set the task of the code that runs from here in this context (reset with the token)."""
    return _TASK.set(ctx)


@contextmanager
def task_context(ctx: TaskLogContext) -> Iterator[None]:
    token = _TASK.set(ctx)
    try:
        yield
    finally:
        _TASK.reset(token)


def current_task() -> TaskLogContext | None:
    return _TASK.get()


class TaskContextFilter(logging.Filter):
    """Puts the current task's fields on every record that does not carry them already.

    Installed on taskstream's handlers; add it to your own handler to get the same
    fields with your own formatter.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        ctx = _TASK.get()
        fields = ctx.fields() if ctx is not None else {}
        values = {key: getattr(record, key, None) for key in TASK_FIELDS}
        for key in TASK_FIELDS:
            if values[key] is None:
                values[key] = fields.get(key)
        span = trace.get_current_span().get_span_context()
        if values["trace_id"] is None and values["task_id"]:
            values["trace_id"] = task_trace_hex(str(values["task_id"]))
        elif values["trace_id"] is None and span.is_valid:
            values["trace_id"] = f"{span.trace_id:032x}"
        values["span_id"] = f"{span.span_id:016x}" if span.is_valid else None
        if getattr(record, "task_name", None) is None:
            values["task_name"] = fields.get("task_name") or None
        for key, value in values.items():
            setattr(record, key, value)
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object a line (see the module docstring for the fields)."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in TASK_FIELDS:
            line[key] = getattr(record, key, None)
        for key, value in vars(record).items():
            if key not in _RESERVED and key not in line and value is not None:
                line[key] = value
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exc"] = record.exc_text
        return json.dumps(line, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """The plain format, with ``task_id=... attempt=... queue=...`` on lines about a task."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        task_id = getattr(record, "task_id", None)
        if task_id and f"task_id={task_id}" not in text:
            text += (f" task_id={task_id} attempt={getattr(record, 'attempt', None)} "
                     f"queue={getattr(record, 'queue', None)}")
        return text


#: libraries whose DEBUG lines carry request headers: the S3 client's (boto3, D34) name the
#: access key in ``Authorization``. They log at INFO at most, even at ``--loglevel debug``.
HEADER_LOGGERS = ("botocore", "boto3", "s3transfer", "urllib3")


def dict_config(level: str = "info", fmt: str = "text") -> dict[str, Any]:
    """A ``logging.config.dictConfig`` for taskstream's handler on the root logger (the
    processor hands it to Faust's worker, which would otherwise install its own)."""
    formatter = "taskstream.telemetry.logs.JsonFormatter" if fmt == "json" else \
        "taskstream.telemetry.logs.TextFormatter"
    root = level.upper()
    # a propagated record meets its own logger's level, not the root's: never below root
    quiet = root if logging.getLevelName(root) in range(logging.INFO, 100) else "INFO"
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"task": {"()": "taskstream.telemetry.logs.TaskContextFilter"}},
        "formatters": {"taskstream": {"()": formatter}},
        "handlers": {"taskstream": {"class": "logging.StreamHandler",
                                    "stream": "ext://sys.stderr",
                                    "formatter": "taskstream", "filters": ["task"]}},
        "root": {"level": root, "handlers": ["taskstream"]},
        "loggers": {name: {"level": quiet} for name in HEADER_LOGGERS},
    }


def configure_logging(level: str = "info", fmt: str = "text") -> None:
    """Send every log line of this process to stderr in ``fmt`` (text or json)."""
    logging.config.dictConfig(dict_config(level, fmt))
