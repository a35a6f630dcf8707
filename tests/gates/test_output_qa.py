"""Output QA in a real run: emulator outputs that are blank, mis-sized or truncated are flagged in the qa
column, counted in the summary and kept; ``qa_retries`` regenerates (billed, reported, the flagged image
moved aside under ``{job}/superseded/{request}/``)."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from qwenedit.qa import BLANK, check_output
from tests.gates.helpers import billed_calls, results, run_here, stored_summary
from tests.pipeline.conftest import simple_rows

PLUS_PRICE = Decimal("0.03")  # qwen-image-edit-plus in Singapore, per image


def key_of(bucket: Any, uri: str) -> str:
    return uri.removeprefix(f"s3://{bucket.bucket}/")


@pytest.mark.parametrize(
    ("fault", "check"),
    [("blank_output", "blank"), ("missized_output", "size_mismatch"), ("truncated_output", "undecodable")],
)
async def test_a_bad_output_is_flagged_by_its_check_counted_and_kept(
    fault: str, check: str, pipeline_env: Any, emulator_factory: Any, write_manifest: Any, tmp_path: Path
) -> None:
    emulator = emulator_factory(next_faults=["ok", fault, "ok"])
    manifest = write_manifest(simple_rows(3, model="qwen-image-edit-plus"))
    summary = await run_here(manifest, pipeline_env, emulator, tmp_path, max_in_flight=1)

    table = results(summary).set_index("job_id")
    assert list(table["qa"]) == ["", f"1.png={check}", ""]
    assert list(table["status"]) == ["succeeded"] * 3  # paid for and stored: flagged, not failed
    assert summary["qa_flagged_images"] == 1 and summary["qa_flagged_jobs"] == 1
    assert stored_summary(summary)["qa_flagged_images"] == 1
    flagged = table.loc["job-0001"]
    kept = pipeline_env.client.get_object(
        Bucket=pipeline_env.bucket, Key=key_of(pipeline_env, str(flagged["outputs"]))
    )
    assert kept["Metadata"]["request-id"] == flagged["request_id"]
    assert kept["ContentLength"] > 0
    assert billed_calls(emulator) == 3  # no regeneration unless asked for


async def test_a_mis_sized_output_of_a_job_that_asked_for_a_size_fails_both_size_checks(
    pipeline_env: Any, emulator_factory: Any, write_manifest: Any, tmp_path: Path
) -> None:
    emulator = emulator_factory(next_faults=["missized_output"])
    manifest = write_manifest(simple_rows(1, model="qwen-image-edit-plus", size="1024*768"))
    summary = await run_here(manifest, pipeline_env, emulator, tmp_path)
    row = results(summary).iloc[0]
    assert (row["width"], row["height"]) == ("1024", "768")  # what usage reported
    assert row["qa"] == "1.png=size_mismatch+size_not_requested"


async def test_only_the_bad_output_of_a_job_is_named(
    pipeline_env: Any, emulator_factory: Any, write_manifest: Any, tmp_path: Path
) -> None:
    emulator = emulator_factory(next_faults=["blank_output"])  # the emulator spoils the last image
    manifest = write_manifest(simple_rows(1, model="qwen-image-edit-plus", n=3))
    summary = await run_here(manifest, pipeline_env, emulator, tmp_path)
    assert list(results(summary)["qa"]) == ["3.png=blank"]
    assert summary["qa_flagged_images"] == 1 and summary["images_stored"] == 3


async def test_no_qa_leaves_the_qa_column_empty(
    pipeline_env: Any, emulator_factory: Any, write_manifest: Any, tmp_path: Path
) -> None:
    emulator = emulator_factory(next_faults=["blank_output"])
    manifest = write_manifest(simple_rows(1, model="qwen-image-edit-plus"))
    summary = await run_here(manifest, pipeline_env, emulator, tmp_path, qa=False)
    assert list(results(summary)["qa"]) == [""]
    assert summary["qa_flagged_images"] == 0


async def test_a_qa_retry_regenerates_bills_both_calls_and_moves_the_flagged_image_aside(
    pipeline_env: Any, emulator_factory: Any, write_manifest: Any, tmp_path: Path
) -> None:
    emulator = emulator_factory(next_faults=["blank_output", "ok"])
    manifest = write_manifest(simple_rows(1, model="qwen-image-edit-plus"))
    summary = await run_here(manifest, pipeline_env, emulator, tmp_path, qa_retries=1)

    ledger = emulator.ledger()
    assert len(ledger) == 2  # the flagged call and its regeneration, both billed
    first, second = (e["request_id"] for e in ledger)
    row = results(summary).iloc[0]
    assert row["status"] == "succeeded"
    assert row["qa"] == ""  # the regenerated output passed
    assert row["qa_retries"] == "1"
    assert Decimal(row["cost"]) == 2 * PLUS_PRICE  # both calls
    assert row["request_id"] == second
    assert summary["qa_retries"] == 1
    assert Decimal(summary["total_cost"]["USD"]) == 2 * PLUS_PRICE
    client, bucket = pipeline_env.client, pipeline_env.bucket
    aside = client.get_object(Bucket=bucket, Key=f"out/job-0000/superseded/{first}/1.png")["Body"].read()
    assert check_output(aside, expected=None) == [BLANK]  # the flagged image itself, kept
    current = client.get_object(Bucket=bucket, Key="out/job-0000/1.png")
    assert current["Metadata"]["request-id"] == second


async def test_a_job_still_flagged_after_its_retries_keeps_the_last_output_flagged(
    pipeline_env: Any, emulator_factory: Any, write_manifest: Any, tmp_path: Path
) -> None:
    emulator = emulator_factory(next_faults=["blank_output", "blank_output", "ok"])
    manifest = write_manifest(simple_rows(1, model="qwen-image-edit-plus"))
    summary = await run_here(manifest, pipeline_env, emulator, tmp_path, qa_retries=1)

    assert billed_calls(emulator) == 2  # one regeneration, no more
    row = results(summary).iloc[0]
    assert (row["status"], row["qa"], row["qa_retries"]) == ("succeeded", "1.png=blank", "1")
    assert Decimal(row["cost"]) == 2 * PLUS_PRICE
    assert summary["qa_flagged_images"] == 1
    first = emulator.ledger()[0]["request_id"]
    keys = pipeline_env.keys()
    assert f"out/job-0000/superseded/{first}/1.png" in keys and "out/job-0000/1.png" in keys


async def test_a_qa_retry_stays_within_the_budget(
    pipeline_env: Any, emulator_factory: Any, write_manifest: Any, tmp_path: Path
) -> None:
    emulator = emulator_factory(next_faults=["blank_output", "ok"])
    manifest = write_manifest(simple_rows(1, model="qwen-image-edit-plus"))
    summary = await run_here(manifest, pipeline_env, emulator, tmp_path, qa_retries=3, budget="0.05")

    assert billed_calls(emulator) == 1  # a second call could pass 0.05 USD: not made
    row = results(summary).iloc[0]
    assert (row["status"], row["qa"], row["qa_retries"]) == ("succeeded", "1.png=blank", "0")
    assert "BudgetExceeded" in row["error_message"]


@pytest.mark.slow  # two runs
async def test_report_html_is_written_and_uploaded_for_every_run(
    pipeline_env: Any, emulator_factory: Any, write_manifest: Any, tmp_path: Path
) -> None:
    emulator = emulator_factory(next_faults=["blank_output"])
    manifest = write_manifest(simple_rows(2, model="qwen-image-edit-plus"))
    pages = []
    for _ in range(2):  # the second run skips every job: it still gets its report
        summary = await run_here(manifest, pipeline_env, emulator, tmp_path)
        local = Path(summary["report_dir"]) / "report.html"
        page = local.read_text(encoding="utf-8")
        stored = pipeline_env.client.get_object(
            Bucket=pipeline_env.bucket, Key=f"out/_runs/{summary['run_id']}/report.html"
        )
        assert stored["Body"].read() == local.read_bytes()
        assert stored["ContentType"].startswith("text/html")
        assert summary["run_id"] in page
        pages.append(page)
    assert "blank" in pages[0]  # the first run's QA flag is on its report
    assert summary["by_status"]["skipped"] == 2
