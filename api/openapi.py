"""The OpenAPI 3.1 document of the public API, served at ``GET /openapi.json``.

Request and task schemas come from the same pydantic models the server
validates with (TaskSpec, TaskView), so the document cannot drift from them; a
test checks that every documented (method, path) is routed and every routed
public one is documented, and the integration tests validate live responses
against these schemas. ``/internal/*`` are replica-to-replica endpoints and are
not part of the public API.
"""

from __future__ import annotations

from typing import Any

from taskstream.api.activity import QUANTILES
from taskstream.api.bulk import MAX_TASKS
from taskstream.api.console import MAX_REDRIVE_IDS, OUTCOMES
from taskstream.api.limits import LimitBody
from taskstream.api.query import (
    DEFAULT_LIMIT,
    LIST_OMITTED,
    MAX_LIMIT,
    MAX_REGISTERED_AT_ONCE,
    MAX_WAIT_S,
)
from taskstream.processors.replay.history import OUTCOMES as HISTORY_OUTCOMES
from taskstream.schemas.flowspec import LimitView
from taskstream.schemas.models import QUEUE_PATTERN, TASK_ID_PATTERN, TaskSpec
from taskstream.schemas.schedules import ScheduleRequest, ScheduleView
from taskstream.schemas.state import TERMINAL, TaskStatus
from taskstream.schemas.view import TaskView

_REF = "#/components/schemas/{model}"
_METRICS = "Prometheus metrics of this replica (consumer lag per queue and group included)"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _error(description: str) -> dict[str, Any]:
    return _json(_ref("Error"), description)


def _model_schemas() -> dict[str, Any]:
    """TaskSpec, TaskView and the models they refer to, as components."""
    out: dict[str, Any] = {}
    for model in (TaskSpec, TaskView, ScheduleRequest, ScheduleView, LimitView, LimitBody):
        schema = model.model_json_schema(ref_template=_REF, mode="serialization" if model in (
            TaskView, ScheduleView, LimitView) else "validation")
        out.update(schema.pop("$defs", {}))
        out[model.__name__] = schema
    item = dict(out["TaskView"])
    item["properties"] = {k: v for k, v in item["properties"].items() if k not in LIST_OMITTED}
    item["required"] = [k for k in item.get("required", []) if k not in LIST_OMITTED]
    item["title"] = "TaskListItem"
    item["description"] = ("A task in a listing: the TaskView without the payload and "
                           "result (read GET /tasks/{task_id} for those).")
    out["TaskListItem"] = item
    return out


