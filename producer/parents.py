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
A result in object storage (D34) is streamed and checked like ``handle.result()``'s,
and a sealed one (D27) opened with the worker's payload keyring
(:mod:`taskstream.producer.results`).
"""

from __future__ import annotations

from typing import Any

from taskstream.producer.api_client import REQUEST_TIMEOUT_S
from taskstream.producer.errors import ApiUnavailableError
from taskstream.producer.results import ResultClient
from taskstream.schemas.entity_keys import GROUP_PREFIX
from taskstream.schemas.ids import member_task_id
from taskstream.security.sealing import payload_sealer
from taskstream.security.tls import client_context
from taskstream.settings import Settings


class ParentResultReader:
    """``parent key -> result`` over the API at ``settings.api_url`` (what ``taskstream
    worker`` hands the worker as ``fetch_result``); :meth:`close` ends its connections."""

    def __init__(self, settings: Settings) -> None:
        token = settings.api_token.get_secret_value() if settings.api_token else None
        self._results = ResultClient(settings.api_url, token, payload_sealer(settings),
                                     client_context(settings))

    def __call__(self, parent: str) -> Any:
        if parent.startswith(GROUP_PREFIX):
            group_id = parent[len(GROUP_PREFIX):]
            size = int(self._get(f"/groups/{group_id}").get("size") or 0)
            return [self._task_result(member_task_id(group_id, slot)) for slot in range(size)]
        return self._task_result(parent)

    def close(self) -> None:
        self._results.close()

    def _get(self, path: str) -> dict[str, Any]:
        resp = self._results.request("GET", path)
        if not resp.ok or not isinstance(resp.data, dict):
            raise ApiUnavailableError(
                f"GET {path} answered HTTP {resp.status_code}: {resp.text[:200]}; the "
                "parent's result cannot be read")
        return resp.data

    def _task_result(self, task_id: str) -> Any:
        view = self._get(f"/tasks/{task_id}")
        if view.get("status") != "SUCCEEDED":
            return None
        return self._results.value_of(task_id, view, REQUEST_TIMEOUT_S)


def parent_result_reader(settings: Settings) -> ParentResultReader:
    """The reader of parents' results for a worker with these settings."""
    return ParentResultReader(settings)
