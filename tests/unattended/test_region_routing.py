"""One region per call (DESIGN.md §3, invariant 10): a row is sent to its own region's endpoint with that
region's key and priced at that region's price, or refused before the first call. Two emulators play the
Singapore and Beijing endpoints; each one's books say what it served, and the report must equal the bill."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from qwenedit.emulator.books import key_id
from tests.gates.conftest import CliRunner, run_cli
from tests.gates.helpers import results, run_here
from tests.pipeline.conftest import API_KEY, images_dir, pipeline_env, simple_rows, write_manifest
from tests.unattended.test_policy_cli import run_cli as run_in_process

__all__ = ["images_dir", "pipeline_env", "run_cli", "write_manifest"]  # fixtures used here

PLUS = {"singapore": Decimal("0.03"), "beijing": Decimal("0.028671")}  # USD per image, built-in table
BEIJING_KEY = "sk-beijing-region-key-0123456789"


def mixed_rows() -> list[dict[str, Any]]:
    """6 rows of qwen-image-edit-plus, n = 2: rows 2 and 5 (job-0001, job-0004) are Beijing's."""
    rows = simple_rows(6, n="2")
    for i in (1, 4):
        rows[i]["region"] = "beijing"
    return rows


def bill(emulator: Any, region: str) -> Decimal:
    """What an emulator playing ``region`` charged: its billed images at that region's price."""
    return sum((e["image_count"] * PLUS[region] for e in emulator.ledger()), Decimal(0))


def test_a_row_of_another_region_without_its_endpoint_is_refused_before_any_call(
    pipeline_env: Any, emulator_factory: Any, write_manifest: Any, tmp_path: Path
) -> None:
    singapore = emulator_factory()
    code, output = run_in_process(write_manifest(mixed_rows()), pipeline_env, singapore, tmp_path)
    assert code == 2, output
    for job in ("job-0001", "job-0004"):
        line = next(line for line in output.splitlines() if job in line)
        assert "region" in line and "is beijing, but the run is served in singapore" in line
    assert singapore.stats()["requests"] == 0 and singapore.ledger() == []


async def test_with_its_endpoint_and_key_a_row_is_sent_to_its_region_and_priced_there(
    pipeline_env: Any,
    emulator_factory: Any,
    write_manifest: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    singapore, beijing = emulator_factory(), emulator_factory()
    monkeypatch.setenv("DASHSCOPE_API_KEY_BEIJING", BEIJING_KEY)
    summary = await run_here(
        write_manifest(mixed_rows()),
        pipeline_env,
        singapore,
        tmp_path,
        region_endpoint=(f"beijing={beijing.base_url},DASHSCOPE_API_KEY_BEIJING",),
    )
    assert summary["by_status"]["succeeded"] == 6
    table = results(summary).set_index("job_id")
    served_by_beijing = {e["request_id"] for e in beijing.ledger()}
    assert served_by_beijing == set(table.loc[["job-0001", "job-0004"], "request_id"])
    assert len(singapore.ledger()) == 4 and not served_by_beijing & {
        e["request_id"] for e in singapore.ledger()
    }
    assert {e["key_id"] for e in beijing.ledger()} == {key_id(BEIJING_KEY)}  # the region's own key
    assert {e["key_id"] for e in singapore.ledger()} == {key_id(API_KEY)}
    assert set(table.loc[["job-0001", "job-0004"], "unit_price"]) == {str(PLUS["beijing"])}
    assert set(table.loc[table["region"] == "singapore", "unit_price"]) == {str(PLUS["singapore"])}
    # the report equals the bill: each endpoint's images at its own region's price
    assert Decimal(summary["total_cost"]["USD"]) == bill(singapore, "singapore") + bill(beijing, "beijing")


async def test_with_a_single_base_url_every_call_is_priced_at_the_runs_region(
    pipeline_env: Any, emulator_factory: Any, write_manifest: Any, tmp_path: Path
) -> None:
    served = emulator_factory()
    rows = simple_rows(3, n="2")
    rows[0]["region"] = "cn-beijing"  # the run's own region, by an alias
    summary = await run_here(write_manifest(rows), pipeline_env, served, tmp_path, region="beijing")
    table = results(summary)
    assert set(table["region"]) == {"beijing"} and set(table["unit_price"]) == {str(PLUS["beijing"])}
    assert Decimal(summary["total_cost"]["USD"]) == bill(served, "beijing")


@pytest.mark.slow
def test_through_the_cli_the_region_endpoint_flag_routes_and_prices_each_row(
    run_cli: CliRunner, emulator_factory: Any, write_manifest: Any
) -> None:
    singapore, beijing = emulator_factory(), emulator_factory()
    run_cli.env["DASHSCOPE_API_KEY_BEIJING"] = BEIJING_KEY
    done = run_cli(
        write_manifest(mixed_rows()),
        singapore,
        "--region-endpoint",
        f"beijing={beijing.base_url},DASHSCOPE_API_KEY_BEIJING",
    )
    assert done.code == 0, done.stdout + done.stderr
    assert len(beijing.ledger()) == 2 and len(singapore.ledger()) == 4
    assert Decimal(done.summary()["total_cost"]["USD"]) == bill(singapore, "singapore") + bill(
        beijing, "beijing"
    )
