"""``python -m bench``: the side-by-side benchmark; ``python -m bench memory``: the memory benchmark.

python -m bench --scale 10            # 20 req/s, latencies ÷ 10: the whole comparison in ~3 minutes
python -m bench --scale 1             # full fidelity: 2 req/s, median 12 s / p99 30 s (README numbers)
python -m bench --only a,c --jobs 300
python -m bench memory                # peak RSS of `qwenedit run` at 1,000 and 20,000 jobs
python -m bench catalogue             # 1M-row unchanged rerun, 10k/100k executed, 1 % changed
python -m bench models                # Max + plus + edit at their own limits, 20–30 s latency, jitter
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rich.console import Console

from bench.report import markdown_table, plot_rps, print_side_by_side, save_json
from bench.side_by_side import BenchConfig, run_side_by_side

RESULTS = Path(__file__).parent / "results"


def _console() -> Console:
    """Wide enough for the table even when the output goes to a file (nohup, CI logs)."""
    probe = Console()
    return probe if probe.is_terminal else Console(width=160)


def _side_by_side(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m bench", description="qwenedit vs the seed vs a naive loop")
    p.add_argument("--scale", type=float, default=10.0, help="time compression: limit 2·N req/s, latency ÷ N")
    p.add_argument("--jobs", type=int, default=600, help="manifest rows (all of them for (a) and (c))")
    p.add_argument("--b-jobs", type=int, default=40, help="cap for the sequential seed loop (b)")
    p.add_argument(
        "--b-time-budget", type=float, default=None, help="time cap for (b), s (default 600 ÷ scale)"
    )
    p.add_argument("--only", default="a,b,c", help="comma-separated contenders to run, e.g. a,c")
    p.add_argument("--max-in-flight", type=int, default=64, help="(a)'s --max-in-flight")
    p.add_argument("--s3", choices=("seaweed", "moto"), default="seaweed", help="local S3 server for (a)")
    p.add_argument("--results", type=Path, default=RESULTS, help="where the JSON and the plot go")
    p.add_argument("--keep", action="store_true", help="keep the work dir (logs, outputs) for inspection")
    args = p.parse_args(argv)
    only = tuple(x.strip() for x in args.only.split(",") if x.strip())
    if not only or set(only) - {"a", "b", "c"}:
        p.error("--only takes a comma-separated subset of a,b,c")
    if args.scale < 0.5 or args.jobs < 10:
        p.error("--scale must be ≥ 0.5 (the limit stays per 1-s window) and --jobs ≥ 10")
    cfg = BenchConfig(
        scale=args.scale,
        jobs=args.jobs,
        b_jobs=args.b_jobs,
        b_time_budget_s=args.b_time_budget,
        only=only,
        max_in_flight=args.max_in_flight,
        s3=args.s3,
        keep_workdir=args.keep,
    )
    console = _console()
    doc = run_side_by_side(cfg, log=lambda msg: console.print(f"[dim]{msg}[/]"))
    print_side_by_side(doc, console)
    json_path = save_json(doc, args.results / f"{cfg.mode}.json")
    plot_path = plot_rps(doc, args.results / ("rps.png" if cfg.mode == "full" else f"rps-{cfg.mode}.png"))
    console.print(f"saved {json_path} and {plot_path}")
    if "workdir" in doc:
        console.print(f"work dir kept (logs, outputs): {doc['workdir']}")
    console.print(markdown_table(doc), markup=False, highlight=False)
    return 0


def _memory(argv: list[str]) -> int:
    from bench.memory import run_memory

    p = argparse.ArgumentParser(prog="python -m bench memory", description="peak RSS vs manifest size")
    p.add_argument("--jobs", default="1000,20000", help="comma-separated manifest sizes, smallest first")
    p.add_argument("--s3", choices=("seaweed", "moto"), default="seaweed")
    p.add_argument("--max-in-flight", type=int, default=64)
    p.add_argument("--timeout", type=float, default=1500.0, help="stop a run after this many seconds")
    p.add_argument("--results", type=Path, default=RESULTS)
    p.add_argument("--keep", action="store_true")
    args = p.parse_args(argv)
    counts = [int(x) for x in args.jobs.split(",") if x.strip()]
    console = _console()
    doc = run_memory(
        counts,
        s3=args.s3,
        max_in_flight=args.max_in_flight,
        timeout_s=args.timeout,
        keep_workdir=args.keep,
        log=lambda msg: console.print(f"[dim]{msg}[/]"),
    )
    for r in doc["runs"]:
        console.print(
            f"{r['jobs']:>6} jobs: peak RSS {r['peak_rss_mb']:.1f} MB "
            f"(sampled {r['peak_rss_mb_sampled']:.1f}), "
            f"{r['wall_s']:.0f} s, {r['jobs_per_s']:.1f} jobs/s, CPU {r['cpu_ms_per_job']:.1f} ms/job"
            + ("" if r["finished"] else "  [red](did not finish)[/]")
        )
    v = doc["verdict"]
    colour = "green" if v["result"] == "PASS" else "red"
    console.print(f"ratio {doc['ratio']:.2f}×  [{colour}]{v['result']}[/] ({v['target']}) {v['note']}")
    path = save_json(doc, args.results / "memory.json")
    console.print(f"saved {path}")
    if doc.get("workdir"):
        console.print(f"work dir kept (logs): {doc['workdir']}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "memory":
        return _memory(argv[1:])
    if argv and argv[0] == "models":
        from bench.models import main as models_main

        return models_main(argv[1:], RESULTS)
    if argv and argv[0] == "catalogue":
        from bench.catalogue import main as catalogue_main

        return catalogue_main(argv[1:], RESULTS)
    return _side_by_side(argv)


if __name__ == "__main__":
    sys.exit(main())
