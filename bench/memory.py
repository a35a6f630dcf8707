"""Memory benchmark: peak RSS of ``qwenedit run`` for a small and a large manifest against a fast emulator.

The pipeline streams the manifest and bounds its window, so the peak should not grow with the number
of jobs: the issue asks for the 20,000-job peak within 1.5× of the 1,000-job peak. The emulator answers
at once (no latency, a high limit, fast rendering), so the run goes as fast as the pipeline itself can.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from bench.procs import PrefectServer
from bench.side_by_side import contender_metrics, machine_info, run_pipeline, s3_server
from bench.workload import make_images, write_manifest
from devkit.emulator import EmulatorProcess

FAST_RPS = 500.0
TARGET_RATIO = 1.5


def _curve(samples: list[tuple[float, int]], points: int = 120) -> list[list[float]]:
    """The RSS samples thinned to about ``points`` (seconds, MB) pairs for the JSON file."""
    if not samples:
        return []
    step = max(1, len(samples) // points)
    picked = samples[::step]
    if picked[-1] is not samples[-1]:
        picked.append(samples[-1])
    return [[round(t, 1), round(rss / 2**20, 1)] for t, rss in picked]


def run_memory(
    job_counts: Sequence[int] = (1000, 20000),
    *,
    s3: str = "seaweed",
    max_in_flight: int = 64,
    timeout_s: float = 1500.0,
    keep_workdir: bool = False,
    log: Callable[[str], object] = print,
) -> dict[str, Any]:
    machine = machine_info()
    runs: list[dict[str, Any]] = []
    with ExitStack() as stack:
        workdir = Path(tempfile.mkdtemp(prefix="qwenedit-bench-mem-"))
        keep = [keep_workdir]  # a failed run keeps the work dir: its log is the evidence

        def _cleanup() -> None:
            if not keep[0]:
                shutil.rmtree(workdir, ignore_errors=True)

        stack.callback(_cleanup)
        images = make_images(workdir / "images")
        emulator = stack.enter_context(
            EmulatorProcess(workdir, rps=FAST_RPS, latency_median=0.0, render="fast")
        )
        server = stack.enter_context(s3_server(s3, workdir))
        prefect = stack.enter_context(PrefectServer(workdir / "prefect-home"))
        log(f"memory bench: emulator {emulator.base_url} (rps {FAST_RPS:g}, no latency), S3 {s3}, {workdir}")
        for n in job_counts:
            manifest = workdir / f"manifest-{n}.csv"
            write_manifest(manifest, n, images)
            emulator.reset()
            log(f"qwenedit run: {n} jobs …")
            t0 = time.monotonic()
            run = run_pipeline(
                name=f"m{n}",
                manifest=manifest,
                jobs=n,
                emulator=emulator,
                prefect=prefect,
                s3=server,
                rps=FAST_RPS,
                max_in_flight=max_in_flight,
                workdir=workdir,
                timeout_s=timeout_s,
            )
            billed = int(emulator.stats().get("billed_requests", 0))
            row = contender_metrics(run, int(FAST_RPS))
            m = run.measured
            runs.append(
                {
                    "jobs": n,
                    "jobs_succeeded": row["jobs_ok"],
                    "jobs_billed_by_emulator": billed,
                    "finished": not m.timed_out and m.returncode == 0,
                    "timed_out": m.timed_out,
                    "returncode": m.returncode,
                    "wall_s": round(m.wall_s, 1),
                    "jobs_per_s": round(billed / m.wall_s, 2) if m.wall_s else 0.0,
                    "peak_rss_mb": round(m.maxrss_bytes / 2**20, 1),
                    "peak_rss_mb_sampled": round(max((r for _, r in m.rss_samples), default=0) / 2**20, 1),
                    "prefect_server_peak_rss_mb": round(m.watched_peak_rss_bytes / 2**20, 1),
                    "cpu_ms_per_job": row["cpu_ms_per_job"],
                    "cpu_ms_per_job_client": row["cpu_ms_per_job_client"],
                    "cpu_ms_per_job_prefect_server": row["cpu_ms_per_job_prefect_server"],
                    "children_seen": m.children_seen,
                    "rss_curve_s_mb": _curve(m.rss_samples),
                    "notes": run.notes,
                }
            )
            keep[0] = keep[0] or m.returncode != 0
            log(
                f"  {billed} jobs in {m.wall_s:.1f} s, peak RSS {m.maxrss_bytes / 2**20:.1f} MB "
                f"({time.monotonic() - t0:.0f} s with settling)"
            )
    first, last = runs[0], runs[-1]
    ratio = last["peak_rss_mb"] / first["peak_rss_mb"] if first["peak_rss_mb"] else float("nan")
    return {
        "mode": "memory",
        "config": {
            "emulator_rps": FAST_RPS,
            "latency_s": 0.0,
            "render": "fast",
            "s3": s3,
            "max_in_flight": max_in_flight,
        },
        "definitions": {
            "peak_rss_mb": "ru_maxrss of the `qwenedit run` process from os.wait4 (its own high-water mark; "
            "it starts no child processes when PREFECT_API_URL points at a server)",
            "peak_rss_mb_sampled": "highest RSS seen by a 4 Hz psutil poll (cross-check)",
        },
        "machine": machine,
        "runs": runs,
        "ratio": round(ratio, 3),
        "verdict": {
            "target": f"peak RSS at {last['jobs']} jobs ≤ {TARGET_RATIO} × peak at {first['jobs']} jobs",
            "measured": f"{last['peak_rss_mb']} MB / {first['peak_rss_mb']} MB = {ratio:.2f}×",
            "result": "PASS" if ratio <= TARGET_RATIO and last["finished"] else "MISS",
            "note": ""
            if last["finished"]
            else "the large run did not finish: peak measured up to where it stopped",
        },
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "workdir": str(workdir) if keep[0] else None,
    }
