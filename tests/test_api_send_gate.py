"""A send gate: ``before_send`` awaited once per call after connect and before the first byte reaches
the server, ``after_send`` once the headers are out."""

from __future__ import annotations

import time
from collections.abc import Callable

from qwenedit.api import DashScopeClient
from qwenedit.emulator import EmulatorServer
from tests.test_api_keepalive import REQUEST


class RecordingGate:
    def __init__(self) -> None:
        self.events: list[tuple[str, float]] = []

    async def before_send(self) -> None:
        self.events.append(("before", time.monotonic()))

    def after_send(self) -> None:
        self.events.append(("after", time.monotonic()))


async def test_the_gate_opens_before_the_request_arrives_and_closes_once_per_call(
    emulator_factory: Callable[..., EmulatorServer],
) -> None:
    server = emulator_factory()
    gate = RecordingGate()
    async with DashScopeClient("sk-test", server.base_url) as client:
        for _ in range(2):
            await client.edit(REQUEST, gate=gate)
    arrivals = [a["time"] for a in server.arrivals()]
    assert [name for name, _ in gate.events] == ["before", "after", "before", "after"]
    befores = [t for name, t in gate.events if name == "before"]
    assert all(b <= a for b, a in zip(befores, arrivals, strict=True))
