"""A send gate: ``before_send`` awaited once per call after connect and before the first byte reaches
the server, ``after_send`` once the headers are out."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import httpx

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


class SlowGate:
    """Holds every request ``hold_s`` before its first byte (as a busy pacer or event loop would)."""

    def __init__(self, hold_s: float) -> None:
        self.hold_s = hold_s

    async def before_send(self) -> None:
        await asyncio.sleep(self.hold_s)

    def after_send(self) -> None:
        pass


async def test_answered_in_counts_the_server_time_and_not_the_wait_before_the_first_byte(
    emulator_factory: Callable[..., EmulatorServer],
) -> None:
    # The window sizes itself from this figure: a wait before the send (pool, gate, a busy loop) is the
    # run's own queueing, and counting it would let the window grow that queueing without end.
    server = emulator_factory(latency_median_s=0.3)
    async with DashScopeClient("sk-test", server.base_url) as client:
        started = time.monotonic()
        result = await client.edit(REQUEST, gate=SlowGate(1.0))
        elapsed = time.monotonic() - started
    assert result.answered_in_s is not None
    assert 0.3 <= result.answered_in_s < elapsed - 0.9  # the server's 0.3 s, not the gate's 1 s
    assert elapsed >= 1.3


async def test_answered_in_is_unknown_on_a_transport_that_does_not_report_its_steps() -> None:
    body = b'{"request_id":"r1","output":{"choices":[{"message":{"content":[{"image":"https://x.test/1.png"}]}}]},"usage":{"image_count":1,"width":8,"height":8}}'
    transport = httpx.MockTransport(
        lambda request: httpx.Response(200, content=body, headers={"content-type": "application/json"})
    )
    async with httpx.AsyncClient(transport=transport) as http:
        client = DashScopeClient("sk-test", "https://dashscope.test", http=http)
        result = await client.edit(REQUEST)
    assert result.image_count == 1
    assert result.answered_in_s is None
