"""How the API is served: Faust web views over aiohttp, and one middleware.

The middleware runs around every route of the replica's web server (Faust's own
included) and is where the cross-cutting rules live:

* auth (api/auth.py) before anything else, then the caller's request rate
  (api/ratelimit.py: 429 with Retry-After over it);
* every error is JSON ``{"error": {"code", "message", "field"}}``: ApiError as
  raised, aiohttp's own 404/405/413 translated, anything unexpected logged here
  and answered 500 with a generic message (no stack trace leaves the process).

The views only parse requests and call :class:`~taskstream.api.service.Api`.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

from aiohttp import web
from faust.web import View
from faust.web.drivers.aiohttp import Web as AiohttpWeb
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from taskstream.api import ratelimit
from taskstream.api.auth import Scope, required_scope
from taskstream.api.bulk import BulkCancelBody, bulk_query
from taskstream.api.console import RedriveMany
from taskstream.api.dashboard import STATIC_PATH, UI_PATH, Dashboard
from taskstream.api.errors import ApiError, AuthFailure, error_body
from taskstream.api.limits import LimitBody
from taskstream.api.openapi import openapi_document
from taskstream.api.progress import Position, parse_after
from taskstream.api.query import (
    MAX_REGISTERED_AT_ONCE,
    bad_request,
    parse_list_query,
    parse_wait_timeout,
    redact,
)
from taskstream.api.results import SEALED_HEADER, SHA256_HEADER, stream_object
from taskstream.objectstore.errors import ObjectMissingError, ObjectStoreError
from taskstream.schemas.entity_keys import LIMIT_NAME
from taskstream.schemas.events import ObjectRef, ScheduleOp
from taskstream.schemas.flowspec import LimitSpec
from taskstream.schemas.models import (
    GROUP_ID_PATTERN,
    QUEUE_PATTERN,
    TASK_ID,
    SpecLimits,
    TaskSpec,
    encode_json,
)
from taskstream.schemas.schedules import SCHEDULE_ID_PATTERN, ScheduleRequest
from taskstream.schemas.state import TaskStatus
from taskstream.security.sealing import is_sealed
from taskstream.statestore.errors import IndexNotReady
from taskstream.telemetry.context import TRACEPARENT, parse_traceparent
from taskstream.topics import QUEUE_NAME

if TYPE_CHECKING:
    from taskstream.api.service import Api

log = logging.getLogger("taskstream.api")

#: room for the JSON around a payload (base64 grows it by 4/3, the rest is fields)
BODY_OVERHEAD = 64 * 1024
_MAX_ID = 128
Handler = Callable[..., Awaitable[web.StreamResponse]]


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None
                  ) -> web.Response:
    return web.json_response(body, status=status, headers=headers)


def error_response(status: int, code: str, message: str, field: str | None = None,
                   headers: dict[str, str] | None = None) -> web.Response:
    return json_response(error_body(code, message, field), status, headers)


# -- the middleware ------------------------------------------------------------------

_HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large",
               415: "unsupported_media_type"}


def make_middleware(api: Api) -> Any:
    @web.middleware
    async def taskstream_api(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            api.auth.check(request.headers.get("Authorization"),
                           required_scope(request.method, request.path))
            limited = _over_rate(api, request)
            if limited is not None:
                return limited
            return await handler(request)
        except AuthFailure as exc:
            headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
            return error_response(exc.status, exc.code, exc.message, None, headers)
        except ApiError as exc:
            return json_response(exc.body(), exc.status, exc.headers())
        except IndexNotReady as exc:  # a partition is being restored after a rebalance
            return error_response(503, "not_ready", str(exc))
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
            message = (f"{request.method} is not allowed on {request.path}" if exc.status == 405
                       else f"no such endpoint: {request.path}" if exc.status == 404
                       else exc.reason)
            return error_response(exc.status, _HTTP_CODES.get(exc.status, "http_error"),
                                  message, None, headers)
        except Exception:
            log.exception("unexpected error serving %s %s", request.method, request.path)
            return error_response(500, "internal", "internal error; the server logged it")

    return taskstream_api


def _over_rate(api: Api, request: web.Request) -> web.Response | None:
    """The 429 answer when the caller is over its rate (api/ratelimit.py), else None."""
    limiter = api.rate_limiter
    if limiter is None or not ratelimit.counted(request.path, _proxied(request)):
        return None
    caller = ratelimit.caller_of(request.headers.get("Authorization"), request.remote)
    wait_s = limiter.check(caller, time.monotonic())
    if wait_s <= 0:
        return None
    retry_after = ratelimit.retry_after_header(wait_s)
    return error_response(429, "rate_limited", f"over {limiter.rate:g} requests/s (burst "
                          f"{limiter.burst}); retry in {retry_after} s", None,
                          {"Retry-After": retry_after})


# -- request parsing -------------------------------------------------------------------


def _task_id(raw: str) -> str:
    """A task ID from a path: 26 Crockford base32 characters, nothing else (so no ID can
    name another path when a replica proxies it, D29)."""
    if TASK_ID.fullmatch(raw) is None:
        shown = raw[:_MAX_ID]
        raise bad_request("task_id", f"{shown!r} is not a task ID (26 characters: digits and "
                                     "capital letters but I, L, O and U)")
    return raw


def _schedule_id(raw: str) -> str:
    if re.fullmatch(SCHEDULE_ID_PATTERN, raw) is None:
        raise bad_request("schedule_id", "a schedule ID is 1 to 128 letters, digits, '_', '.', "
                          "':' or '-'")
    return raw


def _proxied(request: web.Request) -> bool:
    from taskstream.api.service import PROXIED

    return request.headers.get(PROXIED) == "1"


async def read_json(request: web.Request, limit: int, *, required: bool) -> Any:
    """The request's JSON body, bounded by ``limit`` bytes; None if empty and optional."""
    if request.content_length is not None and request.content_length > limit:
        raise ApiError(413, "payload_too_large", f"the body is over {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_chunked(64 * 1024):
        size += len(chunk)
        if size > limit:
            raise ApiError(413, "payload_too_large", f"the body is over {limit} bytes")
        chunks.append(chunk)
    raw = b"".join(chunks)
    if not raw.strip():
        if required:
            raise bad_request("body", "the request needs a JSON object body")
        return None
    ctype = request.headers.get("Content-Type", "").split(";")[0].strip().lower()
    if ctype != "application/json" and not ctype.endswith("+json"):
        raise ApiError(415, "unsupported_media_type", "send the body as application/json")
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise bad_request("body", "the body is not valid JSON") from None
    if not isinstance(data, dict):
        raise bad_request("body", "the body must be a JSON object")
    return data


#: a request body's pydantic model
Model = TypeVar("Model", bound=BaseModel)


def validated(model: type[Model], data: Any, context: dict[str, Any] | None = None) -> Model:
    """``data`` as ``model``, or a 400 naming the first field that is wrong."""
    try:
        return model.model_validate(data, context=context)
    except ValidationError as exc:
        raise validation_error(exc) from None


def validation_error(exc: ValidationError) -> ApiError:
    """The first problem as a 400 naming its field (a whole-object rule names the body)."""
    first = exc.errors()[0]
    field = ".".join(str(p) for p in first["loc"]) or "body"
    return bad_request(field, f"{field}: {first['msg']}")


#: longest duration the API takes in a TaskSpec (ten years), so milliseconds stay integers
MAX_DURATION_S = 10 * 365 * 24 * 3600.0
_DURATIONS = (("delay",), ("timeout",), ("lease",), ("backoff", "initial"), ("backoff", "max"))


def _check_durations(data: dict[str, Any]) -> None:
    for path in _DURATIONS:
        value: Any = data
        for part in path:
            value = value.get(part) if isinstance(value, dict) else None
        if isinstance(value, int | float) and not isinstance(value, bool) and (
                abs(value) > MAX_DURATION_S):
            field = ".".join(path)
            raise bad_request(field, f"{field} must be at most {MAX_DURATION_S:.0f} seconds")


class CommandBody(BaseModel):
    """The optional body of cancel and redrive."""

    model_config = ConfigDict(extra="forbid", strict=True)
    reason: str = Field("", max_length=1000)
    max_attempts: int | None = Field(None, ge=1, le=1000)


class QueueRegistration(BaseModel):
    """The body of ``POST /queues``."""

    model_config = ConfigDict(extra="forbid", strict=True)
    queues: list[Annotated[str, Field(pattern=QUEUE_PATTERN)]] = Field(
        min_length=1, max_length=MAX_REGISTERED_AT_ONCE)


async def _command(request: web.Request, allow_attempts: bool) -> CommandBody:
    data = await read_json(request, BODY_OVERHEAD, required=False)
    body = validated(CommandBody, data or {})
    if body.max_attempts is not None and not allow_attempts:
        raise bad_request("max_attempts", "max_attempts applies to redrive only")
    return body


def _queue_name(raw: str) -> str:
    if not QUEUE_NAME.match(raw):
        raise bad_request("name", "a queue name is 1 to 64 letters, digits, '_' or '-'")
    return raw


def _limit_name(raw: str) -> str:
    if not LIMIT_NAME.match(raw):
        raise bad_request("name", "a limit name is 1 to 64 letters, digits, '_', '.' or '-'")
    return raw


def _flag(request: web.Request, name: str) -> bool:
    """A boolean query parameter: present and not 0/false/no (``?verbose``, ``?verbose=1``)."""
    if name not in request.query:
        return False
    return request.query[name].strip().lower() not in ("0", "false", "no")


def _no_params(request: web.Request, allowed: tuple[str, ...] = ()) -> None:
    for key in request.query:
        if key not in allowed:
            raise bad_request(key, f"unknown query parameter {key!r}")


def _result_headers(content_type: str, sha256: str, sealed: bool) -> dict[str, str]:
    headers = {"Content-Type": content_type, SHA256_HEADER: sha256}
    if sealed:
        headers[SEALED_HEADER] = "1"
    return headers


async def send_result(request: web.Request, api: Api, view: dict[str, Any]
                      ) -> web.StreamResponse:
    """A SUCCEEDED task's result as its own bytes and content type (D34).

    Inline results come from the view; offloaded ones from the cache or streamed
    from object storage (api/results.py). A store error before the first byte is
    an HTTP error (404 object missing, 503 store down); a checksum mismatch found
    after the last byte cuts the connection, so the client never gets a whole body.
    A sealed result (D27) is sent as it is stored, with ``X-Taskstream-Sealed: 1``:
    an offloaded one always (the API streams, and a sealed value opens only whole),
    an inline one when this replica has no payload keyring to open it with.
    """
    task_id = view["task_id"]
    if view["status"] != TaskStatus.SUCCEEDED:
        raise ApiError(409, "not_succeeded", f"task {task_id} is {view['status']}; only a "
                       "SUCCEEDED task has a result")
    content_type = view.get("result_content_type") or "application/octet-stream"
    ref_view = view.get("result_ref")
    if ref_view is None:
        b64 = view.get("result_b64")
        data = base64.b64decode(b64) if b64 is not None else encode_json(view.get("result"))
        return web.Response(body=data, headers=_result_headers(
            content_type, hashlib.sha256(data).hexdigest(), "result" in view.get("sealed", ())))
    ref = ObjectRef(**ref_view)
    cached = api.result_cache.get(ref)
    if cached is not None:
        return web.Response(body=cached, headers=_result_headers(
            content_type, ref.sha256, is_sealed(cached[:4])))
    offloader = api.offloader
    if offloader is None:
        raise ApiError(501, "storage_not_configured", "this result lives in object storage "
                       "but this replica has no storage_bucket set")
    chunks = stream_object(offloader.store, ref, api.result_cache)
    try:
        first = await anext(chunks, b"")
    except ObjectMissingError as exc:
        raise ApiError(404, "result_missing", str(exc)) from None
    except ObjectStoreError as exc:
        raise ApiError(503 if exc.retriable else 502, "storage_unavailable", str(exc)) from None
    headers = _result_headers(content_type, ref.sha256, is_sealed(first[:4]))
    response = web.StreamResponse(headers={**headers, "Content-Length": str(ref.size)})
    await response.prepare(request)
    try:
        await response.write(first)
        async for chunk in chunks:
            await response.write(chunk)
    except ObjectStoreError as exc:
        log.error("result of %s broke off while streaming: %s", task_id, exc)
        if request.transport is not None:
            request.transport.abort()
        return response
    await response.write_eof()
    return response


# -- the endpoints ------------------------------------------------------------------


class Endpoints:
    """One method per (path, method); each takes (request, **match_info)."""

    def __init__(self, api: Api) -> None:
        self.api = api
        self.console = api.console
        self.dashboard = Dashboard()
        self.max_body = api.settings.max_payload_bytes * 4 // 3 + BODY_OVERHEAD
        self.limits = SpecLimits.from_settings(api.settings)

    def routes(self) -> dict[str, dict[str, Handler]]:
        """path -> method -> handler: the whole public and internal surface."""
        return {
            "/tasks": {"get": self.list_tasks, "post": self.submit},
            "/tasks/cancel": {"post": self.cancel_matching},
            "/tasks/{task_id}": {"get": self.get_task},
            "/tasks/{task_id}/wait": {"get": self.wait_task},
            "/tasks/{task_id}/result": {"get": self.result},
            "/tasks/{task_id}/purge": {"post": self.purge},
            "/tasks/{task_id}/cancel": {"post": self.cancel},
            "/tasks/{task_id}/redrive": {"post": self.redrive},
            "/queues": {"get": self.queues, "post": self.register_queues},
            "/queues/{name}/pause": {"post": self.pause},
            "/queues/{name}/resume": {"post": self.resume},
            "/dlq": {"get": self.list_dlq},
            "/limits": {"get": self.list_limits},
            "/limits/{name}": {"put": self.put_limit},
            "/workers": {"get": self.workers},
            "/healthz": {"get": self.healthz},
            "/readyz": {"get": self.readyz},
            "/metrics": {"get": self.metrics},
            "/openapi.json": {"get": self.openapi},
            "/schedules": {"get": self.list_schedules, "post": self.add_schedule},
            "/schedules/{schedule_id}": {"get": self.get_schedule,
                                         "delete": self.delete_schedule},
            "/schedules/{schedule_id}/pause": {"post": self.pause_schedule},
            "/schedules/{schedule_id}/resume": {"post": self.resume_schedule},
            "/groups/{group_id}": {"get": self.get_group},
            "/internal/tasks": {"get": self.internal_tasks},
            "/internal/queues": {"get": self.internal_queues},
            "/internal/schedules": {"get": self.internal_schedules},
            "/internal/limits": {"get": self.internal_limits},
            # what the dashboard needs beside the above (api/console.py)
            "/tasks/{task_id}/history": {"get": self.history},
            "/processors": {"get": self.processors},
            "/activity": {"get": self.activity},
            "/dlq/redrive": {"post": self.redrive_many},
            "/internal/processor": {"get": self.internal_processor},
            "/internal/activity": {"get": self.internal_activity},
            # the dashboard itself (api/dashboard.py)
            UI_PATH: {"get": self.dashboard.page},
            UI_PATH + "/": {"get": self.dashboard.slash},
            STATIC_PATH + "/{asset}": {"get": self.dashboard.static},
        }

    def _shown(self, request: web.Request, body: dict[str, Any]) -> web.Response:
        """``body`` (task views) as this caller may see it: dispatch IDs for admins only."""
        admin = self.api.auth.is_admin(request.headers.get("Authorization"))
        return json_response(redact(body, admin=admin))

    def _after(self, request: web.Request) -> Position | None:
        """``?after=<partition>:<offset>``: the submit's position (read-your-writes, D46)."""
        return parse_after(request.query.get("after"), self.api.settings.partitions)

    async def get_task(self, request: web.Request, task_id: str) -> web.Response:
        _no_params(request, ("after",))
        after = self._after(request)
        return self._shown(request, await self.api.get_task(
            _task_id(task_id), request.headers, _proxied(request), after))

    async def wait_task(self, request: web.Request, task_id: str) -> web.Response:
        _no_params(request, ("timeout", "after"))
        timeout = parse_wait_timeout(request.query.get("timeout"))
        after = self._after(request)
        return self._shown(request, await self.api.wait_task(
            _task_id(task_id), timeout, request.headers, _proxied(request), after))

    async def result(self, request: web.Request, task_id: str) -> web.StreamResponse:
        _no_params(request)
        view = await self.api.get_task(_task_id(task_id), request.headers, _proxied(request))
        return await send_result(request, self.api, view)

    async def purge(self, request: web.Request, task_id: str) -> web.Response:
        body = await _command(request, allow_attempts=False)
        await self.api.purge(_task_id(task_id), body.reason, request.headers, _proxied(request))
        return json_response({"task_id": task_id}, 202)

    async def list_tasks(self, request: web.Request) -> web.Response:
        query = parse_list_query(request.query)
        return self._shown(request, (await self.api.list_tasks(query, request.headers)).body())

    async def list_dlq(self, request: web.Request) -> web.Response:
        query = parse_list_query(request.query,
                                 allowed=("queue", "name", "since", "before", "limit",
                                          "cursor"))
        query = dataclasses.replace(query, state=TaskStatus.DEAD)
        return self._shown(request, (await self.api.list_tasks(query, request.headers)).body())

    async def submit(self, request: web.Request) -> web.Response:
        data = await read_json(request, self.max_body, required=True)
        self._check_payload_size(data.get("payload"))
        _check_durations(data)
        spec = validated(TaskSpec, data, {"limits": self.limits})
        try:
            task_id, position = await self.api.submit(spec, parse_traceparent(
                request.headers.get(TRACEPARENT)))
        except OverflowError:
            raise bad_request("body", "a time or duration is out of range") from None
        return json_response({"task_id": task_id, "partition": position.partition,
                              "offset": position.offset}, 202)

    def _check_payload_size(self, payload: Any) -> None:
        try:
            size = len(encode_json(payload))
        except (TypeError, ValueError):
            return  # not JSON-able: validation says so
        if size > self.limits.max_payload_bytes:
            raise ApiError(413, "payload_too_large", f"payload is {size} bytes encoded; the "
                           f"limit is {self.limits.max_payload_bytes}", "payload")

    async def cancel(self, request: web.Request, task_id: str) -> web.Response:
        body = await _command(request, allow_attempts=False)
        await self.api.cancel(_task_id(task_id), body.reason, request.headers,
                              _proxied(request))
        return json_response({"task_id": task_id}, 202)

    async def cancel_matching(self, request: web.Request) -> web.Response:
        _no_params(request)
        body = validated(BulkCancelBody,
                         await read_json(request, BODY_OVERHEAD, required=True) or {})
        query = bulk_query(body)
        result = await self.api.cancel_matching(query, body, request.headers)
        return json_response(result, 200 if body.dry_run else 202)

    async def redrive(self, request: web.Request, task_id: str) -> web.Response:
        body = await _command(request, allow_attempts=True)
        await self.api.redrive(_task_id(task_id), body.reason, body.max_attempts,
                               request.headers, _proxied(request))
        return json_response({"task_id": task_id}, 202)

    async def queues(self, request: web.Request) -> web.Response:
        _no_params(request)
        stats = await self.api.queues(request.headers)
        return json_response({"queues": [s.body() for s in stats]})

    async def register_queues(self, request: web.Request) -> web.Response:
        """Register queues (admin): submissions to them are accepted from now on (D31)."""
        _no_params(request)
        data = await read_json(request, BODY_OVERHEAD, required=True)
        body = validated(QueueRegistration, data)
        return json_response({"registered": await self.api.register_queues(body.queues)})

    async def pause(self, request: web.Request, name: str) -> web.Response:
        await self.api.set_paused(_queue_name(name), True)
        return json_response({"queue": name, "paused": True}, 202)

    async def resume(self, request: web.Request, name: str) -> web.Response:
        await self.api.set_paused(_queue_name(name), False)
        return json_response({"queue": name, "paused": False}, 202)

    async def list_limits(self, request: web.Request) -> web.Response:
        _no_params(request)
        return json_response({"limits": await self.api.limits(request.headers)})

    async def put_limit(self, request: web.Request, name: str) -> web.Response:
        data = await read_json(request, BODY_OVERHEAD, required=True)
        body = validated(LimitBody, data)
        try:
            spec = LimitSpec(name=_limit_name(name), rate=body.rate, burst=body.burst)
        except ValidationError as exc:
            raise validation_error(exc) from None
        await self.api.set_limit(spec)
        return json_response({"name": spec.name, "rate": spec.rate, "burst": spec.burst}, 202)

    async def workers(self, request: web.Request) -> web.Response:
        _no_params(request, ("all",))
        include_stopped = _flag(request, "all")
        views = self.api.observer.roster().views(include_stopped=include_stopped)
        return json_response({"workers": views})

    async def healthz(self, request: web.Request) -> web.Response:
        _no_params(request, ("verbose",))
        verbose = _flag(request, "verbose")
        body = self.api.observer.health(verbose)
        if verbose:  # where the other replicas are: taskstream doctor asks each of them
            body["url"] = str(self.api.me)
            body["replicas"] = [str(url) for url in self.api.replicas()]
        return json_response(body)

    async def readyz(self, request: web.Request) -> web.Response:
        ready, why = self.api.observer.readiness()
        if ready:
            return json_response({"status": "ready"})
        return error_response(503, "not_ready", why)

    async def metrics(self, request: web.Request) -> web.Response:
        await self.api.refresh_lag_metrics()
        return web.Response(body=self.api.metrics_text(), headers={
            "Content-Type": "text/plain; version=0.0.4; charset=utf-8"})

    async def openapi(self, request: web.Request) -> web.Response:
        return json_response(openapi_document())

    # -- schedules (D37) -------------------------------------------------------------------

    async def list_schedules(self, request: web.Request) -> web.Response:
        _no_params(request)
        return json_response({"items": await self.api.list_schedules(request.headers)})

    async def get_schedule(self, request: web.Request, schedule_id: str) -> web.Response:
        _no_params(request)
        return json_response(await self.api.get_schedule(
            _schedule_id(schedule_id), request.headers, _proxied(request)))

    async def add_schedule(self, request: web.Request) -> web.Response:
        data = await read_json(request, self.max_body, required=True)
        self._check_payload_size(data.get("payload"))
        schedule = validated(ScheduleRequest, data)
        schedule_id = await self.api.set_schedule(schedule)
        return json_response({"schedule_id": schedule_id}, 202)

    async def _schedule_command(self, request: web.Request, schedule_id: str,
                                op: ScheduleOp) -> web.Response:
        body = await _command(request, allow_attempts=False)
        await self.api.schedule_command(_schedule_id(schedule_id), op, body.reason)
        return json_response({"schedule_id": schedule_id, "op": op.value.lower()}, 202)

    async def pause_schedule(self, request: web.Request, schedule_id: str) -> web.Response:
        return await self._schedule_command(request, schedule_id, ScheduleOp.PAUSE)

    async def resume_schedule(self, request: web.Request, schedule_id: str) -> web.Response:
        return await self._schedule_command(request, schedule_id, ScheduleOp.RESUME)

    async def delete_schedule(self, request: web.Request, schedule_id: str) -> web.Response:
        return await self._schedule_command(request, schedule_id, ScheduleOp.DELETE)

    async def get_group(self, request: web.Request, group_id: str) -> web.Response:
        _no_params(request)
        if re.fullmatch(GROUP_ID_PATTERN, group_id) is None:
            raise bad_request("group_id", "a group ID is 1 to 128 letters, digits, '_', '.', "
                              "':' or '-'")
        return json_response(await self.api.get_group(group_id, request.headers,
                                                      _proxied(request)))

    async def internal_schedules(self, request: web.Request) -> web.Response:
        return json_response(self.api.local_schedules())

    async def internal_tasks(self, request: web.Request) -> web.Response:
        return self._shown(request, await self.api.local_page(parse_list_query(request.query)))

    async def internal_queues(self, request: web.Request) -> web.Response:
        return json_response(self.api.local_counts())

    async def internal_limits(self, request: web.Request) -> web.Response:
        return json_response(self.api.local_limits())

    # -- for the dashboard -------------------------------------------------------------

    async def history(self, request: web.Request, task_id: str) -> web.Response:
        _no_params(request)
        admin = self.api.auth.grants(request.headers.get("Authorization"), Scope.ADMIN)
        return json_response(await self.console.history(_task_id(task_id), admin))

    async def processors(self, request: web.Request) -> web.Response:
        _no_params(request)
        return json_response(await self.console.processors(request.headers))

    async def activity(self, request: web.Request) -> web.Response:
        _no_params(request)
        return json_response(await self.console.activity(request.headers))

    async def redrive_many(self, request: web.Request) -> web.Response:
        _no_params(request)
        data = await read_json(request, BODY_OVERHEAD, required=True)
        body = validated(RedriveMany, data)
        for task_id in body.task_ids:
            _task_id(task_id)
        return json_response(await self.console.redrive_many(body, request.headers))

    async def internal_processor(self, request: web.Request) -> web.Response:
        return json_response(self.console.local_processor())

    async def internal_activity(self, request: web.Request) -> web.Response:
        return json_response(self.console.local_activity())


def install(api: Api) -> None:
    """Register every endpoint as a Faust page and the middleware on the aiohttp app."""
    app = api.processor.app
    server = app.web
    if not isinstance(server, AiohttpWeb):
        raise TypeError(f"the API needs Faust's aiohttp web driver, not {type(server)}")
    server.web_app.middlewares.append(make_middleware(api))
    for path, methods in Endpoints(api).routes().items():
        name = "taskstream" + path.replace("/", "_").replace("{", "").replace("}", "")
        # a Faust view class per path; bound methods are not re-bound to the view
        view = type(name, (View,), {m: _unbound(h) for m, h in methods.items()})
        app.page(path, name=name)(view)


def _unbound(handler: Handler) -> Any:
    """A function ``(view, request, **kw)`` calling ``handler(request, **kw)``: Faust calls
    handlers as methods of its view and reads their ``__code__``."""
    async def method(_view: Any, request: web.Request, **match: str) -> web.StreamResponse:
        return await handler(request, **match)
    return method