def _schemas() -> dict[str, Any]:
    count_map = {"type": "object", "additionalProperties": {"type": "integer", "minimum": 0}}
    return {
        **_model_schemas(),
        "Error": {
            "type": "object", "required": ["error"],
            "properties": {"error": {
                "type": "object", "required": ["code", "message", "field"],
                "properties": {
                    "code": {"type": "string"},
                    "message": {"type": "string"},
                    "field": {"type": ["string", "null"],
                              "description": "the offending field or parameter, if any"},
                    "retry_after_s": {"type": "number", "description": "ask again after "
                                      "this long (also the Retry-After header)"},
                    "partition": {"type": "integer", "description": "pending: the task's "
                                  "partition"},
                    "behind": {"type": "integer", "minimum": 0, "description": "pending: "
                               "records the owning replica has not folded yet (D46)"},
                }}}},
        "TaskPage": {
            "type": "object", "required": ["items", "next_cursor"],
            "properties": {
                "items": {"type": "array", "items": _ref("TaskListItem")},
                "next_cursor": {"type": ["string", "null"],
                                "description": "pass as cursor for the next page; null: done"},
                "scan_limit_reached": {
                    "type": "boolean", "description": "the page ended early: a replica "
                    "examined api_list_scan_max rows; go on from next_cursor (D46)"},
            }},
        "Accepted": {"type": "object", "required": ["task_id"],
                     "properties": {"task_id": {"type": "string"}}},
        "Submitted": {
            "type": "object", "required": ["task_id", "partition", "offset"],
            "properties": {
                "task_id": {"type": "string"},
                "partition": {"type": "integer", "minimum": 0},
                "offset": {"type": "integer", "minimum": 0,
                           "description": "pass ?after=<partition>:<offset> to read this "
                           "write (D46)"}}},
        "QueueCommand": {"type": "object", "required": ["queue", "paused"],
                         "properties": {"queue": {"type": "string"},
                                        "paused": {"type": "boolean"}}},
        "CommandBody": {
            "type": "object", "additionalProperties": False,
            "properties": {
                "reason": {"type": "string", "maxLength": 1000},
                "max_attempts": {"type": ["integer", "null"], "minimum": 1, "maximum": 1000,
                                 "description": "redrive only: a fresh attempt budget"},
            }},
        "Queue": {
            "type": "object",
            "required": ["name", "paused", "total", "counts", "by_priority", "succeeded_per_s",
                         "lag"],
            "properties": {
                "name": {"type": "string"},
                "lag": _ref("QueueLag"),
                "paused": {"type": "boolean"},
                "total": {"type": "integer", "minimum": 0},
                "counts": {**count_map, "description": "tasks by state"},
                "by_priority": {"type": "object", "additionalProperties": count_map,
                                "description": "priority level -> tasks by state"},
                "succeeded_per_s": {
                    "type": ["number", "null"],
                    "description": "tasks that reached SUCCEEDED per second over the last "
                                   "minute (null until measured)"},
            }},
        "QueueLag": {
            "type": ["object", "null"],
            "description": "the queue's worker group: ready records not yet started (lag), "
                           "per ready topic, and the tag sets no live worker has (unserved); "
                           "null when Kafka did not answer in time",
            "properties": {
                "queue": {"type": "string"}, "group": {"type": "string"},
                "lag": {"type": "integer", "minimum": 0},
                "members": {"type": "integer", "minimum": 0},
                "topics": {"type": "array", "items": {"type": "object", "properties": {
                    "topic": {"type": "string"},
                    "tags": {"type": "array", "items": {"type": "string"}},
                    "priority": {"type": "integer"}, "lag": {"type": "integer"},
                    "served": {"type": "boolean"}}}},
                "unserved": {"type": "array", "items": {"type": "object", "properties": {
                    "tags": {"type": "array", "items": {"type": "string"}},
                    "lag": {"type": "integer"}}}},
            }},
        "BulkCancel": {
            "type": "object", "additionalProperties": False,
            "description": "a filter (ANDed; at least one of queue, name, state, "
                           "submitted_before) and what to do",
            "properties": {
                "queue": {"type": "string"}, "name": {"type": "string"},
                "state": {"type": "string", "enum": [
                    s.value for s in TaskStatus if s not in TERMINAL]},
                "submitted_before": {"type": ["string", "integer"],
                                     "description": "ISO-8601 or epoch milliseconds"},
                "submitted_since": {"type": ["string", "integer"],
                                    "description": "ISO-8601 or epoch milliseconds"},
                "dry_run": {"type": "boolean", "default": False,
                            "description": "only count what would be cancelled"},
                "reason": {"type": "string", "maxLength": 1000},
                "max_tasks": {"type": "integer", "minimum": 1, "maximum": MAX_TASKS},
            }},
        "BulkCancelResult": {
            "type": "object", "required": ["matched", "cancelled", "dry_run", "truncated"],
            "properties": {
                "matched": {"type": "integer", "minimum": 0},
                "cancelled": {"type": "integer", "minimum": 0},
                "dry_run": {"type": "boolean"},
                "truncated": {"type": "boolean",
                              "description": "max_tasks was reached; call again for the rest"},
            }},
        "QueueRegistration": {
            "type": "object", "required": ["queues"], "additionalProperties": False,
            "properties": {"queues": {
                "type": "array", "minItems": 1, "maxItems": MAX_REGISTERED_AT_ONCE,
                "items": {"type": "string", "pattern": QUEUE_PATTERN}}}},
        "Registered": {
            "type": "object", "required": ["registered"],
            "properties": {"registered": {"type": "array", "items": {"type": "string"},
                                          "description": "the queues now registered"}}},
        "Queues": {"type": "object", "required": ["queues"],
                   "properties": {"queues": {"type": "array", "items": _ref("Queue")}}},
        "Limits": {"type": "object", "required": ["limits"],
                   "properties": {"limits": {"type": "array", "items": _ref("LimitView")}}},
        "LimitCommand": {"type": "object", "required": ["name", "rate", "burst"],
                         "properties": {"name": {"type": "string"}, "rate": {"type": "string"},
                                        "burst": {"type": "integer"}}},
        "Status": {"type": "object", "required": ["status"],
                   "properties": {"status": {"type": "string"}}},
        "Schedules": {"type": "object", "required": ["items"],
                      "properties": {"items": {"type": "array", "items": _ref("ScheduleView")}}},
        "GroupView": {
            "type": "object",
            "required": ["group_id", "status", "size", "succeeded", "failed", "first_failure",
                         "finished_at_ms", "dependents"],
            "properties": {
                "group_id": {"type": "string"},
                "status": {"type": "string", "enum": ["OPEN", "SUCCEEDED", "FAILED"]},
                "size": {"type": ["integer", "null"]},
                "succeeded": {"type": "integer"}, "failed": {"type": "integer"},
                "first_failure": {"type": ["string", "null"]},
                "finished_at_ms": {"type": ["integer", "null"]},
                "dependents": {"type": "array", "items": {"type": "string"}}}},
        "ScheduleAccepted": {"type": "object", "required": ["schedule_id"],
                             "properties": {"schedule_id": {"type": "string"},
                                            "op": {"type": "string"}}},
        "Health": {
            "type": "object", "required": ["status", "ready"],
            "description": "with ?verbose also: reason, partitions (total, active, standby, "
                           "restored, restoring, rebalancing), lag (events per partition this "
                           "replica folds, queues by priority, sampled_at, error), workers "
                           "(counts by status), url (this replica) and replicas (every replica "
                           "holding partitions, by the URL it advertises)",
            "properties": {
                "status": {"type": "string"}, "ready": {"type": "boolean"},
                "reason": {"type": "string"},
                "partitions": {"type": "object"}, "lag": {"type": "object"},
                "workers": {"type": "object",
                            "additionalProperties": {"type": "integer", "minimum": 0}},
                "url": {"type": "string"},
                "replicas": {"type": "array", "items": {"type": "string"}},
            }},
        "Worker": {
            "type": "object",
            "required": ["worker_id", "host", "pid", "queues", "tags", "concurrency", "in_flight",
                         "started_at_ms", "heartbeat_at_ms", "heartbeat_interval_ms", "state",
                         "status", "heartbeat_age_s"],
            "properties": {
                "worker_id": {"type": "string"}, "host": {"type": "string"},
                "pid": {"type": "integer"},
                "queues": {"type": "array", "items": {"type": "string"}},
                "tags": {"type": "array", "items": {"type": "string"}},
                "concurrency": {"type": "integer"}, "pool": {"type": "string"},
                "in_flight": {"type": "integer", "minimum": 0},
                "tasks_started": {"type": "integer", "minimum": 0},
                "tasks_succeeded": {"type": "integer", "minimum": 0},
                "tasks_failed": {"type": "integer", "minimum": 0},
                "started_at_ms": {"type": "integer"}, "heartbeat_at_ms": {"type": "integer"},
                "heartbeat_interval_ms": {"type": "integer"},
                "state": {"type": "string", "enum": ["running", "stopping", "stopped"],
                          "description": "what the worker last said"},
                "status": {"type": "string",
                           "enum": ["running", "stopping", "stopped", "lost"],
                           "description": "lost: no heartbeat for 3 of its intervals"},
                "heartbeat_age_s": {"type": "number", "minimum": 0},
                "version": {"type": "integer"},
            }},
        "Workers": {"type": "object", "required": ["workers"],
                    "properties": {"workers": {"type": "array", "items": _ref("Worker")}}},
        **_console_schemas(),
    }


