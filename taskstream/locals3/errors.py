"""Errors of the local S3 runner, under :class:`~taskstream.errors.TaskstreamError`."""

from __future__ import annotations

from taskstream.errors import TaskstreamError


class LocalS3Error(TaskstreamError):
    """The local S3 server (S3Proxy) could not be installed, started or stopped."""
