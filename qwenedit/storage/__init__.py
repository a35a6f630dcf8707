"""Destinations for generated images: S3-compatible buckets and local directories.

One S3 client factory (:func:`make_s3_client`) configured by :class:`S3Settings`, one destination
interface (:class:`Destination`) with an S3 and a local implementation, :func:`open_destination` to
pick one from a URI, and :func:`copy_url`, which streams a (presigned) output URL into a destination
without holding the body in memory.

Every write of a generated image is *create-only*: the key is deterministic (``{job_id}/{k}.png``),
so "the key is already there" means "this image was already stored" and the call answers
``"exists"`` instead of overwriting. On S3 this is ``If-None-Match: *`` (412 → exists); where a store
does not support conditional writes, HEAD-then-PUT (racy, but harmless: same key, same bytes).

=================  =====================================================================================
Module             What it holds
=================  =====================================================================================
``base``           the :class:`Destination` protocol, :class:`Readable`, ``PutOutcome``, size units
``settings``       :class:`S3Settings` (``QWENEDIT_S3_*`` variables), the client factory, ``parse_size``
``keys``           :func:`validate_key`, metadata :func:`encode_metadata` / :func:`decode_metadata`
``s3``             :class:`S3Destination`
``local``          :class:`LocalDestination`
``copy``           :func:`copy_url`: streaming copy, size cap, image sniffing
=================  =====================================================================================

The errors (:class:`StorageError`, :class:`InvalidKey`, :class:`ConditionalWritesUnsupported`,
:class:`CopyError`) live in :mod:`qwenedit.errors` with every other error and are re-exported here.
"""

from __future__ import annotations

from urllib.parse import unquote, urlsplit

import boto3

from qwenedit.errors import ConditionalWritesUnsupported, CopyError, InvalidKey, StorageError
from qwenedit.storage.base import Destination, GiB, KiB, MiB, PutOutcome, Readable
from qwenedit.storage.copy import copy_url
from qwenedit.storage.keys import METADATA_BUDGET, decode_metadata, encode_metadata, validate_key
from qwenedit.storage.local import LocalDestination
from qwenedit.storage.s3 import S3Destination
from qwenedit.storage.settings import S3Settings, make_conditional_client, make_s3_client, parse_size

__all__ = [
    "METADATA_BUDGET",
    "ConditionalWritesUnsupported",
    "CopyError",
    "Destination",
    "GiB",
    "InvalidKey",
    "KiB",
    "LocalDestination",
    "MiB",
    "PutOutcome",
    "Readable",
    "S3Destination",
    "S3Settings",
    "StorageError",
    "copy_url",
    "decode_metadata",
    "encode_metadata",
    "make_conditional_client",
    "make_s3_client",
    "open_destination",
    "parse_size",
    "validate_key",
]


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