def _console_schemas() -> dict[str, Any]:
    """The answers of the endpoints the dashboard added (api/console.py)."""
    nullable_int = {"type": ["integer", "null"]}
    nullable_str = {"type": ["string", "null"]}
    partitions = {"type": "array", "items": {"type": "integer", "minimum": 0}}
    return {
        "HistoryEvent": {
            "type": "object",
            "required": ["partition", "offset", "timestamp_ms", "occurred_at_ms", "event_id",
                         "source", "attempt", "type", "fields", "outcome", "reason",
                         "status_before", "status_after", "decisions"],
            "properties": {
                "partition": {"type": "integer"}, "offset": {"type": "integer"},
                "timestamp_ms": {"type": "integer", "description": "the Kafka record's time"},
                "occurred_at_ms": nullable_int, "event_id": nullable_str,
                "source": nullable_str, "attempt": nullable_int,
                "type": {**nullable_str, "description": "the event body's type; null for a "
                         "record that could not be read (outcome SKIPPED)"},
                "fields": {"type": "object", "description": "the body's fields (bytes as their "
                           "size; dispatch IDs for the admin scope only)"},
                "outcome": {"type": "string", "enum": list(HISTORY_OUTCOMES)},
                "reason": {"type": "string"},
                "status_before": nullable_str, "status_after": nullable_str,
                "decisions": {"type": "array", "items": {"type": "string"},
                              "description": "what the fold decided (dispatch, retry, ...)"},
            }},
        "TaskHistory": {
            "type": "object", "required": ["task_id", "events"],
            "properties": {"task_id": {"type": "string"},
                           "events": {"type": "array", "items": _ref("HistoryEvent")}}},
        "Processor": {
            "type": "object", "required": ["url"],
            "description": "a replica; one that did not answer has only url and error",
            "properties": {
                "url": {"type": "string"}, "active": partitions, "standby": partitions,
                "ready": {"type": "boolean"}, "rebalancing": {"type": "boolean"},
                "restoring": {"type": "boolean"}, "error": {"type": "string"}}},
        "Processors": {
            "type": "object", "required": ["partitions", "processors", "unowned"],
            "properties": {
                "partitions": {"type": "integer", "minimum": 1},
                "processors": {"type": "array", "items": _ref("Processor")},
                "unowned": {**partitions, "description": "partitions no replica folds now"}}},
        "ActivityPoint": {
            "type": "object", "required": ["t_ms", "rates", "latency_ms"],
            "properties": {
                "t_ms": {"type": "integer", "description": "start of the step"},
                "rates": {"type": ["object", "null"],
                          "additionalProperties": {"type": "number", "minimum": 0},
                          "description": "per second over the step, summed over replicas: "
                                         "submitted, started, succeeded, failed (events "
                                         "folded), dispatched, dead_lettered; null when no "
                                         "replica sampled in the step"},
                "latency_ms": {
                    "type": "object",
                    "properties": {f"p{round(q * 100)}": {"type": ["number", "null"]}
                                   for q in QUANTILES},
                    "description": "dispatch latency quantiles (event to dispatch); null "
                                   "when nothing was dispatched in the step"}}},
        "Activity": {
            "type": "object",
            "required": ["step_s", "window_s", "latency_max_ms", "points", "replicas",
                         "unanswered"],
            "properties": {
                "step_s": {"type": "number"}, "window_s": {"type": "number"},
                "latency_max_ms": {"type": ["number", "null"],
                                   "description": "the histogram's top bound: a quantile "
                                                  "at this value means at least this"},
                "points": {"type": "array", "items": _ref("ActivityPoint")},
                "replicas": {"type": "integer"},
                "unanswered": {"type": "array", "items": {"type": "string"}}}},
        "RedriveMany": {
            "type": "object", "required": ["task_ids"], "additionalProperties": False,
            "properties": {
                "task_ids": {"type": "array", "minItems": 1, "maxItems": MAX_REDRIVE_IDS,
                             "items": {"type": "string", "minLength": 1, "maxLength": 128}},
                "dry_run": {"type": "boolean", "default": False,
                            "description": "only say what would be redriven"},
                "reason": {"type": "string", "maxLength": 1000},
                "max_attempts": {"type": ["integer", "null"], "minimum": 1, "maximum": 1000}}},
        "RedriveResults": {
            "type": "object", "required": ["dry_run", "counts", "results"],
            "properties": {
                "dry_run": {"type": "boolean"},
                "counts": {"type": "object", "additionalProperties": {"type": "integer"}},
                "results": {"type": "array", "items": {
                    "type": "object", "required": ["task_id", "outcome", "status", "message"],
                    "properties": {
                        "task_id": {"type": "string"},
                        "outcome": {"type": "string", "enum": list(OUTCOMES)},
                        "status": {**nullable_str, "description": "the task's state when read"},
                        "message": {"type": "string"}}}}}},
    }


