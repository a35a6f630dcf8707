"""Local-directory destinations: atomic, fsynced, create-only writes on the local file system.

A create-only write links a fully written temp file into place (``link`` fails if the name exists, so
an existing object is never replaced). Metadata and content type live in a sidecar JSON under
``<root>/.qwenedit-meta/``, hidden from listings, so :meth:`LocalDestination.head` answers like S3's.
"""

from __future__ import annotations

import io
import json
import mimetypes
import os
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from qwenedit.errors import InvalidKey
from qwenedit.storage.base import MiB, PutOutcome, Readable
from qwenedit.storage.keys import validate_key


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
        if base_rel and not any(e.is_dir(follow_symlinks=False) for e in os.scandir(base)):
            # A flat folder (the ledger's million done records): names sorted in place and yielded one
            # at a time, without a second list of full keys.
            names = [n for n in os.listdir(base) if not n.startswith(self.TMP_PREFIX)]
            names.sort()
            yield from (key for n in names if (key := f"{base_rel}/{n}").startswith(prefix))
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
