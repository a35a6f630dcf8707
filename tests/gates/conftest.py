"""Fixtures of the [gates] tests: the pipeline tests' manifests and environment, plus helpers to run the
real ``qwenedit run`` CLI as a subprocess against an in-process emulator and a SeaweedFS bucket."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from tests.pipeline.conftest import API_KEY, images_dir, pipeline_env, write_manifest

__all__ = ["API_KEY", "images_dir", "pipeline_env", "write_manifest"]


@dataclass
class CliRun:
    """One finished ``qwenedit run`` subprocess and the run directory it wrote."""

    code: int
    stdout: str
    stderr: str
    report_dir: Path

    @property
    def run_dir(self) -> Path:
        """The newest run folder under the report dir (each run has its own)."""
        dirs = [p for p in self.report_dir.iterdir() if p.is_dir()]
        assert dirs, f"no run folder; exit {self.code}\n{self.stdout}\n{self.stderr}"
        return max(dirs, key=lambda p: p.stat().st_mtime)

    def results(self) -> pd.DataFrame:
        return pd.read_csv(self.run_dir / "results.csv", dtype=str, keep_default_na=False)

    def summary(self) -> dict[str, Any]:
        import json

        data: dict[str, Any] = json.loads((self.run_dir / "summary.json").read_text())
        return data


class CliRunner:
    """``runner(manifest, emulator, *flags, stdin=…, prefix=…)``: the real CLI in a subprocess, against the
    session's Prefect API. ``stdin=None`` gives it a closed standard input (end of input). ``command`` and
    ``env`` are for tests that drive the process themselves."""

    def __init__(self, bucket: Any, workdir: Path) -> None:
        from prefect.settings import PREFECT_API_URL

        self.bucket, self.workdir = bucket, workdir
        self.env = dict(os.environ)
        self.env.update(bucket.env)
        self.env.update(
            DASHSCOPE_API_KEY=API_KEY, PREFECT_API_URL=str(PREFECT_API_URL.value()), COLUMNS="200"
        )
        self.runs = 0

    def command(
        self, manifest: Path, emulator: Any, *flags: str, prefix: str = "out"
    ) -> tuple[list[str], Path]:
        """The command line of a run, and the report dir it gets (a new one each time)."""
        self.runs += 1
        report_dir = self.workdir / f"runs{self.runs}"
        return [
            sys.executable, "-m", "qwenedit", "run", str(manifest),
            "--dest", self.bucket.uri(prefix),
            "--base-url", emulator.base_url,
            "--report-dir", str(report_dir),
            "--rps", "20",
            "--no-progress",
            *flags,
        ], report_dir  # fmt: skip

    def __call__(
        self,
        manifest: Path,
        emulator: Any,
        *flags: str,
        stdin: str | None = None,
        prefix: str = "out",
        timeout: float = 240,
    ) -> CliRun:
        args, report_dir = self.command(manifest, emulator, *flags, prefix=prefix)
        done = subprocess.run(
            args,
            env=self.env,
            cwd=self.workdir,
            input=stdin,
            stdin=subprocess.DEVNULL if stdin is None else None,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        return CliRun(done.returncode, done.stdout, done.stderr, report_dir)


@pytest.fixture
def run_cli(pipeline_env: Any, prefect_server: None, tmp_path: Path) -> CliRunner:
    """A ``CliRunner`` on the test's bucket, in the test's temporary folder."""
    return CliRunner(pipeline_env, tmp_path)
