"""The input resolver: a reference turned into what the API accepts, its identity, and its deep check.

How each kind of reference (``references.py``) reaches the API:

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
(so moving a file does not redo the work, editing it does), ``s3://bucket/key#etag`` for S3 objects
(ETags from ``listings.PrefixListings`` once many objects share a prefix), and the URL itself for URLs
(their content is not ours to read on every run).

``InputResolver.check`` is the deep check ``qwenedit validate --check-images`` runs: existence, real
image content by magic bytes and a bounded Pillow decode (``qwenedit.decode``), byte and pixel limits.
It never raises. A URL is checked only if its host resolves to public addresses (``qwenedit.netguard``;
``allow_private_urls`` lifts that), redirects are followed hop by hop with the same check.

Local files: only regular files are read (a FIFO, a device, a socket is a reason, never a hang), opened
by an ``openat`` walk from the root with ``O_NOFOLLOW`` (a symlink swapped in after the realpath check
is not followed), and hashed as a stream of at most the API's per-image byte limit.
"""

from __future__ import annotations

import errno
import hashlib
import os
import posixpath
import stat
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urljoin, urlsplit, urlunsplit

from qwenedit.catalog.limits import MAX_DATA_URI_BYTES, MAX_IMAGE_BYTES
from qwenedit.errors import InputError, s3_reason
from qwenedit.inputs.images import (
    ACCEPTED_FORMATS,
    MIME_TYPES,
    data_uri_for,
    data_uri_length,
    inspect_image,
    max_inline_raw,
    mib_text,
    sniff_image_format,
)
from qwenedit.inputs.listings import (
    DEFAULT_ETAG_CACHE_KEYS,
    DEFAULT_LIST_AFTER_HEADS,
    DEFAULT_LISTING_TTL_S,
    PrefixListings,
)
from qwenedit.inputs.references import SCHEME, Ref, data_uri_bytes, parse_data_uri, parse_reference, short_ref
from qwenedit.netguard import Address, pinned

if TYPE_CHECKING:
    import httpx

    from qwenedit.jobs import Job

DEFAULT_PRESIGN_EXPIRY_S = 6 * 3600
MAX_REDIRECTS = 5  # hops followed by ``check`` (each one checked like the first URL)

