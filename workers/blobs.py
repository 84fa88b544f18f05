"""The worker's side of object storage (D34): fetch an offloaded payload, store a large result.

Both run in a thread (boto3 blocks) inside the attempt, under its lease, so a
slow store delays only that attempt. Failures become the attempt's outcome:

* the store down or a checksum mismatch: a retryable failure (the attempt is
  retried after its backoff; the payload object is still there, nothing lost);
* the payload object missing: not retryable (the task goes DEAD saying so);
* a result the store refused: retryable; the run's result object, if written,
  is orphaned and the reaper removes it once the task is finished.

The result's key carries the task ID, attempt and dispatch ID, so a duplicate
run never overwrites the result the fold accepted.
"""

from __future__ import annotations

import asyncio

from taskstream.objectstore.errors import ObjectStoreError
from taskstream.objectstore.offload import Offloader, require
from taskstream.schemas.events import TaskDispatched
from taskstream.workers.outcome import Failure, Outcome, Success


def store_failure(exc: ObjectStoreError, what: str) -> Failure:
    return Failure(type(exc).__name__, f"{what}: {exc}", retryable=exc.retriable)


async def fetch_payload(offloader: Offloader | None, dispatched: TaskDispatched
                        ) -> bytes | bytearray | Failure:
    """The payload's bytes (one buffer, decoded in place), or the failure to report."""
    ref = dispatched.payload_ref
    if ref is None:
        return dispatched.payload
    try:
        return await asyncio.to_thread(require(offloader, ref).store.read, ref)
    except ObjectStoreError as exc:
        return store_failure(exc, "the payload could not be fetched")


async def store_result(offloader: Offloader | None, task_id: str, attempt: int,
                       dispatched: TaskDispatched, outcome: Outcome) -> Outcome:
    """``outcome`` with a large result moved to object storage (unchanged otherwise)."""
    if offloader is None or not isinstance(outcome, Success):
        return outcome
    try:
        ref = await asyncio.to_thread(offloader.result, task_id, attempt,
                                      dispatched.dispatch_id, outcome.result)
    except ObjectStoreError as exc:
        return store_failure(exc, "the result could not be stored")
    if ref is None:
        return outcome
    return Success(b"", outcome.content_type, ref)
