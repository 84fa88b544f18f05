"""Tasks the dashboard's browser tests run (``taskstream worker -A tests.ui_tasks``).

* ``ui.quick``: answers its payload back;
* ``ui.slow``: sleeps ``payload["seconds"]``, so the tasks page can show it RUNNING;
* ``ui.fixable``: fails for good (DEAD at once) until the file ``payload["flag"]``
  exists: the test creates it, then redrives the task from the DLQ page;
* ``ui.hostile``: fails for good with ``payload["message"]`` as the error text (markup
  in an error must show as text).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from taskstream.workers import NonRetryableError, TaskApp

app = TaskApp("ui-tests")


@app.task(name="ui.quick")
async def quick(payload: Any) -> dict[str, Any]:
    return {"echo": payload}


@app.task(name="ui.slow")
async def slow(payload: dict[str, Any]) -> dict[str, Any]:
    seconds = float(payload.get("seconds", 1.0))
    await asyncio.sleep(seconds)
    return {"slept": seconds}


@app.task(name="ui.fixable")
async def fixable(payload: dict[str, Any]) -> dict[str, Any]:
    if not Path(str(payload["flag"])).exists():
        raise NonRetryableError("not fixed yet: the flag file is missing")
    return {"fixed": True}


@app.task(name="ui.hostile")
async def hostile(payload: dict[str, Any]) -> None:
    raise NonRetryableError(str(payload["message"]))
