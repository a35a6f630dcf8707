"""Catalogue benchmark: what a nightly run over a 10^5–10^6-row catalogue costs (issue [catalogue]).

``python -m bench catalogue`` measures three things, each beside its target, and writes
``bench/results/catalogue.json``:

(a) **unchanged rerun** of ``--rows`` rows (1,000,000): a CSV manifest over a handful of shared local
    images, and a ledger seeded synthetically: one done marker per row at the run layer's own
    ``ledger.done_key(Done)`` (``_ledger/_done/{job_id}@{fingerprint hex}@{image count}@{request id}.json``),
    its body ``ledger._dump`` of that ``Done``, the fingerprint computed exactly as the run computes it
    (``manifest.iter_jobs`` → ``InputResolver.identity`` → ``jobs.fingerprint``). ``--a-store`` chooses
    the destination: ``seaweedfs`` (the default: ``s3://bench/catalogue-a`` on a SeaweedFS server, the
    markers written to a local folder first and copied in by SeaweedFS's own bulk uploader,
    ``weed filer.copy``, into the bucket's folder, where the S3 gateway lists them: about 2,000 objects/s
    on 2 cores, where boto3 PUTs manage about 500/s) or ``local`` (the local folder itself). Then
    ``qwenedit run`` as a subprocess with ``PREFECT_HOME`` in a fresh folder (after a tiny warm-up run,
    so the database exists): wall, peak RSS and CPU of the whole process tree (the ephemeral Prefect
    server is a child of the run), API calls (the emulator's counters), Prefect database growth
    (``prefect.db`` + ``-wal`` bytes and ``task_run`` rows). The store's own CPU during the run (SeaweedFS
    is a separate process) is reported beside it, not counted.
(b) **executed jobs at compressed time**, ``--executed`` sizes (10,000 and 100,000): emulator without
    latency at a high rate (its limit twice the run's ``--rps``), destination SeaweedFS. CPU per job of
    the run's process tree (the run and its Prefect server; the emulator and SeaweedFS are separate
    processes and are *not* counted), Prefect database bytes per job, peak RSS of the tree at each size.
(c) **1 % changed**: the smallest (b) manifest with the prompt of every 100th row edited, rerun into the
    same destination: the set of jobs the emulator billed (its ledger's request ids, mapped to job ids
    through the rerun's results.csv) must equal the set of changed rows, and nothing else is called.

Process-tree figures: CPU is ``os.wait4``'s rusage of the run (its own time plus every descendant it
reaped), cross-checked against a psutil poll of the live tree; peak RSS is the highest sum of RSS over
the live tree seen by a 5 Hz poll (the kernel's ``ru_maxrss`` is per process, not per tree).
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import psutil

from bench.workload import PROMPTS, make_images

PYTHON = sys.executable
REPO = Path(__file__).resolve().parent.parent
DONE_PREFIX = "_ledger/_done/"
RUN_RPS = 250.0  # (b) and (c): the run's --rps; the emulator allows twice that
A_STORES = ("seaweedfs", "local")
_SCRUB_PREFIXES = ("PREFECT_", "AWS_", "QWENEDIT_S3_", "DASHSCOPE_")

TARGETS = {
    "a_wall_s": 180.0,
    "a_peak_rss_mb": 1024.0,
    "a_calls": 0,
    "a_db_growth_mb": 1.0,
    "b_cpu_ms_per_job": 15.0,
    "b_db_bytes_per_job": 2048.0,
    "b_rss_ratio": 1.2,
}

Log = Callable[[str], object]


# --- measuring a process tree -------------------------------------------------------------------


@dataclass
class TreeRun:
    """How a command and every process it started ran."""

    returncode: int
    wall_s: float
    cpu_s: float  # max(wait4, polled): user + sys of the whole tree
    cpu_s_wait4: float  # the root's rusage: itself plus every descendant it reaped
    cpu_s_polled: float  # the highest user + sys seen summed over the live tree
    peak_rss_bytes: int  # highest sum of RSS over the live tree (5 Hz poll)
    root_maxrss_bytes: int  # ru_maxrss from wait4: the largest single process (root or a reaped child)
    processes_seen: int
    timed_out: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "returncode": self.returncode,
            "wall_s": round(self.wall_s, 2),
            "cpu_s": round(self.cpu_s, 2),
            "cpu_s_wait4": round(self.cpu_s_wait4, 2),
            "cpu_s_polled": round(self.cpu_s_polled, 2),
            "peak_rss_mb": round(self.peak_rss_bytes / 2**20, 1),
            "largest_process_maxrss_mb": round(self.root_maxrss_bytes / 2**20, 1),
            "processes_seen": self.processes_seen,
            "timed_out": self.timed_out,
        }


def _tree(root: psutil.Process) -> list[psutil.Process]:
    try:
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def run_tree(
    cmd: Sequence[str],
    *,
    env: dict[str, str],
    log_path: Path,
    timeout_s: float,
    cwd: Path | None = None,
    sample_every_s: float = 0.2,
) -> TreeRun:
    """Run ``cmd`` to completion (SIGINT, then SIGKILL 30 s later, past ``timeout_s``), measuring its tree."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("wb") as log:
        started = time.monotonic()
        proc = subprocess.Popen(
            list(cmd), env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=cwd
        )
    root = psutil.Process(proc.pid)
    seen: set[int] = set()
    cpu_by_pid: dict[int, float] = {}
    peak_rss = 0
    peak_cpu = 0.0
    timed_out = False
    interrupted_at: float | None = None
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        rss = 0
        for p in _tree(root):
            with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                rss += p.memory_info().rss
                t = p.cpu_times()
                cpu_by_pid[p.pid] = t.user + t.system + t.children_user + t.children_system
                seen.add(p.pid)
        peak_rss = max(peak_rss, rss)
        peak_cpu = max(peak_cpu, sum(cpu_by_pid.values()))
        now = time.monotonic()
        if now - started > timeout_s:
            if interrupted_at is None:
                timed_out, interrupted_at = True, now
                os.kill(proc.pid, signal.SIGINT)
            elif now - interrupted_at > 30:
                os.kill(proc.pid, signal.SIGKILL)
        time.sleep(sample_every_s)
    wall = time.monotonic() - started
    proc.returncode = os.waitstatus_to_exitcode(status)  # keep Popen from reaping it again
    for pid in seen - {proc.pid}:  # a descendant the run left behind is still the run's cost: stop it
        with contextlib.suppress(psutil.NoSuchProcess):
            psutil.Process(pid).kill()
    wait4_cpu = usage.ru_utime + usage.ru_stime
    return TreeRun(
        returncode=proc.returncode,
        wall_s=wall,
        cpu_s=max(wait4_cpu, peak_cpu),
        cpu_s_wait4=wait4_cpu,
        cpu_s_polled=peak_cpu,
        peak_rss_bytes=peak_rss,
        root_maxrss_bytes=usage.ru_maxrss * 1024,
        processes_seen=len(seen),
        timed_out=timed_out,
    )


