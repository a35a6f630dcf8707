"""The emulator in its own process (``python -m qwenedit emulator``), driven over ``/_emulator/*``.

In-process (``qwenedit.emulator.EmulatorServer``) is fastest for tests, but its thread shares the
GIL and the CPU with the code under test, which blurs arrival times. Rate measurements (tests of the
pacer, the benchmark, multi-process runs) use this separate process, as the real API would be.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

from qwenedit.testing.procs import free_port, wait_for_http


class EmulatorProcess:
    """A running ``qwenedit emulator`` on a free loopback port.

    ``flags`` are the CLI options by their Python names: ``EmulatorProcess(d, rps=2, latency_median=12,
    latency_p99=30, render="fast", seed=1)`` → ``--rps 2 --latency-median 12 ...``; ``True`` is a bare flag.
    ``--allow-private-urls`` is on unless ``allow_private_urls=False``: inputs are on loopback servers.
    """

    def __init__(self, workdir: Path, **flags: Any) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.log_path = workdir / "emulator.log"
        flags.setdefault("output_dir", str(workdir / "emulator-outputs"))
        flags.setdefault("allow_private_urls", True)  # inputs come from loopback servers (local S3)
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
        try:
            wait_for_http(
                f"{self.base_url}/_emulator/health",
                what="emulator",
                timeout_s=timeout_s,
                proc=self._proc,
                log=self.log_path,
                client=self._http,
            )
        except BaseException:
            self.stop()
            raise
        return self

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
