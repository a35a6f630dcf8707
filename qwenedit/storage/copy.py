"""Copy of an output URL into a destination: :func:`copy_url`.

A body of at most ``hold_bytes`` (16 MiB: every output the API makes, and S3's default single-PUT size)
is read whole and stored in one write, and the caller may see the bytes it stored (``on_body``: output
QA checks them there, with no read-back); a larger one flows from the HTTP response to the store in
chunks (never whole in memory). Either way it is capped at ``max_bytes``; only images are stored (an ``image/*`` content type, or a generic one whose first bytes
are an image). Failures become :class:`~qwenedit.errors.CopyError`, which says whether retrying can
help (``retryable``), whether the URL has expired (``expired``) and which side failed (``where``).
Error messages never contain a URL's query string: a presigned URL carries credentials in it.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator, Mapping
from urllib.parse import urlsplit

import botocore.exceptions
import httpx

from qwenedit.errors import CopyError, StorageError, is_transient_storage_error, s3_error_code, s3_status
from qwenedit.redact import redact_url, scrub_urls
from qwenedit.storage.base import Destination, KiB, MiB, PutOutcome
from qwenedit.storage.keys import validate_key


class _BodyTooLarge(Exception):
    """Internal: the source body passed max_bytes while streaming."""


class _StreamReader:
    """``read(n)`` over an httpx streaming response, refusing more than ``max_bytes``."""

    def __init__(self, chunks: Iterator[bytes], max_bytes: int) -> None:
        self._chunks = chunks
        self._pending = b""
        self._max = max_bytes
        self._seen = 0
        self._done = False

    def _next(self) -> bytes:
        if self._pending:
            chunk, self._pending = self._pending, b""
            return chunk
        if self._done:
            return b""
        for chunk in self._chunks:
            if chunk:
                self._seen += len(chunk)
                if self._seen > self._max:
                    raise _BodyTooLarge(self._seen)
                return chunk
        self._done = True
        return b""

    def unread(self, data: bytes) -> None:
        """Put ``data`` back in front of what is not yet read."""
        self._pending = data + self._pending

    def peek(self, n: int) -> bytes:
        """The first ``n`` bytes not yet read, without consuming them."""
        head = self.read(n)
        self._pending = head + self._pending
        return head

    def read(self, n: int = -1) -> bytes:
        # Collect whole chunks and join once: one copy of the result, not three (bytearray slicing).
        pieces: list[bytes] = []
        have = 0
        while n < 0 or have < n:
            chunk = self._next()
            if not chunk:
                break
            if n >= 0 and have + len(chunk) > n:
                cut = n - have
                pieces.append(chunk[:cut])
                self._pending = chunk[cut:]
                have = n
                break
            pieces.append(chunk)
            have += len(chunk)
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)


_IMAGE_MAGIC = (
    b"\x89PNG\r\n\x1a\n",
    b"\xff\xd8\xff",
    b"GIF87a",
    b"GIF89a",
    b"BM",
    b"II*\x00",
    b"MM\x00*",
)


def _looks_like_image(head: bytes) -> bool:
    if head.startswith(_IMAGE_MAGIC):
        return True
    return head[:4] == b"RIFF" and head[8:12] == b"WEBP"


_GENERIC_TYPES = frozenset({"", "application/octet-stream", "binary/octet-stream"})


def copy_url(
    http: httpx.Client,
    url: str,
    dest: Destination,
    key: str,
    *,
    content_type: str = "image/png",
    metadata: Mapping[str, str] | None = None,
    max_bytes: int = 64 * MiB,
    check_existing: bool = True,
    hold_bytes: int = 16 * MiB,
    on_body: Callable[[bytes], object] | None = None,
) -> PutOutcome:
    """Copy ``url`` into ``dest`` at ``key``, create-only. A body over ``hold_bytes`` is streamed, never
    whole in memory; a smaller one is read whole and stored in one write.

    - If ``check_existing`` and the key is already stored, answers ``"exists"`` without fetching: a rerun
      after the URL expired must not turn a stored image into an "expired" failure.
    - 403/404/410 from the source → ``CopyError(expired=True, retryable=False)``; 408/429/5xx and network
      errors → retryable; a body over ``max_bytes`` or a non-image content type → not retryable.
    - A failure of the destination is ``CopyError(where="dest")``, retryable only if it is an outage
      (:func:`~qwenedit.errors.is_transient_storage_error`); a bug (``TypeError``...) propagates as itself.
    - The stored content type is the response's ``image/*`` type, else ``content_type``; a generic
      (``application/octet-stream``/missing) type is accepted only if the first bytes are an image.
    - Error messages never contain the URL's query string (presigned URLs carry credentials in it).
    - ``on_body(data)`` is called with the bytes stored when this call created the key from a body it
      held whole (not for ``"exists"``, nor for a streamed body): the caller can inspect exactly what
      was stored without reading it back.
    """
    safe = redact_url(url)
    validate_key(key)
    if check_existing:
        try:
            if dest.exists(key):
                return "exists"
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError, OSError) as exc:
            raise _dest_error(exc, dest, key) from None
    try:
        with http.stream("GET", url) as resp:
            status = resp.status_code
            if status in (403, 404, 410):
                raise CopyError(
                    f"HTTP {status} fetching {safe}: output URL expired or invalid",
                    retryable=False,
                    expired=True,
                )
            if status in (408, 425, 429) or status >= 500:
                raise CopyError(f"HTTP {status} fetching {safe}", retryable=True)
            if status != 200:
                raise CopyError(f"unexpected HTTP {status} fetching {safe}", retryable=False)
            declared = resp.headers.get("content-length")
            if declared is not None and declared.isdigit() and int(declared) > max_bytes:
                raise CopyError(
                    f"{safe} is {int(declared)} bytes, over the {max_bytes}-byte limit", retryable=False
                )
            ctype = resp.headers.get("content-type", "").split(";", 1)[0].strip().lower()
            chunks = resp.iter_bytes(256 * KiB)
            reader = _StreamReader(chunks, max_bytes)
            if ctype.startswith("image/"):
                store_type = ctype
            elif ctype in _GENERIC_TYPES:
                if not _looks_like_image(reader.peek(16)):
                    raise CopyError(
                        f"{safe} is not an image (content type {ctype or 'missing'})", retryable=False
                    )
                store_type = content_type
            else:
                raise CopyError(f"{safe} is not an image (content type {ctype})", retryable=False)
            encoded = resp.headers.get("content-encoding", "identity").lower() not in ("", "identity")
            size = int(declared) if declared is not None and declared.isdigit() and not encoded else None
            whole = _read_whole(reader, size, min(hold_bytes, max_bytes))
            try:
                if whole is None:
                    outcome = dest.put_create_only(key, reader, store_type, metadata, size=size)
                else:
                    body = io.BytesIO(whole)
                    outcome = dest.put_create_only(key, body, store_type, metadata, size=len(whole))
            except (
                botocore.exceptions.BotoCoreError,
                botocore.exceptions.ClientError,
                StorageError,
                OSError,
            ) as exc:
                raise _dest_error(exc, dest, key) from None
    except CopyError:
        raise
    except _BodyTooLarge:
        raise CopyError(f"{safe} is larger than the {max_bytes}-byte limit", retryable=False) from None
    except httpx.HTTPError as exc:
        detail = scrub_urls(str(exc))
        query = urlsplit(url).query
        if query:
            detail = detail.replace(query, "…")
        raise CopyError(f"{type(exc).__name__} fetching {safe}: {detail}", retryable=True) from None
    if whole is not None and outcome == "created" and on_body is not None:
        on_body(whole)
    return outcome


def _read_whole(reader: _StreamReader, size: int | None, limit: int) -> bytes | None:
    """The whole body if it is at most ``limit`` bytes (declared or found so), else None with nothing
    consumed (the body is then streamed)."""
    if size is not None and size > limit:
        return None
    data = reader.read(limit + 1)
    if len(data) > limit:
        reader.unread(data)
        return None
    return data


def _dest_error(exc: BaseException, dest: Destination, key: str) -> CopyError:
    """A failure of the destination side as a CopyError, retryable only if it is an outage."""
    where = dest.uri(key)
    retryable = is_transient_storage_error(exc)
    if isinstance(exc, botocore.exceptions.ClientError):
        code, status = s3_error_code(exc), s3_status(exc)
        return CopyError(f"storing {where} failed: {code or status}", retryable=retryable, where="dest")
    if isinstance(exc, StorageError):
        return CopyError(f"storing {where} failed: {exc}", retryable=retryable, where="dest")
    return CopyError(
        f"storing {where} failed: {type(exc).__name__}: {exc}", retryable=retryable, where="dest"
    )
