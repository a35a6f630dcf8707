"""LocalDestination: atomic, create-only writes inside a root directory, and nothing outside it."""

from __future__ import annotations

import io
import os
import threading
from pathlib import Path

import pytest

from qwenedit.storage import Destination, InvalidKey, LocalDestination, S3Destination


class _FailingReader:
    """Gives ``good`` bytes, then raises: a source that dies mid-copy."""

    def __init__(self, good: bytes) -> None:
        self._good = io.BytesIO(good)

    def read(self, n: int = -1) -> bytes:
        data = self._good.read(n)
        if not data:
            raise ConnectionError("source went away")
        return data


def _all_files(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def test_both_destinations_satisfy_the_protocol(tmp_path: Path) -> None:
    assert isinstance(LocalDestination(tmp_path), Destination)
    assert issubclass(S3Destination, Destination)


def test_create_only_never_overwrites(tmp_path: Path) -> None:
    dest = LocalDestination(tmp_path / "out")
    assert dest.put_create_only("j1/0.png", io.BytesIO(b"first"), "image/png", {"job": "j1"}) == "created"
    assert dest.put_create_only("j1/0.png", io.BytesIO(b"second"), "image/png", {"job": "x"}) == "exists"
    assert (tmp_path / "out" / "j1" / "0.png").read_bytes() == b"first"
    head = dest.head("j1/0.png")
    assert head == {"size": 5, "content_type": "image/png", "metadata": {"job": "j1"}}


def test_concurrent_writers_to_one_key_produce_exactly_one_creation(tmp_path: Path) -> None:
    dest = LocalDestination(tmp_path)
    outcomes: list[str] = []
    barrier = threading.Barrier(8)

    def write(i: int) -> None:
        barrier.wait()
        outcomes.append(dest.put_create_only("race.png", io.BytesIO(bytes([i]) * 100_000), "image/png"))

    threads = [threading.Thread(target=write, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["created"] + ["exists"] * 7
    body = (tmp_path / "race.png").read_bytes()
    assert len(body) == 100_000 and len(set(body)) == 1  # one writer's bytes, whole, never mixed
    assert list(dest.list_keys()) == ["race.png"]


def test_failed_write_leaves_neither_object_nor_temp_file(tmp_path: Path) -> None:
    dest = LocalDestination(tmp_path)
    with pytest.raises(ConnectionError):
        dest.put_create_only("j/0.png", _FailingReader(b"partial"), "image/png", {"job": "j"})
    assert not dest.exists("j/0.png")
    assert [f for f in _all_files(tmp_path) if not f.startswith(".qwenedit-meta/")] == []
    assert not any(".qwenedit-tmp-" in f for f in _all_files(tmp_path))
    # and the key is still free for the retry
    assert dest.put_create_only("j/0.png", io.BytesIO(b"whole"), "image/png") == "created"


def test_put_bytes_replaces_atomically_or_creates_only(tmp_path: Path) -> None:
    dest = LocalDestination(tmp_path)
    assert dest.put_bytes("run/summary.json", b"1", "application/json") == "created"
    assert dest.put_bytes("run/summary.json", b"2", "application/json") == "created"
    assert dest.get_bytes("run/summary.json") == b"2"
    assert dest.put_bytes("run/summary.json", b"3", "application/json", overwrite=False) == "exists"
    assert dest.get_bytes("run/summary.json") == b"2"
    head = dest.head("run/summary.json")
    assert head is not None and head["content_type"] == "application/json" and head["size"] == 1


def test_missing_keys_read_as_none(tmp_path: Path) -> None:
    dest = LocalDestination(tmp_path / "never-created")
    assert dest.get_bytes("a.png") is None
    assert dest.head("a.png") is None
    assert not dest.exists("a.png")
    assert list(dest.list_keys()) == []


def test_head_without_sidecar_guesses_content_type(tmp_path: Path) -> None:
    (tmp_path / "made-by-hand.jpg").write_bytes(b"\xff\xd8\xff")
    head = LocalDestination(tmp_path).head("made-by-hand.jpg")
    assert head == {"size": 3, "content_type": "image/jpeg", "metadata": {}}


@pytest.mark.parametrize(
    "key",
    ["../escape.png", "a/../../escape.png", "/etc/passwd", "a//b.png", "a/./b.png", "dir/", "", "x\x00y",
     ".qwenedit-meta/a.png.json"],
)  # fmt: skip
def test_keys_that_could_escape_the_root_are_refused(tmp_path: Path, key: str) -> None:
    root = tmp_path / "root"
    dest = LocalDestination(root)
    with pytest.raises(InvalidKey):
        dest.put_create_only(key, io.BytesIO(b"x"), "image/png")
    with pytest.raises(InvalidKey):
        dest.put_bytes(key, b"x")
    with pytest.raises(InvalidKey):
        dest.get_bytes(key)
    assert _all_files(tmp_path) == []


def test_list_keys_filters_by_prefix_and_hides_internal_files(tmp_path: Path) -> None:
    dest = LocalDestination(tmp_path)
    for key in ["j1/0.png", "j1/1.png", "j10/0.png", "j2/0.png", "ledger/charges.jsonl"]:
        dest.put_create_only(key, io.BytesIO(b"x"), "image/png", {"k": key})
    (tmp_path / "j1" / ".qwenedit-tmp-leftover").write_bytes(b"crash debris")
    assert list(dest.list_keys()) == ["j1/0.png", "j1/1.png", "j10/0.png", "j2/0.png", "ledger/charges.jsonl"]
    assert list(dest.list_keys("j1/")) == ["j1/0.png", "j1/1.png"]
    assert list(dest.list_keys("j1")) == ["j1/0.png", "j1/1.png", "j10/0.png"]
    assert list(dest.list_keys("ledger/ch")) == ["ledger/charges.jsonl"]
    with pytest.raises(InvalidKey):
        list(dest.list_keys("../"))


def test_unicode_and_odd_characters_round_trip(tmp_path: Path) -> None:
    dest = LocalDestination(tmp_path / "输出 dir")
    key = "作业 1/a+b=c~d.png"
    meta = {"prompt": "把猫变成狗"}
    assert dest.put_create_only(key, io.BytesIO(b"x"), "image/png", meta) == "created"
    assert list(dest.list_keys()) == [key]
    head = dest.head(key)
    assert head is not None and head["metadata"] == meta
    assert dest.uri(key) == str(tmp_path / "输出 dir" / "作业 1" / "a+b=c~d.png")


def test_written_files_are_readable_by_others(tmp_path: Path) -> None:
    # mkstemp would make them 0600; outputs are meant to be shared.
    dest = LocalDestination(tmp_path)
    dest.put_create_only("a.png", io.BytesIO(b"x"), "image/png")
    mode = os.stat(tmp_path / "a.png").st_mode & 0o777
    assert mode == 0o644 & ~_umask()


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current
