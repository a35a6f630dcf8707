"""report.html in a real browser (Debian's chromium driven by Playwright): what a person sees.

The outputs are real emulator outputs, one of them blank by the emulator's ``blank_output`` fault and
flagged by output QA. Needs ``.ci/install-browser`` (chromium at /usr/bin/chromium, playwright in the
venv); skipped otherwise. A screenshot is left at ``$QWENEDIT_REPORT_SCREENSHOT`` when that is set.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

from qwenedit.emulator import EmulatorServer
from qwenedit.htmlreport import write_html_report
from qwenedit.qa import check_output, qa_cell
from qwenedit.report import JobResult, RunTotals
from qwenedit.rollups import Rollups
from qwenedit.timeline import Timeline
from tests.emulator.helpers import body, image_bytes, image_urls, post
from tests.emulator.helpers import data_uri as make_data_uri

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="chromium not installed (.ci/install-browser)"),
]


@pytest.fixture
def browser() -> Iterator[Any]:
    """Function-scoped and set up after the emulator, so it stops first: Playwright's sync API holds an
    event loop on this thread while it runs, and the emulator's teardown needs one of its own."""
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="playwright not installed (.ci/install-browser)"
    )
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield browser
        browser.close()


def _run_against_emulator(emulator: EmulatorServer, out_dir: Path, in_dir: Path) -> list[JobResult]:
    """Four jobs through the emulator: outputs stored on disk, QA'd; the third output comes back blank."""
    emulator.configure(next_faults=["ok", "ok", "blank_output", "ok"])
    colours = [(200, 40, 40), (40, 160, 60), (30, 60, 200), (220, 180, 20)]
    results = []
    with httpx.Client(base_url=emulator.base_url) as client:
        for i, colour in enumerate(colours, start=1):
            source = in_dir / f"product-{i}.png"
            source.write_bytes(image_bytes(300, 200, color=colour))
            job_id = f"sku-{i}<b>" if i == 2 else f"sku-{i}"
            prompt = "Put the product on a white background" + (
                ' <script>alert("p")</script>' if i == 2 else ""
            )
            response = post(client, body(images=[make_data_uri(source.read_bytes())], text=prompt, n=1))
            assert response.status_code == 200
            usage = response.json()["usage"]
            stored = []
            flags = []
            for k, url in enumerate(image_urls(response), start=1):
                data = httpx.get(url).content
                path = out_dir / f"job{i}" / f"{k}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(data)
                stored.append(str(path))
                flags.append(check_output(data, expected=(usage["width"], usage["height"])))
            r = JobResult(
                row=i,
                job_id=job_id,
                status="succeeded",
                model="qwen-image-edit-plus",
                region="singapore",
                images_requested=1,
                image_count=usage["image_count"],
                width=usage["width"],
                height=usage["height"],
                unit_price="0.03",
                cost="0.03",
                currency="USD",
                outputs=stored,
                extra={"sku": f"family-{i % 2}"},
                manifest_row={"images": [str(source)], "prompt": prompt},
            )
            r.qa = qa_cell(flags)  # type: ignore[attr-defined]  # the run layer's new JobResult field
            results.append(r)
    results.append(
        JobResult(
            row=5,
            job_id="sku-5",
            status="failed",
            model="qwen-image-edit-plus",
            region="singapore",
            images_requested=1,
            error_code="DataInspectionFailed",
            error_message='Input data may contain inappropriate content. <img src=x onerror=alert("e")>',
            extra={"sku": "family-1"},
            manifest_row={"images": [str(in_dir / "product-1.png")], "prompt": "p"},
        )
    )
    return results


def _two_minutes_at_the_limit_with_429s() -> dict[str, Any]:
    """summary.json's timeline of a run at 2 req/s for 2 minutes, three 429s, $0.03 a call."""
    timeline = Timeline(clock=lambda: 0.0)
    for k in range(240):
        timeline.note_send("qwen-image-edit-plus", k * 0.5)
        timeline.note_cost(Decimal("0.03"), "USD", k * 0.5 + 1)
    for t in (30.2, 30.7, 75.1):
        timeline.note_throttled("qwen-image-edit-plus", t)
    return timeline.to_json({"qwen-image-edit-plus": 2.0})


