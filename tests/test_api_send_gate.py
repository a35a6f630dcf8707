"""``before_send``: awaited once per call, after connect and before the first byte reaches the server."""

from __future__ import annotations

import time
from collections.abc import Callable

from qwenedit.api import DashScopeClient
from qwenedit.emulator import EmulatorServer
from tests.test_api_keepalive import REQUEST


async def test_before_send_is_awaited_before_the_request_arrives(
    emulator_factory: Callable[..., EmulatorServer],
) -> None:
    server = emulator_factory()
    gated: list[float] = []

    async def gate() -> None:
        gated.append(time.monotonic())

    async with DashScopeClient("sk-test", server.base_url) as client:
        for _ in range(2):
            await client.edit(REQUEST, before_send=gate)
    arrivals = [a["time"] for a in server.arrivals()]
    assert len(gated) == len(arrivals) == 2
    assert all(g <= a for g, a in zip(gated, arrivals, strict=True))
