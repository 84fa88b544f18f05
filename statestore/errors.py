"""Errors of the state store (:mod:`taskstream.statestore`), under :class:`TaskstreamError`."""

from __future__ import annotations

from taskstream.errors import TaskstreamError


class IndexNotReady(TaskstreamError):
    """A partition's indexes cannot be built yet: its task table is being restored."""

    retriable = True
