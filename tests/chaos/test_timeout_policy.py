"""The timeout policy: a call whose answer was lost may have been billed, and the report says so.

A timed-out or dropped call may have reached the model (the API bills it) although we never saw its
request id. The pipeline retries it (the API has no idempotency key, so the retry may pay twice) and
marks the job ``possibly_billed``; the report must state a worst case that covers what the API may
have charged for every lost answer, so the spend is never silently understated.
"""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from flows.edit_manifest import edit_manifest
from qwenedit.options import RunOptions
from tests.chaos.conftest import PRICE, chaos_rows, check_invariants, read_results, timed_run

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_server")]  # the chaos suite: minutes


def params(manifest: Path, bucket: Any, emulator: Any, tmp_path: Path, **kwargs: Any) -> dict[str, Any]:
    return {
        "manifest": str(manifest),
        "dest": bucket.uri("out"),
        "base_url": emulator.base_url,
        "report_dir": str(tmp_path / "reports"),
        "rates": ("20",),
        "timeout_s": 1.5,
        **kwargs,
    }


async def test_a_hung_call_and_a_billed_drop_are_possibly_billed_and_the_worst_case_covers_the_charge(
    pipeline_env: Any, emulator_factory: Any, spy_on: Any, write_manifest: Any, tmp_path: Path
) -> None:
    emulator = emulator_factory(hang_s=30.0, next_faults=["hang", "drop_billed"])
    spy = spy_on(emulator)
    rows = chaos_rows(2)
    run = await timed_run(
        edit_manifest(RunOptions(**params(write_manifest(rows), pipeline_env, emulator, tmp_path)))
    )
    spy.settle()

    table = read_results(run.summary or {})
    assert list(table["status"]) == ["succeeded", "succeeded"]
    assert list(table["possibly_billed"]) == ["True", "True"]
    assert run.summary is not None and run.summary["possibly_billed_jobs"] == 2
    # The API billed 4 images (2 lost answers + 2 answered retries); the report knows 2 for sure.
    billed = sum(e["image_count"] for e in emulator.ledger())
    reported = sum(Decimal(c) for c in table["cost"])
    assert billed == 4 and reported == 2 * PRICE
    unreported = billed * PRICE - reported
    worst_case = run.summary["possibly_billed_jobs"] * 1 * PRICE  # n = 1 per job
    assert worst_case >= unreported
    faults = {c.fault for c in spy.calls}
    assert {"hang", "drop_billed"} <= faults
    check_invariants(spy=spy, bucket=pipeline_env, prefix="out", rows=rows, runs=[run])


async def test_a_job_whose_answer_is_lost_twice_reports_a_worst_case_of_both_lost_calls(
    pipeline_env: Any, emulator_factory: Any, spy_on: Any, write_manifest: Any, tmp_path: Path
) -> None:
    emulator = emulator_factory(next_faults=["drop_billed", "drop_billed"])
    spy = spy_on(emulator)
    rows = chaos_rows(1, n=2)
    run = await timed_run(
        edit_manifest(RunOptions(**params(write_manifest(rows), pipeline_env, emulator, tmp_path)))
    )
    spy.settle()

    assert sum(e["image_count"] for e in emulator.ledger()) == 6  # 2 lost answers + the answered retry
    row = read_results(run.summary or {}).iloc[0]
    assert row["status"] == "succeeded" and Decimal(row["cost"]) == 2 * PRICE
    # 4 images may have been charged on top of the 2 reported: the report must say so, per job and
    # in total, not just "possibly billed: yes" (which reads as at most n = 2 more).
    assert "possibly_billed_images" in row.index, "results.csv has no possibly_billed_images column"
    assert row["possibly_billed_images"] == "4"
    assert run.summary is not None
    assert run.summary.get("possibly_billed_images") == 4
    assert run.summary.get("possibly_billed_cost") == {"USD": str(4 * PRICE)}
    check_invariants(spy=spy, bucket=pipeline_env, prefix="out", rows=rows, runs=[run])
