"""API faults under a real S3 server: 5xx, dropped connections, 429 storms, timeouts, partial success.

Each test runs the ``edit_manifest`` flow against the emulator with faults switched on and ends with
``check_invariants``: nothing billed is lost, nothing answered is paid twice, the report matches the
emulator's books.
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


def flow_params(manifest: Path, bucket: Any, emulator: Any, tmp_path: Path, **kwargs: Any) -> dict[str, Any]:
    return {
        "manifest": str(manifest),
        "dest": bucket.uri("out"),
        "base_url": emulator.base_url,
        "report_dir": str(tmp_path / "reports"),
        "rates": ("20",),
        **kwargs,
    }


@pytest.mark.slow
async def test_thirty_percent_5xx_and_dropped_connections_lose_nothing_and_never_pay_an_answered_call_twice(
    pipeline_env: Any, emulator_factory: Any, spy_on: Any, write_manifest: Any, tmp_path: Path
) -> None:
    emulator = emulator_factory(fail_500=0.1, fail_503=0.1, drop_rate=0.05, drop_billed_rate=0.05, seed=7)
    spy = spy_on(emulator)
    rows = chaos_rows(24)
    manifest = write_manifest(rows)
    run = await timed_run(
        edit_manifest(RunOptions(**flow_params(manifest, pipeline_env, emulator, tmp_path, max_attempts=8)))
    )

    faults = emulator.stats()["faults"]
    assert sum(faults.values()) >= 5, faults  # the faults really happened
    table = read_results(run.summary or {})
    assert set(table["status"]) <= {"succeeded", "failed"}
    found = check_invariants(spy=spy, bucket=pipeline_env, prefix="out", rows=rows, runs=[run])
    assert found.billed_images == found.stored_images + found.lost_possibly_billed


@pytest.mark.slow
async def test_a_429_storm_from_pacing_at_three_times_the_limit_still_finishes_every_job_once(
    pipeline_env: Any, emulator_factory: Any, spy_on: Any, write_manifest: Any, tmp_path: Path
) -> None:
    emulator = emulator_factory(rps=2.0, seed=3)
    spy = spy_on(emulator)
    rows = chaos_rows(12)
    manifest = write_manifest(rows)
    params = flow_params(manifest, pipeline_env, emulator, tmp_path, rates=("6",), max_attempts=10)
    run = await timed_run(edit_manifest(RunOptions(**params)))

    assert emulator.stats()["throttled_429"] >= 3
    assert run.summary is not None
    assert run.summary["throttled_429"] == emulator.stats()["throttled_429"]
    assert run.summary["by_status"]["succeeded"] == 12
    found = check_invariants(spy=spy, bucket=pipeline_env, prefix="out", rows=rows, runs=[run])
    assert found.billed_requests == 12 and found.jobs_billed_twice == 0


@pytest.mark.slow
async def test_answers_slower_than_the_client_timeout_are_marked_possibly_billed_and_nothing_is_lost(
    pipeline_env: Any, emulator_factory: Any, spy_on: Any, write_manifest: Any, tmp_path: Path
) -> None:
    # A third of the calls outlive the 1 s timeout: some "hang" (billed when the client hangs up),
    # some are just slow (a long latency tail). Both are billed by the emulator, like the real API.
    emulator = emulator_factory(hang_rate=0.15, hang_s=20.0, latency_median_s=0.3, latency_p99_s=3.0, seed=5)
    spy = spy_on(emulator)
    rows = chaos_rows(16)
    manifest = write_manifest(rows)
    params = flow_params(manifest, pipeline_env, emulator, tmp_path, timeout_s=1.0, max_attempts=6)
    run = await timed_run(edit_manifest(RunOptions(**params)))

    table = read_results(run.summary or {})
    timed_out = [c for c in spy.calls if c.fault == "hang" or (c.ended or 0) - c.started > 1.0]
    assert timed_out, "no call outlived the timeout: the test did not test anything"
    found = check_invariants(spy=spy, bucket=pipeline_env, prefix="out", rows=rows, runs=[run])
    assert found.lost_possibly_billed >= 1
    assert (table["possibly_billed"] == "True").sum() >= 1
    assert (
        run.summary is not None
        and run.summary["possibly_billed_jobs"] == (table["possibly_billed"] == "True").sum()
    )


async def test_partial_success_bills_k_of_n_images_and_the_report_says_k(
    pipeline_env: Any, emulator_factory: Any, spy_on: Any, write_manifest: Any, tmp_path: Path
) -> None:
    emulator = emulator_factory(partial_rate=0.6, seed=9)
    spy = spy_on(emulator)
    rows = chaos_rows(8, n=4)
    manifest = write_manifest(rows)
    run = await timed_run(
        edit_manifest(RunOptions(**flow_params(manifest, pipeline_env, emulator, tmp_path)))
    )

    table = read_results(run.summary or {})
    billed = {e["request_id"]: e["image_count"] for e in emulator.ledger()}
    partial = {rid: k for rid, k in billed.items() if k < 4}
    assert partial, "no partial success happened"
    for _, row in table.iterrows():
        k = billed[row["request_id"]]
        assert row["status"] == "succeeded"
        assert int(row["image_count"]) == k
        assert len(row["outputs"].split()) == k
        assert row["images_requested"] == "4"
        assert Decimal(row["cost"]) == k * PRICE
    assert run.summary is not None
    assert run.summary["images_stored"] == sum(billed.values()) < 4 * len(rows)
    check_invariants(spy=spy, bucket=pipeline_env, prefix="out", rows=rows, runs=[run])
