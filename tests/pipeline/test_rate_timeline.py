"""A run records its requests, 429s and spend over time in summary.json, and report.html draws them."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from qwenedit.options import RunOptions
from qwenedit.run import run_manifest
from tests.pipeline.conftest import simple_rows


async def test_the_runs_timeline_counts_what_the_api_received_and_report_html_draws_it(
    monkeypatch: pytest.MonkeyPatch,
    emulator: Any,
    write_manifest: Callable[[list[dict[str, Any]]], Path],
    tmp_path: Path,
) -> None:
    monkeypatch.setenv("DASHSCOPE_API_KEY", "sk-timeline-test-0123456789")
    manifest = write_manifest(simple_rows(8))
    options = RunOptions(
        manifest=str(manifest),
        dest=str(tmp_path / "out"),
        base_url=emulator.base_url,
        report_dir=str(tmp_path / "reports"),
        rates=("20",),
    )
    summary = await run_manifest(options)
    stored = json.loads((Path(summary.report_dir) / "summary.json").read_text())
    timeline = stored["timeline"]
    sent = sum(sum(line["sent"]) for line in timeline["models"].values())
    assert sent == stored["requests_sent"] == len(emulator.ledger()) == 8
    assert {line["limit_rps"] for line in timeline["models"].values()} == {20.0}
    assert timeline["spend"]["USD"][-1] == stored["total_cost"]["USD"]
    html = (Path(summary.report_dir) / "report.html").read_text()
    assert 'id="rate-chart"' in html
