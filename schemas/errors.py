"""Errors of the wire contract, all under :class:`~taskstream.errors.TaskstreamError`."""

from __future__ import annotations

from taskstream.errors import TaskstreamError


class SchemaError(TaskstreamError):
    """Root of the errors raised by ``taskstream.schemas``."""


class DecodeError(SchemaError):
    """Bytes are not a record this build can read (empty, wrong header, unknown
    schema fingerprint, truncated or garbage). The message shows the first bytes.

    A consumer that meets one moves the original bytes unchanged to the
    quarantine topic (see :mod:`taskstream.schemas.quarantine`) and goes on.
    """


class EncodeError(SchemaError):
    """A value does not fit its Avro schema (for example a str where bytes belong)."""


class IncompatibleSchemaError(SchemaError):
    """Two schema versions are not FULL compatible (old data unreadable by the new
    schema or new data unreadable by the old one)."""


class SchemaLoadError(SchemaError):
    """The ``.avsc`` files shipped with the package are missing or inconsistent."""


class RegistryError(SchemaError):
    """The schema registry could not be reached or refused a request."""

    retriable = True


class QuarantineHeaderError(SchemaError):
    """A record on the quarantine topic lacks or garbles a quarantine header."""


class InvalidSpecError(TaskstreamError, ValueError):
    """A task specification broke a rule; the message names each bad field."""


class CronError(SchemaError, ValueError):
    """A cron expression or time zone is invalid; the message points at the field."""
