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

import hashlib
import ssl
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from typing import Any

import httpx

from taskstream.errors import ConfigError
from taskstream.producer.errors import ApiUnavailableError, ResultIntegrityError
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


#: the header a streamed result carries its sha256 in (GET /tasks/{id}/result, D34)
SHA256_HEADER = "X-Taskstream-Sha256"
#: present ("1") when the streamed bytes are a sealed value (D27): open them with the keyring
SEALED_HEADER = "X-Taskstream-Sealed"
STREAM_CHUNK = 1024 * 1024


@dataclass
class Download:
    """A streamed answer: the status, its content type, and the body in chunks.

    On 200 the chunks are checked as they pass: the size against
    ``Content-Length`` and the sha256 against ``X-Taskstream-Sha256``; a
    mismatch raises :class:`ResultIntegrityError` after the last chunk.
    """

    status_code: int
    content_type: str
    expected_sha256: str | None
    error: ApiResponse | None  # the JSON error of a non-200 answer
    size: int | None = None  # Content-Length, when the server sent one
    sealed: bool = False  # the bytes are sealed for the task (X-Taskstream-Sealed, D27)


def _download(resp: httpx.Response) -> Download:
    length = resp.headers.get("content-length", "")
    return Download(resp.status_code, resp.headers.get("content-type", ""),
                    resp.headers.get(SHA256_HEADER), None,
                    int(length) if length.isdigit() else None,
                    resp.headers.get(SEALED_HEADER) == "1")


def _checked(url: str, expected: str | None, chunks: Iterator[bytes]) -> Iterator[bytes]:
    digest = hashlib.sha256()
    for chunk in chunks:
        digest.update(chunk)
        yield chunk
    if expected is not None and digest.hexdigest() != expected:
        raise ResultIntegrityError(f"the result streamed from {url} does not match its "
                                   f"sha256 {expected[:16]}...; retry")


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

    @contextmanager
    def stream(self, path: str, *, timeout: float | None = None
               ) -> Iterator[tuple[Download, Iterator[bytes]]]:
        """``with client.stream(path) as (download, chunks):`` GET ``path`` streamed."""
        url = self.url + path
        try:
            with self._http.stream("GET", path, timeout=timeout or REQUEST_TIMEOUT_S) as resp:
                info = _download(resp)
                if resp.status_code != 200:
                    resp.read()
                    info.error = _answer(resp)
                    yield info, iter(())
                    return
                yield info, _checked(url, info.expected_sha256,
                                     resp.iter_bytes(STREAM_CHUNK))
        except httpx.TransportError as exc:
            raise _unreachable(url, exc) from exc

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

    @asynccontextmanager
    async def stream(self, path: str, *, timeout: float | None = None
                     ) -> AsyncIterator[tuple[Download, AsyncIterator[bytes]]]:
        """The asyncio twin of :meth:`ApiClient.stream`."""
        url = self.url + path
        try:
            async with self._http.stream("GET", path,
                                         timeout=timeout or REQUEST_TIMEOUT_S) as resp:
                info = _download(resp)
                if resp.status_code != 200:
                    await resp.aread()
                    info.error = _answer(resp)
                    yield info, _no_chunks()
                    return
                yield info, _achecked(url, info.expected_sha256,
                                      resp.aiter_bytes(STREAM_CHUNK))
        except httpx.TransportError as exc:
            raise _unreachable(url, exc) from exc

    async def aclose(self) -> None:
        await self._http.aclose()


async def _no_chunks() -> AsyncIterator[bytes]:
    return
    yield b""  # pragma: no cover - makes this an async generator


async def _achecked(url: str, expected: str | None, chunks: AsyncIterator[bytes]
                    ) -> AsyncIterator[bytes]:
    digest = hashlib.sha256()
    async for chunk in chunks:
        digest.update(chunk)
        yield chunk
    if expected is not None and digest.hexdigest() != expected:
        raise ResultIntegrityError(f"the result streamed from {url} does not match its "
                                   f"sha256 {expected[:16]}...; retry")
