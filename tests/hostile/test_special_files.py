"""Special files among the inputs (issue 19, row 2): only regular files are read, never a FIFO (it
would hang the run), a device (``/dev/zero`` eats memory), or a file over the API's per-image limit;
a symlink swapped in after the realpath check is not followed. Each fails that job, or that
validation row, with a reason.

Probes that would hang or eat memory if the guard regressed run in a child process with a timeout
and an address-space limit, so a regression fails the test instead of hanging the suite.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from flows.edit_manifest import edit_manifest
from qwenedit.errors import InputError
from qwenedit.inputs import InputResolver
from qwenedit.options import RunOptions
from tests.chaos.conftest import chaos_rows, check_invariants, read_results, timed_run
from tests.manifest.conftest import image_bytes

needs_fifo = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")


def _probe(root: Path, ref: str, how: str = "identity") -> str:
    """``InputResolver(input_root=root).<how>(ref)`` in a child (60 s, 1 GiB of address space): the
    outcome as text."""
    code = textwrap.dedent(
        f"""
        import resource
        resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))
        from qwenedit.errors import InputError
        from qwenedit.inputs import InputResolver
        resolver = InputResolver(input_root={str(root)!r}, manifest_dir={str(root)!r})
        try:
            out = resolver.{how}({ref!r})
            print("ok", out.errors if {how!r} == "check" else "")
        except InputError as exc:
            print("refused", exc.reason)
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=root)
    return (done.stdout + done.stderr).strip()


def _release(fifo: Path) -> None:
    """Unblock anyone stuck opening ``fifo`` for reading (only a regression would be)."""
    with contextlib.suppress(OSError):
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))


@needs_fifo
def test_a_fifo_input_is_refused_without_hanging(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    try:
        hashed = _probe(tmp_path, "pipe.png", "identity")
        sent = _probe(tmp_path, "pipe.png", "resolve")
        checked = _probe(tmp_path, "pipe.png", "check")
    finally:
        _release(fifo)
    assert hashed.startswith("refused") and "named pipe (FIFO), not a regular file" in hashed
    assert sent.startswith("refused") and "named pipe" in sent
    assert "named pipe" in checked  # validation: a row error, not a hang


def test_a_device_under_a_wide_input_root_is_refused(tmp_path: Path) -> None:
    if not Path("/dev/zero").exists():
        pytest.skip("no /dev/zero")
    found = _probe(Path("/"), "/dev/zero", "identity")
    assert found.startswith("refused") and "character device" in found, found


def test_a_file_over_the_api_limit_is_not_hashed_whole(tmp_path: Path) -> None:
    big = tmp_path / "big.png"
    with big.open("wb") as fh:  # sparse: 11 MiB that take no disk
        fh.write(image_bytes())
        fh.truncate(11 * 1024 * 1024)
    resolver = InputResolver(input_root=tmp_path, manifest_dir=tmp_path)
    with resolver, pytest.raises(InputError, match=r"over 10\.0 MiB"):
        resolver.identity("big.png")


def test_a_symlink_swapped_in_after_the_check_is_not_followed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    secret = tmp_path / "secret.png"
    secret.write_bytes(image_bytes())
    (root / "leaf.png").symlink_to(secret)
    (root / "dirlink").symlink_to(tmp_path)
    resolver = InputResolver(input_root=root, manifest_dir=root)
    # The race: realpath saw a regular file under the root; by the time it is opened, it is a link.
    monkeypatch.setattr(InputResolver, "_real_local", lambda self, ref, path: path)
    for ref in ("leaf.png", "dirlink/secret.png"):
        with pytest.raises(InputError, match="became a symbolic link after it was checked"):
            resolver.identity(ref)
        with pytest.raises(InputError, match="became a symbolic link"):
            resolver.resolve(ref)


needs_prefect = pytest.mark.usefixtures("prefect_server")


@needs_fifo
@needs_prefect
async def test_a_fifo_among_the_inputs_fails_its_job_and_the_run_ends_by_itself(
    pipeline_env: Any, emulator_factory: Any, spy_on: Any, write_manifest: Any, tmp_path: Path
) -> None:
    emulator = emulator_factory()
    spy = spy_on(emulator)
    rows = chaos_rows(3)
    rows[1]["image_1"] = "pipe.png"
    manifest = write_manifest(rows)
    fifo = manifest.parent / "pipe.png"
    os.mkfifo(fifo)
    try:
        run = await timed_run(
            edit_manifest(
                RunOptions(
                    manifest=str(manifest),
                    dest=pipeline_env.uri("out"),
                    base_url=emulator.base_url,
                    report_dir=str(tmp_path / "reports"),
                    rates=("20",),
                )
            )
        )
    finally:
        _release(fifo)
    table = read_results(run.summary or {})
    bad = table.iloc[1]
    assert bad["status"] == "failed"
    assert "named pipe (FIFO), not a regular file" in bad["error_message"]
    assert "image_1" in bad["error_message"]
    assert spy.calls_for(rows[1]["prompt"]) == []  # never sent
    assert list(table["status"][[0, 2]]) == ["succeeded", "succeeded"]
    check_invariants(spy=spy, bucket=pipeline_env, prefix="out", rows=rows, runs=[run])
