"""Reading parents' results for ``ctx.parent_results`` through the HTTP API (D37).

A waiting task's parents' results are not copied into its state, its notification or
its dispatch record: large results would be copied into every child. The dispatch
lists the parents, and the worker asks the API for a parent's result when the handler
first reads it. This module is that reader; it lives in the SDK because the SDK owns
the one API client, and ``taskstream worker`` hands it to the worker (which must not
import the SDK).

A task parent gives its result (decoded JSON, or bytes); a group parent
(``group:<id>``) gives the list of its members' results in slot order (a member's ID
derives from the group ID and its slot); a parent that did not succeed gives None.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from taskstream.producer.api_client import ApiClient
from taskstream.producer.errors import ApiUnavailableError
from taskstream.producer.results import decode_result
from taskstream.schemas.entity_keys import GROUP_PREFIX
from taskstream.schemas.ids import member_task_id
from taskstream.settings import Settings


def parent_result_reader(settings: Settings) -> Callable[[str], Any]:
    """A function ``parent key -> result`` over the API at ``settings.api_url``."""
    token = settings.api_token.get_secret_value() if settings.api_token else None
    client = ApiClient(settings.api_url, token)

    def get(path: str) -> dict[str, Any]:
        resp = client.request("GET", path)
        if not resp.ok or not isinstance(resp.data, dict):
            raise ApiUnavailableError(
                f"GET {path} answered HTTP {resp.status_code}: {resp.text[:200]}; the "
                "parent's result cannot be read")
        return resp.data

    def task_result(task_id: str) -> Any:
        view = get(f"/tasks/{task_id}")
        return decode_result(view) if view.get("status") == "SUCCEEDED" else None

    def read(parent: str) -> Any:
        if parent.startswith(GROUP_PREFIX):
            group_id = parent[len(GROUP_PREFIX):]
            size = int(get(f"/groups/{group_id}").get("size") or 0)
            return [task_result(member_task_id(group_id, slot)) for slot in range(size)]
        return task_result(parent)

    return read
