"""The side-by-side run: one emulator, one manifest, three contenders one after another.

(a) ``qwenedit run`` (the Prefect flow) as a subprocess against a real ``prefect server start`` and a
local S3 server; (b) the seed's sequential dashscope-SDK loop (capped); (c) a naive asyncio + httpx
loop with a semaphore of 50 and no pacer. Each contender uses its own API key (its own emulator
account) and the emulator is reset between them, so none inherits another's rate-limit window.

All rate numbers come from the emulator's arrival log (``GET /_emulator/arrivals``): what arrived
where the limit is enforced, not what the client believes it sent.
"""

from __future__ import annotations

import itertools
import json
import os
import platform
import shutil
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from bench import metrics
from bench.procs import PYTHON, Measured, PrefectServer, run_measured
from bench.workload import make_images, write_manifest
from devkit.emulator import EmulatorProcess
from qwenedit.emulator.ratelimit import rule_for_rps

REAL_RPS = 2.0
REAL_LATENCY_MEDIAN_S = 12.0
REAL_LATENCY_P99_S = 30.0
NAIVE_CONCURRENCY = 50
NAIVE_RETRY_SLEEP_S = 1.0  # at scale 1; divided by the scale like every other duration
TARGET_STEADY = 0.97
TARGET_SPEEDUP = 25.0
TARGET_CPU_MS = 20.0

LABELS = {
    "a": "(a) qwenedit run (Prefect flow)",
    "b": "(b) seed: sequential dashscope SDK loop",
    "c": "(c) naive asyncio + httpx, semaphore 50",
}

# Inherited variables that could point a child at the wrong server or account.
_SCRUB_PREFIXES = ("PREFECT_", "AWS_", "QWENEDIT_S3_", "DASHSCOPE_")


@dataclass
class BenchConfig:
    scale: float = 10.0
    jobs: int = 600
    b_jobs: int = 40
    b_time_budget_s: float | None = None  # default: 600 s of real time, ÷ scale
    only: tuple[str, ...] = ("a", "b", "c")
    max_in_flight: int = 64
    s3: str = "seaweed"  # or "moto"
    seed: int | None = 7  # the emulator's: reproducible latencies (each contender gets its own draws)
    keep_workdir: bool = False

    @property
    def rps(self) -> float:
        return REAL_RPS * self.scale

    @property
    def limit(self) -> int:
        """Requests the emulator admits in any 1-s window (``--scale`` ≥ 0.5 keeps the window at 1 s)."""
        limit, _window_s = rule_for_rps(self.rps)
        return limit

    @property
    def latency_median_s(self) -> float:
        return REAL_LATENCY_MEDIAN_S / self.scale

    @property
    def latency_p99_s(self) -> float:
        return REAL_LATENCY_P99_S / self.scale

    @property
    def mode(self) -> str:
        return "full" if self.scale == 1 else f"scale{self.scale:g}"

    @property
    def b_budget_s(self) -> float:
        return self.b_time_budget_s if self.b_time_budget_s is not None else 600.0 / self.scale


@dataclass
class ContenderRun:
    """What one contender did, as measured from outside."""

    name: str
    measured: Measured
    jobs_total: int
    jobs_attempted: int
    jobs_ok: int
    images: int
    arrivals: list[dict[str, Any]]
    extra_cpu_s: float = 0.0  # the Prefect API server's CPU during (a)
    capped_by: str | None = None
    client_report: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def _child_env(extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(_SCRUB_PREFIXES)}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


@contextmanager
def s3_server(kind: str, workdir: Path) -> Iterator[Any]:
    """A local S3 server with a ``bench`` bucket: SeaweedFS (a real store) or moto (in this process)."""
    from devkit.moto import MotoServer
    from devkit.seaweed import SeaweedServer, ensure_bucket

    server: Any = SeaweedServer(workdir / "seaweed") if kind == "seaweed" else MotoServer()
    with server:
        ensure_bucket(server.client(), "bench")
        yield server


