"""Object keys: one prefix per task, so a task's objects are found (and reaped) together.

``tasks/<task_id>/payload-<sha256>``: a resubmission of the same payload (same
idempotency key) writes the same object; a different payload under the same
key (a conflict the fold records) never overwrites it.

``tasks/<task_id>/result-<attempt>-<dispatch_id>``: every run writes its own
object, so a duplicate run (a lease that lapsed while the first run went on)
never overwrites the result the fold accepted (D34).
"""

from __future__ import annotations

import re

PREFIX = "tasks/"
_KEY = re.compile(r"^tasks/([^/]+)/(payload-[0-9a-f]{64}|result-[0-9]+-[^/]+)$")


def payload_key(task_id: str, sha256: str) -> str:
    return f"{PREFIX}{task_id}/payload-{sha256}"


def result_key(task_id: str, attempt: int, dispatch_id: str) -> str:
    return f"{PREFIX}{task_id}/result-{attempt}-{dispatch_id}"


def is_result_key(key: str, task_id: str, dispatch_id: str) -> bool:
    """Whether ``key`` is :func:`result_key` of this task and run (any attempt)."""
    head, tail = f"{PREFIX}{task_id}/result-", f"-{dispatch_id}"
    return (key.startswith(head) and key.endswith(tail)
            and key[len(head):len(key) - len(tail)].isdigit())


def task_of(key: str) -> str | None:
    """The task ID an object key belongs to, or None for a key that is not ours."""
    match = _KEY.match(key)
    return match.group(1) if match else None
