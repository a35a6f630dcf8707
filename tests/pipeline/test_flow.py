"""The edit_manifest flow against real parts: the emulator over HTTP, SeaweedFS, a Prefect API."""

from __future__ import annotations

import io
import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from PIL import Image

from devkit.emulator import EmulatorProcess
from devkit.rates import max_in_window
from flows.edit_manifest import edit_manifest
from qwenedit.ledger import DONE_PREFIX
from qwenedit.options import RunOptions
from qwenedit.run import exit_code
from tests.pipeline.conftest import API_KEY, simple_rows

pytestmark = pytest.mark.usefixtures("prefect_server")


async def run(manifest: Path, bucket: Any, emulator: Any, tmp_path: Path, **kwargs: Any) -> dict[str, Any]:
    params: dict[str, Any] = {
        "manifest": str(manifest),
        "dest": bucket.uri("out"),
        "base_url": emulator.base_url,
        "report_dir": str(tmp_path / "reports"),
        "rates": ("20",),
        **kwargs,
    }
    summary: dict[str, Any] = await edit_manifest(RunOptions(**params))
    return summary


def delete_done_record(bucket: Any, job_id: str) -> None:
    """As if the run died before the job's done record was written."""
    listed = bucket.client.list_objects_v2(Bucket=bucket.bucket, Prefix=f"out/{DONE_PREFIX}{job_id}@")
    keys = [obj["Key"] for obj in listed.get("Contents", [])]
    assert len(keys) == 1, keys
    bucket.client.delete_object(Bucket=bucket.bucket, Key=keys[0])


def results(summary: dict[str, Any]) -> pd.DataFrame:
    return pd.read_csv(Path(summary["report_dir"]) / "results.csv", dtype=str, keep_default_na=False)


def billed_images(emulator: Any) -> int:
    return sum(int(e["image_count"]) for e in emulator.ledger())


async def test_every_job_succeeds_outputs_exist_with_the_api_size_and_cost_matches_the_ledger(
    pipeline_env: Any, emulator_factory: Any, write_manifest: Any, tmp_path: Path
) -> None:
    emulator = emulator_factory(rps=20.0)
    rows = simple_rows(6)
    rows[0]["n"] = 3
    rows[1]["size"] = "1033*1032"
    rows[2]["sku"] = "=HYPERLINK(1)"
    manifest = write_manifest(rows)
    summary = await run(manifest, pipeline_env, emulator, tmp_path)

    assert summary["by_status"] == {"succeeded": 6, "failed": 0, "skipped": 0, "not_attempted": 0}
    assert exit_code(summary) == 0
    table = results(summary)
    assert list(table["job_id"]) == [r["job_id"] for r in rows]  # manifest order
    assert table.loc[2, "sku"] == "'=HYPERLINK(1)"  # formula escaped
    client, bucket = pipeline_env.client, pipeline_env.bucket
    for _, row in table.iterrows():
        outputs = row["outputs"].split()
        assert len(outputs) == int(row["image_count"])
        for uri in outputs:
            key = uri.removeprefix(f"s3://{bucket}/")
            obj = client.get_object(Bucket=bucket, Key=key)
            assert obj["ContentType"] == "image/png"
            assert obj["Metadata"]["job-id"] == row["job_id"]
            assert obj["Metadata"]["request-id"] == row["request_id"]
            with Image.open(io.BytesIO(obj["Body"].read())) as img:
                assert img.size == (int(row["width"]), int(row["height"]))
    assert table.loc[0, "image_count"] == "3"
    assert (table.loc[1, "width"], table.loc[1, "height"]) == ("1040", "1024")  # size rounded to 16
    assert (table.loc[4, "width"], table.loc[4, "height"]) == ("1248", "832")  # 3:2 input, auto size

    billed = billed_images(emulator)
    assert billed == 3 + 5
    assert sum(Decimal(c) for c in table["cost"]) == billed * Decimal("0.03")
    assert summary["total_cost"] == {"USD": str(billed * Decimal("0.03"))}
    stored = client.list_objects_v2(Bucket=bucket, Prefix="out/_runs/")["Contents"]
    assert {o["Key"].rsplit("/", 1)[1] for o in stored} == {
        "results.csv",
        "summary.json",
        "failed.jsonl",
        "report.html",
    }


