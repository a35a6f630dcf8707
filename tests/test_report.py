"""Reports: manifest order from a completion-order spool, in chunks, with escaped formulas."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pandas as pd

from qwenedit.report import JobResult, ResultSpool, RunTotals, write_reports


def result(row: int, status: str = "succeeded", **extra: str) -> JobResult:
    return JobResult(
        row=row,
        job_id=f"job-{row}",
        status=status,
        model="qwen-image-edit-plus",
        region="singapore",
        images_requested=1,
        image_count=1 if status == "succeeded" else 0,
        cost="0.03" if status == "succeeded" else "0",
        currency="USD",
        extra=extra,
        manifest_row={"job_id": f"job-{row}"} if status != "succeeded" else None,
    )


def test_results_csv_is_in_manifest_order_and_failed_rows_follow_it(tmp_path: Path) -> None:
    rows = list(range(1, 23))
    random.Random(5).shuffle(rows)  # jobs finish in any order
    spool = ResultSpool(tmp_path / "results.jsonl")
    for row in rows:
        spool.add(result(row, "failed" if row % 5 == 0 else "succeeded", sku=f"=SKU{row}"))
    spool.close()
    paths = write_reports(spool, {"run_id": "r"}, tmp_path / "out")
    table = pd.read_csv(paths["results.csv"], dtype=str, keep_default_na=False)
    assert list(table["job_id"]) == [f"job-{r}" for r in range(1, 23)]
    assert list(table.columns[-1:]) == ["sku"]
    assert table.loc[0, "sku"] == "'=SKU1"
    failed = [json.loads(line)["job_id"] for line in paths["failed.jsonl"].read_text().splitlines()]
    assert failed == ["job-5", "job-10", "job-15", "job-20"]


def test_a_spool_reopened_on_an_earlier_file_still_sorts_its_rows(tmp_path: Path) -> None:
    first = ResultSpool(tmp_path / "results.jsonl")
    for row in (3, 1):
        first.add(result(row))
    first.close()
    again = ResultSpool(tmp_path / "results.jsonl")  # it did not see rows 3 and 1 being added
    again.add(result(2, sku="x"))
    paths = write_reports(again, {}, tmp_path / "out")
    table = pd.read_csv(paths["results.csv"], dtype=str, keep_default_na=False)
    assert list(table["job_id"]) == ["job-1", "job-2", "job-3"]
    assert list(table["sku"]) == ["", "x", ""]


def test_numbers_in_results_csv_stay_integers_and_booleans_read_back(tmp_path: Path) -> None:
    spool = ResultSpool(tmp_path / "results.jsonl")
    done = result(1)
    done.width, done.height = 1024, 768
    spool.add(done)
    spool.add(result(2, "failed"))  # no size
    paths = write_reports(spool, {}, tmp_path / "out")
    table = pd.read_csv(paths["results.csv"], dtype=str, keep_default_na=False)
    assert list(table["width"]) == ["1024", ""] and list(table["possibly_billed"]) == ["False", "False"]


def test_an_empty_run_still_writes_a_results_header(tmp_path: Path) -> None:
    spool = ResultSpool(tmp_path / "results.jsonl")
    spool.close()
    paths = write_reports(spool, {}, tmp_path / "out")
    assert paths["results.csv"].read_text().startswith("job_id,status,")
    assert paths["failed.jsonl"].read_text() == ""


def test_totals_add_exact_decimal_costs_per_region_model_and_currency() -> None:
    totals = RunTotals()
    for _ in range(10):
        totals.add(result(1))
    assert totals.total_cost() == {"USD": "0.30"}
    assert totals.to_dict()["by_status"]["succeeded"] == 10
