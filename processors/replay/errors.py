"""Errors of audit replay (:mod:`taskstream.processors.replay`), under :class:`TaskstreamError`."""

from __future__ import annotations

from taskstream.errors import TaskstreamError


class ReplayError(TaskstreamError):
    """A replay could not run (bad argument, topic missing, broker silent, not caught up)."""


class NotCaughtUpError(ReplayError):
    """The processors did not reach the end of the events topic within the wait."""

    retriable = True