def _query(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema,
            "description": description}


_TASK_ID = {"name": "task_id", "in": "path", "required": True,
            "schema": {"type": "string", "pattern": TASK_ID_PATTERN}}
_SCHEDULE_ID = {"name": "schedule_id", "in": "path", "required": True,
                "schema": {"type": "string", "pattern": "^[A-Za-z0-9_.:-]{1,128}$"}}
_QUEUE = {"name": "name", "in": "path", "required": True,
          "schema": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,64}$"}}
_LIMIT_NAME = {"name": "name", "in": "path", "required": True,
               "schema": {"type": "string", "pattern": "^[A-Za-z0-9_.-]{1,64}$"}}
_LIMIT = _query("limit", {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT,
                          "default": DEFAULT_LIMIT}, "page size")
_CURSOR = _query("cursor", {"type": "string", "maxLength": 200},
                 "next_cursor of the previous page")
_FILTERS = [
    _query("queue", {"type": "string"}, "only this queue"),
    _query("name", {"type": "string"}, "only tasks of this name"),
    _query("since", {"type": "string"},
           "only tasks submitted at or after this time (ISO-8601 or epoch milliseconds)"),
    _query("before", {"type": "string"},
           "only tasks submitted before this time (ISO-8601 or epoch milliseconds)"),
]
_AFTER = _query("after", {"type": "string", "pattern": "^[0-9]+:[0-9]+$"},
                "<partition>:<offset> a submit answered: wait (bounded) until the owning "
                "replica has folded past it (read-your-writes, D46)")
