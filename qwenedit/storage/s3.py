"""S3-compatible destinations: a bucket and a prefix, written through the one client factory.

Create-only writes use ``If-None-Match: *`` (a 412 answer means the key exists). A body of known size
(given, or a ``BytesIO``'s) under ``multipart_threshold`` is stored in one PutObject by
:class:`~qwenedit.storage.put.PutWriter` on the destination's client; larger or unsized bodies go
through s3transfer. A store that refuses conditional writes (a 501 about If-None-Match) is remembered
and served with HEAD-then-PUT from then on: racy, but harmless, since the key is deterministic and the
bytes are the same.
:meth:`S3Destination.probe_conditional_writes` finds a store that silently ignores the header.
"""

from __future__ import annotations

import contextlib
import io
import logging
import threading
import uuid
from collections.abc import Iterator, Mapping
from typing import IO, TYPE_CHECKING, Any, cast

import boto3
import botocore.exceptions
from boto3.s3.transfer import create_transfer_manager
from s3transfer.subscribers import BaseSubscriber

from qwenedit.errors import ConditionalWritesUnsupported, InvalidKey, StorageError, s3_error_code, s3_status
from qwenedit.storage.base import PutOutcome, Readable
from qwenedit.storage.keys import decode_metadata, encode_metadata, validate_key
from qwenedit.storage.listing import LIST_WORKERS, install_lean_listing, partitioned_pages
from qwenedit.storage.put import PutWriter
from qwenedit.storage.settings import S3Settings, make_conditional_client, make_s3_client

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

log = logging.getLogger(__name__)

_EXISTS_CODES = frozenset({"PreconditionFailed", "412"})
# HEAD answers carry no error body, so a missing key is just "404" (as is a missing bucket, alas).
_NOT_FOUND_CODES = frozenset({"404", "NoSuchKey", "NotFound"})


def _refuses_if_none_match(exc: botocore.exceptions.ClientError) -> bool:
    """A 501/NotImplemented that is about If-None-Match, not about a checksum or another header."""
    if s3_error_code(exc) != "NotImplemented" and s3_status(exc) != 501:
        return False
    message = str(exc.response.get("Error", {}).get("Message", "")).lower()
    return "checksum" not in message and "x-amz-" not in message


def _normalize_prefix(prefix: str) -> str:
    prefix = prefix.strip("/")
    if not prefix:
        return ""
    validate_key(prefix)
    return prefix + "/"


