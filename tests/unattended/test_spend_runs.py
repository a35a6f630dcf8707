"""Spend caps shared by runs, end to end: runs of the real CLI and of the run layer against the emulator and
a SeaweedFS bucket, the emulator's books as the judge of what was billed.

Every run here is ten plus images in Singapore ($0.03 each, from the model table): $0.30.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from qwenedit.catalog import builtin_models as default_prices
from qwenedit.spend import SpendLedger, spend_report
from qwenedit.storage import open_destination
from tests.gates.conftest import CliRunner
from tests.gates.helpers import results, run_here
from tests.pipeline.conftest import images_dir, pipeline_env, simple_rows, write_manifest

__all__ = ["images_dir", "pipeline_env", "write_manifest"]  # fixtures used here

PLUS = "qwen-image-edit-plus"
ROWS = 10


def billed(emulator: Any) -> Decimal:
    """What the emulator's books charged, priced at the model table's Singapore prices."""
    prices = default_prices()
    return sum(
        (prices.unit_price("singapore", e["model"]).amount * e["image_count"] for e in emulator.ledger()),
        Decimal(0),
    )


def test_a_run_costs_thirty_cents() -> None:
    assert default_prices().unit_price("singapore", PLUS).amount * ROWS == Decimal("0.30")


@pytest.fixture
def run_cli(pipeline_env: Any, prefect_server: None, tmp_path: Path) -> CliRunner:
    return CliRunner(pipeline_env, tmp_path)


@pytest.mark.slow
def test_three_runs_under_a_75_cent_daily_cap_exit_0_0_3_and_75_cents_are_billed(
    run_cli: CliRunner, emulator_factory: Any, write_manifest: Any, pipeline_env: Any
) -> None:
    emulator = emulator_factory()
    manifest = write_manifest(simple_rows(ROWS))
    ledger = pipeline_env.uri("spend")
    caps = ("--spend-ledger", ledger, "--daily-budget", "0.75")
    first = run_cli(manifest, emulator, *caps, prefix="night1")
    second = run_cli(manifest, emulator, *caps, prefix="night2")
    third = run_cli(manifest, emulator, *caps, prefix="night3")

    assert (first.code, second.code) == (0, 0), first.stdout + first.stderr + second.stdout + second.stderr
    assert third.code == 3, third.stdout + third.stderr
    assert billed(emulator) <= Decimal("0.75")
    assert billed(emulator) == Decimal("0.75")  # the room left was used, no more
    assert "stopped: daily spend cap 0.75 USD reached for" in third.stdout
    stopped = third.summary()["stopped_by"]
    assert stopped["cause"] == "spend_cap" and stopped["cap"] == "daily" and stopped["limit"] == "0.75 USD"
    table = third.results()
    assert (table["status"] == "succeeded").sum() == 5
    refused = table[table["status"] == "not_attempted"]
    assert len(refused) == 5 and set(refused["error_code"]) == {"BudgetExceeded"}
    assert refused["error_message"].str.contains("daily spend cap 0.75 USD").all()

    # `qwenedit spend` reads the same story from the ledger.
    shown = subprocess.run(
        [sys.executable, "-m", "qwenedit", "spend", ledger, "--json"],
        env=run_cli.env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert shown.returncode == 0, shown.stderr
    report = json.loads(shown.stdout)
    assert [(d["spent"], d["held"], d["counted"]) for d in report["days"]] == [("0.75", "0", "0.75")]
    assert [(m["model"], m["spent"]) for m in report["models"]] == [(PLUS, "0.75")]
    by_run = {r["run"]: (r["spent"], r["settled"]) for r in report["runs"]}
    assert sorted(by_run.values()) == [("0.15", True), ("0.30", True), ("0.30", True)]
    assert third.summary()["run_id"] in by_run
    text = subprocess.run(
        [sys.executable, "-m", "qwenedit", "spend", ledger],
        env={**run_cli.env, "COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert text.returncode == 0, text.stderr
    assert "spend per UTC day" in text.stdout and "spend per run" in text.stdout
    assert "0.75" in text.stdout and PLUS in text.stdout


async def test_two_concurrent_runs_under_one_fresh_ledger_never_spend_more_than_its_cap(
    emulator_factory: Any, write_manifest: Any, pipeline_env: Any, tmp_path: Path
) -> None:
    emulator = emulator_factory()
    manifest = write_manifest(simple_rows(ROWS))
    caps = {"spend_ledger": pipeline_env.uri("fresh-ledger"), "daily_budget": "0.45"}
    one, two = await asyncio.gather(
        run_here(manifest, pipeline_env, emulator, tmp_path / "a", prefix="a", **caps),
        run_here(manifest, pipeline_env, emulator, tmp_path / "b", prefix="b", **caps),
    )
    assert billed(emulator) <= Decimal("0.45")
    succeeded = [int((results(s)["status"] == "succeeded").sum()) for s in (one, two)]
    assert sum(succeeded) * Decimal("0.03") == billed(emulator)
    assert sum(succeeded) == 15  # blocks never exceed a run's own worst case: the whole cap was usable
    stopped = [s["stopped_by"] for s in (one, two) if s["stopped_by"]]
    assert stopped and all(s["cause"] == "spend_cap" for s in stopped)
    report = spend_report(SpendLedger(open_destination(caps["spend_ledger"])))
    assert report["days"][0]["counted"] == "0.45" and all(r["settled"] for r in report["runs"])


async def test_a_run_started_when_the_cap_is_reached_makes_no_call(
    emulator_factory: Any, write_manifest: Any, pipeline_env: Any, tmp_path: Path
) -> None:
    emulator = emulator_factory()
    manifest = write_manifest(simple_rows(3))
    summary = await run_here(manifest, pipeline_env, emulator, tmp_path, daily_budget="0")
    assert emulator.ledger() == []
    assert summary["stopped_by"]["cause"] == "spend_cap"
    assert summary["stopped_by"]["reason"].startswith(
        "daily spend cap 0 USD reached for"
    )  # what Prefect shows
    assert summary["by_status"]["not_attempted"] == 3


async def test_the_spend_ledger_defaults_to_the_destination(
    emulator_factory: Any, write_manifest: Any, pipeline_env: Any, tmp_path: Path
) -> None:
    emulator = emulator_factory()
    manifest = write_manifest(simple_rows(2))
    summary = await run_here(manifest, pipeline_env, emulator, tmp_path, prefix="dest", monthly_budget="5")
    assert summary["stopped_by"] is None
    report = spend_report(SpendLedger(open_destination(pipeline_env.uri("dest"))))
    assert [(m["model"], m["spent"]) for m in report["models"]] == [(PLUS, "0.06")]
    assert [r["run"] for r in report["runs"]] == [summary["run_id"]]


@pytest.mark.slow
def test_caps_in_two_currencies_or_unlike_the_budget_are_refused_before_any_call(
    run_cli: CliRunner, emulator_factory: Any, write_manifest: Any
) -> None:
    emulator = emulator_factory()
    manifest = write_manifest(simple_rows(2))
    mixed = run_cli(manifest, emulator, "--daily-budget", "1", "--monthly-budget", "5 CNY")
    assert mixed.code == 2 and "--monthly-budget" in mixed.stdout + mixed.stderr
    unlike = run_cli(manifest, emulator, "--daily-budget", "7 CNY")
    assert unlike.code == 2 and "CNY" in unlike.stdout + unlike.stderr
    assert emulator.ledger() == []


async def test_a_lost_answer_is_retried_only_if_the_cap_leaves_room_for_paying_again(
    emulator_factory: Any, write_manifest: Any, pipeline_env: Any, tmp_path: Path
) -> None:
    emulator = emulator_factory(next_faults=["drop_billed"])  # billed, then the connection closes
    manifest = write_manifest(simple_rows(1))
    summary = await run_here(
        manifest, pipeline_env, emulator, tmp_path, daily_budget="0.03", backoff_base=0.0
    )
    assert billed(emulator) == Decimal("0.03")  # the retry could have been billed too: not sent
    row = results(summary).iloc[0]
    assert row["status"] == "failed" and row["error_code"] == "BudgetExceeded"
    assert "not retried after a lost answer" in row["error_message"]
    assert summary["stopped_by"]["cause"] == "spend_cap"
    report = spend_report(SpendLedger(open_destination(pipeline_env.uri("out"))))
    assert [(r["spent"], r["possibly"], r["counted"]) for r in report["runs"]] == [("0", "0.03", "0.03")]


async def test_with_room_for_it_a_lost_answer_is_retried(
    emulator_factory: Any, write_manifest: Any, pipeline_env: Any, tmp_path: Path
) -> None:
    emulator = emulator_factory(next_faults=["drop_billed"])
    manifest = write_manifest(simple_rows(1))
    summary = await run_here(
        manifest, pipeline_env, emulator, tmp_path, daily_budget="0.06", backoff_base=0.0
    )
    assert results(summary).iloc[0]["status"] == "succeeded"
    assert billed(emulator) == Decimal("0.06") and summary["stopped_by"] is None


async def test_the_runs_own_budget_also_holds_through_a_lost_answer(
    emulator_factory: Any, write_manifest: Any, pipeline_env: Any, tmp_path: Path
) -> None:
    emulator = emulator_factory(next_faults=["drop_billed"])
    summary = await run_here(
        write_manifest(simple_rows(1)), pipeline_env, emulator, tmp_path, budget="0.03", backoff_base=0.0
    )
    assert billed(emulator) == Decimal("0.03")
    assert results(summary).iloc[0]["error_code"] == "BudgetExceeded"
    assert summary["stopped_by"]["cause"] == "budget"


@pytest.mark.slow
def test_two_cli_runs_started_together_never_spend_more_than_the_cap(
    run_cli: CliRunner, emulator_factory: Any, write_manifest: Any, pipeline_env: Any
) -> None:
    emulator = emulator_factory(latency_median_s=0.2)  # calls overlap between the two processes
    manifest = write_manifest(simple_rows(ROWS))
    caps = ("--spend-ledger", pipeline_env.uri("together"), "--daily-budget", "0.45")
    procs = []
    for prefix in ("p1", "p2"):
        args, _ = run_cli.command(manifest, emulator, *caps, prefix=prefix)
        procs.append(
            subprocess.Popen(
                args,
                env=run_cli.env,
                cwd=run_cli.workdir,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    outputs = [p.communicate(timeout=240)[0] for p in procs]
    codes = sorted(p.returncode for p in procs)
    assert billed(emulator) <= Decimal("0.45"), outputs
    assert billed(emulator) == Decimal("0.45")  # the whole cap was usable
    assert codes in ([0, 3], [3, 3]), outputs
    assert any("daily spend cap 0.45 USD reached" in out for out in outputs)
