"""Waiting for a task's outcome through the HTTP API.

``GET {api_url}/tasks/{id}/wait?timeout=S`` long-polls: it answers 200 with the
task's JSON view as soon as the task is finished or after S seconds, whichever
is first. :class:`ResultClient` repeats that call until the caller's deadline,
so one ``result(timeout=600)`` survives server-side long-poll caps and a
processor failover (502/503/504 are retried).

Read-your-writes (D46): the handle passes its event's position
(``?after=<partition>:<offset>``), so the owning replica answers only once it has
folded that record. A replica that lags answers 503 ``pending`` ("N records
behind"): that is waited through, never taken for "no such task". A 404 for a
lookup that carried the position means the record was folded and left no task:
:class:`TaskNotFoundError`. Without a position (the handles of a batch) a 404 is
retried as before. An answer that asks to come back later (503
``too_many_waiters``, 429) is honoured with its ``retry_after_s``; if the time
runs out on one, :class:`ApiBusyError` (retriable) says so.

The decision what a response means is :func:`interpret`, pure and unit-tested.

An offloaded result (the view carries ``result_ref``, D34) is then streamed from
``GET /tasks/{id}/result`` into one buffer (the one whole copy of its bytes this
process holds), its sha256 checked as it arrives, and decoded by content type:
JSON into a value, anything else returned as bytes. :meth:`ResultClient.stream`
hands the chunks to the caller instead, never holding the whole value (but for a
sealed one, which opens only whole).

Sealed results and error texts (D27) are opened with the producer's payload
keyring; without one, a sealed result is a :class:`SealedResultError` that
names the key it needs. An offloaded result comes sealed from the store (the API
sends ``X-Taskstream-Sealed``) and is opened here once all of it has arrived and
its sha256 matched.
"""

from __future__ import annotations

import asyncio
import base64
import io
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from taskstream.producer.api_client import ApiClient, ApiResponse, AsyncApiClient, Download
from taskstream.producer.errors import (
    ApiBusyError,
    ApiUnavailableError,
    ResultTimeoutError,
    SealedResultError,
    TaskCancelledError,
    TaskFailedError,
    TaskNotFoundError,
)
from taskstream.schemas.state import TaskStatus
from taskstream.schemas.view import Opener, is_json, open_view
from taskstream.security.errors import SealError

#: Longest single long-poll; the loop makes up the rest of the caller's timeout.
MAX_POLL_S = 30.0
#: Pause before asking again after a 404 or a 5xx.
RETRY_PAUSE_S = 0.2
_RETRY_STATUS = frozenset({404, 502, 503, 504})


@dataclass(frozen=True, slots=True)
class Finished:
    value: Any  # the decoded JSON result, or bytes for other content types
    offloaded: bool = False  # the value is in object storage: fetch GET .../result


def sized_buffer(size: int | None) -> io.BytesIO:
    """A buffer grown to ``size`` at once, so the chunks are written in place (growing
    it chunk by chunk reallocates, and a reallocation holds two copies for a moment)."""
    buffer = io.BytesIO()
    if size:
        buffer.seek(size - 1)
        buffer.write(b"\0")
        buffer.seek(0)
    return buffer


def decode_streamed(buffer: io.BytesIO, content_type: str) -> Any:
    """A streamed result's value: JSON decoded from the buffer, else its bytes.

    ``BytesIO.getvalue()`` hands over the buffer's own bytes object when nothing else
    holds it (CPython), so the bytes are not copied once more.
    """
    data = buffer.getvalue()
    buffer.close()
    return orjson.loads(data) if is_json(content_type) else data


def open_streamed(task_id: str, info: Download, buffer: io.BytesIO, opener: Opener | None
                  ) -> io.BytesIO:
    """``buffer`` with a sealed result (``X-Taskstream-Sealed``, D27) opened in place of
    its bytes; a :class:`SealedResultError` when it cannot be."""
    if not info.sealed:
        return buffer
    if opener is None:
        raise SealedResultError(
            f"task {task_id}'s result is sealed; configure the payload keyring "
            "(TASKSTREAM_PAYLOAD_KEYS or TASKSTREAM_PAYLOAD_KEYRING_FILE) to read it")
    sealed = buffer.getvalue()
    buffer.close()
    try:
        return io.BytesIO(opener.open(sealed, task_id))
    except SealError as exc:
        raise SealedResultError(f"task {task_id}: {exc}") from None


def result_path(task_id: str) -> str:
    return f"/tasks/{task_id}/result"


def _refused(task_id: str, url: str, info: Download) -> Exception:
    body = info.error.body if info.error is not None else ""
    if info.status_code in (401, 403):
        return ApiUnavailableError(f"the API at {url} refused the result of {task_id} "
                                   f"({info.status_code}): set TASKSTREAM_API_TOKEN")
    return ApiUnavailableError(f"the result of {task_id} could not be fetched from {url}: "
                               f"HTTP {info.status_code} {str(body)[:300]}")


