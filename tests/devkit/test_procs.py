"""The shared process helpers: the loopback port picker, the readiness loop, the fake clock."""

from __future__ import annotations

import socket
import subprocess
import sys

import httpx
import pytest

from devkit.clock import FakeClock
from devkit.procs import free_port, port_is_free, wait_for_http, wait_until, wait_until_async
from qwenedit.emulator import EmulatorServer


class Ticker:
    """A fake monotonic clock that each fake sleep moves forward."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds

    async def asleep(self, seconds: float) -> None:
        self.sleep(seconds)


def test_a_free_port_is_on_loopback_and_can_be_bound_until_someone_listens() -> None:
    port = free_port()

    assert 0 < port < 65536 and port_is_free(port)
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))
        s.listen()
        assert not port_is_free(port)


def test_ready_at_once_means_no_wait() -> None:
    ticker = Ticker()

    wait_until(lambda: True, what="x", timeout_s=5, clock=ticker.clock, sleep=ticker.sleep)

    assert ticker.sleeps == []


def test_polls_at_the_interval_until_ready() -> None:
    ticker = Ticker()
    answers = iter([False, False, True])

    wait_until(
        lambda: next(answers), what="x", timeout_s=5, interval_s=0.25, clock=ticker.clock, sleep=ticker.sleep
    )

    assert ticker.sleeps == [0.25, 0.25]


def test_times_out_naming_what_its_log_and_the_last_error() -> None:
    ticker = Ticker()

    def refuse() -> bool:
        raise ConnectionRefusedError("nobody home")

    with pytest.raises(TimeoutError) as info:
        wait_until(
            refuse,
            what="the widget server",
            timeout_s=2,
            log="/tmp/widget.log",
            interval_s=0.5,
            retry_on=(ConnectionRefusedError,),
            clock=ticker.clock,
            sleep=ticker.sleep,
        )

    assert str(info.value) == (
        "the widget server not ready after 2 s (ConnectionRefusedError); see /tmp/widget.log"
    )
    assert ticker.now == 2.0  # gave up at the deadline, not before and not long after


def test_an_unexpected_error_is_raised_at_once() -> None:
    ticker = Ticker()

    def broken() -> bool:
        raise TypeError("a bug, not a slow start")

    with pytest.raises(TypeError):
        wait_until(broken, what="x", timeout_s=5, retry_on=(OSError,), clock=ticker.clock, sleep=ticker.sleep)
    assert ticker.sleeps == []


def test_a_process_that_exits_fails_the_wait_at_once() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    proc.wait()
    ticker = Ticker()

    with pytest.raises(RuntimeError, match=r"^server exited with 3 during start-up; see server\.log$"):
        wait_until(
            lambda: False, what="server", timeout_s=60, proc=proc, log="server.log", sleep=ticker.sleep
        )
    assert ticker.sleeps == []


def test_wait_for_http_returns_once_the_url_answers_200(emulator: EmulatorServer) -> None:
    wait_for_http(f"{emulator.base_url}/_emulator/health", what="emulator", timeout_s=5)

    with httpx.Client() as client:
        wait_for_http(f"{emulator.base_url}/_emulator/health", what="emulator", timeout_s=5, client=client)


def test_wait_for_http_on_a_closed_port_times_out() -> None:
    url = f"http://127.0.0.1:{free_port()}/health"

    with pytest.raises(TimeoutError, match=r"^nothing not ready after 0.2 s \(ConnectError\)$"):
        wait_for_http(url, what="nothing", timeout_s=0.2, interval_s=0.05)


def test_the_fake_clock_moves_both_readings_only_when_told() -> None:
    clock = FakeClock(start_time=1_700_000_000.0, start_monotonic=5.0)

    assert (clock.time(), clock.monotonic()) == (1_700_000_000.0, 5.0)
    clock.advance(2.5)
    assert (clock.time(), clock.monotonic()) == (1_700_000_002.5, 7.5)
    with pytest.raises(ValueError):
        clock.advance(-1)


async def test_the_async_loop_awaits_an_async_check_until_it_is_true() -> None:
    ticker = Ticker()
    answers = iter([False, True])

    async def ready() -> bool:
        return next(answers)

    await wait_until_async(
        ready, what="x", timeout_s=5, interval_s=0.5, clock=ticker.clock, sleep=ticker.asleep
    )

    assert ticker.sleeps == [0.5]


async def test_the_async_loop_times_out_at_its_deadline() -> None:
    ticker = Ticker()

    with pytest.raises(TimeoutError, match=r"^the flow runs not ready after 1\.5 s$"):
        await wait_until_async(
            lambda: False,
            what="the flow runs",
            timeout_s=1.5,
            interval_s=0.5,
            clock=ticker.clock,
            sleep=ticker.asleep,
        )
    assert ticker.now == 1.5
