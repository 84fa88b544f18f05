"""What goes to object storage, and under which key (D34).

A payload or result whose encoded bytes are longer than
``offload_threshold_bytes`` is stored as an object and the event carries its
:class:`~taskstream.schemas.events.ObjectRef` with empty inline bytes. Without
a configured bucket nothing is offloaded and the old limits apply
(``max_payload_bytes``, and the fold's ``max_result_bytes`` truncation).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from taskstream.objectstore.errors import OffloadNotConfiguredError
from taskstream.objectstore.keys import payload_key, result_key
from taskstream.objectstore.store import ObjectStore
from taskstream.schemas.events import ObjectRef
from taskstream.settings import Settings


def should_offload(size: int, threshold: int) -> bool:
    return size > threshold


@dataclass(frozen=True, slots=True)
class Offloader:
    """The store plus the rules: the threshold and the largest value it takes."""

    store: ObjectStore
    threshold: int
    max_bytes: int

    @classmethod
    def from_settings(cls, settings: Settings) -> Offloader | None:
        store = ObjectStore.from_settings(settings)
        if store is None:
            return None
        return cls(store, settings.offload_threshold_bytes, settings.max_offload_bytes)

    def _check_size(self, size: int, what: str) -> None:
        if size > self.max_bytes:
            raise OffloadNotConfiguredError(
                f"{what} is {size} bytes, over max_offload_bytes ({self.max_bytes}); raise the "
                "setting or store the data elsewhere and pass a reference")

    def payload(self, task_id: str, data: bytes) -> ObjectRef | None:
        """Store a large payload; None when ``data`` stays inline."""
        if not should_offload(len(data), self.threshold):
            return None
        self._check_size(len(data), "payload")
        digest = hashlib.sha256(data).hexdigest()
        return self.store.put(payload_key(task_id, digest), data, sha256=digest)

    def result(self, task_id: str, attempt: int, dispatch_id: str,
               data: bytes) -> ObjectRef | None:
        """Store a large result under this run's own key; None when it stays inline."""
        if not should_offload(len(data), self.threshold):
            return None
        self._check_size(len(data), "result")
        return self.store.put(result_key(task_id, attempt, dispatch_id), data)


def require(offloader: Offloader | None, ref: ObjectRef) -> Offloader:
    """The offloader to fetch ``ref`` with; a clear error when none is configured."""
    if offloader is None:
        raise OffloadNotConfiguredError(
            f"this value lives in object storage (s3://{ref.bucket}/{ref.key}, {ref.size} "
            "bytes) but storage_bucket is not set here; configure TASKSTREAM_STORAGE_* like "
            "the producer and workers")
    return offloader
