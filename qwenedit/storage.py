"""Destinations for generated images: S3-compatible buckets and local directories.

One S3 client factory (:func:`make_s3_client`) configured by :class:`S3Settings`, one destination
interface (:class:`Destination`) with an S3 and a local implementation, and :func:`copy_url`, which
streams a (presigned) output URL into a destination without holding the body in memory.

Every write of a generated image is *create-only*: the key is deterministic (``{job_id}/{k}.png``),
so "the key is already there" means "this image was already stored" and the call answers
``"exists"`` instead of overwriting. On S3 this is ``If-None-Match: *`` (412 → exists); where a store
does not support conditional writes, HEAD-then-PUT (racy, but harmless: same key, same bytes).

Environment variables (:meth:`S3Settings.from_env` reads ``QWENEDIT_S3_*``; boto3 reads ``AWS_*``):

===================================  ==============================================================
Variable                             Meaning
===================================  ==============================================================
``AWS_ACCESS_KEY_ID``                Credentials, through boto3's standard chain (also
``AWS_SECRET_ACCESS_KEY``            ``AWS_PROFILE`` / ``~/.aws/credentials``, SSO, instance
``AWS_SESSION_TOKEN``                roles). Never stored in :class:`S3Settings`.
``AWS_PROFILE``                      Named profile (credentials, region, even ``endpoint_url``).
``AWS_ENDPOINT_URL_S3``              Endpoint of the S3-compatible store; wins over
                                     ``AWS_ENDPOINT_URL``. Unset → AWS S3.
``AWS_ENDPOINT_URL``                 Endpoint for every AWS service (when ``..._S3`` is unset).
``AWS_REGION``, ``AWS_DEFAULT_REGION``  Region (R2: ``auto``; OSS: e.g. ``cn-hangzhou``).
``AWS_CA_BUNDLE``                    CA bundle for a TLS endpoint signed by a private CA.
``QWENEDIT_S3_REGION``               Region for the S3 client only (wins over the two above).
``QWENEDIT_S3_ADDRESSING_STYLE``     ``auto`` (default) | ``path`` | ``virtual``. OSS needs
                                     ``virtual``; IP-address endpoints always use path style.
``QWENEDIT_S3_SIGNATURE_VERSION``    Default ``s3v4`` (boto3 would presign SigV2 in us-east-1).
``QWENEDIT_S3_CHECKSUM_MODE``        ``when_supported`` (default) | ``when_required`` (OSS, older
                                     MinIO/Ceph, B2 and other stores rejecting aws-chunked bodies).
``QWENEDIT_S3_CONDITIONAL_WRITES``   ``on`` (default, ``If-None-Match: *``) | ``off`` (HEAD-then-PUT).
``QWENEDIT_S3_MULTIPART_THRESHOLD``  Bytes, or with a KiB/MiB/GiB (K/M/G) suffix. Default 16 MiB.
``QWENEDIT_S3_MULTIPART_CHUNKSIZE``  Part size, at least 5 MiB. Default 8 MiB.
``QWENEDIT_S3_MAX_CONCURRENCY``      Parts uploaded in parallel per object. Default 4.
``QWENEDIT_S3_MAX_POOL_CONNECTIONS`` Connection pool size per client. Default 32: keep it at least
                                     the number of copies running at once.
===================================  ==============================================================

Object metadata travels in HTTP headers, so it must be printable ASCII and, on AWS, at most 2 KiB in
total. :func:`encode_metadata` stores a value that is not plain ASCII (a Chinese prompt, a newline,
surrounding spaces) RFC 8187-style as ``UTF-8''<percent-encoded UTF-8>``, which
:meth:`Destination.head` decodes back; names are lower-cased ASCII tokens. If the encoded metadata
would pass 2 KiB, the longest values are shortened (ending in ``…``) until it fits: an upload never
fails because of a long prompt. Keep long text (the full prompt) in the ledger, not in metadata.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import mimetypes
import os
import re
import threading
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Literal, Protocol, cast, runtime_checkable
from urllib.parse import quote, unquote, urlsplit

import boto3
import botocore.exceptions
import httpx
from boto3.s3.transfer import TransferConfig, create_transfer_manager
from botocore.config import Config
from s3transfer.subscribers import BaseSubscriber

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

log = logging.getLogger(__name__)

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB

PutOutcome = Literal["created", "exists"]

__all__ = [
    "ConditionalWritesUnsupported",
    "CopyError",
    "Destination",
    "InvalidKey",
    "LocalDestination",
    "PutOutcome",
    "Readable",
    "S3Destination",
    "S3Settings",
    "StorageError",
    "copy_url",
    "decode_metadata",
    "encode_metadata",
    "make_s3_client",
    "open_destination",
    "redact_url",
    "validate_key",
]


# ---------------------------------------------------------------------------------------------------------
# Errors


class StorageError(Exception):
    """A destination could not be used (bad URI, unsupported store feature, I/O failure)."""


class InvalidKey(StorageError, ValueError):
    """An object key that could escape the destination or is not a plain relative path."""


class ConditionalWritesUnsupported(StorageError):
    """The store refused If-None-Match; the destination switched to HEAD-then-PUT, so retry the write."""


class CopyError(Exception):
    """Copying an output URL into the destination failed; says whether retrying can help."""

    def __init__(
        self,
        message: str,
        retryable: bool,
        expired: bool = False,
        *,
        where: Literal["source", "dest"] = "source",
    ) -> None:
        message = scrub_urls(message)
        super().__init__(message)
        self.message = message
        self.retryable = retryable
        self.expired = expired
        self.where = where

    def __repr__(self) -> str:
        return (
            f"CopyError({self.message!r}, retryable={self.retryable}, expired={self.expired}, "
            f"where={self.where!r})"
        )


# ---------------------------------------------------------------------------------------------------------
# Settings and the one client factory

_ADDRESSING_STYLES = ("auto", "path", "virtual")
_CHECKSUM_MODES = ("when_supported", "when_required")
_SIZE_RE = re.compile(r"^\s*(\d+)\s*([KMG]i?B?|B)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "B": 1, "K": KiB, "M": MiB, "G": GiB}


def parse_size(text: str) -> int:
    """Parse ``"16777216"``, ``"16MiB"``, ``"16M"`` or ``"16 MB"`` into bytes (binary units)."""
    m = _SIZE_RE.match(text)
    if not m:
        raise ValueError(f"not a size: {text!r} (use bytes or a KiB/MiB/GiB suffix)")
    unit = (m.group(2) or "").upper()[:1]
    return int(m.group(1)) * _SIZE_UNITS[unit]


def _parse_bool(name: str, text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{name}={text!r}: expected on/off")


def _redact_userinfo(url: str | None) -> str | None:
    if url is None or "@" not in url:
        return url
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return parts._replace(netloc=host).geturl()


@dataclass(frozen=True)
class S3Settings:
    """How to talk to the S3-compatible store. Holds no credentials: those come from boto3's chain."""

    endpoint_url: str | None = None  # None → AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL / config file / AWS
    region: str | None = None  # None → AWS_REGION / AWS_DEFAULT_REGION / profile
    addressing_style: Literal["auto", "path", "virtual"] = "auto"
    signature_version: str = "s3v4"
    checksum_mode: Literal["when_supported", "when_required"] = "when_supported"
    conditional_writes: bool = True
    multipart_threshold: int = 16 * MiB
    multipart_chunksize: int = 8 * MiB
    max_concurrency: int = 4
    max_pool_connections: int = 32
    ca_bundle: str | None = None  # None → AWS_CA_BUNDLE / system bundle
    profile: str | None = None  # None → AWS_PROFILE / default
    connect_timeout: float = 10.0
    read_timeout: float = 120.0
    max_attempts: int = 5  # botocore "standard" retry mode: 5xx, throttling, connection errors

    def __post_init__(self) -> None:
        if self.addressing_style not in _ADDRESSING_STYLES:
            raise ValueError(
                f"addressing_style must be one of {_ADDRESSING_STYLES}, not {self.addressing_style!r}"
            )
        if self.checksum_mode not in _CHECKSUM_MODES:
            raise ValueError(f"checksum_mode must be one of {_CHECKSUM_MODES}, not {self.checksum_mode!r}")
        if self.multipart_chunksize < 5 * MiB:
            raise ValueError("multipart_chunksize must be at least 5 MiB (S3's minimum part size)")
        if self.multipart_threshold < 1 or self.max_concurrency < 1 or self.max_pool_connections < 1:
            raise ValueError("multipart_threshold, max_concurrency and max_pool_connections must be positive")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> S3Settings:
        """Read the ``QWENEDIT_S3_*`` variables (see the module docstring); boto3 reads the ``AWS_*`` ones."""
        env = os.environ if environ is None else environ
        kw: dict[str, Any] = {}
        if v := env.get("QWENEDIT_S3_REGION"):
            kw["region"] = v
        if v := env.get("QWENEDIT_S3_ADDRESSING_STYLE"):
            kw["addressing_style"] = v.strip().lower()
        if v := env.get("QWENEDIT_S3_SIGNATURE_VERSION"):
            kw["signature_version"] = v.strip()
        if v := env.get("QWENEDIT_S3_CHECKSUM_MODE"):
            kw["checksum_mode"] = v.strip().lower()
        if v := env.get("QWENEDIT_S3_CONDITIONAL_WRITES"):
            kw["conditional_writes"] = _parse_bool("QWENEDIT_S3_CONDITIONAL_WRITES", v)
        if v := env.get("QWENEDIT_S3_MULTIPART_THRESHOLD"):
            kw["multipart_threshold"] = parse_size(v)
        if v := env.get("QWENEDIT_S3_MULTIPART_CHUNKSIZE"):
            kw["multipart_chunksize"] = parse_size(v)
        if v := env.get("QWENEDIT_S3_MAX_CONCURRENCY"):
            kw["max_concurrency"] = int(v)
        if v := env.get("QWENEDIT_S3_MAX_POOL_CONNECTIONS"):
            kw["max_pool_connections"] = int(v)
        return cls(**kw)

    def __repr__(self) -> str:
        # An endpoint written as https://user:pass@host must not leak through a log line.
        parts = []
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "endpoint_url":
                value = _redact_userinfo(value)
            parts.append(f"{f.name}={value!r}")
        return f"S3Settings({', '.join(parts)})"

    __str__ = __repr__

    def transfer_config(self) -> TransferConfig:
        """s3transfer settings for uploads: memory per upload ≈ chunk size × (concurrency + 1)."""
        cfg = TransferConfig(
            multipart_threshold=self.multipart_threshold,
            multipart_chunksize=self.multipart_chunksize,
            max_concurrency=self.max_concurrency,
            use_threads=True,
            preferred_transfer_client="classic",
        )
        # s3transfer buffers up to 10 parts of a non-seekable stream by default; bound it to what the
        # threads can actually upload so a fast source cannot run ahead of a slow store.
        cfg.max_in_memory_upload_chunks = self.max_concurrency
        return cfg


