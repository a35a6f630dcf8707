"""The run over time: a bounded series of sends, 429s and spend, and the chart report.html draws of it."""

from __future__ import annotations

import re
import time
from decimal import Decimal

import pytest

from qwenedit.htmlreport import render_html_report
from qwenedit.ratechart import rate_chart_svg
from qwenedit.timeline import Timeline


def test_sends_429s_and_spend_land_in_one_second_buckets() -> None:
    timeline = Timeline(clock=lambda: 0.0)
    for t in (0.1, 0.6, 1.2, 3.9):
        timeline.note_send("plus", t)
    timeline.note_throttled("plus", 1.5)
    timeline.note_cost(Decimal("0.03"), "USD", 0.7)
    timeline.note_cost(Decimal("0.06"), "USD", 2.0)
    doc = timeline.to_json({"plus": 2.0})
    assert doc["bucket_s"] == 1 and doc["buckets"] == 4
    assert doc["models"]["plus"] == {"sent": [2, 1, 0, 1], "throttled": [0, 1, 0, 0], "limit_rps": 2.0}
    assert doc["spend"] == {"USD": ["0.03", "0.03", "0.09", "0.09"]}


def test_a_ten_hour_run_stays_within_the_bucket_bound_and_loses_no_count() -> None:
    timeline = Timeline(max_buckets=720, clock=lambda: 0.0)
    for second in range(36_000):
        timeline.note_send("plus", second + 0.5)
        timeline.note_send("plus", second + 0.9)
        if second % 100 == 0:
            timeline.note_throttled("plus", second + 0.5)
        timeline.note_cost(Decimal("0.03"), "USD", second + 0.5)
    doc = timeline.to_json()
    assert doc["buckets"] <= 720 and doc["bucket_s"] == 64
    assert sum(doc["models"]["plus"]["sent"]) == 72_000
    assert sum(doc["models"]["plus"]["throttled"]) == 360
    assert doc["spend"]["USD"][-1] == str(Decimal("0.03") * 36_000)
    assert len(doc["models"]["plus"]["sent"]) == len(doc["spend"]["USD"]) == doc["buckets"]


def test_a_timeline_needs_room_for_two_buckets() -> None:
    with pytest.raises(ValueError, match="at least 2"):
        Timeline(max_buckets=1)


def _run_of(jobs: int) -> dict[str, object]:
    """The timeline of ``jobs`` calls at 2 req/s over two models, 1 % of them throttled, $0.03 each."""
    timeline = Timeline(clock=lambda: 0.0)
    for i in range(jobs):
        model = "qwen-image-edit-max" if i % 50 == 0 else "qwen-image-edit-plus"
        timeline.note_send(model, i * 0.5)
        if i % 100 == 7:
            timeline.note_throttled(model, i * 0.5)
        timeline.note_cost(Decimal("0.03"), "USD", i * 0.5 + 8)
    return timeline.to_json({"qwen-image-edit-plus": 2.0, "qwen-image-edit-max": 2 / 60})


def test_the_chart_is_one_inline_svg_with_its_id_that_fetches_nothing() -> None:
    svg = rate_chart_svg(_run_of(600))
    assert svg is not None and svg.startswith('<svg id="rate-chart" role="img"')
    assert "<?xml" not in svg and "<!DOCTYPE" not in svg and "<metadata>" not in svg
    urls = set(re.findall(r"""(?:href|src)\s*=\s*["']([^"']+)""", svg)) - {""}
    assert all(u.startswith("#") for u in urls), urls  # only references inside the SVG itself
    assert "url(http" not in svg and "@import" not in svg
    assert "qwen-image-edit-plus" in svg and "429s" in svg and "cumulative spend" in svg


def test_report_html_draws_the_chart_only_when_the_run_sent_requests() -> None:
    base = {"run_id": "R", "jobs": 0, "by_status": {}}
    with_chart = render_html_report({**base, "timeline": _run_of(100)}, [])
    assert '<h2 id="rate">' in with_chart and 'id="rate-chart"' in with_chart
    assert '"timeline"' not in with_chart  # drawn, not dumped under "Run details"
    empty = {"bucket_s": 1, "buckets": 0, "models": {}, "spend": {}}
    assert 'id="rate-chart"' not in render_html_report({**base, "timeline": empty}, [])
    assert 'id="rate-chart"' not in render_html_report(base, [])


def test_the_chart_of_a_ten_thousand_job_run_renders_in_seconds_not_minutes() -> None:
    series = _run_of(10_000)
    rate_chart_svg(series)  # matplotlib imported and warmed up once per process
    started = time.perf_counter()
    svg = rate_chart_svg(series)
    elapsed = time.perf_counter() - started
    assert svg is not None and len(svg) < 400_000  # bounded by the buckets, not the jobs
    assert elapsed < 30  # about 1 s on a loaded 2-core machine; generous, never a flaky bound