_STATE = _query("state", {"type": "string", "enum": [s.value for s in TaskStatus]},
                "only tasks in this state")


def _op(summary: str, responses: dict[str, Any], *, params: list[Any] | None = None,
        body: dict[str, Any] | None = None, security: bool = True,
        scope: str = "read") -> dict[str, Any]:
    op: dict[str, Any] = {"summary": summary, "responses": responses,
                          "description": f"Needs the '{scope}' scope when tokens are configured."
                          if security else "Open: no token needed."}
    responses.setdefault("default", _error("any other error (405, 500, ...)"))
    if params:
        op["parameters"] = params
    if body is not None:
        op["requestBody"] = body
    if not security:
        op["security"] = []
    else:
        responses.setdefault("401", _error("missing or unknown bearer token"))
        responses.setdefault("403", _error("the token lacks the scope"))
        if summary != _METRICS:
            responses.setdefault("429", {**_error(
                "over the caller's request rate (api_rate_limit)"), "headers": {
                    "Retry-After": {"schema": {"type": "integer", "minimum": 1},
                                    "description": "seconds to wait before the next request"}}})
    return op


def _command_body() -> dict[str, Any]:
    return {"required": False, "content": {"application/json": {"schema": _ref("CommandBody")}}}


def _paths() -> dict[str, Any]:
    accepted = _json(_ref("Accepted"), "the event was written; the task changes shortly")
    not_found = _error("no such task")
    bad = _error("a parameter is invalid; error.field names it")
    unavailable = _error("a rebalance or restore is in progress, or Kafka is slow; retry")
    lagging = _error("pending: the owning replica has not folded the task yet (how far "
                     "behind it is), or another 503 above; retry after Retry-After")
    return {
        "/tasks": {
            "get": _op("List tasks in task-ID order (scatter-gather over replicas)",
                       {"200": _json(_ref("TaskPage"), "one page"), "400": bad,
                        "503": unavailable},
                       params=[*_FILTERS, _STATE, _LIMIT, _CURSOR]),
            "post": _op("Submit a task (to a registered queue: else 400 unknown_queue)",
                        {"202": _json(_ref("Submitted"), "the event was written, here"),
                         "400": bad,
                         "413": _error("the body or payload is over the limit"),
                         "415": _error("the body is not application/json"),
                         "503": unavailable},
                        body={"required": True, "content": {
                            "application/json": {"schema": _ref("TaskSpec")}}},
                        scope="submit"),
        },
        "/tasks/cancel": {"post": _op(
            "Cancel every live task matching a filter, or count them (dry_run)",
            {"202": _json(_ref("BulkCancelResult"), "the cancellations were written"),
             "200": _json(_ref("BulkCancelResult"), "dry run: what would be cancelled"),
             "400": bad, "415": _error("the body is not application/json"),
             "503": unavailable},
            body={"required": True, "content": {
                "application/json": {"schema": _ref("BulkCancel")}}},
            scope="admin")},
        "/tasks/{task_id}": {"get": _op(
            "A task's state, attempts, times, last error and result",
            {"200": _json(_ref("TaskView"), "the task"), "400": bad, "404": not_found,
             "503": lagging},
            params=[_TASK_ID, _AFTER])},
        "/tasks/{task_id}/wait": {"get": _op(
            "Long poll until the task is SUCCEEDED, DEAD or CANCELLED, or the timeout passes",
            {"200": _json(_ref("TaskView"), "the task (finished or not: see status)"),
             "400": bad, "404": not_found,
             "503": _error("pending (see GET /tasks/{task_id}), too_many_waiters (over "
                           "api_max_waiters), or a rebalance; retry after Retry-After")},
            params=[_TASK_ID, _query("timeout", {"type": "number", "minimum": 0,
                                                 "maximum": MAX_WAIT_S, "default": 30},
                                     "seconds to wait at most"), _AFTER])},
        "/tasks/{task_id}/cancel": {"post": _op(
            "Request cancellation (a CancelRequested event)",
            {"202": accepted, "400": bad, "404": not_found,
             "415": _error("the body is not application/json"), "503": unavailable},
            params=[_TASK_ID], body=_command_body(), scope="admin")},
        "/tasks/{task_id}/result": {"get": _op(
            "A SUCCEEDED task's result as its own bytes and content type, streamed when it "
            "lives in object storage (X-Taskstream-Sha256 carries its sha256; "
            "X-Taskstream-Sealed: 1 when the bytes are a sealed value, D27)",
            {"200": {"description": "the result", "content": {
                "application/octet-stream": {"schema": {"type": "string",
                                                        "format": "binary"}},
                "application/json": {"schema": {}}}},
             "404": _error("no such task, or its result object is gone"),
             "409": _error("the task has not SUCCEEDED"),
             "501": _error("the result is offloaded but this replica has no storage"),
             "502": _error("the object store refused the read"),
             "503": _error("the object store or the task's partition is unavailable; retry")},
            params=[_TASK_ID])},
        "/tasks/{task_id}/purge": {"post": _op(
            "Remove a finished task from the state now (a PurgeRequested event)",
            {"202": accepted, "400": bad, "404": not_found,
             "409": _error("the task is not finished (cancel it first)"),
             "415": _error("the body is not application/json"), "503": unavailable},
            params=[_TASK_ID], body=_command_body(), scope="admin")},
        "/tasks/{task_id}/redrive": {"post": _op(
            "Run a DEAD task again with a fresh attempt budget (a RedriveRequested event)",
            {"202": accepted, "400": bad, "404": not_found,
             "415": _error("the body is not application/json"), "503": unavailable},
            params=[_TASK_ID], body=_command_body(), scope="admin")},
        "/queues": {
            "get": _op(
                "Per queue: tasks by state and priority, processing rate, paused",
                {"200": _json(_ref("Queues"), "every known queue"), "503": unavailable}),
            "post": _op(
                "Register queues: their topics are made, then submissions to them are "
                "accepted (idempotent)",
                {"200": _json(_ref("Registered"), "the queues are registered"), "400": bad,
                 "415": _error("the body is not application/json"), "503": unavailable},
                body={"required": True, "content": {
                    "application/json": {"schema": _ref("QueueRegistration")}}},
                scope="admin"),
        },
        "/queues/{name}/pause": {"post": _op(
            "Pause a queue: workers stop taking its tasks",
            {"202": _json(_ref("QueueCommand"), "the command was written"), "400": bad,
             "503": unavailable}, params=[_QUEUE], scope="admin")},
        "/queues/{name}/resume": {"post": _op(
            "Resume a paused queue",
            {"202": _json(_ref("QueueCommand"), "the command was written"), "400": bad,
             "503": unavailable}, params=[_QUEUE], scope="admin")},
        "/dlq": {"get": _op(
            "Dead tasks with their last error, in task-ID order",
            {"200": _json(_ref("TaskPage"), "one page"), "400": bad, "503": unavailable},
            params=[*_FILTERS, _LIMIT, _CURSOR])},
        **_schedule_paths(bad, unavailable),
        "/limits": {"get": _op(
            "Rate limits and their keys' buckets, with the tokens each holds now",
            {"200": _json(_ref("Limits"), "every limit and bucket"), "503": unavailable})},
        "/limits/{name}": {"put": _op(
            "Set a rate limit (a LimitSet event): rate and burst",
            {"202": _json(_ref("LimitCommand"), "the event was written"), "400": bad,
             "415": _error("the body is not application/json"),
             "503": unavailable},
            params=[_LIMIT_NAME], body={"required": True, "content": {
                "application/json": {"schema": _ref("LimitBody")}}}, scope="admin")},
        **_console_paths(bad, unavailable),
        "/workers": {"get": _op(
            "Workers announced on the workers topic: running, stopping or lost (no heartbeat "
            "for 3 intervals)",
            {"200": _json(_ref("Workers"), "every worker not stopped (all with ?all)"),
             "400": bad},
            params=[_query("all", {"type": "string"}, "also workers that stopped cleanly")])},
        "/healthz": {"get": _op(
            "Liveness: 200 while the process runs; ?verbose adds ownership, lag and workers",
            {"200": _json(_ref("Health"), "alive"), "400": bad}, security=False,
            params=[_query("verbose", {"type": "string"},
                           "include partitions, lag and workers")])},
        "/readyz": {"get": _op(
            "Readiness: 200 once state is restored, 503 while restoring (lag never counts)",
            {"200": _json(_ref("Status"), "ready"), "503": _error("still restoring")},
            security=False)},
        "/metrics": {"get": _op(_METRICS, {"200": {
            "description": "Prometheus text format",
            "content": {"text/plain": {"schema": {"type": "string"}}}}})},
        "/openapi.json": {"get": _op("This document", {"200": {
            "description": "OpenAPI 3.1", "content": {"application/json": {
                "schema": {"type": "object"}}}}})},
    }