def make_s3_client(settings: S3Settings | None = None, *, session: boto3.Session | None = None) -> S3Client:
    """THE S3 client factory: every S3 call in qwenedit goes through a client made here.

    ``session`` lets a caller supply credentials explicitly (tests, a Prefect ``AwsCredentials`` block's
    ``get_boto3_session()``); otherwise boto3's standard chain (env, profile, SSO, instance role) applies.
    """
    s = settings if settings is not None else S3Settings.from_env()
    cfg = Config(
        region_name=s.region,
        signature_version=s.signature_version,
        s3={"addressing_style": s.addressing_style},
        request_checksum_calculation=s.checksum_mode,
        response_checksum_validation=s.checksum_mode,
        max_pool_connections=s.max_pool_connections,
        retries={"mode": "standard", "max_attempts": s.max_attempts},
        connect_timeout=s.connect_timeout,
        read_timeout=s.read_timeout,
    )
    sess = session if session is not None else boto3.Session(profile_name=s.profile)
    kwargs: dict[str, Any] = {"config": cfg}
    if s.endpoint_url is not None:
        kwargs["endpoint_url"] = s.endpoint_url
    if s.ca_bundle is not None:
        kwargs["verify"] = s.ca_bundle
    client: S3Client = sess.client("s3", **kwargs)
    return client