def run_pipeline(
    *,
    name: str,
    manifest: Path,
    jobs: int,
    emulator: EmulatorProcess,
    prefect: PrefectServer,
    s3: Any,
    rps: float,
    max_in_flight: int,
    workdir: Path,
    timeout_s: float,
) -> ContenderRun:
    """(a): ``python -m qwenedit run`` as a subprocess; its CPU plus the Prefect server's CPU meanwhile."""
    report_dir = workdir / f"reports-{name}"
    env = _child_env({**prefect.env(), **s3.env(), "DASHSCOPE_API_KEY": f"sk-bench-{name}-0001"})
    cmd = [
        PYTHON, "-m", "qwenedit", "run", str(manifest),
        "--dest", f"s3://bench/{name}",
        "--base-url", emulator.base_url,
        "--rps", f"{rps:g}",
        "--max-in-flight", str(max_in_flight),
        "--report-dir", str(report_dir),
        "--no-progress",
    ]  # fmt: skip
    prefect.settle(max_wait_s=20)
    server_before = prefect.cpu_seconds()
    measured = run_measured(
        cmd, env=env, log_path=workdir / f"{name}.log", timeout_s=timeout_s, cwd=workdir, watch=prefect.pid
    )
    # The server keeps writing the run's events for a moment after the client exits: that is its cost too.
    server_after = prefect.settle()
    summaries = sorted(report_dir.glob("*/summary.json"))
    summary: dict[str, Any] = json.loads(summaries[-1].read_text()) if summaries else {}
    by_status = summary.get("by_status", {})
    run = ContenderRun(
        name="a",
        measured=measured,
        jobs_total=jobs,
        jobs_attempted=sum(by_status.values()) if by_status else jobs,
        jobs_ok=int(by_status.get("succeeded", 0)),
        images=int(summary.get("images_stored", 0)),
        arrivals=emulator.arrivals(),
        extra_cpu_s=server_after - server_before,
        client_report={
            k: summary.get(k) for k in ("by_status", "requests_sent", "request_rate", "throttled_429")
        },
    )
    if measured.returncode != 0:
        run.notes.append(f"qwenedit run exited {measured.returncode}; see {workdir / (name + '.log')}")
    if not summary:
        run.notes.append("no summary.json: the run did not finish")
    if measured.children_seen:
        run.notes.append(f"the run process started {measured.children_seen} child process(es)")
    return run


def run_script(
    *,
    name: str,
    module: str,
    args: list[str],
    emulator: EmulatorProcess,
    workdir: Path,
    timeout_s: float,
) -> ContenderRun:
    """(b) or (c): ``python -m bench.<module>`` as a subprocess writing a JSON result."""
    result_path = workdir / f"{name}-result.json"
    cmd = [
        PYTHON, "-m", module,
        "--base-url", emulator.base_url,
        "--out", str(workdir / f"out-{name}"),
        "--result", str(result_path),
        *args,
    ]  # fmt: skip
    env = _child_env({"DASHSCOPE_API_KEY": f"sk-bench-{name}-0001"})
    root = Path(__file__).resolve().parent.parent  # so ``-m bench.x`` resolves from a temp cwd too
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), env.get("PYTHONPATH")]))
    measured = run_measured(cmd, env=env, log_path=workdir / f"{name}.log", timeout_s=timeout_s, cwd=workdir)
    report: dict[str, Any] = json.loads(result_path.read_text()) if result_path.exists() else {}
    run = ContenderRun(
        name=name,
        measured=measured,
        jobs_total=int(report.get("jobs_total", 0)),
        jobs_attempted=int(report.get("jobs_attempted", 0)),
        jobs_ok=int(report.get("jobs_ok", 0)),
        images=int(report.get("images", 0)),
        arrivals=emulator.arrivals(),
        capped_by=report.get("capped_by"),
        client_report=report,
    )
    if measured.returncode != 0 or not report:
        run.notes.append(f"{module} exited {measured.returncode}; see {workdir / (name + '.log')}")
    return run


