"""Input images: what a manifest reference means, how it reaches the API, and whether it is usable.

A reference is one of (see ``parse_reference``):

- an ``https://`` (or ``http://``) URL: passed to the API as is;
- ``s3://bucket/key``: a presigned GET URL (the default; the API fetches it itself, so the URL must
  outlive every retry: 6 h by default) or, with ``s3_mode="data_uri"``, the object's bytes inline;
- a local path (relative ones resolve against the manifest's folder) or ``file://`` URL: the file's
  bytes as a ``data:`` URI whose MIME type comes from the content, not the file name;
- a ``data:image/...;base64,`` URI: passed as is.

Local files are read only under an *input root* (default: the manifest's folder), checked after
``realpath`` so ``..`` and symlinks cannot reach outside it: a manifest is data, and data must not be
able to make us upload ``~/.ssh/id_rsa`` to a third-party API.

``identity(ref)`` is what the job fingerprint hashes: the content hash of local files and data URIs
(so moving a file does not redo the work, editing it does), ``s3://bucket/key#etag`` for S3 objects,
and the URL itself for URLs (their content is not ours to read on every run).

S3 ETags come from one HEAD per object only while few references share a "folder": once
``list_after_heads`` (8) objects of one prefix have been HEADed, the prefix is listed (``Delimiter="/"``,
1,000 keys per LIST) and the rest of its ETags are served from ``PrefixListings``, a bounded cache
(``etag_cache_keys`` keys; a listing is trusted for ``listing_ttl_s``). A key absent from the listing is
HEADed, so an object created after the listing, or a missing one, is judged exactly as before. A
million rows over one folder of images cost a thousand LISTs, not a million HEADs.

``InputResolver.check`` is the deep check ``qwenedit validate --check-images`` runs: existence, real
image content by magic bytes and a Pillow decode, byte and pixel limits. It never raises.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import os
import posixpath
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import unquote, urlsplit

from PIL import Image

from qwenedit.errors import QwenEditError

if TYPE_CHECKING:
    import httpx

    from qwenedit.jobs import Job

# The API's limit on one inline image: the whole ``data:`` URI, in bytes (docs/dashscope-api.md §1).
MAX_DATA_URI_BYTES = 10 * 1024 * 1024
# The API's limit on an image it downloads (URLs, presigned S3).
MAX_IMAGE_BYTES = 10 * 1024 * 1024
# Each side of an input image should be in this range; outside it the API may refuse the image.
MIN_SIDE_PX = 384
MAX_SIDE_PX = 3072
DEFAULT_PRESIGN_EXPIRY_S = 6 * 3600

S3Mode = Literal["presign", "data_uri"]
Severity = Literal["error", "warning"]

MIME_TYPES: dict[str, str] = {
    "png": "image/png",
    "jpeg": "image/jpeg",
    "bmp": "image/bmp",
    "tiff": "image/tiff",
    "webp": "image/webp",
    "gif": "image/gif",
}
_PILLOW_FORMATS = {"PNG": "png", "JPEG": "jpeg", "MPO": "jpeg", "BMP": "bmp", "TIFF": "tiff", "WEBP": "webp"}
_PILLOW_FORMATS["GIF"] = "gif"
_ACCEPTED = "JPG, PNG, BMP, TIFF, WEBP or GIF"

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):")
_SPACE = re.compile(r"\s")
_DATA_URI = re.compile(r"^data:([^;,]*)((?:;[^;,]*)*),", re.IGNORECASE)


class InputError(QwenEditError):
    """An input image reference that cannot be used; the message names the row when it is known."""

    def __init__(
        self,
        reason: str,
        *,
        ref: str | None = None,
        row: int | None = None,
        job_id: str | None = None,
        column: str | None = None,
    ) -> None:
        self.reason = reason
        self.ref = ref
        self.row = row
        self.job_id = job_id
        self.column = column
        where = location_text(row, job_id, column)
        super().__init__(f"{where}: {reason}" if where else reason)

    def located(self, row: int | None, job_id: str | None, column: str | None) -> InputError:
        """The same error with the manifest location attached."""
        return InputError(self.reason, ref=self.ref, row=row, job_id=job_id, column=column)


def location_text(row: int | None, job_id: str | None, column: str | None) -> str:
    """``row 4 (job_id "shirt-red"), column n``: the one way every message names a place."""
    parts = []
    if row is not None:
        parts.append(f"row {row}" + (f" (job_id {quote_text(job_id)})" if job_id else ""))
    elif job_id:
        parts.append(f"job_id {quote_text(job_id)}")
    if column:
        parts.append(f"column {column}")
    return ", ".join(parts)


def quote_text(value: str, limit: int = 60) -> str:
    """A value as it appears in messages: double-quoted, control characters escaped, long ones cut."""
    text = value if len(value) <= limit else value[: limit - 1] + "…"
    text = text.replace("\\", "\\\\").replace('"', '\\"')
    text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    return f'"{text}"'


def short_ref(ref: str) -> str:
    """A reference fit for a message (data URIs are summarised, not printed)."""
    if ref[:5].lower() == "data:":
        head = ref.split(",", 1)[0]
        return quote_text(f"{head},… ({len(ref):,} bytes)", limit=80)
    return quote_text(ref, limit=120)


# --- references ---------------------------------------------------------------------------------


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
    m = _SCHEME.match(text)
    scheme = m.group(1).lower() if m else ""
    if scheme == "data":
        _parse_data_uri(text)
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


def _parse_data_uri(text: str) -> tuple[str, bool, int]:
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
            f"data URI is {_mb(len(text))}; the API takes at most 10 MiB ({MAX_DATA_URI_BYTES:,} bytes) "
            "per inline image: put the image on S3 or a URL"
        )
    return mime, True, m.end()


def data_uri_bytes(text: str) -> bytes:
    """The decoded payload of a base64 data URI; raises ``InputError``."""
    _, _, offset = _parse_data_uri(text)
    try:
        return base64.b64decode(text[offset:], validate=True)
    except (binascii.Error, ValueError):
        raise InputError("data URI payload is not valid base64") from None


def sniff_image_format(data: bytes) -> str | None:
    """The image format by magic bytes: png, jpeg, bmp, tiff, webp, gif, or None."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if data.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if data.startswith((b"GIF87a", b"GIF89a")):
        return "gif"
    if data.startswith(b"BM") and len(data) >= 14:
        return "bmp"
    if data.startswith((b"II*\x00", b"MM\x00*")):
        return "tiff"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return None


