"""Errors of the HTTP API (:mod:`taskstream.api`), under :class:`TaskstreamError`.

An :class:`ApiError` is answered to the client as a JSON error body
(:func:`error_body`) with its HTTP status; views raise it, the middleware
(:mod:`taskstream.api.views`) turns it into the response.
"""

from __future__ import annotations

from typing import Any

from taskstream.errors import TaskstreamError


class ApiError(TaskstreamError):
    """An error answered to the client as ``{"error": {"code", "message", "field"}}``."""

    def __init__(self, status: int, code: str, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field

    def body(self) -> dict[str, Any]:
        return error_body(self.code, self.message, self.field)


def error_body(code: str, message: str, field: str | None = None) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "field": field}}


class AuthFailure(ApiError):
    """A request that may not pass: ``status`` 401 (no or unknown token) or 403 (no scope)."""
