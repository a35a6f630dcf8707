"""`qwenedit emulator` as a separate process: prints its URL, honours its flags, stops on a signal."""

from __future__ import annotations

import select
import signal
import subprocess
import sys
from collections.abc import Iterator

import httpx
import pytest

from tests.emulator.helpers import body, post


def _start(*flags: str) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", "from qwenedit.cli import app; app()", "emulator", "--port", "0", *flags],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], 20)
    if not ready:
        proc.kill()
        pytest.fail("the emulator printed no URL")
    base_url = proc.stdout.readline().strip()
    # The URL is printed just before uvicorn starts accepting: wait until it answers.
    for _ in range(200):
        try:
            httpx.get(f"{base_url}/_emulator/health", timeout=1)
            break
        except httpx.TransportError:
            select.select([], [], [], 0.05)
    return proc, base_url


@pytest.fixture
def cli_emulator() -> Iterator[tuple[subprocess.Popen[str], str]]:
    proc, base_url = _start(
        "--render", "fast", "--rps", "50", "--fail-500", "1", "--url-ttl", "60", "--seed", "3"
    )
    yield proc, base_url
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def test_cli_prints_a_loopback_url_and_applies_its_flags(
    cli_emulator: tuple[subprocess.Popen[str], str],
) -> None:
    _, base_url = cli_emulator

    with httpx.Client(base_url=base_url) as c:
        failed = post(c, body())
        config = c.get("/_emulator/config").json()

    assert base_url.startswith("http://127.0.0.1:")
    assert failed.status_code == 500
    assert failed.json()["code"] == "InternalError.Algo"
    assert (config["rps"], config["fail_500"], config["url_ttl_s"], config["render"]) == (50, 1, 60, "fast")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_cli_stops_cleanly_on_a_signal(
    cli_emulator: tuple[subprocess.Popen[str], str], sig: signal.Signals
) -> None:
    proc, base_url = cli_emulator
    with httpx.Client(base_url=base_url) as c:
        c.post("/_emulator/config", json={"fail_500": 0}).raise_for_status()
        assert post(c, body()).status_code == 200

    proc.send_signal(sig)

    assert proc.wait(timeout=10) == 0
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{base_url}/_emulator/health", timeout=1)


def test_cli_refuses_bad_flags() -> None:
    result = subprocess.run(
        [sys.executable, "-c", "from qwenedit.cli import app; app()", "emulator", "--fail-500", "1.5"],
        capture_output=True,
        text=True,
        timeout=30,
    )

    assert result.returncode == 2
    assert "fail_500" in result.stderr