# --- Prefect's database -------------------------------------------------------------------------


@dataclass(frozen=True)
class DbState:
    """A Prefect home's SQLite database: its size once the WAL is folded in, and what is in it.

    ``of`` checkpoints the WAL into ``prefect.db`` first (``wal_checkpoint(TRUNCATE)``; call it only
    when no server is running on it), so ``bytes`` is the database, not the WAL's high-water mark.
    """

    bytes: int  # prefect.db + prefect.db-wal after the checkpoint
    used_bytes: int  # pages in use × page size (freed pages excluded)
    task_runs: int
    flow_runs: int
    events: int
    artifacts: int
    artifact_bytes: int  # Σ length(artifact.data)

    @classmethod
    def of(cls, home: Path) -> DbState:
        db = home / "prefect.db"
        if not db.exists():
            return cls(0, 0, 0, 0, 0, 0, 0)
        values = {"task_run": 0, "flow_run": 0, "events": 0, "artifact": 0, "artifact_bytes": 0, "used": 0}
        queries = {
            "task_run": "select count(*) from task_run",
            "flow_run": "select count(*) from flow_run",
            "events": "select count(*) from events",
            "artifact": "select count(*) from artifact",
            "artifact_bytes": "select coalesce(sum(length(data)), 0) from artifact",
            "used": "select (select page_count from pragma_page_count()) - "
            "(select freelist_count from pragma_freelist_count())",
        }
        with contextlib.closing(sqlite3.connect(db, timeout=60)) as con:
            with contextlib.suppress(sqlite3.Error):
                con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            page = int(con.execute("PRAGMA page_size").fetchone()[0])
            for name, sql in queries.items():
                with contextlib.suppress(sqlite3.Error):
                    values[name] = int(con.execute(sql).fetchone()[0])
        size = sum(p.stat().st_size for p in (db, home / "prefect.db-wal") if p.exists())
        return cls(
            bytes=size,
            used_bytes=values["used"] * page,
            task_runs=values["task_run"],
            flow_runs=values["flow_run"],
            events=values["events"],
            artifacts=values["artifact"],
            artifact_bytes=values["artifact_bytes"],
        )

    def growth(self, before: DbState) -> dict[str, Any]:
        return {
            "db_bytes_before": before.bytes,
            "db_bytes_after": self.bytes,
            "db_growth_bytes": self.bytes - before.bytes,
            "db_used_growth_bytes": self.used_bytes - before.used_bytes,
            "task_runs_added": self.task_runs - before.task_runs,
            "flow_runs_added": self.flow_runs - before.flow_runs,
            "events_added": self.events - before.events,
            "artifacts_added": self.artifacts - before.artifacts,
            "artifact_bytes_added": self.artifact_bytes - before.artifact_bytes,
        }


# --- the workload -------------------------------------------------------------------------------