def test_report_shows_totals_thumbnails_and_the_qa_flag_in_a_browser(
    emulator: EmulatorServer, browser: Any, tmp_path: Path
) -> None:
    out_dir, in_dir = tmp_path / "dest", tmp_path / "inputs"
    in_dir.mkdir()
    results = _run_against_emulator(emulator, out_dir, in_dir)
    totals = RunTotals()
    for r in results:
        totals.add(r)
    summary: dict[str, Any] = {"run_id": "20261203-demo", "manifest": "jobs.csv", "dest": str(out_dir)}
    summary.update(totals.to_dict())
    summary["rollups"] = Rollups(["sku"]).add_all(results).to_dict()
    summary["timeline"] = _two_minutes_at_the_limit_with_429s()
    report = write_html_report(
        tmp_path / "report.html",
        summary,
        results,
        read_output=lambda uri: Path(uri).read_bytes(),
        read_input=lambda ref: Path(ref).read_bytes(),
        canary=["sku-4"],
        headline="Canary: 1 job done. Projected cost of the remaining 4 jobs: $0.12.",
    )

    page = browser.new_page(viewport={"width": 1280, "height": 900})
    requests: list[str] = []
    dialogs: list[str] = []
    page.on("request", lambda req: requests.append(req.url))

    def on_dialog(dialog: Any) -> None:  # an alert() would mean user data ran as script
        dialogs.append(dialog.message)
        dialog.dismiss()

    page.on("dialog", on_dialog)
    page.goto(report.as_uri())
    page.wait_for_load_state("load")

    # What a person reads.
    totals_text = page.locator("#totals + .cards").inner_text()
    assert "5\njobs" in totals_text
    assert "$0.12\ntotal cost" in totals_text
    assert "1\nQA-flagged images, in 1 job" in totals_text
    assert page.locator("#headline").inner_text().startswith("Canary: 1 job done.")
    assert "family-0" in page.locator("#rollups ~ table").first.inner_text()
    assert "blank" in page.locator("#qa-table").inner_text()
    flagged = page.locator("article.flagged")
    assert flagged.count() == 1
    assert flagged.get_attribute("data-job-id") == "sku-3"
    assert "QA: blank" in flagged.inner_text()
    # The canary comes first on the contact sheet, then the flagged job.
    ids = page.locator("article").evaluate_all("els => els.map(e => e.dataset.jobId)")
    assert ids[:2] == ["sku-4", "sku-3"]
    # User data is shown as text, never run.
    assert "sku-2<b>" in page.locator("article[data-job-id='sku-2<b>'] .jid").inner_text()
    assert (
        '<script>alert("p")</script>' in page.locator("article[data-job-id='sku-2<b>'] .prompt").inner_text()
    )
    assert 'onerror=alert("e")' in page.locator("#failures-table").inner_text()
    assert dialogs == []

    # The run over time: the rate chart (matplotlib's SVG, inline), drawn with a real size.
    chart = page.locator("#rate-section svg#rate-chart")
    assert chart.count() == 1 and chart.is_visible()
    box = chart.bounding_box()
    assert box is not None and box["width"] > 300 and box["height"] > 150
    assert "Requests" in (chart.get_attribute("aria-label") or "")
    assert chart.locator("path").count() > 10  # lines, markers, axes: drawn, not an empty frame

    # Every thumbnail decoded: inputs and outputs of 4 jobs, plus the failed job's input.
    widths = page.locator("article img").evaluate_all(
        "imgs => imgs.map(i => i.complete ? i.naturalWidth : 0)"
    )
    assert len(widths) == 9
    assert all(0 < w <= 160 for w in widths), widths

    # Self-contained: the browser fetched nothing but the file itself (data: URIs are not requests).
    assert [u for u in requests if not u.startswith("data:")] == [report.as_uri()]

    shot = tmp_path / "report.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    if os.environ.get("QWENEDIT_REPORT_SCREENSHOT"):
        shutil.copy(shot, os.environ["QWENEDIT_REPORT_SCREENSHOT"])
    page.close()
