"""Hostile manifests and inputs, end to end through ``qwenedit run`` and the flow.

The manifest team's table (tests/manifest/test_bad_manifests.py) proves each bad cell gets its exact
message from ``validate``. These tests prove what the *run* does with the same attacks: the whole
manifest is refused before a single call (exit 2), nothing at the destination changes, and what slips
past validation (a symlink, a decompression bomb: validation at run time does not open images) is
still stopped at run time before any byte leaves. A million-row manifest is covered by
tests/manifest/test_manifest.py::test_a_million_row_manifest_validates_in_bounded_memory.
"""

from __future__ import annotations

import base64
import csv
import gzip
import struct
import subprocess
import sys
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from flows.edit_manifest import edit_manifest
from qwenedit.cli import app
from qwenedit.manifest import validate_manifest
from qwenedit.options import RunOptions
from tests.chaos.conftest import chaos_rows, check_invariants, read_results, timed_run
from tests.hostile.conftest import snapshot

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def write_csv(path: Path, rows: list[dict[str, str]]) -> Path:
    columns = ["job_id", "image_1", "prompt"]
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: row.get(k, "") for k in columns})
    return path


def seed_destination(bucket: Any) -> dict[str, str]:
    """Outputs and ledger records of an earlier run, which a hostile run must leave exactly as they are."""
    client, name = bucket.client, bucket.bucket
    client.put_object(
        Bucket=name, Key="out/keep-1/1.png", Body=PNG_MAGIC + b"earlier", Metadata={"request-id": "r1"}
    )
    client.put_object(Bucket=name, Key="out/_ledger/keep-1/done.json", Body=b'{"job_id": "keep-1"}')
    client.put_object(Bucket=name, Key="escape/1.png", Body=b"outside the prefix")
    return snapshot(bucket)


@dataclass
class HostileManifest:
    name: str
    rows: list[dict[str, str]]
    expect: list[tuple[int | None, str, str]]  # (row, column, words in the reason) for validate


def _big_data_uri() -> str:
    return "data:image/png;base64," + base64.b64encode(PNG_MAGIC + bytes(8 * 1024 * 1024)).decode()