def write_catalogue_manifest(
    path: Path, rows: int, images: Sequence[Path], changed: Callable[[int], bool] | None = None
) -> None:
    """A ``rows``-row CSV manifest (streamed) over ``images``; rows for which ``changed(i)`` get a new prompt.

    Job ids are ``sku-0000000``…; one row in three fuses two images; all ``n = 1``.
    """
    refs = [p.relative_to(path.parent).as_posix() for p in images]
    k = len(refs)
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["job_id", "image_1", "image_2", "prompt", "n"])
        for i in range(rows):
            second = refs[(i + 1) % k] if i % 3 == 2 else ""
            prompt = PROMPTS[2] if second else PROMPTS[(i % 2) * 3]
            if changed is not None and changed(i):
                prompt += " Keep the shadows soft."
            w.writerow([f"sku-{i:07d}", refs[i % k], second, prompt, 1])


def every_hundredth(i: int) -> bool:
    """The 1 % of rows (c) changes."""
    return i % 100 == 37


def done_marker_key(done: Any) -> str:
    """Where the run layer keeps a job's done marker (the done record itself).

    The run layer's own ``ledger.done_key(done)`` when it has one (it may add the image count and the
    request id after the fingerprint), else ``_ledger/_done/{job_id}@{fingerprint hex}.json``.
    """
    import inspect

    from qwenedit import ledger

    key_of = getattr(ledger, "done_key", None)
    if key_of is not None and "done" in inspect.signature(key_of).parameters:
        return str(key_of(done))
    return f"{DONE_PREFIX}{done.job_id}@{done.fingerprint.removeprefix('sha256:')}.json"


def row_fingerprints(manifest: Path, *, region: str | None = None) -> Iterator[tuple[str, str]]:
    """(job_id, fingerprint) of every row, computed as the run computes them."""
    from qwenedit.inputs import InputResolver
    from qwenedit.jobs import fingerprint
    from qwenedit.manifest import iter_jobs, manifest_base

    with InputResolver(manifest_dir=manifest_base(str(manifest))) as resolver:
        for job in iter_jobs(str(manifest), region=region):
            yield job.job_id, fingerprint(job, [resolver.identity(r) for r in job.images])


def copy_into_seaweed(s3: Any, staged: Path, bucket: str, prefix: str) -> None:
    """Copy the ledger staged in the local folder ``staged`` to ``s3://bucket/prefix/`` on SeaweedFS.

    ``weed filer.copy`` (SeaweedFS's bulk uploader, 32 concurrent copies) writes into the filer folder
    that backs the bucket, ``/buckets/{bucket}/{prefix}/``; the S3 gateway lists and serves those
    objects under the same keys.
    """
    from devkit.seaweed import find_weed

    target = f"http://127.0.0.1:{s3.ports['filer']}/buckets/{bucket}/{prefix.strip('/')}/"
    out = subprocess.run(
        [find_weed(), "filer.copy", "-c", "32", str(staged / "_ledger"), target],
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode != 0:
        raise RuntimeError(f"weed filer.copy exited {out.returncode}: {out.stderr[-2000:]}")


def check_seeded_objects(client: Any, bucket: str, prefix: str, staged: Path, sample: Sequence[str]) -> None:
    """Every key in ``sample`` (relative to ``staged``) is in the bucket with the staged bytes."""
    for key in sample:
        body = client.get_object(Bucket=bucket, Key=f"{prefix.strip('/')}/{key}")["Body"].read()
        if body != (staged / key).read_bytes():
            raise AssertionError(f"s3://{bucket}/{prefix}/{key} differs from the staged done record")


def seed_done_markers(manifest: Path, dest: Path, *, run_id: str = "seeded") -> int:
    """Write a done marker for every row of ``manifest`` into the local destination ``dest``.

    The body is ``ledger._dump`` of a ``Done``, filled from a template (``asdict`` + ``json.dumps`` per
    row would double the seeding time of a million rows); the first row is checked against ``_dump``.
    """
    from qwenedit.ledger import Done, _dump

    folder = dest / DONE_PREFIX
    folder.mkdir(parents=True, exist_ok=True)
    finished = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime())

    def record(job_id: str, fp: str, n: int) -> Done:
        return Done(
            job_id=job_id,
            fingerprint=fp,
            request_id=f"seeded-{n}",
            image_count=1,
            outputs=(f"{job_id}/1.png",),
            cost="0.03",
            currency="USD",
            finished_at=finished,
            run_id=run_id,
        )

    template = _dump(record("@JOB@", "@FP@", 0)).decode("utf-8").replace("seeded-0", "seeded-@N@")
    n = 0
    for job_id, fp in row_fingerprints(manifest):
        body = template.replace("@JOB@", job_id).replace("@FP@", fp).replace("@N@", str(n)).encode("utf-8")
        if n == 0 and body != _dump(record(job_id, fp, 0)):
            raise AssertionError("the done-record template no longer matches ledger._dump")
        key = done_marker_key(record(job_id, fp, n))
        fd = os.open(dest / key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, body)
        finally:
            os.close(fd)
        n += 1
    return n


