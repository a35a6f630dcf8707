"""The canary in a real run (run layer, no Prefect): spread over the manifest's models and regions, the
decision sees its outcome and the projected spend of the rest, and a decline spends nothing more."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from qwenedit.canary import CanaryOutcome
from qwenedit.run import exit_code
from tests.gates.helpers import billed_calls, results, run_here
from tests.pipeline.conftest import simple_rows

GROUPS = [
    ("qwen-image-edit-plus", "singapore"),
    ("qwen-image-edit", "singapore"),
    ("qwen-image-edit-plus", "beijing"),
    ("qwen-image-edit", "beijing"),
]
WORST = {  # USD per image (the built-in price table)
    ("qwen-image-edit-plus", "singapore"): Decimal("0.03"),
    ("qwen-image-edit", "singapore"): Decimal("0.045"),
    ("qwen-image-edit-plus", "beijing"): Decimal("0.028671"),
    ("qwen-image-edit", "beijing"): Decimal("0.043"),
}


def mixed_rows() -> list[dict[str, Any]]:
    """8 rows in blocks of 2 per (model, region): the first rows are all of one group."""
    rows = simple_rows(8)
    for i, row in enumerate(rows):
        row["model"], row["region"] = GROUPS[i // 2]
    return rows


def both_regions(emulator: Any) -> dict[str, Any]:
    """The run's options that serve the Beijing rows too (the emulator plays both regions' endpoints)."""
    return {"region_endpoint": (f"beijing={emulator.base_url}",)}


class Decider:
    """An approver that records what it was shown and what had been billed when it was asked."""

    def __init__(self, emulator: Any, answer: bool) -> None:
        self.emulator, self.answer = emulator, answer
        self.outcome: CanaryOutcome | None = None
        self.billed_when_asked = -1
        self.report_existed = False

    async def __call__(self, outcome: CanaryOutcome) -> bool:
        self.outcome = outcome
        self.billed_when_asked = billed_calls(self.emulator)
        self.report_existed = Path(outcome.report).is_file()
        return self.answer


async def test_the_canary_takes_a_job_of_every_model_and_region_before_asking(
    pipeline_env: Any, emulator_factory: Any, write_manifest: Any, tmp_path: Path
) -> None:
    emulator = emulator_factory()
    rows = mixed_rows()
    decide = Decider(emulator, answer=True)
    summary = await run_here(
        write_manifest(rows),
        pipeline_env,
        emulator,
        tmp_path,
        approve=decide,
        canary=4,
        **both_regions(emulator),
    )

    outcome = decide.outcome
    assert outcome is not None
    assert decide.billed_when_asked == 4  # only the canary had been paid for
    assert decide.report_existed  # report.html of the canary, written before the question
    ran = {(c["model"], c["region"]) for c in outcome.summary.to_json()["cost_by_region_model"]}
    assert ran == set(GROUPS)
    assert outcome.jobs == 4 and outcome.remaining_jobs == 4
    projected = sum(WORST.values())  # 1 more row of each group, n = 1
    assert outcome.projected == f"{projected} USD"
    assert summary["canary_jobs"] == 4
    page = (Path(summary["report_dir"]) / "report.html").read_text(encoding="utf-8")
    assert page.count('<span class="tag canary">') == 4  # the canary is marked on the contact sheet
    assert summary["by_status"]["succeeded"] == 8 and summary["stopped_by"] is None
    assert billed_calls(emulator) == 8


@pytest.mark.slow  # two runs
async def test_a_declined_canary_spends_nothing_more_and_a_rerun_never_pays_for_it_again(
    pipeline_env: Any, emulator_factory: Any, write_manifest: Any, tmp_path: Path
) -> None:
    emulator = emulator_factory()
    manifest = write_manifest(mixed_rows())
    decline = Decider(emulator, answer=False)
    summary = await run_here(
        manifest, pipeline_env, emulator, tmp_path, approve=decline, canary=3, **both_regions(emulator)
    )

    assert billed_calls(emulator) == 3
    assert summary["stopped_by"] == {"cause": "declined", "reason": "the canary was not approved"}
    assert exit_code(summary) == 3
    table = results(summary)
    assert (table["status"] == "succeeded").sum() == 3
    rest = table[table["status"] != "succeeded"]
    assert len(rest) == 5
    assert set(rest["status"]) == {"not_attempted"} and set(rest["error_code"]) == {"NotApproved"}

    summary = await run_here(
        manifest, pipeline_env, emulator, tmp_path, **both_regions(emulator)
    )  # no canary
    assert summary["by_status"] == {"succeeded": 5, "failed": 0, "skipped": 3, "not_attempted": 0}
    assert billed_calls(emulator) == 8  # each row paid for once


async def test_a_canary_of_every_pending_job_runs_them_and_asks_about_nothing(
    pipeline_env: Any, emulator_factory: Any, write_manifest: Any, tmp_path: Path
) -> None:
    emulator = emulator_factory()
    decide = Decider(emulator, answer=False)
    summary = await run_here(
        write_manifest(simple_rows(3)), pipeline_env, emulator, tmp_path, approve=decide, canary=5
    )
    assert decide.outcome is None  # nothing left to approve: no question
    assert summary["by_status"]["succeeded"] == 3
    assert summary["stopped_by"] is None and exit_code(summary) == 0
