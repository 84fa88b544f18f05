"""Errors of ``taskstream dev`` (:mod:`taskstream.dev`), under :class:`TaskstreamError`."""

from __future__ import annotations

from taskstream.errors import TaskstreamError


class DevError(TaskstreamError):
    """A process that ``taskstream dev`` (or a benchmark) started failed or did not get ready."""