def _schedule_paths(bad: dict[str, Any], unavailable: dict[str, Any]) -> dict[str, Any]:
    """Schedules (D37): writes are events (202)."""
    accepted = _json(_ref("ScheduleAccepted"), "the event was written; the schedule changes "
                     "shortly")
    not_found = _error("no such schedule")
    command = {"202": accepted, "400": bad, "503": unavailable}
    return {
        "/schedules": {
            "get": _op("Every schedule, in ID order (scatter-gather over replicas)",
                       {"200": _json(_ref("Schedules"), "the schedules"), "503": unavailable}),
            "post": _op("Create or replace a schedule (a ScheduleSet event)",
                        {**command, "413": _error("the payload is over the limit"),
                         "415": _error("the body is not application/json")},
                        body={"required": True, "content": {
                            "application/json": {"schema": _ref("ScheduleRequest")}}},
                        scope="submit"),
        },
        "/schedules/{schedule_id}": {
            "get": _op("A schedule: its spec, next fire times and the task IDs of its last "
                       "firings", {"200": _json(_ref("ScheduleView"), "the schedule"),
                                   "404": not_found, "503": unavailable},
                       params=[_SCHEDULE_ID]),
            "delete": _op("Delete a schedule: it fires no more", dict(command),
                          params=[_SCHEDULE_ID], body=_command_body(), scope="admin"),
        },
        "/groups/{group_id}": {"get": _op(
            "A group's counts: size, members succeeded and failed, status (its members' task "
            "IDs derive from the group ID and the slot)",
            {"200": _json(_ref("GroupView"), "the group"), "400": bad,
             "404": _error("no such group"), "503": unavailable},
            params=[{"name": "group_id", "in": "path", "required": True,
                     "schema": {"type": "string", "pattern": "^[A-Za-z0-9_.:-]{1,128}$"}}])},
        "/schedules/{schedule_id}/pause": {"post": _op(
            "Pause a schedule: no firings until it is resumed", dict(command),
            params=[_SCHEDULE_ID], body=_command_body(), scope="admin")},
        "/schedules/{schedule_id}/resume": {"post": _op(
            "Resume a paused schedule; fire times missed meanwhile meet its misfire policy",
            dict(command), params=[_SCHEDULE_ID], body=_command_body(), scope="admin")},
    }


