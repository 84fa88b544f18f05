"""Errors of the object store, under :class:`~taskstream.errors.TaskstreamError`.

``retriable`` says whether the same call may succeed later: a server that does
not answer may come back, a checksum mismatch may be a torn read; a missing
object will not come back.
"""

from __future__ import annotations

from taskstream.errors import TaskstreamError


class ObjectStoreError(TaskstreamError):
    """Something went wrong storing or fetching a payload or result object."""


class ObjectStoreUnavailableError(ObjectStoreError):
    """The object store did not answer (down, unreachable, timed out, refusing)."""

    retriable = True


class ObjectMissingError(ObjectStoreError):
    """The referenced object does not exist (deleted by the reaper, or never written)."""


class ChecksumMismatchError(ObjectStoreError):
    """The object's bytes do not match the sha256 (or size) of its reference."""

    retriable = True


class OffloadNotConfiguredError(ObjectStoreError):
    """A value needs object storage but ``storage_bucket`` is not set."""