def _add_if_none_match(params: dict[str, Any], **_: Any) -> None:
    params["IfNoneMatch"] = "*"


def _make_conditional_client(settings: S3Settings, session: boto3.Session | None) -> S3Client:
    # Event hooks are per client, not per call or thread, so conditional writes get a client of their own
    # with the hook registered for good: a PutObject on the main client is never accidentally conditional.
    client = make_s3_client(settings, session=session)
    for op in ("PutObject", "CompleteMultipartUpload"):
        client.meta.events.register(f"before-parameter-build.s3.{op}", _add_if_none_match)
    return client


# ---------------------------------------------------------------------------------------------------------
# Keys, URLs and metadata (pure)

_RFC8187_PREFIX = "UTF-8''"
# RFC 8187 attr-char: ALPHA / DIGIT / "!#$&+-.^_`|~"
_ATTR_SAFE = "!#$&+-.^_`|~"
_META_NAME_RE = re.compile(r"^[A-Za-z0-9!#$&'*+\-.^_`|~]+$")


def validate_key(key: str) -> str:
    """Return ``key`` if it is a plain relative path; raise :class:`InvalidKey` otherwise.

    Refused: empty keys, a leading ``/``, empty segments (``a//b``, ``a/``), ``.`` and ``..`` segments, NUL.
    Job ids are validated upstream; this is defence in depth against writing outside the prefix.
    """
    if not isinstance(key, str) or not key:
        raise InvalidKey("empty object key")
    if "\x00" in key:
        raise InvalidKey(f"object key contains NUL: {key!r}")
    if key.startswith("/"):
        raise InvalidKey(f"object key must be relative: {key!r}")
    for segment in key.split("/"):
        if segment in ("", ".", ".."):
            raise InvalidKey(f"object key has an empty, '.' or '..' segment: {key!r}")
    return key