def _console_paths(bad: dict[str, Any], unavailable: dict[str, Any]) -> dict[str, Any]:
    """The endpoints the dashboard added (api/console.py)."""
    return {
        "/tasks/{task_id}/history": {"get": _op(
            "The task's events from the log, each with what the fold made of it (reads the "
            "task's partition from its start)",
            {"200": _json(_ref("TaskHistory"), "every event of the task, oldest first"),
             "400": bad, "404": _error("the log holds no event of this task"),
             "503": _error("too many history reads at once, or the partition was not read "
                           "in time; retry")},
            params=[_TASK_ID])},
        "/processors": {"get": _op(
            "Every processor replica with the partitions it folds and follows",
            {"200": _json(_ref("Processors"), "the replicas (one that did not answer says so)")})},
        "/activity": {"get": _op(
            "Rates and dispatch latency over the last ten minutes, in steps, all replicas",
            {"200": _json(_ref("Activity"), "the series, oldest first")})},
        "/dlq/redrive": {"post": _op(
            "Redrive the given dead tasks, or with dry_run say which would be redriven",
            {"200": _json(_ref("RedriveResults"), "what happened to each task"), "400": bad,
             "413": _error("the body is over the limit"),
             "415": _error("the body is not application/json"), "503": unavailable},
            body={"required": True, "content": {
                "application/json": {"schema": _ref("RedriveMany")}}},
            scope="admin")},
    }


def openapi_document() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {"title": "taskstream API", "version": "1",
                 "description": "Task state, listings and admin commands, served by every "
                                "processor replica. Writes are events: 202 means written "
                                "to Kafka, not yet applied."},
        "paths": _paths(),
        "components": {
            "schemas": _schemas(),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}],
    }


def documented_routes() -> set[tuple[str, str]]:
    """(METHOD, path) of every documented operation."""
    return {(method.upper(), path) for path, ops in _paths().items() for method in ops}