def contender_metrics(run: ContenderRun, limit: int) -> dict[str, Any]:
    """The table row of one contender, from its arrivals and its process measurements."""
    groups: dict[tuple[str, str], list[float]] = defaultdict(list)
    accepted: list[float] = []
    throttled = 0
    for a in run.arrivals:
        groups[(a.get("account", ""), a.get("model", ""))].append(float(a["time"]))
        if a.get("status") == 429:
            throttled += 1
        else:
            accepted.append(float(a["time"]))
    all_times = [t for ts in groups.values() for t in ts]
    steady = metrics.steady_state(accepted)
    steady_sent = metrics.steady_state(all_times)
    max_1s = max((metrics.max_in_window(ts, 1.0) for ts in groups.values()), default=0)
    max_1s_accepted = metrics.max_in_window(accepted, 1.0)
    over = sum(metrics.windows_over(ts, limit, 1.0) for ts in groups.values())
    in_steady = sorted(t for t in accepted if steady.start <= t < steady.end)
    gaps = [b - a for a, b in itertools.pairwise(in_steady)]
    m = run.measured
    cpu_s = m.cpu_s + run.extra_cpu_s
    per_job = max(1, run.jobs_attempted)
    images_per_job = run.images / run.jobs_ok if run.jobs_ok else 1.0
    return {
        "contender": LABELS[run.name],
        "jobs_total": run.jobs_total,
        "jobs_attempted": run.jobs_attempted,
        "jobs_ok": run.jobs_ok,
        "images": run.images,
        "capped_by": run.capped_by,
        "accounts": len(groups),
        "requests_arrived": len(all_times),
        "requests_accepted": len(accepted),
        "wall_s": round(m.wall_s, 2),
        "arrival_span_s": round(max(all_times) - min(all_times), 2) if all_times else 0.0,
        "steady_rate": round(steady.rate, 4),
        "steady_ratio": round(steady.rate / limit, 4),
        "steady_window_s": [round(steady.start - min(all_times), 2), round(steady.end - min(all_times), 2)]
        if all_times
        else None,
        "steady_sent_rate": round(steady_sent.rate, 4),
        "steady_gap_s": {
            "min": round(min(gaps), 4) if gaps else None,
            "p01": round(metrics.quantile(gaps, 0.01), 4) if gaps else None,
            "median": round(metrics.quantile(gaps, 0.5), 4) if gaps else None,
            "mean": round(sum(gaps) / len(gaps), 4) if gaps else None,
            "p99": round(metrics.quantile(gaps, 0.99), 4) if gaps else None,
        },
        "max_in_1s": max_1s,
        "max_in_1s_accepted": max_1s_accepted,
        "arrivals_in_windows_over_limit": over,
        "http_429": throttled,
        "images_per_hour": round(metrics.per_hour(run.images, m.wall_s), 1),
        "images_per_hour_steady": round(steady.rate * 3600 * images_per_job, 1),
        "seconds_per_job": round(m.wall_s / run.jobs_attempted, 3) if run.jobs_attempted else None,
        "cpu_s": round(cpu_s, 3),
        "cpu_s_client": round(m.cpu_s, 3),
        "cpu_s_prefect_server": round(run.extra_cpu_s, 3),
        "cpu_ms_per_job": round(1000 * cpu_s / per_job, 2),
        "cpu_ms_per_job_client": round(1000 * m.cpu_s / per_job, 2),
        "cpu_ms_per_job_prefect_server": round(1000 * run.extra_cpu_s / per_job, 2),
        "peak_rss_mb": round(m.maxrss_bytes / 2**20, 1),
        "prefect_server_peak_rss_mb": round(m.watched_peak_rss_bytes / 2**20, 1) if run.name == "a" else None,
        "returncode": m.returncode,
        "client_report": run.client_report,
        "notes": run.notes,
    }


