"""The bench's processes: the emulator and a Prefect API server as separate processes, and a way to run a
child to completion while measuring it.

``run_measured`` reaps the child with ``os.wait4``, whose ``rusage`` is that child's own CPU time and
peak RSS (the kernel's high-water mark, so no polling gap can miss a spike); a psutil poll alongside
records the RSS curve and notices if the child spawns processes of its own (whose peak would be
folded into the same ``ru_maxrss``). Every process started here is stopped by its own PID.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import psutil

from devkit.procs import free_port, wait_for_http

PYTHON = sys.executable


def _tree(pid: int) -> list[psutil.Process]:
    """A process and all its descendants (empty once it is gone)."""
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and all its descendants, live or already reaped by them."""
    total = 0.0
    for p in _tree(pid):
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            t = p.cpu_times()
            # children_* is what a process's *reaped* children used: each reaped process counted once.
            total += t.user + t.system + t.children_user + t.children_system
    return total


def tree_rss_bytes(pid: int) -> int:
    """Resident memory of a process and all its descendants."""
    total = 0
    for p in _tree(pid):
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            total += p.memory_info().rss
    return total


@dataclass
class Measured:
    """How a child process ran: exit code, wall time, its CPU seconds and peak RSS (from ``wait4``)."""

    returncode: int
    wall_s: float
    cpu_s: float
    user_s: float
    sys_s: float
    maxrss_bytes: int
    timed_out: bool = False
    rss_samples: list[tuple[float, int]] = field(default_factory=list)  # (seconds since start, RSS bytes)
    children_seen: int = 0  # processes the child started (0 means ru_maxrss is the child's own)
    watched_peak_rss_bytes: int = 0  # highest RSS seen of the ``watch`` process tree meanwhile

    def to_dict(self) -> dict[str, Any]:
        return {
            "returncode": self.returncode,
            "wall_s": round(self.wall_s, 3),
            "cpu_s": round(self.cpu_s, 3),
            "user_s": round(self.user_s, 3),
            "sys_s": round(self.sys_s, 3),
            "peak_rss_mb": round(self.maxrss_bytes / 2**20, 1),
            "timed_out": self.timed_out,
            "children_seen": self.children_seen,
            "watched_peak_rss_mb": round(self.watched_peak_rss_bytes / 2**20, 1),
        }


def run_measured(
    cmd: Sequence[str],
    *,
    env: Mapping[str, str],
    log_path: Path,
    timeout_s: float,
    cwd: Path | None = None,
    sample_every_s: float = 0.25,
    watch: int | None = None,
) -> Measured:
    """Run ``cmd`` to completion (SIGINT then SIGKILL after ``timeout_s``), measuring it.

    ``watch``: the PID of another process (e.g. the Prefect server) whose tree RSS is sampled meanwhile.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("wb") as log:
        started = time.monotonic()
        proc = subprocess.Popen(
            list(cmd), env=dict(env), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=cwd
        )
    ps = psutil.Process(proc.pid)
    samples: list[tuple[float, int]] = []
    children: set[int] = set()
    watched_peak = 0
    timed_out = False
    interrupted_at: float | None = None
    next_sample = started
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        now = time.monotonic()
        if now >= next_sample:
            next_sample = now + sample_every_s
            with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                samples.append((now - started, ps.memory_info().rss))
                children.update(c.pid for c in ps.children(recursive=True))
            if watch is not None:
                watched_peak = max(watched_peak, tree_rss_bytes(watch))
        if now - started > timeout_s:
            if interrupted_at is None:
                timed_out = True
                interrupted_at = now
                os.kill(proc.pid, signal.SIGINT)
            elif now - interrupted_at > 20:
                os.kill(proc.pid, signal.SIGKILL)
        time.sleep(0.05)
    wall = time.monotonic() - started
    proc.returncode = os.waitstatus_to_exitcode(status)  # keep Popen from reaping it again
    return Measured(
        returncode=proc.returncode,
        wall_s=wall,
        cpu_s=usage.ru_utime + usage.ru_stime,
        user_s=usage.ru_utime,
        sys_s=usage.ru_stime,
        maxrss_bytes=usage.ru_maxrss * 1024,  # Linux reports KiB
        timed_out=timed_out,
        rss_samples=samples,
        children_seen=len(children),
        watched_peak_rss_bytes=watched_peak,
    )


def _stop(proc: subprocess.Popen[bytes], grace_s: float = 10.0) -> None:
    """SIGINT, then SIGKILL after ``grace_s``; descendants left behind are killed by their PIDs."""
    if proc.poll() is not None:
        return
    try:
        descendants = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        descendants = []
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)
    for child in descendants:
        with contextlib.suppress(psutil.NoSuchProcess):
            child.kill()


class PrefectServer:
    """``prefect server start`` (SQLite, no UI, analytics off) with its own PREFECT_HOME."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.port = free_port()
        self.api_url = f"http://127.0.0.1:{self.port}/api"
        self.log_path = home / "server.log"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        if self._proc is None:
            raise RuntimeError("Prefect server not started")
        return self._proc.pid

    def env(self) -> dict[str, str]:
        """What a client process needs to talk to this server (and only to it)."""
        return {
            "PREFECT_HOME": str(self.home),
            "PREFECT_API_URL": self.api_url,
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        }

    def start(self, timeout_s: float = 120.0) -> PrefectServer:
        self.home.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "PREFECT_HOME": str(self.home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
        env.pop("PREFECT_API_URL", None)
        prefect = str(Path(PYTHON).parent / "prefect")
        cmd = [prefect, "server", "start", "--host", "127.0.0.1", "--port", str(self.port), "--no-ui"]
        cmd.append("--analytics-off")
        with self.log_path.open("wb") as log:
            self._proc = subprocess.Popen(
                cmd, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=self.home
            )
        wait_for_http(
            f"{self.api_url}/health",
            what="prefect server",
            timeout_s=timeout_s,
            proc=self._proc,
            log=self.log_path,
            interval_s=0.2,
        )
        return self

    def cpu_seconds(self) -> float:
        return tree_cpu_seconds(self.pid)

    def rss_bytes(self) -> int:
        return tree_rss_bytes(self.pid)

    def settle(
        self, *, idle_cpu_per_s: float = 0.03, quiet_for_s: float = 2.0, max_wait_s: float = 60.0
    ) -> float:
        """Wait until the server has caught up with the run's events (CPU use back near idle)."""
        deadline = time.monotonic() + max_wait_s
        quiet = 0.0
        last = self.cpu_seconds()
        while time.monotonic() < deadline and quiet < quiet_for_s:
            time.sleep(0.5)
            now = self.cpu_seconds()
            quiet = quiet + 0.5 if now - last <= idle_cpu_per_s * 0.5 else 0.0
            last = now
        return last

    def stop(self) -> None:
        if self._proc is not None:
            _stop(self._proc, grace_s=15.0)

    def __enter__(self) -> PrefectServer:
        return self.start()

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