S3Mode = Literal["presign", "data_uri"]


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
        allow_private_urls: bool = False,
    ) -> None:
        if s3_mode not in ("presign", "data_uri"):
            raise ValueError(f"s3_mode must be 'presign' or 'data_uri', got {s3_mode!r}")
        base = os.fspath(manifest_dir) if manifest_dir is not None else os.getcwd()
        self._remote_base = base if SCHEME.match(base) and len(base.split(":", 1)[0]) > 1 else None
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
        self.allow_private_urls = allow_private_urls
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

    def _open_local(self, ref: str, path: str) -> tuple[int, os.stat_result]:
        """An open descriptor of the regular file ``path`` names under the input root, and its stat.

        The realpath is walked down from the root one component at a time with ``O_NOFOLLOW`` (an
        ``openat`` walk), so a symlink swapped in after the realpath check is never followed; the leaf
        is opened non-blocking (a FIFO cannot hang the open) and must be a regular file (not a FIFO,
        device, socket or folder)."""
        real = self._real_local(ref, path)
        assert self._real_root is not None  # _real_local refused otherwise
        rel = os.path.relpath(real, self._real_root)
        parts = [] if rel == os.curdir else rel.split(os.sep)
        if not parts:
            raise InputError(f"{short_ref(ref)} is a directory, not an image file", ref=ref)
        try:
            fd = _open_beneath(self._real_root, parts)
        except FileNotFoundError:
            raise InputError(f"{short_ref(ref)} does not exist (looked for {path})", ref=ref) from None
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR, errno.EMLINK):
                raise InputError(
                    f"{short_ref(ref)} became a symbolic link after it was checked; not read", ref=ref
                ) from None
            raise InputError(f"{short_ref(ref)} cannot be read: {exc.strerror}", ref=ref) from None
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            os.close(fd)
            raise InputError(f"{short_ref(ref)} is a directory, not an image file", ref=ref)
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            raise InputError(
                f"{short_ref(ref)} is {_file_kind(st.st_mode)}, not a regular file; only regular files are read",
                ref=ref,
            )
        return fd, st

    def _read_local(self, ref: str, path: str, max_bytes: int) -> bytes:
        """The bytes of a local input (a regular file under the root, at most ``max_bytes``)."""
        fd, st = self._open_local(ref, path)
        with os.fdopen(fd, "rb") as fh:
            if st.st_size > max_bytes:
                raise InputError(self._too_big_local(ref, st.st_size), ref=ref)
            try:
                data = fh.read(max_bytes + 1)
            except OSError as exc:
                raise InputError(f"{short_ref(ref)} cannot be read: {exc.strerror}", ref=ref) from None
        if len(data) > max_bytes:  # it grew since the fstat
            raise InputError(self._too_big_local(ref, len(data)), ref=ref)
        return data

    @staticmethod
    def _too_big_local(ref: str, size: int) -> str:
        return (
            f"{short_ref(ref)} is {mib_text(size)}; sent inline as a data URI it would be "
            f"{mib_text(data_uri_length(size))}, over the API's 10 MiB limit "
            f"(local images must be at most {mib_text(max_inline_raw())}; put larger ones on S3 or a URL)"
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
            raise InputError(f"{short_ref(ref)}: {s3_reason(exc)}", ref=ref) from None
        self._check_s3_size(ref, int(head.get("ContentLength") or 0))
        return head

    def _check_s3_size(self, ref: str, size: int) -> None:
        limit = MAX_IMAGE_BYTES if self.s3_mode == "presign" else max_inline_raw()
        if size > limit:
            raise InputError(
                f"{short_ref(ref)} is {mib_text(size)}; the API takes at most {mib_text(limit)}", ref=ref
            )

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
            raise InputError(f"{short_ref(ref)}: {s3_reason(exc)}", ref=ref) from None

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
                    reason = f"{short_ref(ref)}: cannot presign: {s3_reason(exc)}"
                    raise InputError(reason, ref=ref) from None
                return url
            return self._inline(ref, self._s3_get(ref, r))
        return self._inline(ref, self._read_local(ref, r.location, max_inline_raw()))

    def _inline(self, ref: str, data: bytes) -> str:
        fmt = sniff_image_format(data)
        if fmt is None:
            raise InputError(
                f"{short_ref(ref)} is not an image: the content is not {ACCEPTED_FORMATS}", ref=ref
            )
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
        """``sha256:`` of a local input, read as a stream of at most the API's per-image byte limit."""
        fd, st = self._open_local(ref, path)
        with os.fdopen(fd, "rb") as fh:
            key = (os.path.realpath(path), st.st_size, st.st_mtime_ns)
            with self._lock:
                if key in self._hashes:
                    self._hashes.move_to_end(key)
                    return self._hashes[key]
            if st.st_size > MAX_IMAGE_BYTES:
                raise InputError(self._too_big_to_send(ref, st.st_size), ref=ref)
            digest, size = hashlib.sha256(), 0
            try:
                while chunk := fh.read(1 << 20):
                    size += len(chunk)
                    if size > MAX_IMAGE_BYTES:
                        raise InputError(self._too_big_to_send(ref, size), ref=ref)
                    digest.update(chunk)
            except OSError as exc:
                raise InputError(f"{short_ref(ref)} cannot be read: {exc.strerror}", ref=ref) from None
        found = "sha256:" + digest.hexdigest()
        with self._lock:
            self._hashes[key] = found
            if len(self._hashes) > 4096:
                self._hashes.popitem(last=False)
        return found

    @staticmethod
    def _too_big_to_send(ref: str, size: int) -> str:
        return (
            f"{short_ref(ref)} is over {mib_text(MAX_IMAGE_BYTES)} ({mib_text(size)} read); the API takes at "
            f"most {mib_text(MAX_IMAGE_BYTES)} per image"
        )

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
                data = self._read_local(ref, r.location, max_inline_raw())
            try:
                info = inspect_image(data)
            except InputError as exc:  # its reasons read "is ...": name the reference
                raise InputError(f"{short_ref(ref)} {exc.reason}", ref=ref) from None
            if r.kind == "data":
                declared = parse_data_uri(r.location)[0]
                if declared.replace("image/jpg", "image/jpeg") != MIME_TYPES[info.format]:
                    out.warnings.append(f"data URI says {declared} but the content is {info.format.upper()}")
            out.warnings.extend(f"{short_ref(ref)} {w}" for w in info.warnings)
        except InputError as exc:
            out.errors.append(exc.reason)
        except Exception as exc:  # a check must never crash validation
            out.errors.append(f"{short_ref(ref)} could not be checked: {type(exc).__name__}: {exc}")
        return out

    def _check_url(self, ref: str, url: str) -> list[str]:
        """HEAD (or a one-byte GET) the URL, as the API would fetch it: only public addresses, each
        redirect hop checked again (at most ``MAX_REDIRECTS``), the connection made to the address
        that was checked (no second name lookup to rebind). Reasons say why a URL is refused, never
        what a refused address would have answered."""
        import httpx

        client = self._http_client()
        target = url
        for hop in range(MAX_REDIRECTS + 1):
            reason, address = pinned(target, allow_private=self.allow_private_urls)
            if reason is not None:
                via = "" if hop == 0 else f"redirects to {short_ref(target)}, which "
                raise InputError(f"{short_ref(ref)} {via}{reason}", ref=ref)
            try:
                resp = _probe(client, target, address)
            except httpx.TimeoutException:
                raise InputError(
                    f"{short_ref(ref)} did not answer within {self._http_timeout_s:g} s", ref=ref
                ) from None
            except httpx.HTTPError as exc:
                reason = f"{short_ref(ref)} cannot be reached: {type(exc).__name__}"
                raise InputError(reason, ref=ref) from None
            if not resp.is_redirect:
                break
            target = urljoin(target, resp.headers.get("location", ""))
        else:
            raise InputError(f"{short_ref(ref)} redirects more than {MAX_REDIRECTS} times", ref=ref)
        if resp.status_code >= 400:
            raise InputError(f"{short_ref(ref)} answered HTTP {resp.status_code}", ref=ref)
        ctype = resp.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype.startswith("text/"):
            raise InputError(f"{short_ref(ref)} serves {ctype}, not an image", ref=ref)
        size = _content_size(resp.headers)
        if size is not None and size > MAX_IMAGE_BYTES:
            raise InputError(
                f"{short_ref(ref)} is {mib_text(size)}; the API takes at most {mib_text(MAX_IMAGE_BYTES)}",
                ref=ref,
            )
        return []

    def _http_client(self) -> httpx.Client:
        import httpx

        with self._lock:
            if self._http is None:
                self._http = httpx.Client(
                    timeout=self._http_timeout_s,
                    follow_redirects=False,  # each hop is checked by ``_check_url``
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


_DIR_FLAGS = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0)
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_LEAF_FLAGS = os.O_RDONLY | _NOFOLLOW | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)