CASES = [
    HostileManifest(
        "job ids escaping the prefix or hitting the ledger",
        [
            {"job_id": "../escape", "image_1": "square.png", "prompt": "p"},
            {"job_id": "a/../../escape", "image_1": "square.png", "prompt": "p"},
            {"job_id": "..", "image_1": "square.png", "prompt": "p"},
            {"job_id": "/abs", "image_1": "square.png", "prompt": "p"},
            {"job_id": "x\\..\\y", "image_1": "square.png", "prompt": "p"},
            {"job_id": "_ledger", "image_1": "square.png", "prompt": "p"},
            {"job_id": "_runs", "image_1": "square.png", "prompt": "p"},
            {"job_id": "%2e%2e%2fescape", "image_1": "square.png", "prompt": "p"},
            {"job_id": "ｅｓｃａｐｅ", "image_1": "square.png", "prompt": "p"},  # fullwidth lookalikes
            {"job_id": "a\u202eb", "image_1": "square.png", "prompt": "p"},  # right-to-left override
            {"job_id": "fine-1", "image_1": "square.png", "prompt": "p"},
        ],
        [
            (1, "job_id", "must not contain /"),
            (2, "job_id", "must not contain /"),
            (3, "job_id", 'must not contain ".."'),
            (4, "job_id", "must not contain /"),
            (5, "job_id", "must not contain / or \\"),
            (6, "job_id", "must start with an ASCII letter or digit"),
            (7, "job_id", "must start with an ASCII letter or digit"),
            (8, "job_id", "must start with an ASCII letter or digit"),
            (9, "job_id", "must start with an ASCII letter or digit"),
            (10, "job_id", "may contain only ASCII letters"),
        ],
    ),
    HostileManifest(
        "local images outside the input root",
        [
            {"job_id": "abs", "image_1": "/etc/hostname", "prompt": "p"},
            {"job_id": "up", "image_1": "../../../../etc/hostname", "prompt": "p"},
            {"job_id": "home", "image_1": "~/.ssh/id_rsa", "prompt": "p"},
            {"job_id": "fileurl", "image_1": "file:///etc/hostname", "prompt": "p"},
        ],
        [
            (1, "image_1", "is outside the input root"),
            (2, "image_1", "is outside the input root"),
            (3, "image_1", "is outside the input root"),
            (4, "image_1", ""),
        ],
    ),
    HostileManifest(
        "an inline data URI over 10 MiB",
        [
            {"job_id": "ok", "image_1": "square.png", "prompt": "p"},
            {"job_id": "huge", "image_1": _big_data_uri(), "prompt": "p"},
        ],
        [(2, "image_1", "the API takes at most 10 MiB")],
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_a_hostile_manifest_is_refused_whole_before_any_call_and_the_destination_is_untouched(
    case: HostileManifest, pipeline_env: Any, emulator: Any, images_dir: Path, tmp_path: Path
) -> None:
    for img in images_dir.iterdir():
        (tmp_path / img.name).write_bytes(img.read_bytes())
    manifest = write_csv(tmp_path / "jobs.csv", case.rows)
    before = seed_destination(pipeline_env)

    problems = [p for p in validate_manifest(manifest).problems if p.severity == "error"]
    for row, column, words in case.expect:
        assert any(p.row == row and p.column == column and words in p.reason for p in problems), (
            f"no error for row {row}, column {column} ({words!r}); got {[p.message() for p in problems]}"
        )

    args = ["run", str(manifest), "--dest", pipeline_env.uri("out"), "--base-url", emulator.base_url]
    result = CliRunner().invoke(app, [*args, "--report-dir", str(tmp_path / "runs"), "--no-progress"])
    assert result.exit_code == 2, result.output
    assert "manifest is invalid: nothing was run" in result.output
    assert "Traceback" not in result.output
    assert emulator.stats()["requests"] == 0
    assert snapshot(pipeline_env) == before


def test_a_cell_larger_than_any_image_is_a_located_read_error_and_nothing_runs(
    pipeline_env: Any, emulator: Any, tmp_path: Path
) -> None:
    manifest = write_csv(
        tmp_path / "jobs.csv", [{"job_id": "a", "image_1": "x.png", "prompt": "p" * (17 << 20)}]
    )
    before = seed_destination(pipeline_env)
    args = ["run", str(manifest), "--dest", pipeline_env.uri("out"), "--base-url", emulator.base_url]
    result = CliRunner().invoke(app, [*args, "--no-progress"], env={"COLUMNS": "250"})
    assert result.exit_code == 2
    said = " ".join(result.output.split())  # at 80 columns the console would fold the path mid-word
    assert "jobs.csv', line 2: cannot be read as CSV: field larger than field limit" in said
    assert emulator.stats()["requests"] == 0
    assert snapshot(pipeline_env) == before


@pytest.mark.slow
def test_a_compressed_manifest_with_one_256_mib_line_is_refused_in_bounded_memory(tmp_path: Path) -> None:
    # 1.2 MB on disk, 256 MiB once decompressed, all on one line: a manifest "zip bomb".
    manifest = tmp_path / "bomb.csv.gz"
    with gzip.open(manifest, "wb", compresslevel=1) as fh:
        fh.write(b"job_id,image_1,prompt\nok,ok.png,")
        block = b"a" * (1 << 20)
        for _ in range(256):
            fh.write(block)
        fh.write(b"\n")
    probe = (
        "import sys\n"
        "from qwenedit.errors import ManifestError\n"
        "from qwenedit.manifest import validate_manifest\n"
        "try:\n"
        "    validate_manifest(sys.argv[1])\n"
        "    print('no error')\n"
        "except ManifestError as exc:\n"
        "    print(exc)\n"
        # VmHWM, not ru_maxrss: after fork+exec, ru_maxrss still carries the parent's (pytest's) peak.
        "hwm = next(line for line in open('/proc/self/status') if line.startswith('VmHWM:'))\n"
        "print('peak_mib', int(hwm.split()[1]) // 1024)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe, str(manifest)], capture_output=True, text=True, timeout=120
    )
    lines = out.stdout.strip().splitlines()
    assert lines and "line 2" in lines[0], out.stdout + out.stderr
    peak = int(lines[-1].split()[1])
    assert peak < 160, f"validating a 1 MB file peaked at {peak} MiB: the long line was read whole"


# --- what validation at run time does not open: caught when the job runs ----------------------------

needs_prefect = pytest.mark.usefixtures("prefect_server")


@needs_prefect
async def test_a_symlink_leaving_the_input_root_fails_its_job_at_run_time_and_its_target_is_never_sent(
    pipeline_env: Any, emulator_factory: Any, spy_on: Any, write_manifest: Any, tmp_path: Path
) -> None:
    emulator = emulator_factory()
    spy = spy_on(emulator)
    rows = chaos_rows(3)
    rows[1]["image_1"] = "link.png"
    manifest = write_manifest(rows)
    secret = tmp_path / "secret.png"  # a real image, outside the manifest's folder (the input root)
    secret.write_bytes((manifest.parent / "square.png").read_bytes())
    (manifest.parent / "link.png").symlink_to(secret)
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
    table = read_results(run.summary or {})
    bad = table.iloc[1]
    assert bad["status"] == "failed"
    assert (
        "outside the input root" in bad["error_message"]
        and "after following symlinks" in bad["error_message"]
    )
    assert 'job_id "c001"' in bad["error_message"] and "image_1" in bad["error_message"]
    assert spy.calls_for(rows[1]["prompt"]) == []  # never sent
    assert list(table["status"][[0, 2]]) == ["succeeded", "succeeded"]
    check_invariants(spy=spy, bucket=pipeline_env, prefix="out", rows=rows, runs=[run])


def _png_bomb(width: int, height: int) -> bytes:
    """A PNG header declaring width×height pixels followed by a tiny, truncated image stream."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return PNG_MAGIC + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(bytes(4096))) + chunk(b"IEND", b"")


@needs_prefect
async def test_a_decompression_bomb_is_never_decoded_by_the_run_and_its_refusal_costs_nothing(
    pipeline_env: Any, emulator_factory: Any, spy_on: Any, write_manifest: Any, tmp_path: Path
) -> None:
    emulator = emulator_factory()
    spy = spy_on(emulator)
    rows = chaos_rows(2)
    rows[0]["image_1"] = "bomb.png"
    manifest = write_manifest(rows)
    (manifest.parent / "bomb.png").write_bytes(_png_bomb(40_000, 40_000))  # 1.6 G pixels, 4 KB of data
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
    table = read_results(run.summary or {})
    bomb = table.iloc[0]
    assert bomb["status"] == "failed" and bomb["cost"] == "0" and bomb["possibly_billed"] == "False"
    assert bomb["error_message"]
    assert table.iloc[1]["status"] == "succeeded"
    assert emulator.stats()["billed_images"] == 1
    check_invariants(spy=spy, bucket=pipeline_env, prefix="out", rows=rows, runs=[run])
