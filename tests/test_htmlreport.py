"""report.html without a browser: self-contained, escaped, bounded, and robust to unreadable images."""

from __future__ import annotations

import base64
import io
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image, ImageDraw

from qwenedit.htmlreport import parse_qa, render_html_report, write_html_report
from qwenedit.qa import qa_cell
from qwenedit.report import JobResult, RunTotals
from qwenedit.rollups import Rollups

HOSTILE = '<script>alert("x")</script><img src=x onerror=alert(1)>'


def png(width: int = 96, height: int = 64, colour: str = "teal") -> bytes:
    img = Image.new("RGB", (width, height), colour)
    ImageDraw.Draw(img).ellipse((10, 10, width - 10, height - 10), fill="orange")
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def result(i: int, **fields: Any) -> JobResult:
    base: dict[str, Any] = {
        "row": i,
        "job_id": f"job-{i}",
        "status": "succeeded",
        "model": "qwen-image-edit-plus",
        "region": "singapore",
        "images_requested": 1,
        "image_count": 1,
        "cost": "0.03",
        "unit_price": "0.03",
        "currency": "USD",
        "outputs": [f"mem://out/job-{i}/1.png"],
        "extra": {"sku": f"S{i % 3}"},
        "manifest_row": {"images": [f"mem://in/{i % 2}.png"], "prompt": f"prompt {i}"},
    }
    base.update(fields)
    qa = base.pop("qa", "")
    r = JobResult(**base)
    r.qa = qa  # type: ignore[attr-defined]  # the run layer adds this field to JobResult
    return r


def summary_of(results: list[JobResult], **extra: Any) -> dict[str, Any]:
    totals = RunTotals()
    for r in results:
        totals.add(r)
    summary: dict[str, Any] = {"run_id": "run-1", "manifest": "jobs.csv", "dest": "s3://bucket/out"}
    summary.update(totals.to_dict())
    summary["rollups"] = Rollups(["sku"]).add_all(results).to_dict()
    summary.update(extra)
    return summary


class Store:
    """In-memory images by reference, counting reads."""

    def __init__(self) -> None:
        self.images: dict[str, bytes] = {}
        self.reads: dict[str, int] = {}

    def read(self, ref: str) -> bytes | None:
        self.reads[ref] = self.reads.get(ref, 0) + 1
        if ref not in self.images:
            raise FileNotFoundError(ref)
        return self.images[ref]


@pytest.fixture
def store() -> Store:
    s = Store()
    for i in range(2):
        s.images[f"mem://in/{i}.png"] = png(colour="navy")
    for i in range(1, 40):
        s.images[f"mem://out/job-{i}/1.png"] = png()
    return s


def _imgs(page: str) -> list[str]:
    return re.findall(r'<img src="([^"]*)"', page)


def test_the_page_loads_nothing_from_anywhere(store: Store) -> None:
    results = [result(i) for i in range(1, 6)]

    page = render_html_report(summary_of(results), results, read_output=store.read, read_input=store.read)

    assert all(src.startswith("data:image/jpeg;base64,") for src in _imgs(page))
    assert len(_imgs(page)) == 10
    assert "<script" not in page
    assert not re.search(r'(src|href)="(?!data:)', page)
    assert "default-src 'none'" in page


def test_totals_costs_and_rollups_are_shown(store: Store) -> None:
    results = [result(i) for i in range(1, 6)] + [
        result(6, status="failed", image_count=0, cost="0", outputs=[])
    ]

    page = render_html_report(summary_of(results), results, read_output=store.read, read_input=store.read)

    assert "$0.15" in page  # total
    assert "<td>singapore</td><td>qwen-image-edit-plus</td>" in page
    assert "<h3>By sku</h3>" in page
    assert '<td class="n">$0.06</td>' in page  # S1 or S2: two jobs of 0.03


def test_user_data_is_escaped_everywhere(store: Store) -> None:
    evil = result(
        1,
        job_id="evil-1",
        status="failed",
        outputs=[],
        error_code="Bad" + HOSTILE,
        error_message=HOSTILE,
        extra={"sku": HOSTILE},
        manifest_row={"images": [HOSTILE], "prompt": HOSTILE},
        qa="1.png=" + HOSTILE,
    )
    summary = summary_of([evil], run_id=HOSTILE, manifest=HOSTILE, note=HOSTILE)

    page = render_html_report(
        summary, [evil], headline=HOSTILE, read_output=store.read, read_input=store.read
    )

    assert "<script>" not in page
    assert "onerror=alert" not in page.replace("onerror=alert(1)&gt;", "")
    assert page.count("&lt;script&gt;") >= 6


def test_unreadable_and_missing_images_become_placeholders(store: Store) -> None:
    store.images["mem://out/job-2/1.png"] = b"not an image"
    results = [result(1, outputs=["mem://out/missing/1.png"]), result(2)]

    page = render_html_report(summary_of(results), results, read_output=store.read, read_input=store.read)

    assert page.count("not readable") == 2
    assert len(_imgs(page)) == 2  # the inputs still show


