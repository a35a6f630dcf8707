"""report.html of a real run (canary, a QA flag, a failure, a roll-up by sku) as a person sees it in
Debian's chromium, driven by Playwright. Needs ``.ci/install-browser``; skipped otherwise. A screenshot is
left at ``$QWENEDIT_REPORT_SCREENSHOT`` when that is set."""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from qwenedit.canary import CanaryOutcome
from tests.gates.helpers import run_here
from tests.pipeline.conftest import simple_rows

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="chromium not installed (.ci/install-browser)"),
]


@pytest.fixture
def browser(emulator_factory: Any) -> Iterator[Any]:
    """Set up after the emulator factory, so it stops first (Playwright's sync API holds an event loop on
    this thread while it runs)."""
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="playwright not installed (.ci/install-browser)"
    )
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield browser
        browser.close()


async def approve(outcome: CanaryOutcome) -> bool:
    return True


def test_the_report_of_a_real_run_renders_canary_qa_flag_failure_and_roll_up(
    pipeline_env: Any, emulator_factory: Any, write_manifest: Any, tmp_path: Path, browser: Any
) -> None:
    # One call at a time, so the emulator's scripted faults hit known jobs: the 2 canary jobs come
    # first, then job-0000 (blank output), job-0002 and job-0003 (refused by content inspection).
    emulator = emulator_factory(next_faults=["ok", "ok", "blank_output", "ok", "inspection"])
    rows = simple_rows(6)
    for i, row in enumerate(rows):
        row["sku"] = "SKU-A" if i < 3 else "SKU-B"
    run = run_here(
        write_manifest(rows),
        pipeline_env,
        emulator,
        tmp_path,
        approve=approve,
        canary=2,
        group_by=("sku",),
        max_in_flight=1,
    )
    with ThreadPoolExecutor(1) as pool:  # Playwright's sync API holds this thread's event loop
        summary = pool.submit(asyncio.run, run).result()
    assert summary["by_status"]["failed"] == 1 and summary["qa_flagged_images"] == 1
    report = Path(summary["report_dir"]) / "report.html"

    page = browser.new_page(viewport={"width": 1280, "height": 900})
    requests: list[str] = []
    page.on("request", lambda req: requests.append(req.url))
    page.goto(report.as_uri())
    page.wait_for_load_state("load")

    totals = page.locator("#totals + .cards").inner_text()
    assert "6\njobs" in totals
    assert "1\nQA-flagged images, in 1 job" in totals
    rollups = page.locator("#rollups ~ table").first.inner_text()
    assert "SKU-A" in rollups and "SKU-B" in rollups
    failures = page.locator("#failures-table").inner_text()
    assert "job-0003" in failures and "DataInspectionFailed" in failures
    # The contact sheet: the canary first, then the flagged job.
    articles = page.locator("article")
    assert articles.nth(0).locator(".tag.canary").count() == 1
    assert articles.nth(1).locator(".tag.canary").count() == 1
    assert articles.nth(2).get_attribute("data-job-id") == "job-0000"
    flagged = page.locator("article.flagged")
    assert flagged.count() == 1 and "QA: blank" in flagged.inner_text()
    # Every thumbnail decoded, from data: URIs only: the file stands alone.
    widths = page.locator("article img").evaluate_all(
        "imgs => imgs.map(i => i.complete ? i.naturalWidth : 0)"
    )
    assert len(widths) >= 11 and all(w > 0 for w in widths), widths
    assert [u for u in requests if not u.startswith("data:")] == [report.as_uri()]

    shot = tmp_path / "report.png"
    page.screenshot(path=str(shot), full_page=True)
    if os.environ.get("QWENEDIT_REPORT_SCREENSHOT"):
        shutil.copy(shot, os.environ["QWENEDIT_REPORT_SCREENSHOT"])
    page.close()
