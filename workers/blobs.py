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

With a payload keyring (D27) the bucket holds sealed bytes only: a fetched
payload is opened here after its sha256 is checked (the SDK sealed it before it
stored it), and a result going to the store is sealed first. The emitter seals
what stays inline; a result that went to the store has no inline bytes left.
"""

from __future__ import annotations

import asyncio

from taskstream.objectstore.errors import ObjectStoreError
from taskstream.objectstore.offload import Offloader, require, should_offload
from taskstream.schemas.events import TaskDispatched
from taskstream.security.sealing import Sealer
from taskstream.workers.outcome import Failure, Outcome, Success, open_sealed


def store_failure(exc: ObjectStoreError, what: str) -> Failure:
    return Failure(type(exc).__name__, f"{what}: {exc}", retryable=exc.retriable)


async def fetch_payload(offloader: Offloader | None, dispatched: TaskDispatched,
                        task_id: str, sealer: Sealer | None = None
                        ) -> bytes | bytearray | Failure:
    """The payload's bytes (one buffer, decoded in place), opened when sealed, or the
    failure to report."""
    ref = dispatched.payload_ref
    if ref is None:
        return dispatched.payload
    try:
        raw = await asyncio.to_thread(require(offloader, ref).store.read, ref)
    except ObjectStoreError as exc:
        return store_failure(exc, "the payload could not be fetched")
    return open_sealed(raw, task_id, sealer)


async def store_result(offloader: Offloader | None, task_id: str, attempt: int,
                       dispatched: TaskDispatched, outcome: Outcome,
                       sealer: Sealer | None = None) -> Outcome:
    """``outcome`` with a large result moved to object storage, sealed first when
    sealing (unchanged otherwise: the emitter seals what stays inline)."""
    if (offloader is None or not isinstance(outcome, Success)
            or not should_offload(len(outcome.result), offloader.threshold)):
        return outcome
    data = outcome.result
    if sealer is not None and sealer.can_seal:
        data = sealer.seal(data, task_id)
    try:
        ref = await asyncio.to_thread(offloader.result, task_id, attempt,
                                      dispatched.dispatch_id, data)
    except ObjectStoreError as exc:
        return store_failure(exc, "the result could not be stored")
    if ref is None:
        return outcome
    return Success(b"", outcome.content_type, ref)
