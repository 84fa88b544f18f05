"""/openapi.json matches the real routes, and the schemas match what the API renders.

No Kafka: a Processor is only constructed (its Faust app is never started), which
is enough for the aiohttp router to hold every route the API registers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jsonschema_rs
import pytest

from taskstream.api.dashboard import is_dashboard_path
from taskstream.api.errors import error_body
from taskstream.api.openapi import documented_routes, openapi_document
from taskstream.api.query import list_item, task_view
from taskstream.schemas.events import Backoff
from taskstream.schemas.state import ErrorInfo, TaskState, TaskStatus
from taskstream.settings import Settings

#: Faust's own endpoints: not ours to document (auth still guards them)
FAUST_PREFIXES = ("/router", "/table", "/graph", "/assignment", "/stats", "/performance")


def schema_validator(name: str) -> Any:
    doc = openapi_document()
    return jsonschema_rs.Draft202012Validator(
        {"$ref": f"#/components/schemas/{name}", "components": doc["components"]})


def assert_valid(name: str, instance: Any) -> None:
    errors = [str(e) for e in schema_validator(name).iter_errors(instance)]
    assert not errors, f"{name}: {errors}"


def _routed(tmp_path: Path) -> set[tuple[str, str]]:
    from taskstream.api.service import register_api
    from taskstream.processors.live.app import Processor

    settings = Settings(bootstrap="127.0.0.1:1", topic_prefix="openapi.", data_dir=tmp_path)
    processor = Processor(settings)
    register_api(processor)
    routes = set()
    for route in processor.app.web.web_app.router.routes():
        info = route.resource.get_info() if route.resource is not None else {}
        path = info.get("path") or info.get("formatter")
        if route.method in ("HEAD", "OPTIONS") or path is None:
            continue
        routes.add((route.method, path))
    return routes


def test_every_documented_route_is_routed_and_every_public_route_documented(
        tmp_path: Path) -> None:
    routed = _routed(tmp_path)
    public = {(m, p) for m, p in routed
              if not p.startswith("/internal/") and not p.startswith(FAUST_PREFIXES)
              and p != "/" and not is_dashboard_path(p)}  # the dashboard's HTML is no API
    assert documented_routes() <= routed, documented_routes() - routed
    assert public == documented_routes(), public ^ documented_routes()


def test_document_is_openapi_31_with_resolvable_refs() -> None:
    doc = openapi_document()
    assert doc["openapi"].startswith("3.1")
    names = set(doc["components"]["schemas"])

    def refs(node: Any) -> list[str]:
        if isinstance(node, dict):
            found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
            return found + [r for v in node.values() for r in refs(v)]
        if isinstance(node, list):
            return [r for v in node for r in refs(v)]
        return []

    for ref in refs(doc):
        assert ref.startswith("#/components/schemas/"), ref
        assert ref.rsplit("/", 1)[1] in names, ref


def _state(**changes: Any) -> TaskState:
    base = TaskState(
        task_id="01J0000000000000000000000A", name="send", queue="emails", priority=1,
        status=TaskStatus.DEAD, payload=b'{"to": "x"}', content_type="application/json",
        payload_digest="d", max_attempts=3, backoff=Backoff(), timeout_ms=None,
        lease_ms=30_000, submitted_at_ms=1_700_000_000_000, updated_at_ms=1_700_000_001_000,
        attempt=3, dispatch_id="D", last_error=ErrorInfo("ValueError", "boom", "tb", 3),
        result=b"\x00\x01", result_content_type="application/octet-stream")
    return TaskState(**{**{f: getattr(base, f) for f in base.__slots__}, **changes})


@pytest.mark.parametrize("state", [
    _state(), _state(status=TaskStatus.READY, last_error=None, result=None,
                     result_content_type=None),
])
def test_rendered_views_validate(state: TaskState) -> None:
    assert_valid("TaskView", task_view(state))
    item = list_item(state)
    assert "payload" not in item and "result_b64" not in item
    assert_valid("TaskListItem", item)
    assert_valid("TaskPage", {"items": [item], "next_cursor": None})


def test_error_bodies_validate() -> None:
    assert_valid("Error", error_body("invalid_parameter", "limit must be ...", "limit"))
    assert_valid("Error", error_body("internal", "internal error", None))
