"""Duplicate edits: ``validate`` names rows asking for the same edit; ``run --dedupe`` calls each edit once
and stores its outputs under every job of the group; without ``--dedupe`` every row is its own call."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from qwenedit.cli import app
from qwenedit.ledger import Ledger
from qwenedit.options import RunOptions
from qwenedit.run import run_manifest
from qwenedit.storage import open_destination
from tests.gates.helpers import results, stored_summary

DUPLICATE_ROWS = {4: 2, 9: 2, 12: 7, 17: 7, 20: 1}  # row → the earlier row it repeats (1-based rows)


def twenty_rows() -> list[dict[str, Any]]:
    """20 rows of which 5 repeat an earlier row's edit under their own job id (a join's leftovers)."""
    shapes = ("square.png", "wide.png", "tall.png")
    rows: list[dict[str, Any]] = []
    for row in range(1, 21):
        source = DUPLICATE_ROWS.get(row, row)
        rows.append(
            {
                "job_id": f"sku-{row:02d}",
                "image_1": shapes[source % 3],
                "prompt": f"put product {source} on white",
                "seed": str(100 + source),
                "note": f"joined row {row}",  # a pass-through column does not make an edit different
            }
        )
    return rows


def run_options(manifest: Path, emulator: Any, tmp_path: Path, name: str, **extra: Any) -> RunOptions:
    return RunOptions(
        manifest=str(manifest),
        dest=str(tmp_path / "out"),
        base_url=emulator.base_url,
        report_dir=str(tmp_path / name),
        rates=("50",),
        **extra,
    )


@pytest.fixture
def api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DASHSCOPE_API_KEY", "sk-dedupe-test-0123456789")


def test_validate_names_the_rows_that_repeat_an_earlier_edit_as_grouped_warnings(
    write_manifest: Callable[[list[dict[str, Any]]], Path],
) -> None:
    manifest = write_manifest(twenty_rows())
    text = CliRunner().invoke(app, ["validate", str(manifest)], env={"COLUMNS": "250"})
    assert text.exit_code == 0, text.output  # warnings, not errors
    assert "rows 4, 9 (job_id sku-04, sku-09) ask for the same edit as row 2 (job_id sku-02)" in text.output
    assert "row 20 (job_id sku-20) asks for the same edit as row 1 (job_id sku-01)" in text.output

    as_json = CliRunner().invoke(app, ["validate", str(manifest), "--json"])
    payload = json.loads(as_json.stdout)
    assert payload["valid"] is True and payload["duplicate_rows"] == 5
    named = {d["row"]: g["row"] for g in payload["duplicates"] for d in g["duplicates"]}
    assert named == DUPLICATE_ROWS
    assert all(p["severity"] == "warning" for p in payload["problems"])


def test_validate_does_not_call_rows_with_another_seed_or_image_duplicates(
    write_manifest: Callable[[list[dict[str, Any]]], Path],
) -> None:
    rows = [
        {"job_id": "a", "image_1": "square.png", "prompt": "same words", "seed": "1"},
        {"job_id": "b", "image_1": "square.png", "prompt": "same words", "seed": "2"},
        {"job_id": "c", "image_1": "wide.png", "prompt": "same words", "seed": "1"},
        {"job_id": "d", "image_1": "square.png", "prompt": "same words", "seed": "1", "n": "2"},
    ]
    payload = json.loads(CliRunner().invoke(app, ["validate", str(write_manifest(rows)), "--json"]).stdout)
    assert payload["duplicates"] == [] and payload["problems"] == []


async def test_dedupe_calls_each_edit_once_and_stores_every_jobs_outputs(
    api_key: None, emulator: Any, write_manifest: Callable[[list[dict[str, Any]]], Path], tmp_path: Path
) -> None:
    manifest = write_manifest(twenty_rows())
    summary = (await run_manifest(run_options(manifest, emulator, tmp_path, "r1", dedupe=True))).to_json()

    assert len(emulator.ledger()) == 15  # one call per distinct edit
    table = results(summary)
    assert list(table["status"]) == ["succeeded"] * 20
    out = tmp_path / "out"
    assert all((out / f"sku-{row:02d}" / "1.png").is_file() for row in range(1, 21))
    copies = table[table["deduplicated_from"] != ""]
    assert dict(zip(copies["job_id"], copies["deduplicated_from"], strict=True)) == {
        f"sku-{row:02d}": f"sku-{leader:02d}" for row, leader in DUPLICATE_ROWS.items()
    }
    assert set(copies["cost"]) == {"0"}
    for row, leader in DUPLICATE_ROWS.items():  # the same image, copied from the stored one
        copy = (out / f"sku-{row:02d}" / "1.png").read_bytes()
        assert copy == (out / f"sku-{leader:02d}" / "1.png").read_bytes()
    stored = stored_summary(summary)
    unit = table.iloc[0]["unit_price"]
    assert stored["dedupe_saved_calls"] == 5
    assert stored["dedupe_saved_cost"] == {"USD": str(5 * __import__("decimal").Decimal(unit))}
    assert "5 calls saved" in (Path(summary["report_dir"]) / "report.html").read_text()

    # Each copy has its own done record, the charge stays with the leader: a rerun skips all 20.
    again = (await run_manifest(run_options(manifest, emulator, tmp_path, "r2", dedupe=True))).to_json()
    assert len(emulator.ledger()) == 15
    assert again["by_status"]["skipped"] == 20
    ledger = Ledger(open_destination(str(out)))
    assert ledger.job_records("sku-04").charges == []


async def test_a_crash_after_the_leaders_done_record_copies_on_the_rerun_without_paying(
    api_key: None, emulator: Any, write_manifest: Callable[[list[dict[str, Any]]], Path], tmp_path: Path
) -> None:
    manifest = write_manifest(twenty_rows())
    await run_manifest(run_options(manifest, emulator, tmp_path, "r1", dedupe=True))
    out = tmp_path / "out"
    ledger = Ledger(open_destination(str(out)))
    # As if the run died after the leaders' done records, before the copies: no copy, no done record.
    for row in DUPLICATE_ROWS:
        job = f"sku-{row:02d}"
        ledger.remove([m.key for m in ledger.done_index().markers(job)])
        for image in (out / job).glob("*.png"):
            image.unlink()

    rerun = (await run_manifest(run_options(manifest, emulator, tmp_path, "r2", dedupe=True))).to_json()
    assert len(emulator.ledger()) == 15  # nothing paid twice
    table = results(rerun)
    assert rerun["by_status"] == {**rerun["by_status"], "skipped": 15, "succeeded": 5}
    assert set(table[table["status"] == "succeeded"]["deduplicated_from"]) == {"sku-01", "sku-02", "sku-07"}
    assert all((out / f"sku-{row:02d}" / "1.png").is_file() for row in DUPLICATE_ROWS)


async def test_without_dedupe_every_row_is_its_own_call(
    api_key: None, emulator: Any, write_manifest: Callable[[list[dict[str, Any]]], Path], tmp_path: Path
) -> None:
    manifest = write_manifest(twenty_rows())
    summary = (await run_manifest(run_options(manifest, emulator, tmp_path, "r1"))).to_json()
    assert len(emulator.ledger()) == 20  # several random draws of one edit stay possible
    assert summary["dedupe_saved_calls"] == 0
    assert set(results(summary)["deduplicated_from"]) == {""}
