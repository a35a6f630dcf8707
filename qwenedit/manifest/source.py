"""Opening a manifest: a local path, ``s3://bucket/key`` or an ``https://`` URL (remote ones downloaded
once to a temporary file), ``.gz`` decompressed, lines decoded as strict UTF-8 with the line of the first
bad byte named, and no line longer than ``MAX_LINE_BYTES`` read whole.

A manifest is untrusted input, so reading it is bounded (``ManifestLimits``; defaults fit a catalogue
of a million rows with room to spare, and each is an option): the file as stored or downloaded
(``max_bytes``; a download stops at the limit and follows no redirect), the bytes it decompresses to
(``max_decompressed_bytes``: gzip is recognised by content, whatever the suffix, and a small file can
inflate a thousandfold), and the rows (``max_rows``: memory grows with the distinct job ids). A line
longer than ``MAX_LINE_BYTES`` is never read whole: in a JSONL manifest it becomes that row's error
(``OversizedLine``), in a CSV (whose records may span lines) it ends the reading.
"""

from __future__ import annotations

import codecs
import contextlib
import gzip
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Literal
from urllib.parse import urlsplit

from qwenedit.errors import ManifestError, s3_reason

# Longest physical line read: three 10 MiB data URIs and the rest of a row fit. A longer line is refused
# before it is read whole (a few MB of gzip can decompress to one line of gigabytes).
MAX_LINE_BYTES = 48 * 1024 * 1024
MIB = 1024 * 1024


@dataclass(frozen=True)
class ManifestLimits:
    """How much of a manifest is read before it is refused (see the module doc)."""

    max_bytes: int = 1024 * MIB  # the file as stored or downloaded (compressed or not)
    max_decompressed_bytes: int = 4096 * MIB  # what it decompresses to
    max_rows: int = 2_000_000  # data rows (a million-row catalogue, twice over)

    def describe_bytes(self, n: int) -> str:
        return f"{n / MIB:,.0f} MiB" if n >= MIB else f"{n:,} bytes"


DEFAULT_LIMITS = ManifestLimits()


class OversizedLine(str):
    """Stands for a line longer than ``MAX_LINE_BYTES`` (its bytes were skipped, never held)."""

    size: int = 0


@dataclass(frozen=True)
class ManifestSource:
    """A manifest ready to read: a local file, where relative image paths resolve, and its format."""

    name: str  # as the user wrote it
    path: Path  # a local file (a temporary copy for remote manifests)
    base: str  # folder for relative references: local path, or s3:// / https:// prefix
    format: Literal["csv", "jsonl"]
    remote: bool = False
    limits: ManifestLimits = DEFAULT_LIMITS

    @classmethod
    @contextlib.contextmanager
    def open(
        cls, source: str | os.PathLike[str] | ManifestSource, limits: ManifestLimits | None = None
    ) -> Iterator[ManifestSource]:
        """Yield a readable ``ManifestSource``; remote manifests are fetched once and deleted after."""
        if isinstance(source, ManifestSource):
            yield source
            return
        limits = limits or DEFAULT_LIMITS
        name = os.fspath(source)
        scheme = urlsplit(name).scheme.lower() if "://" in name else ""
        if scheme in ("s3", "http", "https"):
            with tempfile.TemporaryDirectory(prefix="qwenedit-manifest-") as tmp:
                local = Path(tmp) / (Path(urlsplit(name).path).name or "manifest")
                _download(name, scheme, local, limits.max_bytes)
                fmt = detect_format(name, local)
                yield cls(name, local, manifest_base(name), fmt, remote=True, limits=limits)
            return
        if scheme == "file":
            name = urlsplit(name).path
        elif scheme:
            raise ManifestError(
                f"cannot read a manifest from {scheme}:// (use a local path, s3:// or https://)"
            )
        path = Path(name).expanduser()
        if not path.exists():
            raise ManifestError(f"manifest {name!r} does not exist")
        if path.is_dir():
            raise ManifestError(f"manifest {name!r} is a directory, not a file")
        if not os.access(path, os.R_OK):
            raise ManifestError(f"manifest {name!r} cannot be read (permission denied)")
        if not path.is_file():
            raise ManifestError(f"manifest {name!r} is not a regular file (a pipe or a device?)")
        if path.stat().st_size > limits.max_bytes:
            raise ManifestError(_too_big(name, limits.max_bytes))
        yield cls(name, path, manifest_base(name), detect_format(name, path), limits=limits)


def _too_big(name: str, limit: int) -> str:
    return (
        f"manifest {name!r} is larger than {DEFAULT_LIMITS.describe_bytes(limit)}; "
        "raise --max-manifest-mib if it is meant to be"
    )


def manifest_base(source: str | os.PathLike[str]) -> str:
    """Where relative image references in ``source`` point: the manifest's local folder, or its
    ``s3://bucket/prefix/`` or ``https://host/path/`` "folder". ``InputResolver(manifest_dir=...)``
    takes it."""
    name = os.fspath(source)
    scheme = urlsplit(name).scheme.lower() if "://" in name else ""
    if scheme in ("s3", "http", "https"):
        return name.rsplit("/", 1)[0] + "/"
    if scheme == "file":
        name = urlsplit(name).path
    return str(Path(name).expanduser().resolve().parent)


