"""Results over HTTP: ``GET /tasks/{id}/result`` streams the value, a bounded cache in front.

A result inline in the task's state is answered from the state. An offloaded
one (``result_ref``, D34) is streamed from object storage in chunks with its
``Content-Length`` and ``X-Taskstream-Sha256``, so neither this process nor
the client needs the whole value at once; the store checks the sha256 as the
chunks pass and, on a mismatch after the last one, the connection is cut
(the client sees a short body, and the SDK's own check fails too).

Results read often are served from :class:`ResultCache`: an LRU bounded in
bytes (``result_cache_bytes``), holding only values up to
``result_cache_item_bytes`` and only after their sha256 matched. It is keyed by
the object key plus sha256, which never change for a result (a result object
is written once per run, D34), so an entry is never stale. Hits and misses are
counted in ``taskstream_result_cache_requests_total{outcome}``; the hit rate is
hits / (hits + misses).
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import AsyncIterator, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge

from taskstream.objectstore.store import ObjectStore
from taskstream.producer.api_client import SEALED_HEADER, SHA256_HEADER
from taskstream.schemas.events import ObjectRef

log = logging.getLogger("taskstream.api")

__all__ = ["SEALED_HEADER", "SHA256_HEADER", "ResultCache", "stream_object"]


class ResultCache:
    """An LRU of whole result values, bounded by their total size in bytes."""

    def __init__(self, max_bytes: int, max_item_bytes: int,
                 registry: CollectorRegistry | None = None) -> None:
        self.max_bytes = max_bytes
        self.max_item_bytes = min(max_item_bytes, max_bytes)
        self._items: OrderedDict[tuple[str, str], bytes] = OrderedDict()
        self.size = 0
        self.hit_count = 0
        self.miss_count = 0
        self.requests = Counter(
            "taskstream_result_cache_requests_total",
            "Offloaded result reads by the API, by cache outcome (hit, miss)", ["outcome"],
            registry=registry)
        self.bytes_held = Gauge(
            "taskstream_result_cache_bytes", "Bytes of results the API cache holds",
            registry=registry)
        self.hits = self.requests.labels("hit")
        self.misses = self.requests.labels("miss")

    @staticmethod
    def key(ref: ObjectRef) -> tuple[str, str]:
        return (f"{ref.bucket}/{ref.key}", ref.sha256)

    def get(self, ref: ObjectRef) -> bytes | None:
        value = self._items.get(self.key(ref))
        if value is None:
            self.misses.inc()
            self.miss_count += 1
            return None
        self._items.move_to_end(self.key(ref))
        self.hits.inc()
        self.hit_count += 1
        return value

    def fits(self, size: int) -> bool:
        return size <= self.max_item_bytes

    def put(self, ref: ObjectRef, value: bytes) -> None:
        if not self.fits(len(value)):
            return
        key = self.key(ref)
        old = self._items.pop(key, None)
        if old is not None:
            self.size -= len(old)
        self._items[key] = value
        self.size += len(value)
        while self.size > self.max_bytes:
            _, evicted = self._items.popitem(last=False)
            self.size -= len(evicted)
        self.bytes_held.set(self.size)

    @property
    def hit_rate(self) -> float:
        total = self.hit_count + self.miss_count
        return self.hit_count / total if total else 0.0


_DONE = object()


async def stream_object(store: ObjectStore, ref: ObjectRef, cache: ResultCache
                        ) -> AsyncIterator[bytes]:
    """The object's chunks, read in a thread (boto3 blocks); cached when small enough.

    Raises the store's error (ChecksumMismatchError after the last chunk) at the end.
    """
    chunks: Iterator[bytes] = store.stream(ref)
    keep: list[bytes] | None = [] if cache.fits(ref.size) else None

    def next_chunk() -> Any:
        return next(chunks, _DONE)

    try:
        while True:
            chunk = await asyncio.to_thread(next_chunk)
            if chunk is _DONE:
                break
            if keep is not None:
                keep.append(chunk)
            yield chunk
    finally:
        close = getattr(chunks, "close", None)
        if close is not None:
            await asyncio.to_thread(close)
    if keep is not None:
        cache.put(ref, b"".join(keep))