def data_uri_for(data: bytes, fmt: str) -> str:
    """``data:image/<fmt>;base64,...`` for ``data`` in a known format."""
    return f"data:{MIME_TYPES[fmt]};base64,{base64.b64encode(data).decode('ascii')}"


def data_uri_length(raw_bytes: int, fmt: str = "jpeg") -> int:
    """The length of the data URI ``raw_bytes`` of a ``fmt`` image would become."""
    return len(f"data:{MIME_TYPES[fmt]};base64,") + 4 * ((raw_bytes + 2) // 3)


def _mb(n: int) -> str:
    return f"{n / 1048576:.1f} MiB"


# --- content checks -----------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageInfo:
    """What a content check learned about an image."""

    format: str
    width: int
    height: int
    size: int
    warnings: tuple[str, ...] = ()


def inspect_image(data: bytes) -> ImageInfo:
    """Check that ``data`` is a supported image by content and decodes; raises ``InputError``.

    Decompression bombs (a small file declaring a huge canvas) are refused from the header, before
    any pixel is decoded. Sides outside 384–3072 px are warnings, not errors.
    """
    fmt = sniff_image_format(data)
    if fmt is None:
        head = data[:8]
        shown = "the file is empty" if not data else f"it starts with {head!r}"
        raise InputError(f"is not an image: the content is not {_ACCEPTED} ({shown})")
    try:
        # Pillow only warns between 1× and 2× MAX_IMAGE_PIXELS (and raises above); we refuse both.
        # (No warnings.catch_warnings here: it is not thread-safe, and checks run in threads.)
        with Image.open(io.BytesIO(data)) as im:
            width, height = im.size
            pillow_fmt = _PILLOW_FORMATS.get(im.format or "")
            _refuse_bomb(width, height)
            im.verify()
        with Image.open(io.BytesIO(data)) as im:
            if im.format == "JPEG":
                im.draft("RGB", (max(1, width // 8), max(1, height // 8)))  # decode at 1/8: fast
            im.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        # Pillow refuses above 2 × MAX_IMAGE_PIXELS before we see the size (and its warning is raised
        # under -W error); its message has the pixel count.
        found = re.search(r"\((\d+) pixels\)", str(exc))
        declared = f"{int(found.group(1)):,} pixels" if found else "too many pixels"
        raise InputError(
            f"is refused as a decompression bomb: it declares {declared}, "
            f"over the {Image.MAX_IMAGE_PIXELS:,}-pixel safety limit"
        ) from None
    except InputError:
        raise
    except Exception as exc:  # Pillow raises many types for corrupt files (OSError, SyntaxError, ...)
        raise InputError(f"is a damaged {fmt.upper()} file: {exc}") from None
    if pillow_fmt != fmt:
        raise InputError(f"is not a usable image: it looks like {fmt.upper()} but does not decode as one")
    notes = []
    if not (MIN_SIDE_PX <= width <= MAX_SIDE_PX and MIN_SIDE_PX <= height <= MAX_SIDE_PX):
        notes.append(
            f"is {width}×{height} px; the API expects each side between {MIN_SIDE_PX} and {MAX_SIDE_PX} px "
            "and may refuse it"
        )
    return ImageInfo(fmt, width, height, len(data), tuple(notes))


def _refuse_bomb(width: int, height: int) -> None:
    limit = Image.MAX_IMAGE_PIXELS
    if limit and width * height > limit:
        raise InputError(
            f"is refused as a decompression bomb: it declares {width * height:,} pixels, "
            f"over the {limit:,}-pixel safety limit"
        )


# --- S3 listings ---------------------------------------------------------------------------------

DEFAULT_LIST_AFTER_HEADS = 8
DEFAULT_ETAG_CACHE_KEYS = 200_000
DEFAULT_LISTING_TTL_S = 900.0
_MAX_COUNTED_PREFIXES = 10_000


def s3_prefix(key: str) -> str:
    """The "folder" of an S3 key: everything up to and including its last ``/`` (``""`` at the root)."""
    head, sep, _ = key.rpartition("/")
    return head + sep


@dataclass
class _Listing:
    objects: dict[str, tuple[str, int]]  # key → (ETag without quotes, size in bytes)
    listed_at: float


# One page of ``list_objects_v2``: (bucket, prefix, continuation token or None) → the response dict.
ListPage = Callable[[str, str, "str | None"], dict[str, Any]]


class PrefixListings:
    """ETags and sizes of S3 objects, learned by listing their prefix once many of them are asked for.

    ``lookup(bucket, key)`` answers ``(etag, size)`` from a listing of the key's prefix, or ``None``
    when the caller should HEAD the object itself: the prefix has been asked about fewer than
    ``after_heads`` times (a listing would cost more than it saves), or the key is not in the listing
    (created since, missing, or past the cache bound). The ``after_heads``-th lookup of a prefix lists
    it, page by page (``Delimiter="/"``: its direct objects only). At most ``max_keys`` keys are kept
    across prefixes (least recently used prefixes are dropped first; a prefix larger than the bound
    keeps its first ``max_keys`` keys). A listing older than ``ttl_s`` is listed again.

    Thread-safe. While one thread lists a prefix, other lookups of that prefix wait for the listing
    instead of HEADing or listing it again; lookups of other prefixes are not held up.
    """

    def __init__(
        self,
        list_page: ListPage,
        *,
        after_heads: int = DEFAULT_LIST_AFTER_HEADS,
        max_keys: int = DEFAULT_ETAG_CACHE_KEYS,
        ttl_s: float = DEFAULT_LISTING_TTL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if after_heads < 0 or max_keys < 1 or ttl_s <= 0:
            raise ValueError("after_heads must be ≥ 0, max_keys ≥ 1 and ttl_s > 0")
        self._list_page = list_page
        self._after_heads = after_heads
        self._max_keys = max_keys
        self._ttl_s = ttl_s
        self._clock = clock
        self._lock = threading.Lock()
        self._listings: OrderedDict[tuple[str, str], _Listing] = OrderedDict()
        self._cached_keys = 0
        self._asked: OrderedDict[tuple[str, str], int] = OrderedDict()
        self._listing_now: dict[tuple[str, str], threading.Event] = {}
        self.lists = 0  # LIST requests made (pages)

    def lookup(self, bucket: str, key: str) -> tuple[str, int] | None:
        """``(etag, size)`` of ``s3://bucket/key`` from a listing, or None: HEAD it yourself."""
        pk = (bucket, s3_prefix(key))
        while True:
            with self._lock:
                listing = self._fresh(pk)
                if listing is not None:
                    self._listings.move_to_end(pk)
                    return listing.objects.get(key)
                busy = self._listing_now.get(pk)
                if busy is None:
                    asked = self._asked.pop(pk, 0) + 1
                    self._asked[pk] = asked
                    if len(self._asked) > _MAX_COUNTED_PREFIXES:
                        self._asked.popitem(last=False)
                    if asked <= self._after_heads:
                        return None
                    done = threading.Event()
                    self._listing_now[pk] = done
            if busy is not None:
                busy.wait()
                continue  # the listing is in (or failed): look again
            try:
                objects = self._list(*pk)
            except Exception:
                objects = None  # a failed listing is not an error: every key falls back to HEAD
            with self._lock:
                del self._listing_now[pk]
                self._asked.pop(pk, None)
                if objects is not None:
                    self._store(pk, _Listing(objects, self._clock()))
            done.set()
            return objects.get(key) if objects is not None else None

    def _fresh(self, pk: tuple[str, str]) -> _Listing | None:
        listing = self._listings.get(pk)
        if listing is None:
            return None
        if self._clock() - listing.listed_at >= self._ttl_s:
            self._drop(pk)
            return None
        return listing

    def _drop(self, pk: tuple[str, str]) -> None:
        listing = self._listings.pop(pk, None)
        if listing is not None:
            self._cached_keys -= len(listing.objects)

    def _store(self, pk: tuple[str, str], listing: _Listing) -> None:
        self._drop(pk)
        self._listings[pk] = listing
        self._cached_keys += len(listing.objects)
        while self._cached_keys > self._max_keys and len(self._listings) > 1:
            oldest = next(iter(self._listings))
            self._drop(oldest)

    def _list(self, bucket: str, prefix: str) -> dict[str, tuple[str, int]]:
        objects: dict[str, tuple[str, int]] = {}
        token: str | None = None
        while True:
            page = self._list_page(bucket, prefix, token)
            with self._lock:
                self.lists += 1
            for obj in page.get("Contents", []) or []:
                if len(objects) >= self._max_keys:
                    return objects
                objects[str(obj["Key"])] = (str(obj.get("ETag", "")).strip('"'), int(obj.get("Size") or 0))
            token = page.get("NextContinuationToken") if page.get("IsTruncated") else None
            if not token:
                return objects

    def clear(self) -> None:
        """Forget every listing and count (the next lookups HEAD again)."""
        with self._lock:
            self._listings.clear()
            self._asked.clear()
            self._cached_keys = 0


# --- the resolver -------------------------------------------------------------------------------


@dataclass
class Check:
    """The outcome of a deep check of one reference: error and warning reasons."""

    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


class InputResolver:
    """Turns references into what the API accepts, computes their identities, and checks them.

    ``manifest_dir`` anchors relative references: a local folder, or the ``s3://`` / ``https://``
    "folder" of a remote manifest (relative references then name objects next to it).
    ``input_root`` bounds local reads; it defaults to a local ``manifest_dir`` (or the current folder).
    A remote manifest without an explicit ``input_root`` may not read local files at all.

    Thread-safe: the pipeline calls ``resolve`` from worker threads.
    """

    def __init__(
        self,
        input_root: str | os.PathLike[str] | None = None,
        manifest_dir: str | os.PathLike[str] | None = None,
        s3_client_factory: Callable[[], Any] | None = None,
        s3_mode: S3Mode = "presign",
        presign_expiry_s: int = DEFAULT_PRESIGN_EXPIRY_S,
        *,
        http_timeout_s: float = 5.0,
        http_client: httpx.Client | None = None,
        list_after_heads: int = DEFAULT_LIST_AFTER_HEADS,
        etag_cache_keys: int = DEFAULT_ETAG_CACHE_KEYS,
        listing_ttl_s: float = DEFAULT_LISTING_TTL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if s3_mode not in ("presign", "data_uri"):
            raise ValueError(f"s3_mode must be 'presign' or 'data_uri', got {s3_mode!r}")
        base = os.fspath(manifest_dir) if manifest_dir is not None else os.getcwd()
        self._remote_base = base if _SCHEME.match(base) and len(base.split(":", 1)[0]) > 1 else None
        self._local_base = None if self._remote_base else os.path.abspath(base)
        if input_root is not None:
            self._root: str | None = os.path.abspath(os.fspath(input_root))
        else:
            self._root = self._local_base
        self._real_root = os.path.realpath(self._root) if self._root else None
        self._s3_factory = s3_client_factory
        self._s3: Any = None
        self.s3_mode: S3Mode = s3_mode
        self.presign_expiry_s = presign_expiry_s
        self._http_timeout_s = http_timeout_s
        self._http = http_client
        self._own_http = http_client is None
        self._lock = threading.Lock()
        self._hashes: OrderedDict[tuple[str, int, int], str] = OrderedDict()
        self.listings = PrefixListings(
            self._s3_list_page,
            after_heads=list_after_heads,
            max_keys=etag_cache_keys,
            ttl_s=listing_ttl_s,
            clock=clock,
        )

    @property
    def input_root(self) -> str | None:
        """The folder local reads are confined to (None: local files are refused)."""
        return self._root

    # -- locating --

    def locate(self, ref: str) -> Ref:
        """Parse ``ref`` and anchor a relative path; raises ``InputError`` if it is malformed or a local
        path lies outside the input root (judged lexically here; ``resolve``/``check`` also realpath it)."""
        parsed = parse_reference(ref)
        if parsed.kind != "local":
            return parsed
        path = parsed.location
        if not os.path.isabs(path) and self._remote_base is not None:
            return parse_reference(_join_remote(self._remote_base, path, ref))
        if self._root is None:
            raise InputError(
                f"{short_ref(ref)} is a local file, and local files are not read for a manifest from "
                f"{self._remote_base}; pass --input-root to allow a local folder",
                ref=ref,
            )
        base = self._local_base or os.getcwd()
        full = os.path.normpath(os.path.join(base, os.path.expanduser(path)))
        if not _is_under(full, self._root):
            raise InputError(self._outside_root(ref), ref=ref)
        return Ref("local", full)

    def _outside_root(self, ref: str) -> str:
        return (
            f"{short_ref(ref)} is outside the input root {self._root}; "
            "move it under the root or pass --input-root to widen it"
        )

    def _real_local(self, ref: str, path: str) -> str:
        real = os.path.realpath(path)
        if self._real_root is None or not _is_under(real, self._real_root):
            raise InputError(self._outside_root(ref) + " (after following symlinks)", ref=ref)
        return real

    # -- reading --

    def _read_local(self, ref: str, path: str, max_bytes: int | None) -> tuple[str, bytes]:
        real = self._real_local(ref, path)
        # We open the realpath we checked, not the path we were given.
        try:
            st = os.stat(real)
        except FileNotFoundError:
            raise InputError(f"{short_ref(ref)} does not exist (looked for {path})", ref=ref) from None
        except OSError as exc:
            raise InputError(f"{short_ref(ref)} cannot be read: {exc.strerror}", ref=ref) from None
        if os.path.isdir(real):
            raise InputError(f"{short_ref(ref)} is a directory, not an image file", ref=ref)
        if max_bytes is not None and st.st_size > max_bytes:
            raise InputError(self._too_big_local(ref, st.st_size), ref=ref)
        try:
            with open(real, "rb") as fh:
                return real, fh.read()
        except OSError as exc:
            raise InputError(f"{short_ref(ref)} cannot be read: {exc.strerror}", ref=ref) from None

    @staticmethod
    def _too_big_local(ref: str, size: int) -> str:
        return (
            f"{short_ref(ref)} is {_mb(size)}; sent inline as a data URI it would be "
            f"{_mb(data_uri_length(size))}, over the API's 10 MiB limit "
            f"(local images must be at most {_mb(_max_inline_raw())}; put larger ones on S3 or a URL)"
        )

    def _s3_client(self) -> Any:
        with self._lock:
            if self._s3 is None:
                if self._s3_factory is None:
                    from qwenedit.storage import make_s3_client

                    self._s3 = make_s3_client()
                else:
                    self._s3 = self._s3_factory()
            return self._s3

    def _s3_head(self, ref: str, r: Ref) -> dict[str, Any]:
        try:
            head: dict[str, Any] = self._s3_client().head_object(Bucket=r.bucket, Key=r.key)
        except Exception as exc:
            raise InputError(f"{short_ref(ref)}: {_s3_reason(exc)}", ref=ref) from None
        self._check_s3_size(ref, int(head.get("ContentLength") or 0))
        return head

    def _check_s3_size(self, ref: str, size: int) -> None:
        limit = MAX_IMAGE_BYTES if self.s3_mode == "presign" else _max_inline_raw()
        if size > limit:
            raise InputError(f"{short_ref(ref)} is {_mb(size)}; the API takes at most {_mb(limit)}", ref=ref)

    def _s3_list_page(self, bucket: str, prefix: str, token: str | None) -> dict[str, Any]:
        params: dict[str, Any] = {"Bucket": bucket, "Prefix": prefix, "Delimiter": "/", "MaxKeys": 1000}
        if token:
            params["ContinuationToken"] = token
        page: dict[str, Any] = self._s3_client().list_objects_v2(**params)
        return page

    def _s3_etag(self, ref: str, r: Ref) -> str:
        """The object's ETag: from a listing of its prefix when one is cached or due, else a HEAD."""
        listed = self.listings.lookup(r.bucket, r.key)
        if listed is None:
            return str(self._s3_head(ref, r).get("ETag", "")).strip('"')
        etag, size = listed
        self._check_s3_size(ref, size)
        return etag

    def _s3_get(self, ref: str, r: Ref) -> bytes:
        try:
            body = self._s3_client().get_object(Bucket=r.bucket, Key=r.key)["Body"]
            try:
                return bytes(body.read(MAX_IMAGE_BYTES + 1))
            finally:
                body.close()
        except Exception as exc:
            raise InputError(f"{short_ref(ref)}: {_s3_reason(exc)}", ref=ref) from None

    # -- the three operations --

    def resolve(self, ref: str) -> str:
        """What to put in the request's ``image`` field: a URL or a data URI. Raises ``InputError``."""
        r = self.locate(ref)
        if r.kind in ("url", "data"):
            return r.location
        if r.kind == "s3":
            self._s3_head(ref, r)
            if self.s3_mode == "presign":
                try:
                    params = {"Bucket": r.bucket, "Key": r.key}
                    url: str = self._s3_client().generate_presigned_url(
                        "get_object", Params=params, ExpiresIn=self.presign_expiry_s
                    )
                except Exception as exc:
                    reason = f"{short_ref(ref)}: cannot presign: {_s3_reason(exc)}"
                    raise InputError(reason, ref=ref) from None
                return url
            return self._inline(ref, self._s3_get(ref, r))
        _, data = self._read_local(ref, r.location, _max_inline_raw())
        return self._inline(ref, data)

    def _inline(self, ref: str, data: bytes) -> str:
        fmt = sniff_image_format(data)
        if fmt is None:
            raise InputError(f"{short_ref(ref)} is not an image: the content is not {_ACCEPTED}", ref=ref)
        uri = data_uri_for(data, fmt)
        if len(uri) > MAX_DATA_URI_BYTES:
            raise InputError(self._too_big_local(ref, len(data)), ref=ref)
        return uri

    def resolve_job(self, job: Job) -> tuple[str, ...]:
        """``resolve`` for every image of a job; the error names the job's row and image column."""
        out = []
        for i, ref in enumerate(job.images, start=1):
            try:
                out.append(self.resolve(ref))
            except InputError as exc:
                raise exc.located(job.row, job.job_id, f"image_{i}") from None
        return tuple(out)

    def identity(self, ref: str) -> str:
        """The fingerprint input for ``ref``: ``sha256:<hex>`` of the bytes for local files and data
        URIs, ``s3://bucket/key#<etag>`` for S3, the URL itself for URLs. Raises ``InputError``.

        S3 ETags come from ``self.listings`` once many references share a prefix (see the module doc)."""
        r = self.locate(ref)
        if r.kind == "url":
            return r.location
        if r.kind == "data":
            return "sha256:" + hashlib.sha256(data_uri_bytes(r.location)).hexdigest()
        if r.kind == "s3":
            return f"s3://{r.bucket}/{r.key}#{self._s3_etag(ref, r)}"
        return self._local_hash(ref, r.location)

    def _local_hash(self, ref: str, path: str) -> str:
        real = self._real_local(ref, path)
        try:
            st = os.stat(real)
        except OSError:
            st = None
        key = (real, st.st_size, st.st_mtime_ns) if st else None
        if key is not None:
            with self._lock:
                if key in self._hashes:
                    self._hashes.move_to_end(key)
                    return self._hashes[key]
        _, data = self._read_local(ref, path, None)
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        if key is not None:
            with self._lock:
                self._hashes[key] = digest
                if len(self._hashes) > 4096:
                    self._hashes.popitem(last=False)
        return digest

    def check(self, ref: str) -> Check:
        """The deep check behind ``--check-images``; every failure becomes a reason, nothing raises."""
        out = Check()
        try:
            r = self.locate(ref)
            if r.kind == "url":
                out.warnings.extend(self._check_url(ref, r.location))
                return out
            if r.kind == "data":
                data = data_uri_bytes(r.location)
            elif r.kind == "s3":
                self._s3_head(ref, r)
                data = self._s3_get(ref, r)
            else:
                _, data = self._read_local(ref, r.location, _max_inline_raw())
            try:
                info = inspect_image(data)
            except InputError as exc:  # its reasons read "is ...": name the reference
                raise InputError(f"{short_ref(ref)} {exc.reason}", ref=ref) from None
            if r.kind == "data":
                declared = _parse_data_uri(r.location)[0]
                if declared.replace("image/jpg", "image/jpeg") != MIME_TYPES[info.format]:
                    out.warnings.append(f"data URI says {declared} but the content is {info.format.upper()}")
            out.warnings.extend(f"{short_ref(ref)} {w}" for w in info.warnings)
        except InputError as exc:
            out.errors.append(exc.reason)
        except Exception as exc:  # a check must never crash validation
            out.errors.append(f"{short_ref(ref)} could not be checked: {type(exc).__name__}: {exc}")
        return out

    def _check_url(self, ref: str, url: str) -> list[str]:
        import httpx

        client = self._http_client()
        try:
            resp = client.head(url)
            if resp.status_code in (403, 405, 501) or resp.status_code >= 500:
                # Some hosts (and presigned GET URLs) refuse HEAD; ask for the first byte instead.
                with client.stream("GET", url, headers={"Range": "bytes=0-0"}) as got:
                    resp = got
        except httpx.TimeoutException:
            raise InputError(
                f"{short_ref(ref)} did not answer within {self._http_timeout_s:g} s", ref=ref
            ) from None
        except httpx.HTTPError as exc:
            reason = f"{short_ref(ref)} cannot be reached: {type(exc).__name__}: {exc}"
            raise InputError(reason, ref=ref) from None
        if resp.status_code >= 400:
            raise InputError(f"{short_ref(ref)} answered HTTP {resp.status_code}", ref=ref)
        ctype = resp.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype.startswith("text/"):
            raise InputError(f"{short_ref(ref)} serves {ctype}, not an image", ref=ref)
        size = _content_size(resp.headers)
        if size is not None and size > MAX_IMAGE_BYTES:
            raise InputError(
                f"{short_ref(ref)} is {_mb(size)}; the API takes at most {_mb(MAX_IMAGE_BYTES)}", ref=ref
            )
        return []

    def _http_client(self) -> httpx.Client:
        import httpx

        with self._lock:
            if self._http is None:
                self._http = httpx.Client(
                    timeout=self._http_timeout_s,
                    follow_redirects=True,
                    limits=httpx.Limits(max_connections=32, max_keepalive_connections=16),
                )
            return self._http

    def close(self) -> None:
        """Close the HTTP client this resolver opened (S3 clients need no closing)."""
        if self._own_http and self._http is not None:
            self._http.close()
            self._http = None

    def __enter__(self) -> InputResolver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _max_inline_raw() -> int:
    # The largest raw image whose base64 data URI still fits (prefix of the longest MIME type).
    prefix = len("data:image/jpeg;base64,")
    return (MAX_DATA_URI_BYTES - prefix) // 4 * 3


def _is_under(path: str, root: str) -> bool:
    """Whether normalised absolute ``path`` is ``root`` or inside it."""
    return path == root or path.startswith(root if root.endswith(os.sep) else root + os.sep)


def _join_remote(base: str, relative: str, ref: str) -> str:
    """``relative`` under the remote folder ``base`` (``s3://b/dir/`` or ``https://host/dir/``).

    Not ``urljoin``: it leaves ``s3://`` bases alone. ``..`` may not climb above the bucket or host."""
    scheme, _, rest = base.partition("://")
    host, _, folder = rest.partition("/")
    joined = posixpath.normpath(posixpath.join(folder, relative.replace("\\", "/")))
    if joined == ".." or joined.startswith("../"):
        raise InputError(f"{short_ref(ref)} climbs above {scheme}://{host}/", ref=ref)
    return f"{scheme}://{host}/{joined}"


def _content_size(headers: Any) -> int | None:
    rng = headers.get("content-range", "")
    if "/" in rng and rng.rsplit("/", 1)[1].strip().isdigit():
        return int(rng.rsplit("/", 1)[1])
    length = headers.get("content-length", "")
    return int(length) if length.isdigit() and "content-range" not in headers else None


def _s3_reason(exc: Exception) -> str:
    """A short, secret-free reason for an S3 failure."""
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        err = response.get("Error", {}) or {}
        code = str(err.get("Code", ""))
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code in ("404", "NoSuchKey", "NotFound"):
            return "no such object"
        if code == "NoSuchBucket":
            return "no such bucket"
        if code in ("403", "AccessDenied", "Forbidden"):
            return "access denied (check the credentials and the bucket policy)"
        return f"S3 error {code or status}"
    return f"S3 unreachable: {type(exc).__name__}"


def identities(resolver: InputResolver, refs: Sequence[str]) -> list[str]:
    """``identity`` of each reference, in order (the fingerprint's ``input_identities``)."""
    return [resolver.identity(r) for r in refs]
