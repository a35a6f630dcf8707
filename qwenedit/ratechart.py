"""report.html's rate chart: the run over time, drawn by matplotlib as inline SVG.

``rate_chart_svg(timeline)`` takes summary.json's ``timeline`` (``qwenedit.timeline``) and returns one
``<svg id="rate-chart">`` element: on top, requests per second per model (one step line each) against its
limit (a dashed line in the same colour), with the buckets that got 429s marked by red crosses; below,
cumulative spend per currency. Text is drawn as paths (matplotlib's default ``svg.fonttype``) with its
bundled DejaVu font, so the page needs no font, file or URL; the XML prolog, DOCTYPE and metadata are
dropped. Matplotlib's Agg backend and its object API are used (no pyplot state, safe in a worker thread).
"""

from __future__ import annotations

import io
import re
from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Any

CHART_ID = "rate-chart"
_STRIP = (
    re.compile(r"<\?xml[^>]*\?>\s*"),
    re.compile(r"<!DOCTYPE[^>]*>\s*"),
    re.compile(r"<metadata>.*?</metadata>\s*", re.S),
)


def _minutes(buckets: int, bucket_s: float) -> tuple[list[float], str, float]:
    """Bucket start times in the unit that suits the run's length."""
    span = buckets * bucket_s
    unit, scale = ("h", 3600.0) if span > 3 * 3600 else ("min", 60.0) if span > 180 else ("s", 1.0)
    return [i * bucket_s / scale for i in range(buckets + 1)], unit, scale


def rate_chart_svg(timeline: Mapping[str, Any] | None) -> str | None:
    """The chart as an ``<svg>`` element, or None when the run sent nothing."""
    if not timeline or not timeline.get("buckets") or not timeline.get("models"):
        return None
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    matplotlib.rcParams["svg.hashsalt"] = "qwenedit"  # stable ids: the same run, the same page
    matplotlib.rcParams["svg.fonttype"] = (
        "none"  # text as <text>: the browser's own sans-serif, smaller and faster
    )
    buckets = int(timeline["buckets"])
    bucket_s = float(timeline.get("bucket_s") or 1)
    edges, unit, _ = _minutes(buckets, bucket_s)
    spend: Mapping[str, Sequence[str]] = timeline.get("spend") or {}
    fig = Figure(figsize=(9.6, 4.8 if spend else 3.2), dpi=72, layout="constrained")
    axes = fig.subplots(2 if spend else 1, 1, sharex=True, squeeze=False)[:, 0]
    rate_ax = axes[0]
    for i, (model, line) in enumerate(sorted(timeline["models"].items())):
        colour = f"C{i % 10}"
        rates = [n / bucket_s for n in line.get("sent", [])]
        rate_ax.stairs(rates, edges[: len(rates) + 1], color=colour, linewidth=1.4, label=model)
        if line.get("limit_rps"):
            rate_ax.axhline(float(line["limit_rps"]), color=colour, linestyle="--", linewidth=1)
        hits = [k for k, n in enumerate(line.get("throttled", [])) if n and k < len(rates)]
        if hits:
            middles = [(edges[k] + edges[k + 1]) / 2 for k in hits]
            heights = [rates[k] for k in hits]
            rate_ax.plot(
                middles, heights, "x", color="#c0392b", markersize=6, mew=1.6, label=f"429s ({model})"
            )
    rate_ax.set_ylabel("requests / s")
    rate_ax.set_ylim(bottom=0)
    rate_ax.legend(loc="upper right", fontsize=8, frameon=False, ncols=2)
    rate_ax.grid(alpha=0.3)
    rate_ax.set_title(
        f"requests per second per model (dashed: its limit; buckets of {bucket_s:g} s)",
        fontsize=10,
        loc="left",
    )
    if spend:
        cost_ax = axes[1]
        for currency, running in sorted(spend.items()):
            values = [float(Decimal(v)) for v in running]
            cost_ax.stairs(values, edges[: len(values) + 1], color="#2c7a4b", label=currency, linewidth=1.4)
        cost_ax.set_ylabel("spend")
        cost_ax.set_ylim(bottom=0)
        cost_ax.legend(loc="upper left", fontsize=8, frameon=False)
        cost_ax.grid(alpha=0.3)
        cost_ax.set_title("cumulative spend", fontsize=10, loc="left")
    axes[-1].set_xlabel(f"time since the run started ({unit})")
    buffer = io.StringIO()
    fig.savefig(buffer, format="svg", metadata={"Date": None})
    svg = buffer.getvalue()
    for pattern in _STRIP:
        svg = pattern.sub("", svg, count=1)
    label = "Requests per second per model against its limit, 429s marked, and cumulative spend"
    return svg.replace(
        "<svg ",
        f'<svg id="{CHART_ID}" role="img" aria-label="{label}" style="max-width:100%;height:auto" ',
        1,
    )