@pytest.mark.slow
async def test_rerun_of_the_same_command_makes_no_api_call(
    pipeline_env: Any, emulator_factory: Any, write_manifest: Any, tmp_path: Path
) -> None:
    emulator = emulator_factory(rps=20.0)
    manifest = write_manifest(simple_rows(5))
    first = await run(manifest, pipeline_env, emulator, tmp_path)
    calls = emulator.stats()["requests"]
    second = await run(manifest, pipeline_env, emulator, tmp_path)
    assert first["by_status"]["succeeded"] == 5
    assert second["by_status"]["skipped"] == 5
    assert emulator.stats()["requests"] == calls
    assert second["total_cost"] == {}
    assert exit_code(second) == 0


@pytest.mark.slow
async def test_a_changed_row_runs_again_and_its_outputs_are_replaced(
    pipeline_env: Any, emulator_factory: Any, write_manifest: Any, tmp_path: Path
) -> None:
    emulator = emulator_factory(rps=20.0)
    rows = simple_rows(3)
    first = await run(write_manifest(rows), pipeline_env, emulator, tmp_path)
    first_request = results(first).loc[1, "request_id"]
    rows[1]["prompt"] = "make it green instead"
    second = await run(write_manifest(rows), pipeline_env, emulator, tmp_path)
    table = results(second)
    assert list(table["status"]) == ["skipped", "succeeded", "skipped"]
    client, bucket = pipeline_env.client, pipeline_env.bucket
    head = client.head_object(Bucket=bucket, Key="out/job-0001/1.png")
    assert head["Metadata"]["request-id"] == table.loc[1, "request_id"] != first_request
    # the earlier version was paid for: it is kept aside, not thrown away
    client.head_object(Bucket=bucket, Key=f"out/job-0001/superseded/{first_request}/1.png")


@pytest.mark.slow
async def test_charged_but_not_copied_job_is_copied_without_a_new_call(
    pipeline_env: Any, emulator_factory: Any, write_manifest: Any, tmp_path: Path
) -> None:
    emulator = emulator_factory(rps=20.0)
    manifest = write_manifest(simple_rows(2))
    await run(manifest, pipeline_env, emulator, tmp_path)
    client, bucket = pipeline_env.client, pipeline_env.bucket
    # As if the run died after the charge record and before the copy finished.
    delete_done_record(pipeline_env, "job-0000")
    client.delete_object(Bucket=bucket, Key="out/job-0000/1.png")
    calls = emulator.stats()["requests"]
    second = await run(manifest, pipeline_env, emulator, tmp_path)
    table = results(second)
    assert list(table["status"]) == ["succeeded", "skipped"]
    assert emulator.stats()["requests"] == calls
    assert table.loc[0, "cost"] == "0"  # paid in the first run, not again
    client.head_object(Bucket=bucket, Key="out/job-0000/1.png")


async def test_outputs_that_expired_before_being_stored_fail_with_a_clear_reason_and_stay_billed(
    pipeline_env: Any, emulator_factory: Any, write_manifest: Any, tmp_path: Path
) -> None:
    # A 60 s TTL: the first run stores the outputs with time to spare; the rerun treats them as expired,
    # since a copy is only started while the links live for 5 more minutes (``Charge.expired``).
    emulator = emulator_factory(rps=20.0, url_ttl_s=60.0)
    manifest = write_manifest(simple_rows(1))
    await run(manifest, pipeline_env, emulator, tmp_path)
    client, bucket = pipeline_env.client, pipeline_env.bucket
    delete_done_record(pipeline_env, "job-0000")
    client.delete_object(Bucket=bucket, Key="out/job-0000/1.png")
    calls = emulator.stats()["requests"]
    second = await run(manifest, pipeline_env, emulator, tmp_path)
    row = results(second).iloc[0]
    assert row["status"] == "failed"
    assert row["error_code"] == "OutputsExpired"
    assert "outputs expired before they were stored" in row["error_message"]
    assert row["billed_not_stored"] == "1"
    assert emulator.stats()["requests"] == calls
    assert second["billed_not_stored_images"] == 1
    failed = (Path(second["report_dir"]) / "failed.jsonl").read_text().splitlines()
    assert json.loads(failed[0])["job_id"] == "job-0000"


@pytest.mark.slow
async def test_injected_5xx_and_throttling_end_every_job_with_a_result_and_nothing_billed_is_lost(
    pipeline_env: Any, emulator_factory: Any, write_manifest: Any, tmp_path: Path
) -> None:
    emulator = emulator_factory(rps=4.0, fail_500=0.1, fail_503=0.1, seed=11)
    manifest = write_manifest(simple_rows(16))
    # Pace above the emulator's limit on purpose so that real 429s happen too.
    summary = await run(manifest, pipeline_env, emulator, tmp_path, rates=("8",), max_attempts=8)
    table = results(summary)
    assert set(table["status"]) <= {"succeeded", "failed"}
    assert all(r["error_code"] for _, r in table[table["status"] == "failed"].iterrows())
    assert emulator.stats()["throttled_429"] > 0
    assert summary["throttled_429"] == emulator.stats()["throttled_429"]
    ledger = emulator.ledger()
    stored = {
        r["request_id"]: int(r["image_count"]) for _, r in table.iterrows() if r["status"] == "succeeded"
    }
    assert {e["request_id"]: int(e["image_count"]) for e in ledger} == stored
    assert sum(Decimal(c) for c in table["cost"]) == billed_images(emulator) * Decimal("0.03")