def _is_plain_header_value(value: str) -> bool:
    return (
        value.isascii()
        and value.isprintable()
        and value == value.strip()
        and not value.startswith(_RFC8187_PREFIX)
    )


METADATA_BUDGET = 2048  # AWS: user metadata (names + values, UTF-8 bytes) is limited to 2 KiB


def _encode_value(text: str) -> str:
    if _is_plain_header_value(text):
        return text
    return _RFC8187_PREFIX + quote(text.encode("utf-8"), safe=_ATTR_SAFE)


def _shorten_to(text: str, max_encoded: int) -> str | None:
    """The longest prefix of ``text`` (plus "…") whose encoding fits ``max_encoded``; None if none does."""
    lo, hi, best = 0, len(text) - 1, None
    while lo <= hi:
        mid = (lo + hi) // 2
        candidate = _encode_value(text[:mid] + "…")
        if len(candidate) <= max_encoded:
            best, lo = candidate, mid + 1
        else:
            hi = mid - 1
    return best


def encode_metadata(metadata: Mapping[str, object] | None, budget: int = METADATA_BUDGET) -> dict[str, str]:
    """Make metadata safe for S3 headers (see the module docstring): ASCII only, within ``budget`` bytes."""
    texts: dict[str, str] = {}
    out: dict[str, str] = {}
    for name, value in (metadata or {}).items():
        if not _META_NAME_RE.match(name):
            raise ValueError(f"metadata name must be an ASCII token: {name!r}")
        texts[name.lower()] = str(value)
        out[name.lower()] = _encode_value(str(value))
    # Over budget: shorten the longest value first, so short fields (ids, hashes) survive intact.
    while sum(len(k) + len(v) for k, v in out.items()) > budget:
        longest = max(out, key=lambda k: len(out[k]))
        excess = sum(len(k) + len(v) for k, v in out.items()) - budget
        shorter = _shorten_to(texts[longest], len(out[longest]) - excess)
        if shorter is None or shorter == out[longest]:
            del out[longest]
        else:
            out[longest] = shorter
    return out


def decode_metadata(metadata: Mapping[str, str] | None) -> dict[str, str]:
    """Inverse of :func:`encode_metadata` (values not in RFC 8187 form are returned as they are)."""
    out: dict[str, str] = {}
    for name, value in (metadata or {}).items():
        if value.startswith(_RFC8187_PREFIX):
            out[name] = unquote(value[len(_RFC8187_PREFIX) :], encoding="utf-8", errors="strict")
        else:
            out[name] = value
    return out


