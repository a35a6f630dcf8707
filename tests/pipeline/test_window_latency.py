"""What the window learns from a call: the server's time (first byte out → answer), not the time since the
permit, so the run's own queueing before the send never grows the window that causes it."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest

from qwenedit.api import EditRequest, EditResult
from qwenedit.pacer import Pacer
from qwenedit.pipeline import RunStats, _send

REQUEST = EditRequest("qwen-image-edit-plus", ("https://example.test/a.png",), "make it blue")


class SlowToSendClient:
    """Holds each call ``before_s`` before it goes out, then answers ``answered_in_s`` as the client would."""

    def __init__(self, before_s: float, answered_in_s: float | None) -> None:
        self.before_s = before_s
        self.answered_in_s = answered_in_s

    async def edit(self, request: EditRequest, *, on_send: Any = None, gate: Any = None) -> EditResult:
        await asyncio.sleep(self.before_s)
        if on_send is not None:
            on_send()
        return EditResult(
            "rid-1", ("https://example.test/out.png",), 8, 8, 1, answered_in_s=self.answered_in_s
        )


def _context(observed: list[tuple[str, float]]) -> Any:
    return SimpleNamespace(
        state=SimpleNamespace(stats=RunStats()),
        services=SimpleNamespace(on_latency=lambda model, seconds: observed.append((model, seconds))),
    )


async def test_the_window_is_told_the_servers_time_not_the_wait_before_the_send() -> None:
    observed: list[tuple[str, float]] = []
    client = SlowToSendClient(before_s=0.5, answered_in_s=0.05)
    answer = await _send(_context(observed), client, REQUEST, Pacer(100.0))  # type: ignore[arg-type]
    assert answer.request_id == "rid-1"
    assert observed == [("qwen-image-edit-plus", 0.05)]


async def test_without_the_servers_time_the_window_is_told_the_time_since_the_permit() -> None:
    # A transport that does not report its steps (MockTransport, ASGITransport): the whole call counts.
    observed: list[tuple[str, float]] = []
    client = SlowToSendClient(before_s=0.3, answered_in_s=None)
    await _send(_context(observed), client, REQUEST, Pacer(100.0))  # type: ignore[arg-type]
    [(model, seconds)] = observed
    assert model == "qwen-image-edit-plus"
    assert seconds == pytest.approx(0.3, abs=0.25) and seconds >= 0.3
