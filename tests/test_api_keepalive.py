""" "Possibly billed" only when it may be true: the idle keep-alive race and requests not fully sent.

The emulator's ``idle_close_s`` fault closes a keep-alive connection that has been idle that long just
as a request comes in on it — unread, uncounted, unbilled: the race between a client reusing a pooled
connection and the server's idle timeout. The client's pool clock (httpcore's ``time.monotonic``) and
the emulator's clock are one ``FakeClock`` here, so idleness is exact and no test sleeps.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Callable, Iterator
from types import SimpleNamespace

import httpcore._async.http11 as httpcore_http11
import httpx
import pytest
from PIL import Image

from qwenedit import errors
from qwenedit.api import DEFAULT_KEEPALIVE_EXPIRY_S, DashScopeClient, EditRequest, _Send
from qwenedit.emulator import EmulatorServer
from qwenedit.testing.clock import FakeClock

SERVER_IDLE_S = 5.0  # the server's idle timeout, as the emulator's fault plays it


def _png_uri(size: int = 32) -> str:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), "red").save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


REQUEST = EditRequest("qwen-image-edit-plus", (_png_uri(),), "make it blue")


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeClock]:
    fake = FakeClock()
    # httpcore stamps a connection's keep-alive expiry with time.monotonic(): give it the fake clock.
    monkeypatch.setattr(httpcore_http11, "time", SimpleNamespace(monotonic=fake.monotonic))
    yield fake


def test_the_default_keep_alive_expiry_is_below_common_server_idle_timeouts() -> None:
    assert DEFAULT_KEEPALIVE_EXPIRY_S < SERVER_IDLE_S


async def test_a_connection_the_server_may_have_closed_idle_is_never_reused(
    emulator_factory: Callable[..., EmulatorServer], clock: FakeClock
) -> None:
    server = emulator_factory(idle_close_s=SERVER_IDLE_S, clock=clock)
    async with DashScopeClient("sk-test", server.base_url) as client:
        for idle in (0.5, 2.9, 3.5, 4.9, 6.0, 60.0):
            clock.advance(idle)
            await client.edit(REQUEST)  # never meets a connection the server closed
    stats = server.stats()
    assert stats["faults"] == {} and stats["arrivals"] == stats["billed_requests"] == 6


async def test_main_s_keep_alive_reported_a_call_the_server_never_read_as_possibly_billed(
    emulator_factory: Callable[..., EmulatorServer], clock: FakeClock
) -> None:
    # What happened on main: the pool kept idle connections 30 s, longer than the server does.
    server = emulator_factory(idle_close_s=SERVER_IDLE_S, clock=clock)
    async with DashScopeClient("sk-test", server.base_url, keepalive_expiry=30.0) as client:
        await client.edit(REQUEST)
        clock.advance(6.0)
        with pytest.raises(errors.ConnectionDropped) as caught:
            await client.edit(REQUEST)
    assert caught.value.possibly_billed
    # A clean close ("Server disconnected without sending a response") or, on a loaded machine, a reset
    # (ECONNRESET → ReadError): either way the request went out and no answer came back.
    assert "RemoteProtocolError" in str(caught.value) or "ReadError" in str(caught.value)
    stats = server.stats()
    assert stats["faults"] == {"idle_close": 1}
    assert stats["arrivals"] == stats["billed_requests"] == 1  # the server never read the second call


def _failed_send(*events: str) -> _Send:
    send = _Send([])
    for event in events:
        send.traced = True
        if event.endswith("send_request_headers.started"):
            send.mark_sent()
        elif event.endswith("send_request_body.complete"):
            send.body_sent = True
    return send


@pytest.mark.parametrize(
    ("events", "exc", "expected"),
    [
        # The connection broke while the body was still going out: no whole request reached the API.
        (
            ["http11.send_request_headers.started", "http11.send_request_body.started"],
            httpx.RemoteProtocolError("Server disconnected without sending a response."),
            errors.ConnectFailed,
        ),
        (["http11.send_request_headers.started"], httpx.WriteTimeout("timed out"), errors.ConnectFailed),
        # The whole request went out: the model may have run it. Conservative.
        (
            ["http11.send_request_headers.started", "http11.send_request_body.complete"],
            httpx.RemoteProtocolError("Server disconnected without sending a response."),
            errors.ConnectionDropped,
        ),
        (
            ["http11.send_request_headers.started", "http11.send_request_body.complete"],
            httpx.ReadTimeout("timed out"),
            errors.CallTimedOut,
        ),
        # A transport that does not report its steps: assume the worst.
        ([], httpx.ReadError("reset"), errors.ConnectionDropped),
    ],
)
def test_possibly_billed_only_once_the_whole_request_went_out(
    events: list[str], exc: httpx.HTTPError, expected: type[errors.DashScopeError]
) -> None:
    client = DashScopeClient("sk-test", "http://127.0.0.1:9")
    failure = client._transport_failure(exc, _failed_send(*events))
    assert type(failure) is expected
    assert failure.possibly_billed == (expected is not errors.ConnectFailed)


async def test_a_request_cut_off_while_its_body_was_going_out_is_not_billed(
    emulator_factory: Callable[..., EmulatorServer], clock: FakeClock
) -> None:
    # A 5 MB body on a connection the server closes unread: the write fails part-way (httpcore then
    # reports the read that follows), so no complete request reached the server.
    server = emulator_factory(idle_close_s=SERVER_IDLE_S, clock=clock)
    big = EditRequest("qwen-image-edit-plus", ("data:image/png;base64," + "A" * 5_000_000,), "p")
    async with DashScopeClient("sk-test", server.base_url, keepalive_expiry=30.0) as client:
        await client.edit(REQUEST)
        clock.advance(6.0)
        with pytest.raises(errors.ConnectFailed, match="request not completely sent") as caught:
            await client.edit(big)
    assert not caught.value.possibly_billed
    assert server.stats()["faults"] == {"idle_close": 1}