@dataclass(frozen=True, slots=True)
class Pending:
    status: str  # a TaskStatus name, or "UNKNOWN" when the API has not seen it yet
    pause_s: float = 0.0  # wait this long before asking again
    busy: str = ""  # the API asked to come back later (its message): ApiBusyError at the end


def decode_result(body: dict[str, Any]) -> Any:
    """The result value of a SUCCEEDED view: JSON as is, anything else as bytes."""
    b64 = body.get("result_b64")
    if b64 is not None:
        return base64.b64decode(b64)
    return body.get("result")


def opened(task_id: str, body: dict[str, Any], opener: Opener | None) -> dict[str, Any]:
    """A finished view with its sealed fields opened (a SealedResultError when they cannot
    be: no payload keyring here, or not the key they were sealed with)."""
    sealed = body.get("sealed") or []
    if not sealed:
        return body
    if opener is None:
        raise SealedResultError(
            f"task {task_id}'s {', '.join(sealed)} is sealed; configure the payload keyring "
            "(TASKSTREAM_PAYLOAD_KEYS or TASKSTREAM_PAYLOAD_KEYRING_FILE) to read it")
    try:
        return open_view(body, opener)
    except SealError as exc:
        raise SealedResultError(f"task {task_id}: {exc}") from None


def _error_of(body: Any) -> dict[str, Any]:
    error = body.get("error") if isinstance(body, dict) else None
    return error if isinstance(error, dict) else {}


def _pause(error: dict[str, Any]) -> float:
    retry = error.get("retry_after_s")
    return float(retry) if isinstance(retry, int | float) and retry > 0 else RETRY_PAUSE_S


def interpret(task_id: str, url: str, status_code: int, body: Any,
              opener: Opener | None = None, *, after: bool = False) -> Finished | Pending:
    """What one API response means: finished, pending, or an exception raised.
    ``after``: the request carried the submit's position (D46)."""
    error = _error_of(body)
    code = error.get("code")
    if status_code == 503 and code == "pending":
        return Pending(f"PENDING (not folded yet: the replica is {error.get('behind')} "
                       "record(s) behind)", _pause(error))
    if (status_code == 503 and code == "too_many_waiters") or status_code == 429:
        return Pending("UNKNOWN", _pause(error),
                       busy=str(error.get("message") or f"HTTP {status_code}"))
    if status_code == 404 and after and code == "not_found":
        raise TaskNotFoundError(task_id, str(error.get("message") or ""))
    if status_code in _RETRY_STATUS:
        status = "UNKNOWN" if status_code == 404 else f"API {status_code}"
        return Pending(status, RETRY_PAUSE_S)
    if status_code in (401, 403):
        raise ApiUnavailableError(
            f"the API at {url} refused the request ({status_code}): set TASKSTREAM_API_TOKEN "
            "to a token with the 'read' scope"
        )
    if status_code != 200 or not isinstance(body, dict) or "status" not in body:
        raise ApiUnavailableError(
            f"unexpected answer from {url}: HTTP {status_code} {str(body)[:200]!r}"
        )
    status = str(body["status"])
    if status == TaskStatus.SUCCEEDED:
        if body.get("result_ref"):
            return Finished(None, offloaded=True)
        return Finished(decode_result(opened(task_id, body, opener)))
    if status == TaskStatus.DEAD:
        err = opened(task_id, body, opener).get("last_error")
        raise TaskFailedError(task_id, err if isinstance(err, dict) else None)
    if status == TaskStatus.CANCELLED:
        raise TaskCancelledError(task_id, str(body.get("cancel_reason") or ""))
    return Pending(status)


def _timed_out(task_id: str, timeout: float, status: str, busy: str, url: str) -> Exception:
    """The error when a wait's time ran out: ApiBusyError when the last answer asked to
    come back later, else ResultTimeoutError with the last status seen."""
    if busy:
        return ApiBusyError(f"the API at {url} asked to come back later until the wait for "
                            f"task {task_id} ran out ({timeout:g}s): {busy}. The task is not "
                            "affected; call result() again later")
    return ResultTimeoutError(task_id, timeout, status)


