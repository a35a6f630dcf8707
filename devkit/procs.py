"""The one loopback port picker and the one readiness loop of the test servers, the demo and the bench.

- :func:`free_port`: a TCP port on 127.0.0.1 that nothing listened on when asked (also "a port nothing
  listens on" for tests of refused connections). :func:`port_is_free` checks a given port.
- :func:`wait_until`: poll ``ready()`` until it is true; fail fast if the process being waited for
  exits, and after ``timeout_s`` with a :class:`TimeoutError` naming what was awaited and its log.
- :func:`wait_for_http`: :func:`wait_until` a URL answers 200.
- :func:`wait_until_async`: the same loop for async tests; ``ready`` may be a coroutine function.

``clock`` and ``sleep`` are injectable so the loop itself is tested without waiting.
"""

from __future__ import annotations

import asyncio
import inspect
import socket
import subprocess
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx

__all__ = ["free_port", "port_is_free", "wait_for_http", "wait_until", "wait_until_async"]

LOOPBACK = "127.0.0.1"


def free_port(host: str = LOOPBACK) -> int:
    """A port on ``host`` that the kernel just handed out and that is closed again on return."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def port_is_free(port: int, host: str = LOOPBACK) -> bool:
    """Whether ``port`` on ``host`` can be bound right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def wait_until(
    ready: Callable[[], bool],
    *,
    what: str,
    timeout_s: float,
    proc: subprocess.Popen[bytes] | None = None,
    log: Path | str | None = None,
    interval_s: float = 0.1,
    retry_on: tuple[type[Exception], ...] = (),
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """Return as soon as ``ready()`` is true.

    ``ready`` raising one of ``retry_on`` counts as "not yet" (the last such error is named on timeout);
    anything else propagates. Raises :class:`RuntimeError` if ``proc`` exits first and
    :class:`TimeoutError` after ``timeout_s``; both name ``what`` and ``log``.
    """
    see = f"; see {log}" if log is not None else ""
    deadline = clock() + timeout_s
    last: Exception | None = None
    while True:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode} during start-up{see}")
        try:
            if ready():
                return
        except retry_on as exc:
            last = exc
        if clock() >= deadline:
            because = f" ({type(last).__name__})" if last is not None else ""
            raise TimeoutError(f"{what} not ready after {timeout_s:g} s{because}{see}")
        sleep(interval_s)


def wait_for_http(
    url: str,
    *,
    what: str,
    timeout_s: float,
    proc: subprocess.Popen[bytes] | None = None,
    log: Path | str | None = None,
    interval_s: float = 0.1,
    client: httpx.Client | None = None,
) -> None:
    """:func:`wait_until` a GET of ``url`` answers 200 (connection errors count as "not yet")."""

    def answers() -> bool:
        get = client.get if client is not None else httpx.get
        return get(url, timeout=2.0).status_code == 200

    wait_until(
        answers,
        what=what,
        timeout_s=timeout_s,
        proc=proc,
        log=log,
        interval_s=interval_s,
        retry_on=(httpx.HTTPError,),
    )


async def wait_until_async(
    ready: Callable[[], bool | Awaitable[bool]],
    *,
    what: str,
    timeout_s: float,
    interval_s: float = 0.1,
    retry_on: tuple[type[Exception], ...] = (),
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> None:
    """:func:`wait_until` for async tests: sleeps without blocking the loop; ``ready`` may be async."""
    deadline = clock() + timeout_s
    last: Exception | None = None
    while True:
        try:
            answer = ready()
            if inspect.isawaitable(answer):
                answer = await answer
            if answer:
                return
        except retry_on as exc:
            last = exc
        if clock() >= deadline:
            because = f" ({type(last).__name__})" if last is not None else ""
            raise TimeoutError(f"{what} not ready after {timeout_s:g} s{because}")
        await sleep(interval_s)
