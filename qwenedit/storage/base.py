"""The destination interface: what every store (S3, a local directory) offers the pipeline.

Keys are relative to the destination's prefix or root and validated by :func:`~qwenedit.storage.keys.
validate_key`. Every write of a generated image is *create-only*: the key is deterministic
(``{job_id}/{k}.png``), so "the key is already there" means "this image was already stored" and the
call answers ``"exists"`` instead of overwriting.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any, Literal, Protocol, runtime_checkable

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB

PutOutcome = Literal["created", "exists"]


class Readable(Protocol):
    """Anything with ``read(n)``: a file, a BytesIO, an HTTP body adapter."""

    def read(self, n: int = -1, /) -> bytes: ...


@runtime_checkable
class Destination(Protocol):
    """Where outputs, ledgers and reports go. Keys are relative to the destination's prefix/root."""

    def put_create_only(
        self,
        key: str,
        fileobj: Readable,
        content_type: str,
        metadata: Mapping[str, str] | None = None,
        *,
        size: int | None = None,
    ) -> PutOutcome:
        """Store ``fileobj`` (anything with ``read(n)``) at ``key`` unless the key exists.

        ``size``, when known (a Content-Length), lets S3 plan parts without buffering the multipart
        threshold in memory first.
        """
        ...

    def put_bytes(
        self, key: str, data: bytes, content_type: str = "application/octet-stream", overwrite: bool = True
    ) -> PutOutcome:
        """Store a small object; with ``overwrite=False`` it is create-only."""
        ...

    def get_bytes(self, key: str) -> bytes | None:
        """The object's bytes, or None if it does not exist."""
        ...

    def exists(self, key: str) -> bool:
        """Whether ``key`` exists."""
        ...

    def head(self, key: str) -> dict[str, Any] | None:
        """``{"size", "content_type", "metadata"}`` (metadata decoded), or None if absent."""
        ...

    def list_keys(self, prefix: str = "") -> Iterator[str]:
        """Keys (relative to the destination) starting with ``prefix``, in lexicographic order on S3."""
        ...

    def delete(self, key: str) -> None:
        """Remove ``key`` if present (used only to supersede the outputs of a changed job)."""
        ...

    def uri(self, key: str = "") -> str:
        """The absolute URI of ``key`` (``s3://bucket/prefix/key`` or a local path)."""
        ...
