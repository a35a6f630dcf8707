"""Helpers of the [gates] tests: a run through the run layer in this process, and reading its reports."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from qwenedit.options import RunOptions
from qwenedit.run import Approver, run_manifest


async def run_here(
    manifest: Path,
    bucket: Any,
    emulator: Any,
    tmp_path: Path,
    approve: Approver | None = None,
    prefix: str = "out",
    **options: Any,
) -> dict[str, Any]:
    """Open, execute and finish a run of ``manifest`` without Prefect; returns its summary."""
    params: dict[str, Any] = {
        "manifest": str(manifest),
        "dest": bucket.uri(prefix),
        "base_url": emulator.base_url,
        "report_dir": str(tmp_path / "reports"),
        "rates": ("20",),
        **options,
    }
    summary = await run_manifest(RunOptions(**params), approve=approve)
    return summary.to_json()


def results(summary: dict[str, Any]) -> pd.DataFrame:
    return pd.read_csv(Path(summary["report_dir"]) / "results.csv", dtype=str, keep_default_na=False)


def stored_summary(summary: dict[str, Any]) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((Path(summary["report_dir"]) / "summary.json").read_text())
    return data


def billed_calls(emulator: Any) -> int:
    return len(emulator.ledger())