def verdicts(rows: dict[str, dict[str, Any]], cfg: BenchConfig) -> list[metrics.Verdict]:
    """PASS/MISS for each target the issue sets for (a)."""
    a = rows.get("a")
    if a is None:
        return []
    out = [
        metrics.Verdict(
            "(a) steady-state rate ≥ 0.97 × limit",
            f"{a['steady_ratio']:.3f} × {cfg.limit} ({a['steady_rate']:.3f} req/s)",
            f"≥ {TARGET_STEADY}",
            a["steady_ratio"] >= TARGET_STEADY,
        ),
        metrics.Verdict(
            "(a) never above the limit in any 1-s window",
            f"max {a['max_in_1s']} in 1 s",
            f"≤ {cfg.limit}",
            a["max_in_1s"] <= cfg.limit,
        ),
        metrics.Verdict("(a) no self-inflicted 429s", f"{a['http_429']} × 429", "0", a["http_429"] == 0),
    ]
    b = rows.get("b")
    if b is not None and b["images_per_hour"] > 0:
        ratio = a["images_per_hour"] / b["images_per_hour"]
        steady_ratio = a["images_per_hour_steady"] / b["images_per_hour"]
        note = (
            f"wall clock, start-up and drain included; at (a)'s steady rate: {steady_ratio:.1f}×; "
            f"ceiling {cfg.rps:g} req/s × {b['seconds_per_job']:.2f} s/job of (b) = "
            f"{cfg.rps * b['seconds_per_job']:.1f}×"
        )
        if cfg.scale != 1:
            note += f"; at --scale {cfg.scale:g} the latency is not the realistic one: indicative only"
        out.append(
            metrics.Verdict(
                "(a) images/hour ≥ 25 × (b)",
                f"{ratio:.1f}× ({a['images_per_hour']:.0f} vs {b['images_per_hour']:.0f} /h)",
                f"≥ {TARGET_SPEEDUP:g}×",
                ratio >= TARGET_SPEEDUP,
                note,
            )
        )
    out.append(
        metrics.Verdict(
            "(a) CPU per job (run + Prefect server)",
            f"{a['cpu_ms_per_job']:.1f} ms "
            f"(run {a['cpu_ms_per_job_client']:.1f} + server {a['cpu_ms_per_job_prefect_server']:.1f})",
            f"≤ {TARGET_CPU_MS:g} ms",
            a["cpu_ms_per_job"] <= TARGET_CPU_MS,
        )
    )
    return out


def per_second_series(run: ContenderRun) -> dict[str, list[int]]:
    """Accepted and throttled arrivals per 1-s bin from the contender's first arrival (for the plot)."""
    if not run.arrivals:
        return {"accepted": [], "throttled": []}
    origin = min(float(a["time"]) for a in run.arrivals)
    ok = metrics.per_second([float(a["time"]) for a in run.arrivals if a.get("status") != 429], origin)
    th = metrics.per_second([float(a["time"]) for a in run.arrivals if a.get("status") == 429], origin)
    n = max(len(ok), len(th))
    return {"accepted": ok + [0] * (n - len(ok)), "throttled": th + [0] * (n - len(th))}


