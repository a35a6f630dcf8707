"""``python -m bench models``: every model at its own limit, a window that fits, pacing under jitter.

A manifest mixing ``qwen-image-edit-max`` (2/min), ``qwen-image-edit-plus`` and ``qwen-image-edit``
(2/s each) runs against the emulator in its own process with 20–30 s latency (lognormal, median 25 s,
p99 30 s), 0–40 ms of arrival jitter, the per-model burst guard on, and no tuning flag: each model is
paced at the model table's limit (``PacerPool(table.rate_limit)``), calls in flight follow ``Window``
(Little's law, 30 s assumed until latencies are observed), every attempt takes a permit, a 429 widens
that pacer's spacing (``Pacer.throttled``) and is retried.

What it drives: the library pieces directly (``PacerPool`` + ``Window`` + ``DashScopeClient``), one
task per job, no output copy — the run layer (``qwenedit.run``) wires the same pieces. Measured where
the limit is counted, the emulator's arrival log, per model: steady rate ÷ limit (middle 80 % of the
span), the peak in any window of its period, 429s (and in the run's second half), and Max's spacing.
Also: calls reported *possibly billed* that the server never received.

    python -m bench models                      # ~4-5 minutes
    python -m bench models --plus 100 --edit 100 --max 3 --latency 5   # a quick look
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import itertools
import json
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from bench.metrics import Verdict, max_in_window, steady_state
from qwenedit import errors
from qwenedit.api import DashScopeClient, EditRequest
from qwenedit.catalog import RateLimit, builtin_models
from qwenedit.pacer import Pacer, PacerPool
from qwenedit.testing.emulator import EmulatorProcess
from qwenedit.window import Window

MAX = "qwen-image-edit-max"
PLUS = "qwen-image-edit-plus"
EDIT = "qwen-image-edit"
KEY = "sk-bench-models"
MAX_ATTEMPTS = 6


def mixed_jobs(plus: int, edit: int, max_jobs: int) -> list[str]:
    """The manifest's model column: plus and edit alternating, Max rows spread evenly among them."""
    fast = [m for pair in itertools.zip_longest([PLUS] * plus, [EDIT] * edit) for m in pair if m]
    if max_jobs == 0:
        return fast
    step = max(1, len(fast) // max_jobs)
    out: list[str] = []
    for i, model in enumerate(fast):
        if i % step == 0 and out.count(MAX) < max_jobs:
            out.append(MAX)
        out.append(model)
    out.extend([MAX] * (max_jobs - out.count(MAX)))
    return out


def _png_uri() -> str:
    buf = io.BytesIO()
    Image.new("RGB", (64, 48), (40, 120, 200)).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


class _Recording:
    """A send gate that notes when each request left (``time.monotonic``) and defers to the pacer."""

    def __init__(self, pacer: Pacer, sends: list[float]) -> None:
        self._pacer = pacer
        self._sends = sends

    async def before_send(self) -> None:
        await self._pacer.before_send()
        self._sends.append(time.monotonic())

    def after_send(self) -> None:
        self._pacer.after_send()


def travel_spread(sends: Sequence[float], arrivals: Sequence[float]) -> dict[str, float] | None:
    """How much the time from send to counted arrival varied (ms): the jitter the counter saw,
    emulated and the machine's own. Both clocks are CLOCK_MONOTONIC of one machine; the i-th send is
    matched with the i-th arrival (the spacing is far wider than the jitter, so the order holds)."""
    if not sends or len(sends) != len(arrivals):
        return None
    delays = sorted(a - s for s, a in zip(sorted(sends), sorted(arrivals), strict=True))
    base = delays[0]
    spread = [d - base for d in delays]
    return {
        "p50_ms": round(1000 * spread[len(spread) // 2], 1),
        "p99_ms": round(1000 * spread[int(len(spread) * 0.99)], 1),
        "max_ms": round(1000 * spread[-1], 1),
    }


def summarize(
    arrivals: Sequence[dict[str, Any]], limits: dict[str, RateLimit], run_start: float, run_end: float
) -> dict[str, Any]:
    """Per model, from the emulator's arrival log: accepted requests' steady rate ÷ limit, the peak
    in any window of the limit's period, 429s (all, and in the run's second half), and gaps."""
    half = run_start + (run_end - run_start) / 2
    out: dict[str, Any] = {}
    for model, limit in limits.items():
        mine = [a for a in arrivals if a["model"] == model]
        accepted = sorted(a["time"] for a in mine if a["status"] != 429)
        refused = [a["time"] for a in mine if a["status"] == 429]
        steady = steady_state(accepted)
        gaps = [b - a for a, b in itertools.pairwise(accepted)]
        mean = (len(accepted) - 1) / (accepted[-1] - accepted[0]) if len(accepted) > 1 else 0.0
        out[model] = {
            "limit": str(limit),
            "requests": len(mine),
            "accepted": len(accepted),
            "steady_rate": round(steady.rate, 4),
            "steady_ratio": round(steady.rate / limit.rate, 4) if steady.count else None,
            # over the whole span: the figure for a model with few calls (Max: a handful in a run)
            "mean_ratio": round(mean / limit.rate, 4),
            "peak_in_period": max_in_window(accepted, limit.period_s),
            "period_s": limit.period_s,
            "count": limit.count,
            "throttled_429": len(refused),
            "throttled_429_second_half": sum(1 for t in refused if t >= half),
            "min_gap_s": round(min(gaps), 3) if gaps else None,
            "mean_gap_s": round(sum(gaps) / len(gaps), 3) if gaps else None,
        }
    return out


def verdicts(
    per_model: dict[str, Any], combined_ratio: float, false_billed: int, control: bool = False
) -> list[Verdict]:
    """The issue's targets against what was measured. ``control``: the no-jitter control's targets
    (≥ 0.97 of the limit, no 429 at all) instead of the jittered run's (≥ 0.95, ≤ 2 429s)."""
    total_429 = sum(m["throttled_429"] for m in per_model.values())
    late_429 = sum(m["throttled_429_second_half"] for m in per_model.values())
    ratio_target, max_429 = (0.97, 0) if control else (0.95, 2)
    out = [
        Verdict(
            "plus + edit steady rate ÷ 4 req/s",
            f"{combined_ratio:.3f}",
            f"≥ {ratio_target}",
            combined_ratio >= ratio_target,
        ),
        Verdict("429s in the run", str(total_429), f"≤ {max_429}", total_429 <= max_429),
        Verdict("429s in the second half", str(late_429), "0", late_429 == 0),
        Verdict("possibly billed but never received", str(false_billed), "0", false_billed == 0),
    ]
    for model, m in per_model.items():
        out.append(
            Verdict(
                f"{model}: peak in any {m['period_s']:g} s",
                str(m["peak_in_period"]),
                f"≤ {m['count']:g}",
                m["peak_in_period"] <= m["count"],
            )
        )
        if m["steady_ratio"] is not None and model != MAX:
            out.append(
                Verdict(
                    f"{model}: steady rate ÷ limit",
                    f"{m['steady_ratio']:.3f}",
                    f"≥ {ratio_target}",
                    m["steady_ratio"] >= ratio_target,
                )
            )
    if MAX in per_model and per_model[MAX]["min_gap_s"] is not None:
        gap = per_model[MAX]["min_gap_s"]
        out.append(
            Verdict("Max spacing (min gap)", f"{gap:.2f} s", "≈ 30 s, never two together", gap >= 29.5)
        )
        ratio = per_model[MAX]["mean_ratio"]
        out.append(Verdict("Max mean rate ÷ 2/min", f"{ratio:.3f}", "≥ 0.9 and ≤ 1", 0.9 <= ratio <= 1.0))
    return out


async def _drive(
    base_url: str, models: list[str], log: Callable[[str], None]
) -> tuple[Counter[str], dict[str, Any], dict[str, Any], float, float, int, dict[str, list[float]]]:
    table = builtin_models()
    pacers = PacerPool(table.rate_limit)
    window = Window()
    window.set_rates(pacers.rates(set(models)))
    image = _png_uri()
    outcomes: Counter[str] = Counter()
    sends: dict[str, list[float]] = {m: [] for m in set(models)}
    possibly_billed = 0
    peak_window = {"size": window.size, "in_flight": 0}
    async with DashScopeClient(KEY, base_url, max_connections=window.memory_cap + 8) as client:

        async def job(i: int, model: str) -> None:
            nonlocal possibly_billed
            async with window.slot(model):
                pacer = pacers.get(client.endpoint, KEY, model)
                for _attempt in range(MAX_ATTEMPTS):
                    await pacer.acquire()  # every attempt takes a permit
                    started = time.monotonic()
                    try:
                        gate = _Recording(pacer, sends[model])
                        await client.edit(EditRequest(model, (image,), f"job {i}"), gate=gate)
                    except errors.Throttled as exc:
                        outcomes[f"429 {exc.code}"] += 1
                        pacer.throttled()
                        continue
                    except errors.DashScopeError as exc:
                        outcomes[type(exc).__name__] += 1
                        possibly_billed += int(exc.possibly_billed)
                        return
                    window.observe_latency(model, time.monotonic() - started)
                    outcomes["ok"] += 1
                    return
                outcomes["gave_up"] += 1

        async def progress() -> None:
            while True:
                await asyncio.sleep(15)
                peak_window["size"] = max(peak_window["size"], window.size)
                peak_window["in_flight"] = max(peak_window["in_flight"], window.in_flight)
                stats = pacers.stats()
                log(
                    f"window {window.in_flight}/{window.size}; "
                    + "; ".join(
                        f"{m}: {s['granted']} permits, {s['throttles']} 429" for m, s in stats.items()
                    )
                )

        lags: list[float] = []

        async def lag_probe() -> None:
            # How late this loop wakes up: the machine's scheduling noise, which adds to the jitter.
            while True:
                t = time.monotonic()
                await asyncio.sleep(0.05)
                lags.append(time.monotonic() - t - 0.05)

        reporter = asyncio.create_task(progress())
        prober = asyncio.create_task(lag_probe())
        start = time.monotonic()
        try:
            await asyncio.gather(*(job(i, m) for i, m in enumerate(models)))
        finally:
            reporter.cancel()
            prober.cancel()
        end = time.monotonic()
    lags.sort()
    lag = {
        "samples": len(lags),
        "p50_ms": round(1000 * lags[len(lags) // 2], 1) if lags else None,
        "p99_ms": round(1000 * lags[int(len(lags) * 0.99)], 1) if lags else None,
        "max_ms": round(1000 * lags[-1], 1) if lags else None,
    }
    window_doc = {**window.snapshot(), "peak": peak_window, "client_loop_lag": lag}
    return outcomes, pacers.stats(), window_doc, start, end, possibly_billed, sends


def run_models_bench(
    plus: int = 400,
    edit: int = 400,
    max_jobs: int = 8,
    latency_median_s: float = 25.0,
    latency_p99_s: float = 30.0,
    jitter_s: float = 0.04,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run the benchmark and return its JSON document."""
    models = mixed_jobs(plus, edit, max_jobs)
    with tempfile.TemporaryDirectory(prefix="bench-models-") as tmp:
        emulator = EmulatorProcess(
            Path(tmp),
            rps=2,
            latency_median=latency_median_s,
            latency_p99=latency_p99_s,
            render="fast",
            seed=1,
            keep_outputs=200,
        )
        with emulator:
            emulator.configure(arrival_jitter_s=jitter_s, burst_guard=True)
            log(f"{len(models)} jobs ({plus} plus, {edit} edit, {max_jobs} max) against {emulator.base_url}")
            wall = time.time()
            outcomes, pacer_stats, window_stats, start, end, maybe_billed, sends = asyncio.run(
                _drive(emulator.base_url, models, log)
            )
            arrivals = emulator.arrivals()
            stats = emulator.stats()
            wall = time.time() - wall
    table = builtin_models()
    limits = {m: table.rate_limit(m) for m in (MAX, PLUS, EDIT) if m in models}
    # The arrival log uses the emulator process's monotonic clock; on one machine it is this one's.
    per_model = summarize(arrivals, limits, start, end)
    for model, row in per_model.items():
        times = [a["time"] for a in arrivals if a["model"] == model]
        row["send_to_count_spread"] = travel_spread(sends.get(model, []), times)
    fast = sorted(a["time"] for a in arrivals if a["model"] in (PLUS, EDIT) and a["status"] != 429)
    combined = steady_state(fast)
    combined_ratio = combined.rate / 4.0 if combined.count else 0.0
    # Attempts the client made that the server never logged; a possibly-billed report can only be
    # true for an attempt the server received, so at most this many reports were false.
    attempts = sum(n for k, n in outcomes.items() if k != "gave_up")
    never_received = max(0, attempts - stats["requests"])
    false_billed = min(maybe_billed, never_received)
    doc = {
        "what": "library pieces driven directly: PacerPool(table.rate_limit) + Window + DashScopeClient; "
        "no output copy; emulator in its own process",
        "config": {
            "jobs": {"plus": plus, "edit": edit, "max": max_jobs},
            "latency_median_s": latency_median_s,
            "latency_p99_s": latency_p99_s,
            "arrival_jitter_s": [0.0, jitter_s],
            "burst_guard": True,
            "tuning_flags": "none (limits from the model table, window from Little's law)",
        },
        "wall_s": round(wall, 1),
        "outcomes": dict(outcomes),
        "per_model": per_model,
        "plus_plus_edit": {
            "steady_rate": round(combined.rate, 4),
            "steady_ratio_of_4": round(combined_ratio, 4),
        },
        "pacers": pacer_stats,
        "window": window_stats,
        "emulator": {k: stats[k] for k in ("requests", "by_status", "by_code", "faults", "billed_requests")},
        "attempts": attempts,
        "attempts_never_received": never_received,
        "possibly_billed_reported": maybe_billed,
        "possibly_billed_never_received": false_billed,
    }
    doc["verdicts"] = [v.to_dict() for v in verdicts(per_model, combined_ratio, false_billed)]
    return doc


def run_models_bench_via_run(
    plus: int = 400,
    edit: int = 400,
    max_jobs: int = 8,
    latency_median_s: float = 25.0,
    latency_p99_s: float = 30.0,
    jitter_s: float = 0.04,
    log: Callable[[str], None] = print,
    control: bool = False,
) -> dict[str, Any]:
    """The same manifest through ``qwenedit run`` (the Prefect flow, a real Prefect server, a local
    destination folder) with no tuning flag: the run layer's own wiring of the pacers and the window.
    Each model's pacing guard over time (``guard_history``: seconds since its pacer started, guard
    in seconds) comes from the run's summary.json."""
    import csv
    import os

    from bench.procs import PYTHON, PrefectServer, run_measured

    models = mixed_jobs(plus, edit, max_jobs)
    with tempfile.TemporaryDirectory(prefix="bench-models-run-") as tmp:
        work = Path(tmp)
        image = work / "in" / "a.png"
        image.parent.mkdir(parents=True)
        Image.new("RGB", (64, 48), (40, 120, 200)).save(image, format="PNG")
        manifest = work / "manifest.csv"
        with manifest.open("w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["job_id", "image_1", "prompt", "model"])
            for i, model in enumerate(models):
                w.writerow([f"job-{i:05d}", "in/a.png", f"job {i}", model])
        emulator = EmulatorProcess(
            work / "emulator",
            rps=2,
            latency_median=latency_median_s,
            latency_p99=latency_p99_s,
            render="fast",
            seed=1,
            keep_outputs=400,
        )
        with emulator, PrefectServer(work / "prefect-home") as prefect:
            emulator.configure(arrival_jitter_s=jitter_s, burst_guard=True)
            log(f"qwenedit run: {len(models)} jobs against {emulator.base_url}, Prefect {prefect.api_url}")
            env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "DASHSCOPE_"))}
            env.update({**prefect.env(), "DASHSCOPE_API_KEY": KEY, "PYTHONUNBUFFERED": "1"})
            cmd = [
                PYTHON, "-m", "qwenedit", "run", str(manifest),
                "--dest", str(work / "out"),
                "--base-url", emulator.base_url,
                "--report-dir", str(work / "reports"),
                "--no-progress",
            ]  # fmt: skip
            prefect.settle(max_wait_s=20)
            wall = time.time()
            measured = run_measured(
                cmd, env=env, log_path=work / "run.log", timeout_s=1800, cwd=work, watch=prefect.pid
            )
            wall = time.time() - wall
            arrivals = emulator.arrivals()
            stats = emulator.stats()
            summaries = sorted((work / "reports").glob("*/summary.json"))
            summary = json.loads(summaries[-1].read_text()) if summaries else {}
            log_tail = (work / "run.log").read_text(errors="replace")[-3000:]
    table = builtin_models()
    limits = {m: table.rate_limit(m) for m in (MAX, PLUS, EDIT) if m in models}
    times = [a["time"] for a in arrivals]
    start, end = (min(times), max(times)) if times else (0.0, 0.0)
    per_model = summarize(arrivals, limits, start, end)
    fast = sorted(a["time"] for a in arrivals if a["model"] in (PLUS, EDIT) and a["status"] != 429)
    combined = steady_state(fast)
    combined_ratio = combined.rate / 4.0 if combined.count else 0.0
    maybe_billed = int(summary.get("possibly_billed_jobs", 0) or 0)
    doc = {
        "what": "qwenedit run (Prefect flow, real Prefect server, local destination), no tuning flag",
        "config": {
            "jobs": {"plus": plus, "edit": edit, "max": max_jobs},
            "latency_median_s": latency_median_s,
            "latency_p99_s": latency_p99_s,
            "arrival_jitter_s": [0.0, jitter_s],
            "burst_guard": True,
            "command": " ".join(cmd[2:4]) + " --dest DIR --base-url EMULATOR --report-dir DIR --no-progress",
        },
        "wall_s": round(wall, 1),
        "returncode": measured.returncode,
        "summary": {k: summary.get(k) for k in ("by_status", "requests_sent", "throttled_429", "by_model")},
        "guard_history": {m: row.get("guard_history") for m, row in (summary.get("models") or {}).items()},
        "per_model": per_model,
        "plus_plus_edit": {
            "steady_rate": round(combined.rate, 4),
            "steady_ratio_of_4": round(combined_ratio, 4),
        },
        "emulator": {k: stats[k] for k in ("requests", "by_status", "by_code", "faults", "billed_requests")},
        "possibly_billed_reported": maybe_billed,
        "log_tail": log_tail if measured.returncode else "",
    }
    doc["verdicts"] = [v.to_dict() for v in verdicts(per_model, combined_ratio, 0, control)]
    return doc


def guard_lines(history: dict[str, Any]) -> list[str]:
    """Each model's guard over time, a few points per line: ``t=12s 31.2ms``."""
    lines = []
    for model, points in sorted(history.items()):
        if not points:
            continue
        step = max(1, len(points) // 12)
        shown = points[::step] + ([points[-1]] if (len(points) - 1) % step else [])
        lines.append(f"guard {model}: " + "  ".join(f"t={t:.0f}s {g * 1000:.1f}ms" for t, g in shown))
    return lines


def main(argv: list[str], results: Path) -> int:
    p = argparse.ArgumentParser(prog="python -m bench models", description=__doc__.split("\n\n")[0])
    p.add_argument("--plus", type=int, default=400, help="qwen-image-edit-plus rows")
    p.add_argument("--edit", type=int, default=400, help="qwen-image-edit rows")
    p.add_argument("--max", type=int, default=8, help="qwen-image-edit-max rows (one per ~30 s)")
    p.add_argument("--latency", type=float, default=25.0, help="median latency, s (p99 = 1.2 ×)")
    p.add_argument("--jitter", type=float, default=0.04, help="max arrival jitter, s")
    p.add_argument(
        "--via", choices=("pieces", "run"), default="pieces", help="drive the pieces or qwenedit run"
    )
    p.add_argument(
        "--control",
        action="store_true",
        help="the no-jitter control through qwenedit run: 80 plus + 80 edit rows (4 req/s in all), "
        "1–3 s latency, no jitter; targets ≥ 0.97 of the limit and no 429",
    )
    p.add_argument("--results", type=Path, default=results)
    args = p.parse_args(argv)
    if args.control:
        doc = run_models_bench_via_run(80, 80, 0, 2.0, 3.0, 0.0, log=print, control=True)
    elif args.via == "pieces":
        doc = run_models_bench(args.plus, args.edit, args.max, args.latency, args.latency * 1.2, args.jitter)
    else:
        doc = run_models_bench_via_run(
            args.plus, args.edit, args.max, args.latency, args.latency * 1.2, args.jitter, log=print
        )
    for v in doc["verdicts"]:
        print(f"{v['result']:4}  {v['target']}: {v['measured']} (wanted {v['wanted']})")
    for line in guard_lines(doc.get("guard_history") or {}):
        print(line)
    name = (
        "models-control.json"
        if args.control
        else "models.json"
        if args.via == "pieces"
        else "models-run.json"
    )
    path = args.results / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"saved {path}")
    return 0