def _open_beneath(root: str, parts: Sequence[str]) -> int:
    """``openat`` walk: each folder under ``root`` opened with ``O_NOFOLLOW`` relative to the last,
    then the leaf, non-blocking. Raises OSError (ELOOP/ENOTDIR where a component is a symlink)."""
    if os.open not in os.supports_dir_fd:  # no openat here: the leaf, at least, is not followed
        return os.open(os.path.join(root, *parts), _LEAF_FLAGS)
    fd = os.open(root, _DIR_FLAGS)
    try:
        for part in parts[:-1]:
            inner = os.open(part, _DIR_FLAGS | _NOFOLLOW, dir_fd=fd)
            os.close(fd)
            fd = inner
        return os.open(parts[-1], _LEAF_FLAGS, dir_fd=fd)
    finally:
        os.close(fd)


def _file_kind(mode: int) -> str:
    for test, kind in (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a named pipe (FIFO)"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return kind
    return "not a regular file"


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


def _probe(client: httpx.Client, url: str, address: Address | None) -> httpx.Response:
    """HEAD ``url`` (a one-byte GET if HEAD is refused), connecting to ``address`` when given (the
    URL's host stays in the Host header and TLS's SNI and certificate check). The body is not read."""
    resp = _send(client, "HEAD", url, address, {})
    if resp.status_code in (403, 405, 501) or resp.status_code >= 500:
        # Some hosts (and presigned GET URLs) refuse HEAD; ask for the first byte instead.
        resp = _send(client, "GET", url, address, {"Range": "bytes=0-0"})
    return resp


def _send(
    client: httpx.Client, method: str, url: str, address: Address | None, headers: dict[str, str]
) -> httpx.Response:
    extensions: dict[str, Any] = {}
    if address is not None:
        parts = urlsplit(url)
        host = f"[{address}]" if address.version == 6 else str(address)
        headers = {**headers, "Host": parts.netloc.rsplit("@", 1)[-1]}
        if parts.scheme.lower() == "https":
            extensions["sni_hostname"] = parts.hostname
        url = urlunsplit(parts._replace(netloc=host + (f":{parts.port}" if parts.port else "")))
    request = client.build_request(method, url, headers=headers, extensions=extensions)
    resp = client.send(request, stream=True)
    resp.close()  # headers only
    return resp


def _content_size(headers: Any) -> int | None:
    rng = headers.get("content-range", "")
    if "/" in rng and rng.rsplit("/", 1)[1].strip().isdigit():
        return int(rng.rsplit("/", 1)[1])
    length = headers.get("content-length", "")
    return int(length) if length.isdigit() and "content-range" not in headers else None


def identities(resolver: InputResolver, refs: Sequence[str]) -> list[str]:
    """``identity`` of each reference, in order (the fingerprint's ``input_identities``)."""
    return [resolver.identity(r) for r in refs]