def machine_info() -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "load_avg_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def run_side_by_side(cfg: BenchConfig, log: Any = print) -> dict[str, Any]:
    """Run the contenders in ``cfg.only`` and return the results document (also saved as JSON)."""
    machine = machine_info()
    with ExitStack() as stack:
        workdir = Path(tempfile.mkdtemp(prefix="qwenedit-bench-"))
        keep = [cfg.keep_workdir]  # a failed contender keeps the work dir: its log is the evidence

        def _cleanup() -> None:
            if not keep[0]:
                shutil.rmtree(workdir, ignore_errors=True)

        stack.callback(_cleanup)
        images = make_images(workdir / "images")
        manifest = workdir / "manifest.csv"
        write_manifest(manifest, cfg.jobs, images)
        log(
            f"bench {cfg.mode}: {cfg.jobs} jobs, limit {cfg.limit} req/s, latency median "
            f"{cfg.latency_median_s:g} s / p99 {cfg.latency_p99_s:g} s, work dir {workdir}"
        )
        emulator = stack.enter_context(
            EmulatorProcess(
                workdir,
                rps=cfg.rps,
                latency_median=cfg.latency_median_s,
                latency_p99=cfg.latency_p99_s if cfg.latency_p99_s > cfg.latency_median_s else None,
                render="fast",
                seed=cfg.seed,
            )
        )
        log(f"emulator at {emulator.base_url} (pid {emulator.pid})")
        runs: dict[str, ContenderRun] = {}
        for name in cfg.only:
            emulator.reset()
            t0 = time.monotonic()
            if name == "a":
                s3 = stack.enter_context(s3_server(cfg.s3, workdir))
                prefect = stack.enter_context(PrefectServer(workdir / "prefect-home"))
                log(f"prefect server {prefect.api_url} (pid {prefect.pid}); S3 ({cfg.s3}) {s3.endpoint_url}")
                log(f"{LABELS['a']} …")
                runs["a"] = run_pipeline(
                    name="a",
                    manifest=manifest,
                    jobs=cfg.jobs,
                    emulator=emulator,
                    prefect=prefect,
                    s3=s3,
                    rps=cfg.rps,
                    max_in_flight=cfg.max_in_flight,
                    workdir=workdir,
                    timeout_s=cfg.jobs / cfg.rps * 3 + 300,
                )
            elif name == "b":
                log(f"{LABELS['b']} (capped at {cfg.b_jobs} jobs or {cfg.b_budget_s:g} s) …")
                runs["b"] = run_script(
                    name="b",
                    module="bench.seed_loop",
                    args=[
                        "--manifest",
                        str(manifest),
                        "--max-jobs",
                        str(cfg.b_jobs),
                        "--time-budget",
                        f"{cfg.b_budget_s:g}",
                    ],
                    emulator=emulator,
                    workdir=workdir,
                    timeout_s=cfg.b_budget_s * 2 + 120,
                )
            elif name == "c":
                log(f"{LABELS['c']} …")
                runs["c"] = run_script(
                    name="c",
                    module="bench.naive_loop",
                    args=[
                        "--manifest",
                        str(manifest),
                        "--concurrency",
                        str(NAIVE_CONCURRENCY),
                        "--retry-sleep",
                        f"{NAIVE_RETRY_SLEEP_S / cfg.scale:g}",
                    ],
                    emulator=emulator,
                    workdir=workdir,
                    timeout_s=cfg.jobs / cfg.rps * 5 + 300,
                )
            else:
                raise ValueError(f"unknown contender {name!r}: expected a, b or c")
            log(f"  done in {time.monotonic() - t0:.1f} s")
        rows = {name: contender_metrics(run, cfg.limit) for name, run in runs.items()}
        doc: dict[str, Any] = {
            "mode": cfg.mode,
            "config": {
                "scale": cfg.scale,
                "limit_rps": cfg.rps,
                "limit_per_1s_window": cfg.limit,
                "latency_median_s": cfg.latency_median_s,
                "latency_p99_s": cfg.latency_p99_s,
                "latency_distribution": "lognormal (emulator)",
                "jobs": cfg.jobs,
                "b_cap_jobs": cfg.b_jobs,
                "b_cap_s": cfg.b_budget_s,
                "a_max_in_flight": cfg.max_in_flight,
                "c_concurrency": NAIVE_CONCURRENCY,
                "c_retry_sleep_s": NAIVE_RETRY_SLEEP_S / cfg.scale,
                "s3": cfg.s3,
                "emulator_seed": cfg.seed,
                "images_per_job": 1,
            },
            "definitions": {
                "wall_s": "spawn to exit of the contender's process (imports, validation, reports included)",
                "steady_ratio": "accepted arrivals (emulator log) between first + 10 % and last − 10 % of "
                "the accepted-arrival span, divided by that duration, divided by the limit",
                "max_in_1s": "most arrivals (429s included) of one account and model within any sliding 1-s "
                "window [t, t + 1 s), as the emulator counts",
                "images_per_hour": "images downloaded/stored ÷ wall_s × 3600 ((b): of the capped run)",
                "cpu_ms_per_job": "user + system CPU ÷ jobs attempted; (a): the `qwenedit run` process "
                "(os.wait4 rusage) + the Prefect API server's process tree (psutil, from before the run "
                "until it is idle again after); emulator and S3 server not counted",
                "peak_rss_mb": "ru_maxrss of the contender's process (os.wait4)",
            },
            "machine": machine,
            "contenders": rows,
            "per_second": {name: per_second_series(run) for name, run in runs.items()},
            "verdicts": [v.to_dict() for v in verdicts(rows, cfg)],
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        keep[0] = keep[0] or any(run.measured.returncode != 0 for run in runs.values())
        if keep[0]:
            doc["workdir"] = str(workdir)
    return doc