class ResultClient:
    """Blocking waits on the API; one connection pool per producer."""

    def __init__(self, api_url: str, token: str | None, opener: Opener | None = None,
                 verify: ssl.SSLContext | bool = True) -> None:
        self._client = ApiClient(api_url, token, verify)
        self.api_url = self._client.url
        self._opener = opener

    def wait(self, task_id: str, timeout: float, after: str | None = None) -> Any:
        """The task's result once it has finished (``after``: its submit's position)."""
        deadline = time.monotonic() + timeout
        path = f"/tasks/{task_id}/wait"
        url = self.api_url + path
        status, busy = "UNKNOWN", ""
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise _timed_out(task_id, timeout, status, busy, url)
            poll = min(left, MAX_POLL_S)
            resp = self._client.request("GET", path, params={"timeout": f"{poll:.3f}",
                                                             "after": after},
                                        timeout=poll + 10)
            outcome = interpret(task_id, url, resp.status_code, resp.body, self._opener,
                                after=after is not None)
            if isinstance(outcome, Finished):
                if outcome.offloaded:
                    return self.fetch(task_id, max(deadline - time.monotonic(), 1.0))
                return outcome.value
            status, busy = outcome.status, outcome.busy
            if outcome.pause_s:
                time.sleep(min(outcome.pause_s, max(deadline - time.monotonic(), 0)))

    def request(self, method: str, path: str) -> ApiResponse:
        """One plain request over this client's connection pool."""
        return self._client.request(method, path)

    def value_of(self, task_id: str, view: dict[str, Any], timeout: float) -> Any:
        """The result of a SUCCEEDED view: inline (opened when sealed), or fetched from
        ``GET .../result`` when it lives in object storage."""
        outcome = interpret(task_id, self.api_url, 200, view, self._opener)
        assert isinstance(outcome, Finished)  # a SUCCEEDED view
        return self.fetch(task_id, timeout) if outcome.offloaded else outcome.value

    def stream(self, task_id: str, sink: Callable[[bytes], object], timeout: float) -> str:
        """Stream a finished task's result into ``sink`` chunk by chunk; its content type.

        The last call to ``sink`` may be followed by ResultIntegrityError: a sink that
        writes a file should write to a temporary name and rename after this returns.
        """
        path = result_path(task_id)
        with self._client.stream(path, timeout=timeout) as (info, chunks):
            if info.status_code != 200:
                raise _refused(task_id, self.api_url + path, info)
            if info.sealed:  # opened whole, once its sha256 matched (AES-GCM checks it all)
                buffer = sized_buffer(info.size)
                for chunk in chunks:
                    buffer.write(chunk)
                sink(open_streamed(task_id, info, buffer, self._opener).getvalue())
                return info.content_type
            for chunk in chunks:
                sink(chunk)
            return info.content_type

    def fetch(self, task_id: str, timeout: float) -> Any:
        """A finished task's result value, streamed into one buffer and decoded."""
        path = result_path(task_id)
        with self._client.stream(path, timeout=timeout) as (info, chunks):
            if info.status_code != 200:
                raise _refused(task_id, self.api_url + path, info)
            buffer = sized_buffer(info.size)
            for chunk in chunks:
                buffer.write(chunk)
            return decode_streamed(open_streamed(task_id, info, buffer, self._opener),
                                   info.content_type)

    def close(self) -> None:
        self._client.close()


class AsyncResultClient:
    """The asyncio twin of :class:`ResultClient`."""

    def __init__(self, api_url: str, token: str | None, opener: Opener | None = None,
                 verify: ssl.SSLContext | bool = True) -> None:
        self._client = AsyncApiClient(api_url, token, verify)
        self.api_url = self._client.url
        self._opener = opener

    async def wait(self, task_id: str, timeout: float, after: str | None = None) -> Any:
        """The task's result once it has finished (``after``: its submit's position)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        path = f"/tasks/{task_id}/wait"
        url = self.api_url + path
        status, busy = "UNKNOWN", ""
        while True:
            left = deadline - loop.time()
            if left <= 0:
                raise _timed_out(task_id, timeout, status, busy, url)
            poll = min(left, MAX_POLL_S)
            resp = await self._client.request("GET", path,
                                              params={"timeout": f"{poll:.3f}", "after": after},
                                              timeout=poll + 10)
            outcome = interpret(task_id, url, resp.status_code, resp.body, self._opener,
                                after=after is not None)
            if isinstance(outcome, Finished):
                if outcome.offloaded:
                    return await self.fetch(task_id, max(deadline - loop.time(), 1.0))
                return outcome.value
            status, busy = outcome.status, outcome.busy
            if outcome.pause_s:
                await asyncio.sleep(min(outcome.pause_s, max(deadline - loop.time(), 0)))

    async def fetch(self, task_id: str, timeout: float) -> Any:
        """A finished task's result value, streamed into one buffer and decoded."""
        path = result_path(task_id)
        async with self._client.stream(path, timeout=timeout) as (info, chunks):
            if info.status_code != 200:
                raise _refused(task_id, self.api_url + path, info)
            buffer = sized_buffer(info.size)
            async for chunk in chunks:
                buffer.write(chunk)
            return decode_streamed(open_streamed(task_id, info, buffer, self._opener),
                                   info.content_type)

    async def aclose(self) -> None:
        await self._client.aclose()
