"""Opening a manifest: a local path, ``s3://bucket/key`` or an ``https://`` URL (remote ones downloaded
once to a temporary file), ``.gz`` decompressed, lines decoded as strict UTF-8 with the line of the first
bad byte named, and no line longer than ``MAX_LINE_BYTES`` read whole.
"""

from __future__ import annotations

import codecs
import contextlib
import gzip
import os
import shutil
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


@dataclass(frozen=True)
class ManifestSource:
    """A manifest ready to read: a local file, where relative image paths resolve, and its format."""

    name: str  # as the user wrote it
    path: Path  # a local file (a temporary copy for remote manifests)
    base: str  # folder for relative references: local path, or s3:// / https:// prefix
    format: Literal["csv", "jsonl"]
    remote: bool = False

    @classmethod
    @contextlib.contextmanager
    def open(cls, source: str | os.PathLike[str] | ManifestSource) -> Iterator[ManifestSource]:
        """Yield a readable ``ManifestSource``; remote manifests are fetched once and deleted after."""
        if isinstance(source, ManifestSource):
            yield source
            return
        name = os.fspath(source)
        scheme = urlsplit(name).scheme.lower() if "://" in name else ""
        if scheme in ("s3", "http", "https"):
            with tempfile.TemporaryDirectory(prefix="qwenedit-manifest-") as tmp:
                local = Path(tmp) / (Path(urlsplit(name).path).name or "manifest")
                _download(name, scheme, local)
                yield cls(name, local, manifest_base(name), detect_format(name, local), remote=True)
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
        yield cls(name, path, manifest_base(name), detect_format(name, path))


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


def _download(url: str, scheme: str, dest: Path) -> None:
    try:
        if scheme == "s3":
            from qwenedit.storage import make_s3_client

            parts = urlsplit(url)
            body = make_s3_client().get_object(Bucket=parts.netloc, Key=parts.path.lstrip("/"))["Body"]
            with dest.open("wb") as out:
                shutil.copyfileobj(body, out, 1 << 20)
            return
        import httpx

        with httpx.stream("GET", url, timeout=30.0, follow_redirects=True) as resp:
            if resp.status_code >= 400:
                raise ManifestError(f"manifest {url!r} could not be fetched: HTTP {resp.status_code}")
            with dest.open("wb") as out:
                for chunk in resp.iter_bytes(1 << 20):
                    out.write(chunk)
    except ManifestError:
        raise
    except Exception as exc:
        reason = s3_reason(exc) if scheme == "s3" else f"{type(exc).__name__}: {exc}"
        raise ManifestError(f"manifest {url!r} could not be fetched: {reason}") from None


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


def open_binary(path: Path) -> IO[bytes]:
    """The file's bytes, gunzipped when it starts with the gzip magic."""
    with path.open("rb") as probe:
        magic = probe.read(2)
    if magic == b"\x1f\x8b":
        return gzip.open(path, "rb")  # type: ignore[return-value]  # GzipFile is a binary IO
    return path.open("rb")


def text_lines(fh: IO[bytes], name: str) -> Iterator[str]:
    """Decode lines as strict UTF-8 (BOM dropped), naming the line of the first bad byte."""
    decoder = codecs.getincrementaldecoder("utf-8")("strict")
    try:
        number = 0
        while raw := fh.readline(MAX_LINE_BYTES + 1):
            number += 1
            if len(raw) > MAX_LINE_BYTES:
                raise ManifestError(
                    f"manifest {name!r}, line {number} is longer than {MAX_LINE_BYTES >> 20} MiB: "
                    "a manifest line holds at most three 10 MiB images and a prompt"
                )
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
