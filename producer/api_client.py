"""The one small client of the taskstream HTTP API, blocking and asyncio.

Used by the SDK's result waits (:mod:`taskstream.producer.results`), the CLI's
admin commands (:mod:`taskstream.cli.admin_cmds`) and ``taskstream dev``'s
progress bar. It sends the bearer token, decodes JSON and turns a transport
failure into :class:`ApiUnavailableError`; what an answer means is the
caller's business (the SDK waits, the CLI prints). It lives in the SDK so that
the producer may use it; everything above the SDK may too.

Over HTTPS the API's certificate is checked against ``api_ca_file`` (or the
system's CAs: pass ``verify``); a token is never sent over plain HTTP to a host
other than loopback (D29): such a client is refused when it is made.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from typing import Any

import httpx

from taskstream.errors import ConfigError
from taskstream.producer.errors import ApiUnavailableError
from taskstream.security.tls import may_send_token

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


def _headers(url: str, token: str | None) -> dict[str, str]:
    if not token:
        return {}
    if not may_send_token(url):
        raise ConfigError(f"refusing to send the API token to {url} over plain HTTP: anyone "
                          "on the way could read it. Serve the API over TLS (taskstream "
                          "processor --tls-cert/--tls-key) and use https://, or reach it on "
                          "loopback")
    return {"Authorization": f"Bearer {token}"}


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

    def __init__(self, url: str, token: str | None, verify: ssl.SSLContext | bool = True
                 ) -> None:
        self.url = url.rstrip("/")
        self._http = httpx.Client(base_url=self.url, headers=_headers(self.url, token),
                                  timeout=REQUEST_TIMEOUT_S, verify=verify)

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

    def __init__(self, url: str, token: str | None, verify: ssl.SSLContext | bool = True
                 ) -> None:
        self.url = url.rstrip("/")
        self._http = httpx.AsyncClient(base_url=self.url, headers=_headers(self.url, token),
                                       timeout=REQUEST_TIMEOUT_S, verify=verify)

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
