"""``qwenedit run`` stopped by a signal mid-run, then the same command again: nothing is paid twice.

The run is a real subprocess in a session of its own (``start_new_session=True``), so the test can signal
its whole process group as a terminal's Ctrl-C does. The emulator (with the billing spy, latency on) and
the S3 server live outside it. Each case signals once calls are in flight, then measures:

- **no call after the signal**: the emulator's arrival log (its clock is this process's monotonic clock);
- **exit on its own within the grace period**, with code 3 and the one-line resume message;
- **the rerun** (the same command) finishes every job, and ``check_invariants`` proves nothing was lost
  and counts the jobs the emulator billed twice: 0 for a graceful stop. A second signal stops at once:
  the calls still open are reported ``possibly_billed`` and are the only jobs the rerun may pay again.

The SIGINT case uses Prefect's temporary API server (no ``PREFECT_API_URL``), as a terminal user has it:
the Ctrl-C reaches the whole group, and ``flows/ephemeral_server.py`` keeps that server out of it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.chaos.conftest import RunRecord, chaos_rows, check_invariants

pytestmark = [pytest.mark.slow, pytest.mark.timeout(400), pytest.mark.usefixtures("prefect_server")]

JOBS = 24
MAX_IN_FLIGHT = 8
GRACE_S = 20.0


@dataclass(frozen=True)
class Stop:
    signal: signal.Signals
    to_group: bool
    times: int  # 2: a second signal, one second after the first
    ephemeral_prefect: bool  # the CLI starts Prefect's temporary server (as on a terminal)

    @property
    def name(self) -> str:
        return f"{self.signal.name}{'x2' if self.times == 2 else ''}-to-{'group' if self.to_group else 'process'}"


CASES = [
    Stop(signal.SIGINT, to_group=True, times=1, ephemeral_prefect=True),
    Stop(signal.SIGTERM, to_group=False, times=1, ephemeral_prefect=False),
    Stop(signal.SIGINT, to_group=True, times=2, ephemeral_prefect=False),
]


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
        "--stop-grace",
        str(GRACE_S),
        "--no-progress",
    ]


def subprocess_env(stop: Stop, tmp_path: Path) -> dict[str, str]:
    from prefect.settings import PREFECT_API_URL

    env = dict(os.environ)  # pipeline_env has put the API key and the S3 variables here
    if stop.ephemeral_prefect:
        env.pop("PREFECT_API_URL", None)
        env["PREFECT_HOME"] = str(tmp_path / "prefect-home")
    else:
        env["PREFECT_API_URL"] = str(PREFECT_API_URL.value())
    return env


def summaries(report_dir: Path) -> dict[Path, dict[str, Any]]:
    found = {}
    for folder in report_dir.iterdir():
        if (folder / "summary.json").exists():
            summary: dict[str, Any] = json.loads((folder / "summary.json").read_text())
            summary["report_dir"] = str(folder)
            found[folder] = summary
    return found


@pytest.mark.parametrize("stop", CASES, ids=lambda s: s.name)
def test_a_signal_mid_run_starts_no_call_exits_within_the_grace_period_and_the_rerun_pays_nothing_twice(
    stop: Stop,
    pipeline_env: Any,
    emulator_factory: Any,
    spy_on: Any,
    write_manifest: Any,
    tmp_path: Path,
) -> None:
    emulator = emulator_factory(latency_median_s=3.0, latency_p99_s=5.0, seed=7)
    spy = spy_on(emulator)
    rows = chaos_rows(JOBS)
    manifest = write_manifest(rows)
    report_dir = tmp_path / "reports"
    command = run_command(manifest, pipeline_env, emulator, report_dir)
    env = subprocess_env(stop, tmp_path)

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
        deadline = time.monotonic() + 150
        while spy.in_flight() < 4:  # calls are open at the emulator
            assert proc.poll() is None, proc.communicate()[0].decode(errors="replace")[-3000:]
            assert time.monotonic() < deadline, "the run never had calls in flight"
            time.sleep(0.02)
        in_flight_at_signal = spy.in_flight()
        signalled = time.monotonic()
        for i in range(stop.times):
            if i:
                time.sleep(1.0)  # the second Ctrl-C of an impatient user
            if stop.to_group:
                os.killpg(proc.pid, stop.signal)  # this test's own child, in its own session
            else:
                proc.send_signal(stop.signal)
        output, _ = proc.communicate(timeout=GRACE_S + 60)
        exited = time.monotonic()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    text = output.decode(errors="replace")
    late = [a["time"] - signalled for a in emulator.arrivals() if a["time"] > signalled]
    first_summary = next(iter(summaries(report_dir).values()), None)
    print(
        f"\n[{stop.name}] {in_flight_at_signal} call(s) in the model at the signal; exit code "
        f"{proc.returncode} {exited - signalled:.1f} s after it; {len(late)} arrival(s) after it"
    )
    assert proc.returncode == 3, text[-3000:]
    assert exited - signalled < GRACE_S, f"exited {exited - signalled:.1f} s after the signal"
    assert late == [], f"calls arrived after the signal, at +{late} s"
    assert first_summary is not None, text[-3000:]
    assert first_summary["stopped_by"]["cause"] == "stop"
    left = JOBS - first_summary["by_status"]["succeeded"]
    assert f"{left} of {JOBS} jobs left; run the same command again to resume" in " ".join(text.split())
    assert first_summary["by_status"]["not_attempted"] > 0  # it really was stopped mid-run
    if stop.times == 1:
        assert first_summary.get("possibly_billed_jobs", 0) == 0
    first = RunRecord(started=started, ended=exited, summary=first_summary)

    earlier = frozenset(summaries(report_dir))
    second_started = time.monotonic()
    rerun = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=240)
    second = RunRecord(started=second_started, ended=time.monotonic(), summary=None)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    (second.summary,) = [s for folder, s in summaries(report_dir).items() if folder not in earlier]
    assert second.summary["by_status"]["succeeded"] + second.summary["by_status"]["skipped"] == JOBS

    found = check_invariants(spy=spy, bucket=pipeline_env, prefix="out", rows=rows, runs=[first, second])
    abandoned = first_summary.get("possibly_billed_jobs", 0)
    print(
        f"[{stop.name}] first run: {first_summary['by_status']}, possibly billed {abandoned}; rerun: "
        f"{second.summary['by_status']}; jobs billed twice {found.jobs_billed_twice}"
    )
    assert found.stored_images == JOBS
    if stop.times == 1:
        assert found.jobs_billed_twice == 0
        assert found.billed_requests == JOBS
    else:  # stopped at once: only the abandoned calls may have been paid twice, and each was reported
        assert found.jobs_billed_twice <= abandoned
