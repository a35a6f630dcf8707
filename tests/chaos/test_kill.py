"""``qwenedit run`` SIGKILLed at a random moment, then the same command run again to completion.

The run is a real subprocess (``python -m qwenedit run ...``); the emulator (with the billing spy) and
the S3 server live outside it and survive the kill. The subprocess talks to the session's Prefect test
server (``PREFECT_API_URL``): measured on this project, ~10 s a run, where a throwaway PREFECT_HOME
with its own ephemeral server took ~50 s and sometimes timed out starting.

What must hold after the rerun: every job succeeded, every billed image is stored, and the emulator
billed each job once, except jobs whose call was in flight at the kill: a request that arrived but
whose charge record was never written is paid again by the rerun (the API has no idempotency key).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.chaos.conftest import RunRecord, chaos_rows, check_invariants

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_server")]  # the chaos suite: minutes

JOBS = 16
MAX_IN_FLIGHT = 8


def run_command(manifest: Path, bucket: Any, emulator: Any, report_dir: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "qwenedit",
        "run",
        str(manifest),
        "--dest",
        bucket.uri("out"),
        "--base-url",
        emulator.base_url,
        "--rps",
        "8",
        "--max-in-flight",
        str(MAX_IN_FLIGHT),
        "--report-dir",
        str(report_dir),
        "--no-progress",
    ]


def subprocess_env() -> dict[str, str]:
    from prefect.settings import PREFECT_API_URL

    env = dict(os.environ)  # pipeline_env has put the API key and the S3 variables here
    env["PREFECT_API_URL"] = str(PREFECT_API_URL.value())
    return env


def finished_summary(report_dir: Path, exclude: frozenset[Path] = frozenset()) -> dict[str, Any]:
    """The summary of the one finished run in ``report_dir`` (not counting the folders in ``exclude``)."""
    done = [p for p in report_dir.iterdir() if (p / "summary.json").exists() and p not in exclude]
    assert len(done) == 1, f"expected one finished run in {report_dir}, found {len(done)}"
    summary: dict[str, Any] = json.loads((done[0] / "summary.json").read_text())
    summary["report_dir"] = str(done[0])
    return summary


@pytest.mark.slow
@pytest.mark.parametrize("seed", [11, 22, 33])
def test_sigkill_at_a_random_moment_then_the_same_command_finishes_every_job_paying_again_only_for_calls_in_flight(
    seed: int, pipeline_env: Any, emulator_factory: Any, spy_on: Any, write_manifest: Any, tmp_path: Path
) -> None:
    rng = random.Random(seed)
    emulator = emulator_factory(latency_median_s=0.5, latency_p99_s=1.5, seed=seed)
    spy = spy_on(emulator)
    rows = chaos_rows(JOBS)
    manifest = write_manifest(rows)
    report_dir = tmp_path / "reports"
    command = run_command(manifest, pipeline_env, emulator, report_dir)
    env = subprocess_env()

    started = time.monotonic()
    proc = subprocess.Popen(
        command,
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 90
        while spy.first_call() is None:
            assert proc.poll() is None, proc.communicate()[0].decode(errors="replace")[-3000:]
            assert time.monotonic() < deadline, "the run never reached the API"
            time.sleep(0.01)
        # ~16 calls at 8/s with 0.5 s latency: the run is busy calling and copying for ~2.5 s.
        time.sleep(rng.uniform(0.0, 2.2))
        in_flight_at_kill = spy.in_flight()
        os.killpg(proc.pid, signal.SIGKILL)  # this test's own child (its own session)
        killed_at = time.monotonic()
    finally:
        proc.wait(timeout=30)
    killed = proc.returncode == -signal.SIGKILL
    first = RunRecord(started=started, ended=killed_at, summary=None, killed=killed)
    if not killed:  # it finished just before the kill: then it is an ordinary first run
        assert proc.returncode == 0, (
            proc.stdout.read().decode(errors="replace")[-3000:] if proc.stdout else ""
        )
        first.summary = finished_summary(report_dir)

    earlier = frozenset(report_dir.iterdir()) if report_dir.exists() else frozenset()
    second_started = time.monotonic()
    # A request sent just before the kill may reach the model stage just after it: it is the killed run's.
    first.ended = second_started
    rerun = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=180)
    second = RunRecord(started=second_started, ended=time.monotonic(), summary=None)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    second.summary = finished_summary(report_dir, exclude=earlier)
    assert second.summary["by_status"]["failed"] == 0
    assert second.summary["by_status"]["succeeded"] + second.summary["by_status"]["skipped"] == JOBS

    found = check_invariants(spy=spy, bucket=pipeline_env, prefix="out", rows=rows, runs=[first, second])
    print(
        f"[kill seed={seed}] killed {killed_at - started:.1f}s after start, {in_flight_at_kill} call(s) "
        f"in the model at the kill; rerun skipped {second.summary['by_status']['skipped']}, "
        f"succeeded {second.summary['by_status']['succeeded']}"
    )
    assert found.stored_images == JOBS
    assert found.lost_in_flight_at_kill <= MAX_IN_FLIGHT
    assert found.jobs_billed_twice <= found.lost_in_flight_at_kill
    assert found.billed_requests == JOBS + found.lost_in_flight_at_kill