# --- running qwenedit ---------------------------------------------------------------------------


def child_env(prefect_home: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    """A clean environment: no inherited Prefect/AWS/DashScope settings, Prefect home in ``prefect_home``
    and no PREFECT_API_URL (so the run starts its own ephemeral server as a child)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(_SCRUB_PREFIXES)}
    env.update(
        {
            "PYTHONUNBUFFERED": "1",
            "PREFECT_HOME": str(prefect_home),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "DASHSCOPE_API_KEY": "sk-bench-catalogue-0001",
        }
    )
    env.update(extra or {})
    return env


@dataclass
class RunOutcome:
    """One measured ``qwenedit run``: the tree's figures, Prefect's database growth, the summary."""

    name: str
    measured: TreeRun
    db: dict[str, Any]
    summary: dict[str, Any]
    report_dir: Path
    calls: int
    billed_request_ids: list[str] = field(default_factory=list)
    load_avg_1m: tuple[float, float] = (0.0, 0.0)  # the machine's load at start and end (it is shared)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            **self.measured.to_dict(),
            **self.db,
            "calls": self.calls,
            "by_status": self.summary.get("by_status", {}),
            "load_avg_1m_start_end": list(self.load_avg_1m),
            "notes": self.notes,
        }


def qwenedit_run(
    name: str,
    manifest: Path,
    dest: str,
    *,
    emulator: Any,
    home: Path,
    workdir: Path,
    rps: float,
    chunk_size: int | None,
    timeout_s: float,
    extra_env: dict[str, str] | None = None,
) -> RunOutcome:
    """``python -m qwenedit run`` as a measured subprocess against ``emulator`` (reset first)."""
    report_dir = workdir / f"reports-{name}"
    cmd = [
        PYTHON, "-m", "qwenedit", "run", str(manifest),
        "--dest", dest,
        "--base-url", emulator.base_url,
        "--rps", f"{rps:g}",
        "--report-dir", str(report_dir),
        "--no-progress",
    ]  # fmt: skip
    if chunk_size:
        cmd += ["--chunk-size", str(chunk_size)]
    emulator.reset()
    before = DbState.of(home)
    load_before = os.getloadavg()[0]
    measured = run_tree(
        cmd, env=child_env(home, extra_env), log_path=workdir / f"{name}.log", timeout_s=timeout_s, cwd=REPO
    )
    db = DbState.of(home).growth(before)
    summaries = sorted(report_dir.glob("*/summary.json"))
    summary: dict[str, Any] = json.loads(summaries[-1].read_text()) if summaries else {}
    stats = emulator.stats()
    outcome = RunOutcome(
        name=name,
        measured=measured,
        db=db,
        summary=summary,
        report_dir=summaries[-1].parent if summaries else report_dir,
        calls=int(stats.get("requests", 0)),
        billed_request_ids=[str(e["request_id"]) for e in emulator.ledger()],
        load_avg_1m=(round(load_before, 2), round(os.getloadavg()[0], 2)),
    )
    if measured.returncode != 0:
        outcome.notes.append(f"qwenedit run exited {measured.returncode}; see {workdir / (name + '.log')}")
    if not summary:
        outcome.notes.append("no summary.json: the run did not finish")
    return outcome


def warm_up(home: Path, workdir: Path, images: Sequence[Path], emulator: Any, rps: float) -> RunOutcome:
    """A 2-row run into a scratch folder: creates and migrates Prefect's database in ``home``."""
    manifest = workdir / "warmup" / "manifest.csv"
    manifest.parent.mkdir(parents=True, exist_ok=True)
    local = [shutil.copy(p, manifest.parent / p.name) for p in images[:2]]
    write_catalogue_manifest(manifest, 2, [Path(p) for p in local])
    return qwenedit_run(
        "warmup",
        manifest,
        str(workdir / "warmup" / "dest"),
        emulator=emulator,
        home=home,
        workdir=workdir,
        rps=rps,
        chunk_size=None,
        timeout_s=600,
    )


def _cpu_of(pid: int | None) -> float:
    """User + system seconds of process ``pid`` so far (0 if it is gone or None)."""
    if pid is None:
        return 0.0
    with contextlib.suppress(psutil.Error):
        t = psutil.Process(pid).cpu_times()
        return t.user + t.system + t.children_user + t.children_system
    return 0.0


def _verdict(measured: float | None, target: float, *, at_most: bool = True) -> str:
    if measured is None:
        return "n/a"
    return "PASS" if (measured <= target if at_most else measured >= target) else "MISS"


# --- the three parts ----------------------------------------------------------------------------


@dataclass
class CatalogueConfig:
    rows: int = 1_000_000
    executed: tuple[int, ...] = (10_000, 100_000)
    parts: tuple[str, ...] = ("a", "b", "c")
    chunk_size: int | None = None
    timeout_s: float = 7200.0
    keep_workdir: bool = False
    a_store: str = "seaweedfs"  # (a)'s destination: "seaweedfs" or "local"
    quiet_load: float | None = None  # wait for a 1-min load average below this before each measured run


def wait_for_quiet(load: float | None, log: Log, max_wait_s: float = 3 * 3600) -> None:
    """Hold the next measured run until the machine's 1-minute load average is below ``load`` (the
    seeding before it need not be quiet; the measurement must be). ``None``: do not wait."""
    if load is None:
        return
    deadline = time.monotonic() + max_wait_s
    while (now := os.getloadavg()[0]) >= load and time.monotonic() < deadline:
        log(f"waiting for a quiet machine: load {now:.2f} ≥ {load}")
        time.sleep(30)


def part_a(
    cfg: CatalogueConfig, workdir: Path, images: Sequence[Path], emulator: Any, log: Log, s3: Any = None
) -> dict[str, Any]:
    """(a): an unchanged rerun of ``cfg.rows`` rows over a synthetically seeded ledger (``cfg.a_store``)."""
    folder = workdir / "a"
    folder.mkdir(parents=True, exist_ok=True)
    manifest = folder / "manifest.csv"
    local = [Path(shutil.copy(p, folder / p.name)) for p in images]
    t0 = time.monotonic()
    write_catalogue_manifest(manifest, cfg.rows, local)
    t1 = time.monotonic()
    staged = folder / "dest"
    seeded = seed_done_markers(manifest, staged)
    t2 = time.monotonic()
    seed: dict[str, Any] = {
        "manifest_s": round(t1 - t0, 1),
        "seed_s": round(t2 - t1, 1),
        "done_markers": seeded,
    }
    dest, extra_env, store_pid = str(staged), None, None
    if cfg.a_store == "seaweedfs":
        bucket, prefix = "bench", "catalogue-a"
        copy_into_seaweed(s3, staged, bucket, prefix)
        names = sorted(os.listdir(staged / DONE_PREFIX))
        sample = [DONE_PREFIX + names[i] for i in sorted({0, len(names) // 2, len(names) - 1})]
        check_seeded_objects(s3.client(), bucket, prefix, staged, sample)
        t3 = time.monotonic()
        seed.update(local_seed_s=seed["seed_s"], copy_s=round(t3 - t2, 1), seed_s=round(t3 - t1, 1))
        seed["copy_objects_per_s"] = round(seeded / max(t3 - t2, 1e-9))
        dest, extra_env, store_pid = f"s3://{bucket}/{prefix}", s3.env(), s3.pid
        t2 = t3
    log(
        f"(a) manifest {cfg.rows:,} rows in {t1 - t0:.0f} s; {seeded:,} done markers seeded into "
        f"{cfg.a_store} in {t2 - t1:.0f} s"
    )
    home = folder / "prefect-home"
    warm = warm_up(home, folder, images, emulator, RUN_RPS)
    log(f"(a) warm-up run: exit {warm.measured.returncode}, {warm.measured.wall_s:.0f} s")
    wait_for_quiet(cfg.quiet_load, log)
    store_cpu_before = _cpu_of(store_pid)
    run = qwenedit_run(
        "a-unchanged",
        manifest,
        dest,
        emulator=emulator,
        home=home,
        workdir=folder,
        rps=RUN_RPS,
        chunk_size=cfg.chunk_size,
        timeout_s=cfg.timeout_s,
        extra_env=extra_env,
    )
    store_cpu = None if store_pid is None else round(_cpu_of(store_pid) - store_cpu_before, 2)
    m = run.measured
    skipped = int(run.summary.get("by_status", {}).get("skipped", 0))
    growth_mb = run.db["db_growth_bytes"] / 2**20
    log(
        f"(a) rerun ({cfg.a_store}): {m.wall_s:.1f} s wall, {m.cpu_s:.1f} s CPU, "
        f"peak RSS {m.peak_rss_bytes / 2**20:.0f} MB, {run.calls} calls, {skipped:,} skipped, "
        f"DB +{growth_mb:.2f} MB, {run.db['task_runs_added']} task runs"
        + (f"; the store's own CPU {store_cpu:.1f} s (not counted)" if store_cpu is not None else "")
    )
    figures = [
        (
            f"wall, {cfg.rows:,} unchanged rows in {cfg.a_store}",
            f"{m.wall_s:.1f} s",
            "≤ 3 min",
            _verdict(m.wall_s, TARGETS["a_wall_s"]),
        ),
        (
            "peak RSS (process tree)",
            f"{m.peak_rss_bytes / 2**20:.0f} MB",
            "≤ 1 GB",
            _verdict(m.peak_rss_bytes / 2**20, TARGETS["a_peak_rss_mb"]),
        ),
        ("API calls", str(run.calls), "0", _verdict(run.calls, TARGETS["a_calls"])),
        (
            "Prefect DB growth",
            f"{growth_mb:.2f} MB ({run.db['task_runs_added']} task runs, "
            f"{run.db['artifact_bytes_added'] / 2**20:.2f} MB of artifacts)",
            "≤ 1 MB",
            _verdict(growth_mb, TARGETS["a_db_growth_mb"]),
        ),
        ("CPU (process tree)", f"{m.cpu_s:.1f} s", "", ""),
        *([("CPU of the store (SeaweedFS, not counted)", f"{store_cpu:.1f} s", "", "")] if store_cpu else []),
        (
            "rows skipped",
            f"{skipped:,} / {cfg.rows:,}",
            f"{cfg.rows:,}",
            _verdict(skipped, cfg.rows, at_most=False),
        ),
    ]
    return {
        "rows": cfg.rows,
        "store": cfg.a_store,
        "dest": dest,
        "seed": seed,
        "warmup": warm.to_dict(),
        "run": {**run.to_dict(), "store_cpu_s": store_cpu},
        "figures": [dict(zip(("figure", "measured", "target", "result"), f, strict=True)) for f in figures],
    }


def part_b(
    cfg: CatalogueConfig, workdir: Path, images: Sequence[Path], emulator: Any, s3: Any, log: Log
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(b): executed jobs into SeaweedFS at each size; returns the section and what (c) reuses."""
    folder = workdir / "b"
    folder.mkdir(parents=True, exist_ok=True)
    local = [Path(shutil.copy(p, folder / p.name)) for p in images]
    runs: list[dict[str, Any]] = []
    reuse: dict[str, Any] = {}
    for n in cfg.executed:
        home = folder / f"prefect-home-{n}"
        warm = warm_up(home, folder / f"warm-{n}", images, emulator, RUN_RPS)
        manifest = folder / f"manifest-{n}.csv"
        write_catalogue_manifest(manifest, n, local)
        dest = f"s3://bench/catalogue-{n}"
        log(f"(b) qwenedit run: {n:,} jobs (warm-up exit {warm.measured.returncode}) …")
        run = qwenedit_run(
            f"b-{n}",
            manifest,
            dest,
            emulator=emulator,
            home=home,
            workdir=folder,
            rps=RUN_RPS,
            chunk_size=cfg.chunk_size,
            timeout_s=cfg.timeout_s,
            extra_env=s3.env(),
        )
        m = run.measured
        ok = int(run.summary.get("by_status", {}).get("succeeded", 0))
        per_job = max(1, ok)
        row = {
            "jobs": n,
            "succeeded": ok,
            **run.to_dict(),
            "jobs_per_s": round(ok / m.wall_s, 1) if m.wall_s else 0.0,
            "cpu_ms_per_job": round(1000 * m.cpu_s / per_job, 2),
            "db_bytes_per_job": round(run.db["db_growth_bytes"] / per_job, 1),
            "task_runs_per_job": round(run.db["task_runs_added"] / per_job, 4),
        }
        runs.append(row)
        log(
            f"(b) {ok:,}/{n:,} jobs in {m.wall_s:.0f} s ({row['jobs_per_s']} jobs/s): "
            f"{row['cpu_ms_per_job']} ms CPU/job, {row['db_bytes_per_job']:.0f} B DB/job, "
            f"peak RSS {m.peak_rss_bytes / 2**20:.0f} MB"
        )
        if not reuse:
            reuse = {"n": n, "home": home, "dest": dest, "images": local, "folder": folder}
    figures: list[tuple[str, str, str, str]] = []
    for r in runs:
        figures.append(
            (
                f"CPU per job at {r['jobs']:,} (run + its Prefect server)",
                f"{r['cpu_ms_per_job']} ms",
                "≤ 15 ms",
                _verdict(r["cpu_ms_per_job"], TARGETS["b_cpu_ms_per_job"]),
            )
        )
        figures.append(
            (
                f"Prefect DB per job at {r['jobs']:,}",
                f"{r['db_bytes_per_job']:.0f} B",
                "≤ 2 KB",
                _verdict(r["db_bytes_per_job"], TARGETS["b_db_bytes_per_job"]),
            )
        )
    marginal: dict[str, float] = {}
    if len(runs) >= 2 and runs[-1]["succeeded"] > runs[0]["succeeded"]:
        # What one more job costs, without the fixed cost of a run (Prefect server start, validation).
        extra = runs[-1]["succeeded"] - runs[0]["succeeded"]
        marginal = {
            "cpu_ms_per_job": round(1000 * (runs[-1]["cpu_s"] - runs[0]["cpu_s"]) / extra, 2),
            "db_bytes_per_job": round((runs[-1]["db_growth_bytes"] - runs[0]["db_growth_bytes"]) / extra, 1),
        }
        span = f"{runs[0]['jobs']:,} → {runs[-1]['jobs']:,}"
        figures.append(
            (
                f"marginal CPU per job, {span}",
                f"{marginal['cpu_ms_per_job']} ms",
                "≤ 15 ms",
                _verdict(marginal["cpu_ms_per_job"], TARGETS["b_cpu_ms_per_job"]),
            )
        )
        figures.append(
            (
                f"marginal Prefect DB per job, {span}",
                f"{marginal['db_bytes_per_job']:.0f} B",
                "≤ 2 KB",
                _verdict(marginal["db_bytes_per_job"], TARGETS["b_db_bytes_per_job"]),
            )
        )
    ratio = None
    if len(runs) >= 2 and runs[0]["peak_rss_mb"]:
        ratio = round(runs[-1]["peak_rss_mb"] / runs[0]["peak_rss_mb"], 3)
        figures.append(
            (
                f"peak RSS {runs[-1]['jobs']:,} / {runs[0]['jobs']:,}",
                f"{runs[-1]['peak_rss_mb']:.0f} / {runs[0]['peak_rss_mb']:.0f} MB = {ratio:.2f}×",
                "≤ 1.2×",
                _verdict(ratio, TARGETS["b_rss_ratio"]),
            )
        )
    section = {
        "emulator": {"rps_limit": 2 * RUN_RPS, "latency_s": 0.0, "render": "fast"},
        "run_rps": RUN_RPS,
        "cpu_counted": "the qwenedit run process and its descendants (the ephemeral Prefect server); "
        "the emulator and SeaweedFS are separate processes and are excluded",
        "runs": runs,
        "rss_ratio": ratio,
        "marginal": marginal,
        "figures": [dict(zip(("figure", "measured", "target", "result"), f, strict=True)) for f in figures],
    }
    return section, reuse


def part_c(cfg: CatalogueConfig, reuse: dict[str, Any], emulator: Any, s3: Any, log: Log) -> dict[str, Any]:
    """(c): rerun the first (b) manifest with 1 % of prompts edited; the calls must be exactly those rows."""
    n = int(reuse["n"])
    folder: Path = reuse["folder"]
    manifest = folder / f"manifest-{n}-changed.csv"
    write_catalogue_manifest(manifest, n, reuse["images"], changed=every_hundredth)
    changed = {f"sku-{i:07d}" for i in range(n) if every_hundredth(i)}
    run = qwenedit_run(
        f"c-{n}",
        manifest,
        reuse["dest"],
        emulator=emulator,
        home=reuse["home"],
        workdir=folder,
        rps=RUN_RPS,
        chunk_size=cfg.chunk_size,
        timeout_s=cfg.timeout_s,
        extra_env=s3.env(),
    )
    by_request: dict[str, str] = {}
    succeeded: set[str] = set()
    results = run.report_dir / "results.csv"
    if results.exists():
        with results.open(newline="", encoding="utf-8") as f:
            for row in csv.DictReader(f):
                if row.get("request_id"):
                    by_request[row["request_id"]] = row["job_id"]
                if row.get("status") == "succeeded":
                    succeeded.add(row["job_id"])
    billed = run.billed_request_ids
    called = {by_request.get(rid, f"<unknown request {rid}>") for rid in billed}
    exact = called == changed and len(billed) == len(changed) and run.calls == len(changed)
    log(
        f"(c) {len(changed)} rows changed of {n:,}: emulator saw {run.calls} requests, billed {len(billed)}, "
        f"jobs called == changed: {called == changed}"
    )
    return {
        "rows": n,
        "changed": len(changed),
        "run": run.to_dict(),
        "emulator_requests": run.calls,
        "emulator_billed": len(billed),
        "called_not_changed": sorted(called - changed)[:20],
        "changed_not_called": sorted(changed - called)[:20],
        "succeeded_equals_changed": succeeded == changed,
        "figures": [
            {
                "figure": f"rows called after editing 1 % of {n:,}",
                "measured": f"{len(called)} jobs billed ({run.calls} requests); "
                f"{'exactly' if exact else 'NOT exactly'} the {len(changed)} changed rows",
                "target": "exactly the changed rows",
                "result": "PASS" if exact else "MISS",
            }
        ],
    }


def run_catalogue(
    cfg: CatalogueConfig, log: Log = print, save: Callable[[dict[str, Any]], object] | None = None
) -> dict[str, Any]:
    """Run the selected parts; returns the results document (see ``catalogue.json``).

    ``save(doc)`` is called after each part and before the work dir is removed (removing a million
    done markers takes minutes), so a figure is on disk as soon as it is measured.
    """
    checkpoint = save or (lambda doc: None)
    from bench.side_by_side import machine_info
    from devkit.emulator import EmulatorProcess

    doc: dict[str, Any] = {
        "mode": "catalogue",
        "config": {**asdict(cfg), "run_rps": RUN_RPS},
        "machine": machine_info(),
        "git": _git_head(),
        "targets": TARGETS,
    }
    workdir = Path(tempfile.mkdtemp(prefix="qwenedit-bench-catalogue-"))
    keep = cfg.keep_workdir
    try:
        with ExitStack() as stack:
            images = make_images(workdir / "images")
            emulator = stack.enter_context(
                EmulatorProcess(workdir / "emulator", rps=2 * RUN_RPS, latency_median=0.0, render="fast")
            )
            log(f"catalogue bench in {workdir}; emulator {emulator.base_url}")
            s3 = None
            if {"b", "c"} & set(cfg.parts) or ("a" in cfg.parts and cfg.a_store == "seaweedfs"):
                from devkit.s3server import ensure_bucket
                from devkit.seaweed import SeaweedServer

                s3 = stack.enter_context(SeaweedServer(workdir / "seaweed"))
                ensure_bucket(s3.client(), "bench")
            if "a" in cfg.parts:
                doc["a"] = part_a(cfg, workdir, images, emulator, log, s3)
                checkpoint(doc)
            if {"b", "c"} & set(cfg.parts):
                b_cfg = cfg if "b" in cfg.parts else replace(cfg, executed=cfg.executed[:1])
                section, reuse = part_b(b_cfg, workdir, images, emulator, s3, log)
                if "b" in cfg.parts:
                    doc["b"] = section
                    checkpoint(doc)
                if "c" in cfg.parts:
                    doc["c"] = part_c(cfg, reuse, emulator, s3, log)
    except BaseException:
        keep = True  # the logs are the evidence
        raise
    finally:
        doc["workdir"] = str(workdir) if keep else None
        doc["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        checkpoint(doc)
        if not keep:
            log(f"removing {workdir} …")
            shutil.rmtree(workdir, ignore_errors=True)
    return doc


def _git_head() -> str:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(
            ["git", "log", "--oneline", "-1"], cwd=REPO, capture_output=True, text=True, timeout=10
        )
        return out.stdout.strip()
    return ""


def figures(doc: dict[str, Any]) -> list[dict[str, str]]:
    """Every figure of the document, with its part, in order."""
    out = []
    for part in ("a", "b", "c"):
        for f in doc.get(part, {}).get("figures", []):
            out.append({"part": part, **f})
    return out


def markdown_table(doc: dict[str, Any]) -> str:
    """The README table: one line per figure, measured beside its target."""
    lines = ["| part | figure | measured | target | result |", "|---|---|---:|---|---|"]
    for f in figures(doc):
        lines.append(f"| ({f['part']}) | {f['figure']} | {f['measured']} | {f['target']} | {f['result']} |")
    return "\n".join(lines)


def main(argv: list[str], results: Path) -> int:
    """``python -m bench catalogue [--rows N] [--executed 10000,100000] [--parts a,b,c] [--a-store S] ...``."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m bench catalogue", description=__doc__.split("\n")[0])
    p.add_argument("--rows", type=int, default=1_000_000, help="(a): rows of the unchanged rerun")
    p.add_argument("--executed", default="10000,100000", help="(b): comma-separated sizes, smallest first")
    p.add_argument("--parts", default="a,b,c", help="comma-separated subset of a,b,c")
    p.add_argument(
        "--a-store",
        choices=A_STORES,
        default="seaweedfs",
        help="(a): where the seeded ledger is (default seaweedfs)",
    )
    p.add_argument(
        "--wait-quiet",
        type=float,
        default=None,
        metavar="LOAD",
        help="(a): after seeding, wait until the 1-min load average is below LOAD before the measured run",
    )
    p.add_argument("--chunk-size", type=int, default=None, help="pass --chunk-size to qwenedit run")
    p.add_argument("--timeout", type=float, default=7200.0, help="stop one run after this many seconds")
    p.add_argument("--results", type=Path, default=results, help="where catalogue.json goes")
    p.add_argument("--out", default="catalogue.json", help="file name under --results")
    p.add_argument("--keep", action="store_true", help="keep the work dir (logs, manifests, ledgers)")
    args = p.parse_args(argv)
    parts = tuple(x.strip() for x in args.parts.split(",") if x.strip())
    executed = tuple(int(x) for x in args.executed.split(",") if x.strip())
    if not parts or set(parts) - {"a", "b", "c"}:
        p.error("--parts takes a comma-separated subset of a,b,c")
    if args.rows < 10 or not executed or min(executed) < 100:
        p.error("--rows must be ≥ 10 and every --executed size ≥ 100")
    cfg = CatalogueConfig(
        rows=args.rows,
        executed=executed,
        parts=parts,
        chunk_size=args.chunk_size,
        timeout_s=args.timeout,
        keep_workdir=args.keep,
        a_store=args.a_store,
        quiet_load=args.wait_quiet,
    )
    args.results.mkdir(parents=True, exist_ok=True)
    path = args.results / args.out

    def save(doc: dict[str, Any]) -> None:
        path.write_text(json.dumps(doc, indent=2, ensure_ascii=False, default=str) + "\n", encoding="utf-8")

    doc = run_catalogue(cfg, log=lambda msg: print(msg, flush=True), save=save)
    print(markdown_table(doc))
    print(f"saved {path}" + (f"; work dir kept: {doc['workdir']}" if doc.get("workdir") else ""))
    return 0
