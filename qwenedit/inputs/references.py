"""Image references: what a manifest cell means, by its syntax alone (no I/O).

A reference is one of (see ``parse_reference``): an ``https://`` (or ``http://``) URL; ``s3://bucket/key``;
a local path or ``file://`` URL; a ``data:image/...;base64,`` URI. ``data_uri_bytes`` decodes the last,
``short_ref`` shows any of them in a message (data URIs summarised, never printed).
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from typing import Literal
from urllib.parse import unquote, urlsplit

from qwenedit.catalog.limits import MAX_DATA_URI_BYTES
from qwenedit.errors import InputError, quote_text
from qwenedit.inputs.images import mib_text

SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):")
_SPACE = re.compile(r"\s")
_DATA_URI = re.compile(r"^data:([^;,]*)((?:;[^;,]*)*),", re.IGNORECASE)


def short_ref(ref: str) -> str:
    """A reference fit for a message (data URIs are summarised, not printed)."""
    if ref[:5].lower() == "data:":
        head = ref.split(",", 1)[0]
        return quote_text(f"{head},… ({len(ref):,} bytes)", limit=80)
    return quote_text(ref, limit=120)


@dataclass(frozen=True)
class Ref:
    """A parsed image reference. ``location`` is the URL, ``s3://b/k``, data URI or local path."""

    kind: Literal["url", "s3", "data", "local"]
    location: str
    bucket: str = ""
    key: str = ""


def parse_reference(ref: str) -> Ref:
    """Classify a reference by its syntax alone (no I/O); raises ``InputError`` when it is malformed.

    Local paths are returned as written (maybe relative); ``InputResolver.locate`` anchors them.
    """
    text = ref.strip()
    if not text:
        raise InputError("image reference is empty", ref=ref)
    m = SCHEME.match(text)
    scheme = m.group(1).lower() if m else ""
    if scheme == "data":
        parse_data_uri(text)
        return Ref("data", text)
    if scheme in ("http", "https"):
        # Not urlsplit: this runs for every row of million-row manifests.
        if not text[len(scheme) + 3 :].split("/", 1)[0] or text[len(scheme) + 1 : len(scheme) + 3] != "//":
            raise InputError(f"URL {short_ref(text)} has no host", ref=ref)
        if _SPACE.search(text):
            raise InputError(f"URL {short_ref(text)} contains spaces; write them as %20", ref=ref)
        return Ref("url", text)
    if scheme == "s3":
        bucket, _, key = text[5:].partition("/") if text[2:5] == "://" else ("", "", "")
        if not bucket or not key or key.endswith("/"):
            raise InputError(
                f"{short_ref(text)} is not an S3 object: write s3://bucket/path/to/image.png", ref=ref
            )
        return Ref("s3", f"s3://{bucket}/{key}", bucket=bucket, key=key)
    if scheme == "file":
        parts = urlsplit(text)
        if parts.netloc not in ("", "localhost"):
            raise InputError(
                f"file URL {short_ref(text)} names host {parts.netloc!r}; write file:///absolute/path",
                ref=ref,
            )
        path = unquote(parts.path)
        if not path:
            raise InputError(f"file URL {short_ref(text)} has no path", ref=ref)
        return Ref("local", path)
    # A one-letter "scheme" is a Windows drive (C:\...), anything else followed by :// is a URL we
    # cannot fetch (oss://, ftp://, gs://).
    if scheme and len(scheme) > 1 and text[len(scheme) + 1 :].startswith("//"):
        raise InputError(
            f"{short_ref(text)}: {scheme}:// references are not supported; "
            "use https://, s3://, a local path or a data: URI",
            ref=ref,
        )
    return Ref("local", text)


def parse_data_uri(text: str) -> tuple[str, bool, int]:
    """(declared MIME type, is base64, payload offset) of a data URI; raises ``InputError``."""
    m = _DATA_URI.match(text)
    if not m:
        raise InputError(f"{short_ref(text)} is not a data URI: write data:image/png;base64,...", ref=text)
    mime = m.group(1).strip().lower()
    params = [p.strip().lower() for p in m.group(2).split(";") if p.strip()]
    if not mime.startswith("image/"):
        raise InputError(
            f"data URI type {mime or '(none)'!r} is not an image type (image/png, image/jpeg, …)"
        )
    if "base64" not in params:
        raise InputError("data URI must be base64-encoded: data:image/png;base64,...")
    if len(text.encode("utf-8")) > MAX_DATA_URI_BYTES:
        raise InputError(
            f"data URI is {mib_text(len(text))}; the API takes at most 10 MiB ({MAX_DATA_URI_BYTES:,} bytes) "
            "per inline image: put the image on S3 or a URL"
        )
    return mime, True, m.end()


def data_uri_bytes(text: str) -> bytes:
    """The decoded payload of a base64 data URI; raises ``InputError``."""
    _, _, offset = parse_data_uri(text)
    try:
        return base64.b64decode(text[offset:], validate=True)
    except (binascii.Error, ValueError):
        raise InputError("data URI payload is not valid base64") from None