@pytest.mark.slow
async def test_invalid_key_trips_the_breaker_after_one_call(
    pipeline_env: Any, emulator_factory: Any, write_manifest: Any, tmp_path: Path
) -> None:
    emulator = emulator_factory(rps=20.0, keys=["sk-someone-else"])
    manifest = write_manifest(simple_rows(10))
    summary = await run(manifest, pipeline_env, emulator, tmp_path, rates=("2",))
    table = results(summary)
    assert emulator.stats()["requests"] == 1
    assert summary["stopped_by"]["code"] == "InvalidApiKey"
    assert exit_code(summary) == 3
    assert (table["status"] == "failed").sum() == 1
    assert (table["status"] == "not_attempted").sum() == 9
    reports = [p for p in Path(summary["report_dir"]).rglob("*") if p.is_file()]
    assert reports and all(API_KEY not in p.read_text(errors="ignore") for p in reports)


@pytest.mark.slow
async def test_budget_stops_new_calls_before_spend_could_exceed_it(
    pipeline_env: Any, emulator_factory: Any, write_manifest: Any, tmp_path: Path
) -> None:
    emulator = emulator_factory(rps=20.0)
    manifest = write_manifest(simple_rows(10, n=2))  # worst case $0.06 a job
    summary = await run(manifest, pipeline_env, emulator, tmp_path, budget="0.25", max_in_flight=2)
    table = results(summary)
    assert summary["stopped_by"]["cause"] == "budget"
    assert exit_code(summary) == 3
    spent = sum(Decimal(c) for c in table["cost"])
    assert spent <= Decimal("0.25")
    assert spent == billed_images(emulator) * Decimal("0.03")
    assert (table["status"] == "succeeded").sum() == 4
    assert (table["status"] == "not_attempted").sum() == 6


@pytest.mark.slow
@pytest.mark.xdist_group("pacing")  # measures request rates on a real clock: not beside another such test
async def test_requests_never_exceed_the_limit_in_any_second_and_none_are_throttled(
    pipeline_env: Any, write_manifest: Any, tmp_path: Path
) -> None:
    # The emulator runs in its own process, as the real API would: in-process, its thread would share
    # the GIL with the pipeline and blur the arrival times it measures.
    with EmulatorProcess(
        tmp_path / "emulator", rps=5, latency_median=0.4, latency_p99=1.5, render="fast", seed=3
    ) as emulator:
        manifest = write_manifest(simple_rows(30))
        summary = await run(manifest, pipeline_env, emulator, tmp_path, rates=("5",))
        log = emulator.arrivals()
        stats = emulator.stats()
    arrivals = [a["time"] for a in log]
    retried = results(summary).query("attempts != '1'")[["job_id", "attempts", "error_code"]]
    assert len(arrivals) == 30, (retried.to_dict(orient="records"), [a["status"] for a in log])
    assert max_in_window(arrivals) <= 5
    assert stats["throttled_429"] == 0
    span = max(arrivals) - min(arrivals)
    assert (len(arrivals) - 1) / span >= 0.85 * 5.0  # a regression guard; bench/ measures the real rate
    assert summary["by_status"]["succeeded"] == 30


@pytest.mark.slow
async def test_a_stopped_runs_prefect_state_gives_the_cause_and_reason(
    pipeline_env: Any, emulator_factory: Any, write_manifest: Any, tmp_path: Path
) -> None:
    emulator = emulator_factory(rps=20.0)
    manifest = write_manifest(simple_rows(6))
    options = RunOptions(
        manifest=str(manifest),
        dest=pipeline_env.uri("out"),
        base_url=emulator.base_url,
        report_dir=str(tmp_path / "reports"),
        rates=("20",),
        max_in_flight=1,
        daily_budget="0.06",
    )
    state = await edit_manifest(options, return_state=True)
    summary = await state.result()
    assert state.is_completed() and summary["stopped_by"]["cause"] == "spend_cap"
    assert state.message is not None
    assert state.message.startswith("stopped by spend_cap: ") and "daily" in state.message
    assert "not_attempted" in state.message and billed_images(emulator) <= 2
