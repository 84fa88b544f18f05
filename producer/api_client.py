"""The one small client of the taskstream HTTP API, blocking and asyncio.

Used by the SDK's result waits (:mod:`taskstream.producer.results`), the CLI's
admin commands (:mod:`taskstream.cli.admin_cmds`) and ``taskstream dev``'s
progress bar. It sends the bearer token, decodes JSON and turns a transport
failure into :class:`ApiUnavailableError`; what an answer means is the
caller's business (the SDK waits, the CLI prints). It lives in the SDK so that
the producer may use it; everything above the SDK may too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx

from taskstream.producer.errors import ApiUnavailableError

#: every request's timeout unless the call gives its own (a long poll does)
REQUEST_TIMEOUT_S = 15.0


@dataclass(frozen=True, slots=True)
class ApiResponse:
    status_code: int
    text: str
    data: Any  # the decoded JSON body; None when the body is not JSON

    @property
    def ok(self) -> bool:
        return 200 <= self.status_code < 300

    @property
    def body(self) -> Any:
        """The JSON body, or the text when it is not JSON."""
        return self.text if self.data is None else self.data


def _headers(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


def _answer(resp: httpx.Response) -> ApiResponse:
    try:
        data = resp.json()
    except ValueError:
        data = None
    return ApiResponse(resp.status_code, resp.text, data)


def _unreachable(url: str, exc: Exception) -> ApiUnavailableError:
    return ApiUnavailableError(
        f"cannot reach the taskstream API at {url} ({type(exc).__name__}: {exc}). Is a "
        "processor running? Set TASKSTREAM_API_URL (or --api-url) to its address"
    )


def _params(params: dict[str, Any] | None) -> dict[str, Any]:
    return {k: v for k, v in (params or {}).items() if v is not None}


class ApiClient:
    """Blocking requests to the API at ``url``; one connection pool, closed by :meth:`close`."""

    def __init__(self, url: str, token: str | None) -> None:
        self.url = url.rstrip("/")
        self._http = httpx.Client(base_url=self.url, headers=_headers(token),
                                  timeout=REQUEST_TIMEOUT_S)

    def request(self, method: str, path: str, *, params: dict[str, Any] | None = None,
                body: Any = None, timeout: float | None = None) -> ApiResponse:
        """The answer, whatever its status; parameters that are None are left out."""
        try:
            resp = self._http.request(method, path, params=_params(params), json=body,
                                      timeout=timeout or REQUEST_TIMEOUT_S)
        except httpx.TransportError as exc:
            raise _unreachable(self.url + path, exc) from exc
        return _answer(resp)

    def close(self) -> None:
        self._http.close()


class AsyncApiClient:
    """The asyncio twin of :class:`ApiClient`."""

    def __init__(self, url: str, token: str | None) -> None:
        self.url = url.rstrip("/")
        self._http = httpx.AsyncClient(base_url=self.url, headers=_headers(token),
                                       timeout=REQUEST_TIMEOUT_S)

    async def request(self, method: str, path: str, *, params: dict[str, Any] | None = None,
                      body: Any = None, timeout: float | None = None) -> ApiResponse:
        try:
            resp = await self._http.request(method, path, params=_params(params), json=body,
                                            timeout=timeout or REQUEST_TIMEOUT_S)
        except httpx.TransportError as exc:
            raise _unreachable(self.url + path, exc) from exc
        return _answer(resp)

    async def aclose(self) -> None:
        await self._http.aclose()