_URL_WITH_QUERY = re.compile(r"((?:https?|s3)://[^\s?#'\"<>]*)[?#][^\s'\"<>]*", re.IGNORECASE)


def redact_url(url: str) -> str:
    """``url`` without query string, fragment or userinfo: a presigned URL's query *is* a credential."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable URL>"
    netloc = parts.netloc.rsplit("@", 1)[-1]
    tail = "?…" if parts.query else ""
    return f"{parts.scheme}://{netloc}{parts.path}{tail}" if parts.scheme else f"{parts.path}{tail}"


def scrub_urls(text: str) -> str:
    """Remove the query string and fragment of every URL in ``text``."""
    return _URL_WITH_QUERY.sub(lambda m: m.group(1) + "?…", text)


# ---------------------------------------------------------------------------------------------------------
# Destinations


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


_EXISTS_CODES = frozenset({"PreconditionFailed", "412"})
# HEAD answers carry no error body, so a missing key is just "404" (as is a missing bucket, alas).
_NOT_FOUND_CODES = frozenset({"404", "NoSuchKey", "NotFound"})


def _refuses_if_none_match(exc: botocore.exceptions.ClientError) -> bool:
    """A 501/NotImplemented that is about If-None-Match, not about a checksum or another header."""
    if _error_code(exc) != "NotImplemented" and _status(exc) != 501:
        return False
    message = str(exc.response.get("Error", {}).get("Message", "")).lower()
    return "checksum" not in message and "x-amz-" not in message


def _error_code(exc: botocore.exceptions.ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _status(exc: botocore.exceptions.ClientError) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)


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
        self._conditional_client: S3Client | None = None
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
        with self._lock:
            if self._conditional_client is None:
                self._conditional_client = _make_conditional_client(self.settings, self._session)
            return self._conditional_client

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
        extra = {"ContentType": content_type, "Metadata": encode_metadata(metadata)}
        if self._conditional:
            try:
                self._upload(self._cond_client(), fileobj, full, extra, size)
                return "created"
            except botocore.exceptions.ClientError as exc:
                code = _error_code(exc)
                if code in _EXISTS_CODES or _status(exc) == 412:
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
        self._upload(self.client, fileobj, full, extra, size)
        return "created"

    def _upload(
        self, client: S3Client, fileobj: Readable, full_key: str, extra: dict[str, Any], size: int | None
    ) -> None:
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
            try:
                return self.put_create_only(key, io.BytesIO(data), content_type)
            except ConditionalWritesUnsupported:
                return self.put_create_only(key, io.BytesIO(data), content_type)  # now HEAD-then-PUT
        self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data, ContentType=content_type)
        return "created"

    def get_bytes(self, key: str) -> bytes | None:
        try:
            resp = self.client.get_object(Bucket=self.bucket, Key=self._key(key))
        except botocore.exceptions.ClientError as exc:
            if _error_code(exc) in _NOT_FOUND_CODES:  # not NoSuchBucket: a wrong bucket must be loud
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
            if _error_code(exc) in _NOT_FOUND_CODES:
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
        paginator = self.client.get_paginator("list_objects_v2")
        pages = paginator.paginate(
            Bucket=self.bucket, Prefix=self.prefix + prefix, PaginationConfig={"PageSize": page_size}
        )
        cut = len(self.prefix)
        for page in pages:
            for obj in page.get("Contents", []):
                yield obj["Key"][cut:]

    def probe_conditional_writes(self) -> bool:
        """Start-up self-test: PUT a canary twice with ``If-None-Match: *``; fall back if not honoured.

        Writes (and tries to delete) ``.qwenedit-probe/<uuid>`` under the prefix. Returns whether
        conditional writes are honoured, and sets this destination's mode accordingly.
        """
        if not self.settings.conditional_writes:
            return False
        full = self._key(f".qwenedit-probe/{uuid.uuid4().hex}")
        client = self._cond_client()
        honoured = False
        try:
            client.put_object(Bucket=self.bucket, Key=full, Body=b"1")
            try:
                client.put_object(Bucket=self.bucket, Key=full, Body=b"2")
            except botocore.exceptions.ClientError as exc:
                honoured = _error_code(exc) in _EXISTS_CODES or _status(exc) == 412
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


class LocalDestination:
    """A directory on the local file system. Writes are atomic (temp file + link/rename) and fsynced.

    Metadata and content type live in a sidecar JSON under ``<root>/.qwenedit-meta/`` (hidden from
    :meth:`list_keys`), so :meth:`head` answers like S3's.
    """

    META_DIR = ".qwenedit-meta"
    TMP_PREFIX = ".qwenedit-tmp-"

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).expanduser().resolve()

    def __repr__(self) -> str:
        return f"LocalDestination({str(self.root)!r})"

    def _path(self, key: str) -> Path:
        validate_key(key)
        if key.split("/", 1)[0] == self.META_DIR:
            raise InvalidKey(f"{self.META_DIR}/ is reserved: {key!r}")
        return self.root.joinpath(*key.split("/"))

    def _meta_path(self, key: str) -> Path:
        return self.root.joinpath(self.META_DIR, *key.split("/")).with_name(key.rsplit("/", 1)[-1] + ".json")

    def uri(self, key: str = "") -> str:
        return str(self._path(key)) if key else str(self.root)

    def _write_temp(self, directory: Path, fileobj: Readable) -> Path:
        directory.mkdir(parents=True, exist_ok=True)
        tmp = directory / f"{self.TMP_PREFIX}{uuid.uuid4().hex}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            with os.fdopen(fd, "wb") as out:
                while True:
                    chunk = fileobj.read(1 * MiB)
                    if not chunk:
                        break
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return tmp

    def _write_meta_temp(self, key: str, content_type: str, metadata: Mapping[str, str] | None) -> Path:

        record = {"content_type": content_type, "metadata": dict(metadata or {})}
        data = json.dumps(record, ensure_ascii=False).encode("utf-8")
        return self._write_temp(self._meta_path(key).parent, io.BytesIO(data))

    def put_create_only(
        self,
        key: str,
        fileobj: Readable,
        content_type: str,
        metadata: Mapping[str, str] | None = None,
        *,
        size: int | None = None,
    ) -> PutOutcome:
        final = self._path(key)
        if final.exists():
            return "exists"
        meta_tmp = self._write_meta_temp(key, content_type, metadata)
        try:
            tmp = self._write_temp(final.parent, fileobj)
        except BaseException:
            meta_tmp.unlink(missing_ok=True)
            raise
        try:
            # link() fails if the name exists, so an existing object is never replaced (unlike rename()).
            os.link(tmp, final)
        except FileExistsError:
            meta_tmp.unlink(missing_ok=True)
            return "exists"
        except OSError:
            meta_tmp.unlink(missing_ok=True)
            raise
        finally:
            tmp.unlink(missing_ok=True)
        os.replace(meta_tmp, self._meta_path(key))
        _fsync_dir(final.parent)
        return "created"

    def put_bytes(
        self, key: str, data: bytes, content_type: str = "application/octet-stream", overwrite: bool = True
    ) -> PutOutcome:

        if not overwrite:
            return self.put_create_only(key, io.BytesIO(data), content_type)
        final = self._path(key)
        tmp = self._write_temp(final.parent, io.BytesIO(data))
        try:
            os.replace(tmp, final)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        meta_tmp = self._write_meta_temp(key, content_type, None)
        os.replace(meta_tmp, self._meta_path(key))
        _fsync_dir(final.parent)
        return "created"

    def get_bytes(self, key: str) -> bytes | None:
        try:
            return self._path(key).read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            return None

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)
        self._meta_path(key).unlink(missing_ok=True)

    def head(self, key: str) -> dict[str, Any] | None:

        path = self._path(key)
        try:
            st = path.stat()
        except (FileNotFoundError, NotADirectoryError):
            return None
        if not path.is_file():
            return None
        content_type: str | None = mimetypes.guess_type(path.name)[0]
        metadata: dict[str, str] = {}
        try:
            record = json.loads(self._meta_path(key).read_text("utf-8"))
            content_type = record.get("content_type") or content_type
            metadata = dict(record.get("metadata") or {})
        except (FileNotFoundError, NotADirectoryError, ValueError):
            pass
        return {"size": st.st_size, "content_type": content_type, "metadata": metadata}

    def list_keys(self, prefix: str = "") -> Iterator[str]:
        if prefix.startswith("/") or ".." in prefix.split("/"):
            raise InvalidKey(f"invalid listing prefix: {prefix!r}")
        # Only walk the deepest directory the prefix names.
        base_rel = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        base = self.root.joinpath(*base_rel.split("/")) if base_rel else self.root
        if not base.is_dir():
            return
        found: list[str] = []
        for dirpath, dirnames, filenames in os.walk(base):
            rel_dir = Path(dirpath).relative_to(self.root).as_posix()
            if rel_dir == ".":
                rel_dir = ""
                dirnames[:] = [d for d in dirnames if d != self.META_DIR]
            for name in filenames:
                if name.startswith(self.TMP_PREFIX):
                    continue
                rel = f"{rel_dir}/{name}" if rel_dir else name
                if rel.startswith(prefix):
                    found.append(rel)
        yield from sorted(found)


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def open_destination(
    uri: str, settings: S3Settings | None = None, *, session: boto3.Session | None = None
) -> S3Destination | LocalDestination:
    """``s3://bucket/prefix`` → :class:`S3Destination`; a path or ``file://`` URI → :class:`LocalDestination`.

    S3 URIs are taken literally (no percent-decoding, like the AWS CLI); ``file://`` URIs are decoded.
    """
    if not uri:
        raise StorageError("empty destination")
    if uri.startswith("s3://"):
        rest = uri[len("s3://") :]
        bucket, _, prefix = rest.partition("/")
        if not bucket:
            raise StorageError(f"no bucket in {uri!r}")
        return S3Destination(bucket, prefix, settings=settings, session=session)
    if uri.startswith("file://"):
        parts = urlsplit(uri)
        if parts.netloc not in ("", "localhost"):
            raise StorageError(f"file:// URI with a remote host is not supported: {uri!r}")
        return LocalDestination(unquote(parts.path))
    if "://" in uri:
        raise StorageError(
            f"unsupported destination scheme: {uri.split('://', 1)[0]}:// (use s3:// or a path)"
        )
    return LocalDestination(uri)


# ---------------------------------------------------------------------------------------------------------
# Streaming copy from an output URL


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
_RETRYABLE_S3_CODES = frozenset(
    {
        "SlowDown",
        "RequestTimeout",
        "InternalError",
        "ServiceUnavailable",
        "Throttling",
        "RequestTimeTooSkewed",
        "ConditionalRequestConflict",
    }
)


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
) -> PutOutcome:
    """Stream ``url`` into ``dest`` at ``key``, create-only. Never holds the whole body in memory.

    - If ``check_existing`` and the key is already stored, answers ``"exists"`` without fetching: a rerun
      after the URL expired must not turn a stored image into an "expired" failure.
    - 403/404/410 from the source → ``CopyError(expired=True, retryable=False)``; 408/429/5xx and network
      errors → retryable; a body over ``max_bytes`` or a non-image content type → not retryable.
    - The stored content type is the response's ``image/*`` type, else ``content_type``; a generic
      (``application/octet-stream``/missing) type is accepted only if the first bytes are an image.
    - Error messages never contain the URL's query string (presigned URLs carry credentials in it).
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
            try:
                return dest.put_create_only(key, reader, store_type, metadata, size=size)
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


def _dest_error(exc: BaseException, dest: Destination, key: str) -> CopyError:
    where = dest.uri(key)
    if isinstance(exc, botocore.exceptions.ClientError):
        code, status = _error_code(exc), _status(exc)
        retryable = status >= 500 or code in _RETRYABLE_S3_CODES
        return CopyError(f"storing {where} failed: {code or status}", retryable=retryable, where="dest")
    if isinstance(exc, StorageError):
        return CopyError(f"storing {where} failed: {exc}", retryable=True, where="dest")
    # Connection errors, timeouts, a full disk: transient as far as this job can tell.
    return CopyError(f"storing {where} failed: {type(exc).__name__}: {exc}", retryable=True, where="dest")
