"""`qwenedit spend LEDGER`: the ledger's story per UTC day, month, model and run, as text and as JSON."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

from typer.testing import CliRunner

from qwenedit.budget import Budget
from qwenedit.cli import app
from qwenedit.spend import Caps, SpendGuard, SpendLedger
from qwenedit.storage import LocalDestination

CALL = Decimal("0.03")


async def spend(ledger: SpendLedger, run: str, calls: int, settle: bool = True) -> None:
    guard = SpendGuard(ledger, Caps.parse("10", None), run, backoff_s=0)
    budget = Budget(None, "USD", shared=guard)
    for _ in range(calls):
        assert await budget.reserve(CALL, "USD")
        budget.release(CALL)
        budget.charge(CALL, "USD", "qwen-image-edit-plus")
    if settle:
        await guard.settle()


async def test_spend_prints_days_months_models_and_runs_and_json_for_machines(tmp_path: Path) -> None:
    clock = lambda: datetime(2026, 12, 6, 3, tzinfo=UTC)  # noqa: E731
    ledger = SpendLedger(LocalDestination(tmp_path / "ledger"), clock=clock)
    await spend(ledger, "night-1", 10)
    await spend(ledger, "night-2", 2, settle=False)  # still running, or dead: its block is held

    shown = CliRunner().invoke(app, ["spend", str(tmp_path / "ledger"), "--json"])
    assert shown.exit_code == 0, shown.output
    report = json.loads(shown.output)
    assert report["days"] == [
        {
            "day": "2026-12-06",
            "currency": "USD",
            "spent": "0.30",
            "possibly": "0",
            "held": "0.24",
            "counted": "0.54",
        }
    ]
    assert [(m["model"], m["spent"]) for m in report["models"]] == [("qwen-image-edit-plus", "0.30")]
    assert [(r["run"], r["settled"]) for r in report["runs"]] == [("night-1", True), ("night-2", False)]

    text = CliRunner().invoke(app, ["spend", str(tmp_path / "ledger")], env={"COLUMNS": "200"})
    assert text.exit_code == 0, text.output
    for expected in (
        "spend per UTC day",
        "2026-12-06",
        "spend per UTC month",
        "qwen-image-edit-plus",
        "no (held)",
    ):
        assert expected in text.output


def test_spend_on_an_empty_ledger_or_with_a_bad_month(tmp_path: Path) -> None:
    empty = CliRunner().invoke(app, ["spend", str(tmp_path)])
    assert empty.exit_code == 0 and "no spend recorded" in empty.output
    bad = CliRunner().invoke(app, ["spend", str(tmp_path), "--month", "../x"])
    assert bad.exit_code == 2 and "--month: expected YYYY-MM" in bad.output


def test_an_unreadable_ledger_is_one_line_and_exit_2(tmp_path: Path) -> None:
    folder = tmp_path / "_spend" / "2026-12"
    folder.mkdir(parents=True)
    (folder / "000000000001.json").write_text("not json")
    done = CliRunner().invoke(app, ["spend", str(tmp_path)])
    assert done.exit_code == 2
    assert "spend ledger record 2026-12/000000000001: not JSON" in done.output
    assert "Traceback" not in done.output


async def test_given_caps_spend_shows_what_is_counted_and_left_of_them_now(tmp_path: Path) -> None:
    ledger = SpendLedger(LocalDestination(tmp_path))  # the real clock: the caps are read "now"
    await spend(ledger, "today", 10)
    shown = CliRunner().invoke(
        app,
        ["spend", str(tmp_path), "--daily-budget", "0.75", "--monthly-budget", "0.30"],
        env={"COLUMNS": "200"},
    )
    assert shown.exit_code == 0, shown.output
    assert (
        "daily cap 0.75 USD for " in shown.output
        and "0.30 USD counted, 0.45 USD left (not reached)" in shown.output
    )
    assert (
        "monthly cap 0.30 USD for " in shown.output
        and "0.30 USD counted, 0.00 USD left (reached)" in shown.output
    )
    data = json.loads(
        CliRunner().invoke(app, ["spend", str(tmp_path), "--daily-budget", "0.75", "--json"]).output
    )
    assert [(c["cap"], c["left"], c["reached"]) for c in data["caps"]] == [("daily", "0.45 USD", False)]
    bad = CliRunner().invoke(
        app, ["spend", str(tmp_path), "--daily-budget", "1 USD", "--monthly-budget", "9 CNY"]
    )
    assert bad.exit_code == 2 and "one currency" in bad.output
