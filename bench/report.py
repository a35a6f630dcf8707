"""Showing and saving bench results: the rich tables, the JSON files, the requests-per-second plot."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from bench.side_by_side import LABELS


def save_json(doc: dict[str, Any], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def side_by_side_table(doc: dict[str, Any]) -> Table:
    cfg = doc["config"]
    t = Table(
        title=f"qwenedit bench — {doc['mode']}: limit {cfg['limit_rps']:g} req/s, latency median "
        f"{cfg['latency_median_s']:g} s / p99 {cfg['latency_p99_s']:g} s, {cfg['jobs']} jobs"
    )
    for col, justify in (
        ("contender", "left"),
        ("jobs", "right"),
        ("wall s", "right"),
        ("steady req/s ÷ limit", "right"),
        ("max in 1 s", "right"),
        ("429s", "right"),
        ("images/hour", "right"),
        ("CPU ms/job", "right"),
        ("peak RSS MB", "right"),
    ):
        t.add_column(col, justify=justify)  # type: ignore[arg-type]
    for row in doc["contenders"].values():
        jobs = f"{row['jobs_ok']}/{row['jobs_attempted']}"
        if row["capped_by"]:
            jobs += f" (capped of {row['jobs_total']})"
        t.add_row(
            row["contender"],
            jobs,
            f"{row['wall_s']:.1f}",
            f"{row['steady_ratio']:.3f}",
            f"{row['max_in_1s']} (limit {cfg['limit_per_1s_window']})",
            str(row["http_429"]),
            f"{row['images_per_hour']:,.0f}",
            f"{row['cpu_ms_per_job']:.1f}",
            f"{row['peak_rss_mb']:.0f}",
        )
    return t


def verdict_table(verdicts: list[dict[str, Any]]) -> Table:
    t = Table(title="targets")
    for col in ("target", "measured", "wanted", "result"):
        t.add_column(col)
    for v in verdicts:
        result = "[green]PASS[/]" if v["result"] == "PASS" else "[red]MISS[/]"
        measured = v["measured"] + (f"\n[dim]{v['note']}[/]" if v["note"] else "")
        t.add_row(v["target"], measured, v["wanted"], result)
    return t


def print_side_by_side(doc: dict[str, Any], console: Console) -> None:
    console.print(side_by_side_table(doc))
    console.print(
        "[dim]steady = accepted arrivals in the middle 80 % of the arrival span; max in 1 s = sliding "
        "window over every arrival (429s included) per account; CPU (a) = run process + Prefect server.[/]"
    )
    for row in doc["contenders"].values():
        for note in row["notes"]:
            console.print(f"[yellow]{row['contender']}: {note}[/]")
    if doc["verdicts"]:
        console.print(verdict_table(doc["verdicts"]))


def markdown_table(doc: dict[str, Any]) -> str:
    """The side-by-side table as GitHub markdown (for the README)."""
    cfg = doc["config"]
    lines = [
        "| contender | jobs | wall (s) | steady req/s ÷ limit | max in any 1 s | 429s | images/hour "
        "| CPU ms/job | peak RSS (MB) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in doc["contenders"].values():
        jobs = f"{row['jobs_ok']}/{row['jobs_attempted']}" + (" (capped)" if row["capped_by"] else "")
        lines.append(
            f"| {row['contender']} | {jobs} | {row['wall_s']:.1f} | {row['steady_ratio']:.3f} | "
            f"{row['max_in_1s']} (limit {cfg['limit_per_1s_window']}) | {row['http_429']} | "
            f"{row['images_per_hour']:,.0f} | {row['cpu_ms_per_job']:.1f} | {row['peak_rss_mb']:.0f} |"
        )
    return "\n".join(lines)


def plot_rps(doc: dict[str, Any], path: Path) -> Path:
    """Requests per second over time, one panel per contender, with the limit drawn in."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = doc["per_second"]
    limit = doc["config"]["limit_per_1s_window"]
    names = [n for n in ("a", "b", "c") if n in series]
    fig, axes = plt.subplots(len(names), 1, figsize=(10, 2.6 * len(names)), squeeze=False)
    for ax, name in zip(axes[:, 0], names, strict=True):
        ok, th = series[name]["accepted"], series[name]["throttled"]
        xs = list(range(len(ok)))
        ax.step(xs, ok, where="post", label="accepted", color="tab:blue", linewidth=1.2)
        if any(th):
            ax.step(xs, th, where="post", label="429 (throttled)", color="tab:red", linewidth=0.9, alpha=0.8)
        ax.axhline(limit, color="black", linestyle="--", linewidth=0.8, label=f"limit ({limit}/s)")
        ax.set_title(LABELS[name], fontsize=10, loc="left")
        ax.set_ylabel("requests / s")
        ax.set_ylim(bottom=0)
        ax.legend(loc="upper right", fontsize=8)
    axes[-1, 0].set_xlabel(
        "seconds since the contender's first request"
        + ("" if doc["config"]["scale"] == 1 else f" (time compressed ×{doc['config']['scale']:g})")
    )
    fig.suptitle(f"Arrivals per second at the emulator — {doc['mode']}", fontsize=11)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