def _download(url: str, scheme: str, dest: Path, max_bytes: int) -> None:
    """Fetch a remote manifest to ``dest``: at most ``max_bytes``, no redirect followed."""
    try:
        if scheme == "s3":
            from qwenedit.storage import make_s3_client

            parts = urlsplit(url)
            body = make_s3_client().get_object(Bucket=parts.netloc, Key=parts.path.lstrip("/"))["Body"]
            _copy_capped(url, iter(lambda: body.read(1 << 20), b""), dest, max_bytes)
            return
        import httpx

        with httpx.stream("GET", url, timeout=30.0, follow_redirects=False) as resp:
            if resp.is_redirect:
                raise ManifestError(
                    f"manifest {url!r} could not be fetched: it redirects elsewhere, and redirects are "
                    "not followed; give the final URL"
                )
            if resp.status_code >= 400:
                raise ManifestError(f"manifest {url!r} could not be fetched: HTTP {resp.status_code}")
            _copy_capped(url, resp.iter_bytes(1 << 20), dest, max_bytes)
    except ManifestError:
        raise
    except Exception as exc:
        reason = s3_reason(exc) if scheme == "s3" else f"{type(exc).__name__}: {exc}"
        raise ManifestError(f"manifest {url!r} could not be fetched: {reason}") from None


def _copy_capped(name: str, chunks: Iterator[bytes], dest: Path, max_bytes: int) -> None:
    size = 0
    with dest.open("wb") as out:
        for chunk in chunks:
            size += len(chunk)
            if size > max_bytes:
                raise ManifestError(_too_big(name, max_bytes))
            out.write(chunk)


def detect_format(name: str, path: Path) -> Literal["csv", "jsonl"]:
    """JSONL or CSV: by the file name, else by whether the first non-blank byte opens a JSON object."""
    lowered = name.lower().removesuffix(".gz")
    if lowered.endswith((".jsonl", ".ndjson", ".json")):
        return "jsonl"
    if lowered.endswith((".csv", ".tsv", ".txt")):
        return "csv"
    with open_binary(path) as fh:
        head = fh.read(4096).lstrip(b"\xef\xbb\xbf \t\r\n")
    return "jsonl" if head.startswith(b"{") else "csv"


def open_binary(path: Path, max_decompressed_bytes: int | None = None, name: str | None = None) -> IO[bytes]:
    """The file's bytes, gunzipped when it starts with the gzip magic; with ``max_decompressed_bytes``,
    reading past that many decompressed bytes raises ``ManifestError``."""
    with path.open("rb") as probe:
        magic = probe.read(2)
    if magic == b"\x1f\x8b":
        fh: IO[bytes] = gzip.open(path, "rb")  # type: ignore[assignment]  # noqa: SIM115  (returned open)
        if max_decompressed_bytes is not None:
            return _Capped(fh, max_decompressed_bytes, name or path.name)  # type: ignore[return-value]
        return fh
    return path.open("rb")


class _Capped:
    """A binary reader that refuses to yield more than ``limit`` bytes in all (``readline``/``read``)."""

    def __init__(self, inner: IO[bytes], limit: int, name: str) -> None:
        self._inner, self._limit, self._name, self._read = inner, limit, name, 0

    def _count(self, data: bytes) -> bytes:
        self._read += len(data)
        if self._read > self._limit:
            raise ManifestError(
                f"manifest {self._name!r} decompresses to more than "
                f"{DEFAULT_LIMITS.describe_bytes(self._limit)}; raise --max-manifest-decompressed-mib "
                "if it is meant to be"
            )
        return data

    def readline(self, size: int = -1) -> bytes:
        return self._count(self._inner.readline(size))

    def read(self, size: int = -1) -> bytes:
        return self._count(self._inner.read(size))

    def __enter__(self) -> _Capped:
        return self

    def __exit__(self, *exc: object) -> None:
        self._inner.close()

    def close(self) -> None:
        self._inner.close()


def text_lines(fh: IO[bytes], name: str, *, oversized: Literal["raise", "mark"] = "raise") -> Iterator[str]:
    """Decode lines as strict UTF-8 (BOM dropped), naming the line of the first bad byte. A line over
    ``MAX_LINE_BYTES`` raises ``ManifestError``, or with ``oversized="mark"`` is skipped (its bytes
    are read in bounded pieces and dropped) and yielded as an empty ``OversizedLine``."""
    decoder = codecs.getincrementaldecoder("utf-8")("strict")
    try:
        number = 0
        while raw := fh.readline(MAX_LINE_BYTES + 1):
            number += 1
            if len(raw) > MAX_LINE_BYTES:
                if oversized == "raise":
                    raise ManifestError(
                        f"manifest {name!r}, line {number} is longer than {MAX_LINE_BYTES >> 20} MiB: "
                        "a manifest line holds at most three 10 MiB images and a prompt"
                    )
                size = len(raw)
                while not raw.endswith(b"\n") and (raw := fh.readline(MIB)):
                    size += len(raw)
                marker = OversizedLine("")
                marker.size = size
                decoder.reset()
                yield marker
                continue
            try:
                text = decoder.decode(raw)
            except UnicodeDecodeError as exc:
                bad = raw[exc.start : exc.start + 1]
                raise ManifestError(
                    f"manifest {name!r} is not UTF-8: line {number} has byte 0x{bad.hex()} at position "
                    f"{exc.start + 1}. Save it as UTF-8 (in Excel: 'CSV UTF-8 (Comma delimited)')"
                ) from None
            if number == 1:
                text = text.removeprefix("\ufeff")
            yield text
    except (OSError, EOFError) as exc:  # e.g. a truncated or invalid .gz
        raise ManifestError(f"manifest {name!r} cannot be read: {exc}") from None
