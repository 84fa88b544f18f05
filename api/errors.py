"""Errors of the HTTP API (:mod:`taskstream.api`), under :class:`TaskstreamError`.

An :class:`ApiError` is answered to the client as a JSON error body
(:func:`error_body`) with its HTTP status; views raise it, the middleware
(:mod:`taskstream.api.views`) turns it into the response. An error that asks the
client to come back later carries ``retry_after_s`` (the ``Retry-After`` header, and
``retry_after_s`` in the body so a replica that proxied the request passes it on);
``details`` are more fields of the error object (a pending task's ``partition`` and
``behind``, D46).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from taskstream.errors import TaskstreamError

#: the error object's own fields: ``details`` may not shadow them
_OWN = frozenset({"code", "message", "field"})


class ApiError(TaskstreamError):
    """An error answered to the client as ``{"error": {"code", "message", "field", ...}}``."""

    def __init__(self, status: int, code: str, message: str, field: str | None = None, *,
                 retry_after_s: float | None = None,
                 details: Mapping[str, Any] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        self.retry_after_s = retry_after_s
        self.details = {k: v for k, v in (details or {}).items() if k not in _OWN}
        self.retriable = retry_after_s is not None

    def body(self) -> dict[str, Any]:
        extra = dict(self.details)
        if self.retry_after_s is not None:
            extra["retry_after_s"] = self.retry_after_s
        return error_body(self.code, self.message, self.field, extra)

    def headers(self) -> dict[str, str] | None:
        if self.retry_after_s is None:
            return None
        return {"Retry-After": str(max(1, math.ceil(self.retry_after_s)))}

    @classmethod
    def from_body(cls, status: int, error: Mapping[str, Any]) -> ApiError:
        """The error another replica answered (its ``error`` object), to answer again."""
        retry = error.get("retry_after_s")
        field = error.get("field")
        return cls(status, str(error.get("code")), str(error.get("message")),
                   str(field) if field is not None else None,
                   retry_after_s=float(retry) if isinstance(retry, int | float) else None,
                   details={k: v for k, v in error.items() if k != "retry_after_s"})


def error_body(code: str, message: str, field: str | None = None,
               extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    return {"error": {**(extra or {}), "code": code, "message": message, "field": field}}


class AuthFailure(ApiError):
    """A request that may not pass: ``status`` 401 (no or unknown token) or 403 (no scope)."""
