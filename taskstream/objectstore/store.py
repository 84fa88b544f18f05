"""Read and write payload and result objects in an S3-compatible bucket (boto3; D34).

One value is held once: :meth:`ObjectStore.put` sends the caller's bytes as
they are (the sha256 is computed over them first), :meth:`ObjectStore.stream`
yields the object in chunks, hashing as it goes, and :meth:`ObjectStore.read`
fills one ``bytearray`` of the reference's size from that stream. The sha256
and size of the reference are checked on every read: a stream that ends with
another digest raises :class:`ChecksumMismatchError` after its last chunk (a
streaming reader must not trust what it passed on before that error).

Calls are bounded: ``storage_timeout_s`` per connect and read, two tries in
botocore's standard retry mode, then :class:`ObjectStoreUnavailableError`
(retriable). botocore's own request checksums are off (``when_required``):
some S3-compatible servers refuse the trailers they add, and the sha256 here
covers the whole value end to end.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from taskstream.objectstore.errors import (
    ChecksumMismatchError,
    ObjectMissingError,
    ObjectStoreError,
    ObjectStoreUnavailableError,
)
from taskstream.schemas.events import ObjectRef
from taskstream.settings import Settings

CHUNK_BYTES = 1024 * 1024
_MISSING_CODES = {"NoSuchKey", "404", "NotFound"}
_DELETE_BATCH = 1000  # DeleteObjects takes at most 1000 keys


@dataclass(frozen=True, slots=True)
class StoredObject:
    """One object as a listing shows it."""

    key: str
    size: int
    last_modified_ms: int


class ObjectStore:
    """One bucket. Thread-safe (boto3 clients are); blocking: call from a thread in asyncio."""

    def __init__(self, client: Any, bucket: str, *, kms_key_id: str | None = None) -> None:
        self._s3 = client
        self.bucket = bucket
        self.kms_key_id = kms_key_id

    @classmethod
    def from_settings(cls, settings: Settings) -> ObjectStore | None:
        """The configured store, or None when ``storage_bucket`` is unset (no offload)."""
        if settings.storage_bucket is None:
            return None
        timeout = settings.storage_timeout_s
        config = Config(
            connect_timeout=timeout, read_timeout=timeout,
            retries={"max_attempts": 2, "mode": "standard"},
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            s3={"addressing_style": "path"},
        )
        access = settings.storage_access_key
        secret = settings.storage_secret_key
        client = boto3.session.Session().client(
            "s3",
            endpoint_url=settings.storage_endpoint,
            region_name=settings.storage_region,
            aws_access_key_id=access.get_secret_value() if access else None,
            aws_secret_access_key=secret.get_secret_value() if secret else None,
            config=config,
        )
        return cls(client, settings.storage_bucket, kms_key_id=settings.storage_kms_key_id)

    def _call(self, what: str, fn: Any, **kwargs: Any) -> Any:
        try:
            return fn(**kwargs)
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in _MISSING_CODES:
                raise ObjectMissingError(
                    f"{what}: s3://{self.bucket}/{kwargs.get('Key', '')} does not exist (removed "
                    "with its task by the reaper, or never written)") from None
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
            error = ObjectStoreUnavailableError if status >= 500 else ObjectStoreError
            raise error(f"{what} in bucket {self.bucket!r} failed: {code or status}: "
                        f"{exc}") from None
        except BotoCoreError as exc:
            raise ObjectStoreUnavailableError(
                f"{what}: the object store did not answer ({type(exc).__name__}: {exc}); "
                "check storage_endpoint and that the server is up; the call may be retried"
            ) from None

    def check_bucket(self) -> None:
        """Raise unless the bucket exists and these credentials may use it (doctor)."""
        self._call("head bucket", self._s3.head_bucket, Bucket=self.bucket)

    def ensure_bucket(self) -> None:
        """Create the bucket unless it exists (tests, dev, first start)."""
        try:
            self._call("head bucket", self._s3.head_bucket, Bucket=self.bucket)
        except ObjectMissingError:
            self._call("create bucket", self._s3.create_bucket, Bucket=self.bucket)

    def put(self, key: str, data: bytes | bytearray | memoryview,
            *, sha256: str | None = None) -> ObjectRef:
        """Store ``data`` under ``key``; the reference carries its size and sha256
        (``sha256`` when the caller has it already)."""
        view = memoryview(data)
        digest = sha256 if sha256 is not None else hashlib.sha256(view).hexdigest()
        extra: dict[str, Any] = {}
        if self.kms_key_id is not None:
            extra = {"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": self.kms_key_id}
        body = data if isinstance(data, bytes) else _Reader(view)
        self._call("store object", self._s3.put_object, Bucket=self.bucket, Key=key,
                   Body=body, ContentLength=view.nbytes, **extra)
        return ObjectRef(self.bucket, key, view.nbytes, digest, self.kms_key_id)

    def stream(self, ref: ObjectRef, chunk_bytes: int = CHUNK_BYTES) -> Iterator[bytes]:
        """The object's bytes in chunks; the size and sha256 are checked at the end."""
        response = self._call("fetch object", self._s3.get_object, Bucket=ref.bucket,
                              Key=ref.key)
        body = response["Body"]
        digest = hashlib.sha256()
        size = 0
        try:
            while True:
                try:
                    chunk = body.read(chunk_bytes)
                except (BotoCoreError, OSError) as exc:
                    raise ObjectStoreUnavailableError(
                        f"reading s3://{ref.bucket}/{ref.key} broke off after {size} bytes "
                        f"({type(exc).__name__}: {exc}); retry") from None
                if not chunk:
                    break
                size += len(chunk)
                digest.update(chunk)
                yield chunk
        finally:
            body.close()
        _check(ref, size, digest.hexdigest())

    def read(self, ref: ObjectRef) -> bytearray:
        """The whole object in one buffer (one copy), checked against ``ref``."""
        buffer = bytearray()
        for chunk in self.stream(ref):
            if len(buffer) + len(chunk) > ref.size:
                raise ChecksumMismatchError(
                    f"s3://{ref.bucket}/{ref.key} is longer than its reference's "
                    f"{ref.size} bytes; it was overwritten or corrupted")
            buffer += chunk
        return buffer

    def delete(self, keys: Iterable[str]) -> int:
        """Delete ``keys`` (missing ones are fine); returns how many were asked for."""
        batch: list[str] = []
        count = 0
        for key in keys:
            batch.append(key)
            if len(batch) == _DELETE_BATCH:
                count += self._delete_batch(batch)
                batch = []
        if batch:
            count += self._delete_batch(batch)
        return count

    def _delete_batch(self, keys: list[str]) -> int:
        for key in keys:  # one by one: some S3-compatible servers lack DeleteObjects' MD5 rule
            self._call("delete object", self._s3.delete_object, Bucket=self.bucket, Key=key)
        return len(keys)

    def list(self, prefix: str) -> Iterator[StoredObject]:
        """Every object under ``prefix``, in key order, page by page."""
        token: str | None = None
        while True:
            kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": prefix}
            if token:
                kwargs["ContinuationToken"] = token
            page = self._call("list objects", self._s3.list_objects_v2, **kwargs)
            for item in page.get("Contents", []):
                modified: datetime = item["LastModified"]
                yield StoredObject(item["Key"], int(item["Size"]),
                                   int(modified.timestamp() * 1000))
            if not page.get("IsTruncated"):
                return
            token = page.get("NextContinuationToken")


class _Reader:
    """A file-like view of a buffer that is not ``bytes`` (no copy into bytes first)."""

    def __init__(self, view: memoryview) -> None:
        self._view = view.cast("B")
        self._pos = 0

    def read(self, size: int = -1) -> bytes:
        end = len(self._view) if size < 0 else min(len(self._view), self._pos + size)
        chunk = self._view[self._pos:end].tobytes()
        self._pos = end
        return chunk

    def seek(self, pos: int, whence: int = 0) -> int:
        base = {0: 0, 1: self._pos, 2: len(self._view)}[whence]
        self._pos = base + pos
        return self._pos

    def tell(self) -> int:
        return self._pos


def _check(ref: ObjectRef, size: int, digest: str) -> None:
    if size != ref.size or digest != ref.sha256:
        raise ChecksumMismatchError(
            f"s3://{ref.bucket}/{ref.key}: {size} bytes with sha256 {digest[:16]}..., but the "
            f"reference says {ref.size} bytes with sha256 {ref.sha256[:16]}...; the object was "
            "overwritten or corrupted (the value is refused)")
