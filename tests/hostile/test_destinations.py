"""Broken destinations: a bucket that does not exist, credentials the store refuses, a prefix that
tries to climb out. Each must stop ``qwenedit run`` before anything is paid for, quickly, with a
message that names the problem (exit 2), and never as a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.chaos.conftest import chaos_rows

pytestmark = pytest.mark.usefixtures("prefect_server")


def run_cli(manifest: Path, dest: str, emulator: Any, tmp_path: Path, **env: str) -> tuple[int, str, float]:
    from prefect.settings import PREFECT_API_URL

    command = [
        sys.executable, "-m", "qwenedit", "run", str(manifest), "--dest", dest,
        "--base-url", emulator.base_url, "--report-dir", str(tmp_path / "runs"), "--no-progress",
    ]  # fmt: skip
    environ = {**os.environ, "PREFECT_API_URL": str(PREFECT_API_URL.value()), "COLUMNS": "200", **env}
    started = time.monotonic()
    done = subprocess.run(command, env=environ, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    return done.returncode, " ".join((done.stdout + done.stderr).split()), time.monotonic() - started


@pytest.mark.slow
@pytest.mark.parametrize(
    ("dest", "problem"),
    [
        ("s3://qwenedit-no-such-bucket-7f3a/out", "NoSuchBucket"),
        ("s3://{bucket}/../escape", "'..'"),
    ],
    ids=["missing bucket", "prefix climbing out"],
)
def test_an_unusable_destination_stops_the_run_fast_before_any_call_with_a_message_naming_it(
    dest: str, problem: str, pipeline_env: Any, emulator: Any, write_manifest: Any, tmp_path: Path
) -> None:
    manifest = write_manifest(chaos_rows(3))
    code, said, took = run_cli(manifest, dest.format(bucket=pipeline_env.bucket), emulator, tmp_path)
    assert code == 2, said
    assert problem in said, said
    assert "Traceback" not in said
    assert emulator.stats()["requests"] == 0
    assert took < 30, f"took {took:.0f}s to say the destination is unusable"


@pytest.mark.slow
def test_s3_credentials_the_store_refuses_stop_the_run_fast_before_any_call(
    pipeline_env: Any, emulator: Any, write_manifest: Any, tmp_path: Path
) -> None:
    manifest = write_manifest(chaos_rows(3))
    code, said, took = run_cli(
        manifest, pipeline_env.uri("out"), emulator, tmp_path, AWS_SECRET_ACCESS_KEY="not-the-secret-at-all"
    )
    assert code == 2, said
    assert "SignatureDoesNotMatch" in said or "AccessDenied" in said, said
    assert "not-the-secret-at-all" not in said
    assert "Traceback" not in said
    assert emulator.stats()["requests"] == 0
    assert took < 30, f"took {took:.0f}s to say the credentials are refused"
