"""The emulator in its own process (``python -m qwenedit emulator``), driven over ``/_emulator/*``.

In-process (``qwenedit.emulator.EmulatorServer``) is fastest for tests, but its thread shares the
GIL and the CPU with the code under test, which blurs arrival times. Rate measurements (tests of the
pacer, the benchmark, multi-process runs) use this separate process, as the real API would be.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class EmulatorProcess:
    """A running ``qwenedit emulator`` on a free loopback port.

    ``flags`` are the CLI options by their Python names: ``EmulatorProcess(d, rps=2, latency_median=12,
    latency_p99=30, render="fast", seed=1)`` → ``--rps 2 --latency-median 12 ...``; ``True`` is a bare flag.
    """

    def __init__(self, workdir: Path, **flags: Any) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.log_path = workdir / "emulator.log"
        flags.setdefault("output_dir", str(workdir / "emulator-outputs"))
        self.cmd = [
            sys.executable,
            "-m",
            "qwenedit",
            "emulator",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
        ]
        for name, value in flags.items():
            if value is None or value is False:
                continue
            option = "--" + name.replace("_", "-")
            self.cmd += [option] if value is True else [option, str(value)]
        self._proc: subprocess.Popen[bytes] | None = None
        self._http = httpx.Client(base_url=self.base_url, timeout=60.0)

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def start(self, timeout_s: float = 60.0) -> EmulatorProcess:
        self.workdir.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("wb") as log:
            self._proc = subprocess.Popen(
                self.cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"emulator exited with {self._proc.returncode}; see {self.log_path}")
            with contextlib.suppress(httpx.HTTPError):
                if self._http.get("/_emulator/health", timeout=2.0).status_code == 200:
                    return self
            time.sleep(0.1)
        self.stop()
        raise TimeoutError(f"emulator not ready after {timeout_s:.0f} s; see {self.log_path}")

    def _get(self, what: str) -> Any:
        r = self._http.get(f"/_emulator/{what}")
        r.raise_for_status()
        return r.json()

    def ledger(self) -> list[dict[str, Any]]:
        data: list[dict[str, Any]] = self._get("ledger")
        return data

    def stats(self) -> dict[str, Any]:
        data: dict[str, Any] = self._get("stats")
        return data

    def arrivals(self) -> list[dict[str, Any]]:
        data: list[dict[str, Any]] = self._get("arrivals")
        return data

    def configure(self, **changes: Any) -> None:
        self._http.post("/_emulator/config", json=changes).raise_for_status()

    def reset(self) -> None:
        self._http.post("/_emulator/reset").raise_for_status()

    def stop(self) -> None:
        self._http.close()
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def __enter__(self) -> EmulatorProcess:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
