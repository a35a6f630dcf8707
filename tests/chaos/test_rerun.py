"""Rerunning ``failed.jsonl`` (the advice after exit 1) pays nothing again for a job that was already
charged, and finishes the jobs that failed for free."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from flows.edit_manifest import edit_manifest
from qwenedit.options import RunOptions
from tests.chaos.conftest import chaos_rows, check_invariants, read_results, timed_run

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_server")]  # the chaos suite: minutes


async def test_rerunning_failed_jsonl_never_calls_a_charged_job_again_and_finishes_the_free_failures(
    pipeline_env: Any, emulator_factory: Any, spy_on: Any, write_manifest: Any, tmp_path: Path
) -> None:
    # Job 0 is paid but its outputs sit on a refused host; job 1 is refused by moderation (free).
    emulator = emulator_factory(
        foreign_base_url="http://127.0.0.1:9", next_faults=["foreign_host", "inspection"]
    )
    spy = spy_on(emulator)
    rows = chaos_rows(4)
    manifest = write_manifest(rows)
    common = {
        "dest": pipeline_env.uri("out"),
        "base_url": emulator.base_url,
        "rates": ("20",),
        "max_in_flight": 1,
    }
    first = await timed_run(
        edit_manifest(RunOptions(manifest=str(manifest), report_dir=str(tmp_path / "r1"), **common))
    )
    table = read_results(first.summary or {})
    assert list(table["error_code"][:2]) == ["OutputHostRefused", "DataInspectionFailed"]
    assert len(emulator.ledger()) == 3

    failed = Path((first.summary or {})["report_dir"]) / "failed.jsonl"
    second = await timed_run(
        edit_manifest(
            RunOptions(
                manifest=str(failed),
                report_dir=str(tmp_path / "r2"),
                input_root=str(manifest.parent),
                **common,
            )
        )
    )
    second.whole_manifest = False
    again = read_results(second.summary or {})
    assert list(again["job_id"]) == ["c000", "c001"]
    assert list(again["status"]) == ["failed", "succeeded"]
    assert again.iloc[0]["error_code"] == "OutputHostRefused" and again.iloc[0]["cost"] == "0"
    assert len(spy.calls_for(rows[0]["prompt"])) == 1  # paid once, never called again
    assert len(emulator.ledger()) == 4  # only job 1, which had cost nothing, was called
    check_invariants(spy=spy, bucket=pipeline_env, prefix="out", rows=rows, runs=[first, second])