def test_no_readers_means_placeholders_not_failures() -> None:
    results = [result(1)]

    page = render_html_report(summary_of(results), results)

    assert _imgs(page) == []
    assert "no preview" in page and "not readable" in page


def test_an_input_shared_by_many_rows_is_read_once(store: Store) -> None:
    results = [result(i) for i in range(1, 30)]

    render_html_report(summary_of(results), results, read_output=store.read, read_input=store.read)

    assert store.reads["mem://in/0.png"] == 1
    assert store.reads["mem://in/1.png"] == 1


def test_data_uri_inputs_are_decoded_here() -> None:
    uri = "data:image/png;base64," + base64.b64encode(png()).decode()
    results = [result(1, manifest_row={"images": [uri], "prompt": "p"})]

    page = render_html_report(summary_of(results), results)

    assert len(_imgs(page)) == 1
    assert "base64," + base64.b64encode(png()).decode()[:40] not in page  # re-encoded, not the user's bytes


def test_contact_sheet_order_is_canary_then_flagged_then_first_and_bounded(store: Store) -> None:
    results = [result(i) for i in range(1, 40)]
    results[30].qa = "1.png=blank"  # type: ignore[attr-defined]
    results[35].qa = "1.png=size_mismatch"  # type: ignore[attr-defined]

    page = render_html_report(
        summary_of(results),
        results,
        canary=["job-20", "job-25"],
        contact_limit=5,
        read_output=store.read,
        read_input=store.read,
    )

    shown = re.findall(r'<article class="[^"]*" data-job-id="([^"]+)"', page)
    assert shown == ["job-20", "job-25", "job-31", "job-36", "job-1", "job-2", "job-3", "job-4", "job-5"]
    assert "2 canary job(s), then 2 flagged job(s), then the first 5 other job(s) of 39." in page


def test_qa_and_failure_tables_are_bounded_and_say_how_many_more(store: Store) -> None:
    results = [
        result(i, status="failed", outputs=[], error_code="InternalError", error_message=f"boom {i}")
        if i % 2
        else result(i, qa=qa_cell([["blank"]]))
        for i in range(1, 31)
    ]

    page = render_html_report(summary_of(results), results, table_limit=4, contact_limit=0, flagged_limit=0)

    assert "… and 11 more in failed.jsonl and results.csv." in page
    assert "… and 11 more flagged jobs in results.csv (column qa)." in page
    assert "15 image(s) in 15 job(s) failed a check (blank: 15)" in page


def test_results_are_read_once_as_a_stream(store: Store) -> None:
    def once() -> Iterator[JobResult]:
        yield from (result(i) for i in range(1, 4))

    page = render_html_report(summary_of([]), once(), read_output=store.read, read_input=store.read)

    assert page.count("<article") == 3


def test_write_is_atomic_and_returns_the_path(tmp_path: Path, store: Store) -> None:
    results = [result(1)]

    path = write_html_report(
        tmp_path / "r" / "report.html", summary_of(results), results, read_output=store.read
    )

    assert path.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
    assert [p.name for p in path.parent.iterdir()] == ["report.html"]


def test_presigned_query_strings_are_never_shown(store: Store) -> None:
    results = [
        result(1, manifest_row={"images": ["https://b.s3/x.png?X-Amz-Signature=SECRET"], "prompt": "p"})
    ]

    page = render_html_report(summary_of(results), results)

    assert "SECRET" not in page


@pytest.mark.parametrize(
    ("cell", "flags"),
    [
        ("", {}),
        ("1.png=blank", {1: ["blank"]}),
        ("2.png=size_mismatch+undecodable; 3.png=blank", {2: ["size_mismatch", "undecodable"], 3: ["blank"]}),
    ],
)
def test_qa_cells_parse_back(cell: str, flags: dict[int, list[str]]) -> None:
    assert parse_qa(cell) == flags


def test_other_summary_keys_are_listed_as_run_details_and_cut_when_long() -> None:
    summary = summary_of([], stopped_by={"cause": "budget", "limit": "5"}, huge="x" * 10_000)

    page = render_html_report(summary, [])

    details = page[page.index('id="details"') :]
    assert "stopped_by" in details and "&quot;cause&quot;: &quot;budget&quot;" in details
    assert "x" * 1999 + "…" in details and "x" * 2001 not in details


def test_not_attempted_rows_are_totals_not_failures(store: Store) -> None:
    results = [result(1), result(2, status="not_attempted", outputs=[], error_code="CanaryDeclined")]

    page = render_html_report(summary_of(results), results)

    assert "No job failed." in page
    assert "<b>1</b><span>not_attempted</span>" in page


def test_an_empty_run_with_a_bare_summary_still_renders() -> None:
    page = render_html_report({}, [])

    assert "Nothing was spent in this run." in page
    assert "No jobs." in page and "No job failed." in page
    assert page.rstrip().endswith("</html>")
