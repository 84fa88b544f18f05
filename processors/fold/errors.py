"""Errors of the fold (:mod:`taskstream.processors.fold`), under :class:`TaskstreamError`."""

from __future__ import annotations

from taskstream.errors import TaskstreamError


class LifecycleError(TaskstreamError):
    """``apply`` was about to break its own transition table or was given bad limits.

    This is a bug in taskstream or a misconfiguration, not a bad event: report it
    with the event and the task state in the message.
    """