class S3Destination:
    """A bucket + prefix on an S3-compatible store."""

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        client: S3Client | None = None,
        settings: S3Settings | None = None,
        *,
        session: boto3.Session | None = None,
    ) -> None:
        if not bucket or "/" in bucket:
            raise StorageError(f"invalid bucket name: {bucket!r}")
        self.bucket = bucket
        self.prefix = _normalize_prefix(prefix)
        self.settings = settings if settings is not None else S3Settings.from_env()
        self.client: S3Client = (
            client if client is not None else make_s3_client(self.settings, session=session)
        )
        self._session = session
        self.writer = PutWriter(self.client)
        self._conditional_client: S3Client | None = None
        # A client the caller supplied is used as it is, for listings too; otherwise listings get their own.
        self._listing_client: S3Client | None = client
        self._conditional = self.settings.conditional_writes
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"S3Destination({self.uri()!r}, conditional_writes={self._conditional})"

    @property
    def conditional_writes(self) -> bool:
        """Whether create-only puts use ``If-None-Match: *`` (False: HEAD-then-PUT)."""
        return self._conditional

    def _key(self, key: str) -> str:
        return self.prefix + validate_key(key)

    def _cond_client(self) -> S3Client:
        """The client of create-only multipart uploads (s3transfer): ``If-None-Match: *`` on every put."""
        with self._lock:
            if self._conditional_client is None:
                self._conditional_client = make_conditional_client(self.settings, self._session)
            return self._conditional_client

    @property
    def listing_client(self) -> S3Client:
        """The client listings go through: one of its own, whose ListObjectsV2 answers carry keys only
        (:mod:`qwenedit.storage.listing`), unless the caller supplied the client."""
        with self._lock:
            if self._listing_client is None:
                client = make_s3_client(self.settings, session=self._session)
                self._listing_client = install_lean_listing(client)
            return self._listing_client

    def uri(self, key: str = "") -> str:
        full = self._key(key) if key else self.prefix
        return f"s3://{self.bucket}/{full}"

    def put_create_only(
        self,
        key: str,
        fileobj: Readable,
        content_type: str,
        metadata: Mapping[str, str] | None = None,
        *,
        size: int | None = None,
    ) -> PutOutcome:
        full = self._key(key)
        meta = encode_metadata(metadata)
        if size is None and isinstance(fileobj, io.BytesIO):
            size = fileobj.getbuffer().nbytes - fileobj.tell()
        if self._conditional:
            try:
                self._upload(fileobj, full, content_type, meta, size, create_only=True)
                return "created"
            except botocore.exceptions.ClientError as exc:
                code = s3_error_code(exc)
                if code in _EXISTS_CODES or s3_status(exc) == 412:
                    return "exists"
                if code == "ConditionalRequestConflict":
                    # A concurrent write to the same key: "exists" only if the other writer won; else retry.
                    if self.exists(key):
                        return "exists"
                    raise
                if not _refuses_if_none_match(exc):
                    raise
                # The store refuses If-None-Match: remember it and use HEAD-then-PUT from now on. The body
                # has been consumed (and s3transfer closes seekable ones), so this call must be retried.
                log.warning("%s does not support conditional writes; using HEAD-then-PUT", self.uri())
                self._conditional = False
                raise ConditionalWritesUnsupported(
                    f"{self.uri(key)}: the store does not support conditional writes; retry "
                    "(HEAD-then-PUT is now used) or set QWENEDIT_S3_CONDITIONAL_WRITES=off"
                ) from None
        if self.exists(key):
            return "exists"
        self._upload(fileobj, full, content_type, meta, size, create_only=False)
        return "created"

    def _upload(
        self,
        fileobj: Readable,
        full_key: str,
        content_type: str,
        metadata: dict[str, str],
        size: int | None,
        *,
        create_only: bool,
    ) -> None:
        if size is not None and size < self.settings.multipart_threshold:
            # One PutObject, as s3transfer would send for a body this small, without a transfer manager
            # (and its thread pools) per object, and without the client's per-call work (PutWriter).
            data = (
                fileobj.getvalue()
                if isinstance(fileobj, io.BytesIO) and not fileobj.tell()
                else fileobj.read()
            )
            self.writer.put(self.bucket, full_key, data, content_type, metadata, create_only=create_only)
            return
        client = self._cond_client() if create_only else self.client
        extra = {"ContentType": content_type, "Metadata": metadata}
        # What client.upload_fileobj does, plus telling s3transfer the size when we know it.
        subscribers = [_ProvideSize(size)] if size is not None else None
        body = cast(IO[bytes], fileobj)  # s3transfer only calls read(n) on non-seekable input
        with create_transfer_manager(client, self.settings.transfer_config()) as manager:
            future = manager.upload(body, self.bucket, full_key, extra_args=extra, subscribers=subscribers)
            future.result()

    def put_bytes(
        self, key: str, data: bytes, content_type: str = "application/octet-stream", overwrite: bool = True
    ) -> PutOutcome:
        if not overwrite:
            size = len(data)
            try:
                return self.put_create_only(key, io.BytesIO(data), content_type, size=size)
            except ConditionalWritesUnsupported:  # now HEAD-then-PUT
                return self.put_create_only(key, io.BytesIO(data), content_type, size=size)
        self.writer.put(self.bucket, self._key(key), data, content_type)
        return "created"

    def get_bytes(self, key: str) -> bytes | None:
        try:
            resp = self.client.get_object(Bucket=self.bucket, Key=self._key(key))
        except botocore.exceptions.ClientError as exc:
            if s3_error_code(exc) in _NOT_FOUND_CODES:  # not NoSuchBucket: a wrong bucket must be loud
                return None
            raise
        body = resp["Body"]
        try:
            return body.read()
        finally:
            body.close()

    def head(self, key: str) -> dict[str, Any] | None:
        try:
            resp = self.client.head_object(Bucket=self.bucket, Key=self._key(key))
        except botocore.exceptions.ClientError as exc:
            if s3_error_code(exc) in _NOT_FOUND_CODES:
                return None
            raise
        return {
            "size": resp.get("ContentLength", 0),
            "content_type": resp.get("ContentType"),
            "metadata": decode_metadata(resp.get("Metadata")),
            "etag": resp.get("ETag"),
            "last_modified": resp.get("LastModified"),
        }

    def exists(self, key: str) -> bool:
        return self.head(key) is not None

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self._key(key))

    def list_keys(self, prefix: str = "", *, page_size: int = 1000) -> Iterator[str]:
        # A listing prefix may end in "/" or be a partial name; only refuse what could escape.
        if prefix.startswith("/") or ".." in prefix.split("/"):
            raise InvalidKey(f"invalid listing prefix: {prefix!r}")
        paginator = self.listing_client.get_paginator("list_objects_v2")
        pages = paginator.paginate(
            Bucket=self.bucket, Prefix=self.prefix + prefix, PaginationConfig={"PageSize": page_size}
        )
        cut = len(self.prefix)
        for page in pages:
            for obj in page.get("Contents", []):
                yield obj["Key"][cut:]

    def list_keys_unordered(
        self, prefix: str = "", *, page_size: int = 1000, workers: int = LIST_WORKERS
    ) -> Iterator[str]:
        """Every key starting with ``prefix``, each once, in no set order: ``workers`` concurrent LISTs
        over disjoint key ranges (``StartAfter``), for a listing of many pages (the bulk done listing).
        See :func:`qwenedit.storage.listing.partitioned_pages`."""
        if prefix.startswith("/") or ".." in prefix.split("/"):
            raise InvalidKey(f"invalid listing prefix: {prefix!r}")
        full, cut = self.prefix + prefix, len(self.prefix)
        client = self.listing_client

        def page(start_after: str | None, max_keys: int) -> tuple[list[str], bool]:
            params: dict[str, Any] = {"Bucket": self.bucket, "Prefix": full, "MaxKeys": max_keys}
            if start_after is not None:
                params["StartAfter"] = self.prefix + start_after
            resp = client.list_objects_v2(**params)
            return [o["Key"][cut:] for o in resp.get("Contents", [])], bool(resp.get("IsTruncated"))

        for keys in partitioned_pages(page, prefix, workers=workers, page_size=page_size):
            yield from keys

    def probe_conditional_writes(self) -> bool:
        """Start-up self-test: PUT a canary twice with ``If-None-Match: *``; fall back if not honoured.

        Writes (and tries to delete) ``.qwenedit-probe/<uuid>`` under the prefix. Returns whether
        conditional writes are honoured, and sets this destination's mode accordingly.
        """
        if not self.settings.conditional_writes:
            return False
        full = self._key(f".qwenedit-probe/{uuid.uuid4().hex}")
        put = self.writer.put
        honoured = False
        try:
            put(self.bucket, full, b"1", "application/octet-stream", create_only=True)
            try:
                put(self.bucket, full, b"2", "application/octet-stream", create_only=True)
            except botocore.exceptions.ClientError as exc:
                honoured = s3_error_code(exc) in _EXISTS_CODES or s3_status(exc) == 412
                if not honoured and not _refuses_if_none_match(exc):
                    raise
        finally:
            with contextlib.suppress(botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError):
                self.client.delete_object(Bucket=self.bucket, Key=full)
        if not honoured:
            log.warning("%s ignores If-None-Match; using HEAD-then-PUT for create-only writes", self.uri())
        self._conditional = honoured
        return honoured


class _ProvideSize(BaseSubscriber):
    """s3transfer subscriber announcing the body size of a non-seekable upload."""

    def __init__(self, size: int) -> None:
        self._size = size

    def on_queued(self, future: Any, **kwargs: Any) -> None:
        future.meta.provide_transfer_size(self._size)
