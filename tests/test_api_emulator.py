"""The DashScope client over real HTTP on 127.0.0.1.

Part 1 drives the client against the project's emulator (``qwenedit.emulator``): success, every error
family the emulator produces, and the key-never-leaks check. Part 2 uses a scripted raw-socket server
(``RawServer`` below) for wire-level faults the emulator does not make on purpose: gateway HTML,
oversized or cut-off bodies, a slow drip, an exhausted pool, and for checking the exact bytes sent.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import logging
import time
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from PIL import Image

from devkit.procs import free_port
from qwenedit import errors
from qwenedit.api import GENERATION_PATH, USER_AGENT, DashScopeClient, EditRequest, EditResult, build_body
from qwenedit.emulator import ACCOUNT_FAILURES, EmulatorServer

FAKE_KEY = "sk-LEAKCANARY0123456789abcdef"


def png_data_uri(width: int = 96, height: int = 64, color: str = "red") -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def edit_request(n: int = 1, **parameters: Any) -> EditRequest:
    return EditRequest(
        "qwen-image-edit-plus", (png_data_uri(),), "make the square blue", {"n": n, **parameters}
    )


# =================================================================================================
# Part 1: against the emulator
# =================================================================================================

EmulatorFactory = Callable[..., EmulatorServer]


async def edit_once(
    server: EmulatorServer, req: EditRequest | None = None, **client_options: Any
) -> EditResult:
    async with DashScopeClient(FAKE_KEY, server.base_url, **client_options) as client:
        return await client.edit(req or edit_request())


async def failing_edit(server: EmulatorServer, req: EditRequest | None = None, **client_options: Any) -> Any:
    with pytest.raises(errors.DashScopeError) as info:
        await edit_once(server, req, **client_options)
    return info.value


async def test_success_returns_downloadable_urls_and_the_billed_usage(emulator: EmulatorServer) -> None:
    result = await edit_once(emulator, edit_request(n=2))
    assert len(result.image_urls) == result.image_count == 2 and not result.count_mismatch
    assert result.width and result.height
    [charge] = emulator.ledger()
    assert (charge["request_id"], charge["image_count"]) == (result.request_id, 2)
    async with httpx.AsyncClient() as http:
        for url in result.image_urls:
            response = await http.get(url)
            assert response.status_code == 200 and response.content.startswith(b"\x89PNG")


async def test_size_parameter_reaches_the_api(emulator: EmulatorServer) -> None:
    result = await edit_once(emulator, edit_request(n=1, size="1033*1032"))
    assert (result.width, result.height) == (1040, 1024)  # the API rounds each side to a multiple of 16


async def test_concurrent_calls_share_one_client(emulator: EmulatorServer) -> None:
    async with DashScopeClient(FAKE_KEY, emulator.base_url) as client:
        results = await asyncio.gather(*(client.edit(edit_request()) for _ in range(20)))
    assert len({r.request_id for r in results}) == 20 and len(emulator.ledger()) == 20


async def test_on_send_precedes_every_arrival_the_server_counts(emulator: EmulatorServer) -> None:
    sends: list[float] = []
    async with DashScopeClient(
        FAKE_KEY, emulator.base_url, on_send=lambda: sends.append(time.monotonic())
    ) as c:
        for _ in range(3):
            await c.edit(edit_request())
    arrivals = sorted(a["time"] for a in emulator.arrivals())
    assert len(sends) == len(arrivals) == 3
    assert all(sent <= arrived for sent, arrived in zip(sends, arrivals, strict=True))


async def test_unknown_key_is_invalid_api_key_and_stops_the_run(emulator_factory: EmulatorFactory) -> None:
    server = emulator_factory(keys=["sk-the-only-good-key"])
    err = await failing_edit(server)
    assert type(err) is errors.InvalidApiKey and err.fatal_for_run and not err.retryable
    assert (err.status, err.code, err.message) == (401, "InvalidApiKey", "Invalid API-key provided.")
    assert err.request_id and server.ledger() == []


ACCOUNT_FAMILIES: dict[str, type[errors.AccountError]] = {
    "Arrearage": errors.Arrearage,
    "AllocationQuota.FreeTierOnly": errors.FreeTierExhausted,
    "AccessDenied": errors.AccessDenied,
    "AccessDenied.Unpurchased": errors.AccessDenied,
    "PrepaidBillOverdue": errors.BillOverdue,
    "PostpaidBillOverdue": errors.BillOverdue,
    "CommodityNotPurchased": errors.BillOverdue,
    "InvalidApiKey": errors.InvalidApiKey,
}


def test_every_account_failure_the_emulator_knows_is_mapped() -> None:
    assert set(ACCOUNT_FAILURES) == set(ACCOUNT_FAMILIES)


@pytest.mark.parametrize("code", sorted(ACCOUNT_FAMILIES))
async def test_account_failures_are_fatal_for_the_run(emulator: EmulatorServer, code: str) -> None:
    emulator.configure(key_failures={FAKE_KEY: code})
    err = await failing_edit(emulator)
    assert type(err) is ACCOUNT_FAMILIES[code] and err.code == code
    assert err.status == ACCOUNT_FAILURES[code][0] and err.fatal_for_run and not err.retryable


@pytest.mark.parametrize(
    ("req", "family", "message"),
    [
        (edit_request(n=7), errors.RequestRejected, None),
        (edit_request(n=2, size="1024*1024"), errors.RequestRejected, None),  # strict size-needs-n=1
        (edit_request(size="100*100"), errors.RequestRejected, None),
        (EditRequest("qwen-image-edit", (png_data_uri(),), "x", {"n": 2}), errors.RequestRejected, None),
        (
            EditRequest("qwen-image-edit-nope", (png_data_uri(),), "x"),
            errors.ModelNotFound,
            "Model not exist.",
        ),
        (EditRequest("qwen-image-edit-plus", (png_data_uri(),) * 4, "x"), errors.RequestRejected, None),
        (
            EditRequest("qwen-image-edit-plus", (png_data_uri().replace("image/png", "image/jpeg"),), "x"),
            errors.RequestRejected,
            "image format error",
        ),
    ],
)
async def test_invalid_requests_are_rejected_and_not_retried(
    emulator: EmulatorServer, req: EditRequest, family: type[errors.DashScopeError], message: str | None
) -> None:
    err = await failing_edit(emulator, req)
    assert type(err) is family and err.status == 400 and not err.retryable and not err.fatal_for_run
    assert message is None or err.message == message
    assert emulator.ledger() == []


async def test_unknown_model_can_be_a_404(emulator_factory: EmulatorFactory) -> None:
    err = await failing_edit(
        emulator_factory(unknown_model_404=True), EditRequest("qwen-image-edit-nope", (png_data_uri(),), "x")
    )
    assert type(err) is errors.ModelNotFound and (err.status, err.code) == (404, "ModelNotFound")


async def test_unreachable_input_url_is_a_retryable_download_failure(emulator: EmulatorServer) -> None:
    missing = f"{emulator.base_url}/_emulator/outputs/nope/0.png?Expires=1&Signature=x"
    err = await failing_edit(emulator, EditRequest("qwen-image-edit-plus", (missing,), "x"))
    assert (
        type(err) is errors.InputDownloadFailed and err.retryable and err.message == "download image failed"
    )


async def test_oss_input_passes_url_validation_thanks_to_the_resolve_header(emulator: EmulatorServer) -> None:
    # The emulator does not host temporary uploads, so the download fails; without the header the
    # request would have been refused earlier as an invalid URL.
    err = await failing_edit(
        emulator, EditRequest("qwen-image-edit-plus", ("oss://dashscope-instant/a.png",), "x")
    )
    assert type(err) is errors.InputDownloadFailed


async def test_over_the_rate_limit_is_throttled_and_retryable(emulator_factory: EmulatorFactory) -> None:
    server = emulator_factory(rps=1.0)
    async with DashScopeClient(FAKE_KEY, server.base_url) as client:
        await client.edit(edit_request())
        with pytest.raises(errors.Throttled) as info:
            await client.edit(edit_request())
    assert (info.value.status, info.value.code) == (429, "Throttling.RateQuota") and info.value.retryable


async def test_burst_guard_is_throttled_too(emulator_factory: EmulatorFactory) -> None:
    server = emulator_factory(burst_max=1, burst_window_s=5.0)
    async with DashScopeClient(FAKE_KEY, server.base_url) as client:
        await client.edit(edit_request())
        with pytest.raises(errors.Throttled) as info:
            await client.edit(edit_request())
    assert info.value.code == "Throttling.BurstRate"


@pytest.mark.parametrize(
    ("fault", "family", "status", "code", "billed"),
    [
        ("500", errors.ServerError, 500, "InternalError.Algo", 0),
        ("503", errors.ServiceUnavailable, 503, "ModelUnavailable", 0),
        ("inspection", errors.ContentRejected, 400, "DataInspectionFailed", 0),
        ("drop", errors.ConnectionDropped, None, None, 0),
        ("drop_billed", errors.ConnectionDropped, None, None, 1),
        ("malformed_json", errors.MalformedResponse, 200, "MalformedResponse", 1),
        ("malformed_fields", errors.MalformedResponse, 200, "MalformedResponse", 1),
    ],
)
async def test_emulated_faults_land_in_their_family(
    emulator: EmulatorServer,
    fault: str,
    family: type[errors.DashScopeError],
    status: int | None,
    code: str | None,
    billed: int,
) -> None:
    emulator.configure(next_faults=[fault])
    err = await failing_edit(emulator)
    assert type(err) is family and err.status == status
    assert code is None or err.code == code
    assert sum(c["image_count"] for c in emulator.ledger()) == billed
    if billed:  # whatever the client saw, the report must treat the call as possibly paid for
        assert err.possibly_billed


async def test_partial_success_bills_and_returns_only_the_images_made(emulator: EmulatorServer) -> None:
    emulator.configure(next_faults=["partial"])
    result = await edit_once(emulator, edit_request(n=3))
    assert 1 <= result.image_count < 3 and len(result.image_urls) == result.image_count
    assert emulator.ledger()[0]["image_count"] == result.image_count


async def test_foreign_output_host_is_still_a_success(emulator: EmulatorServer) -> None:
    emulator.configure(next_faults=["foreign_host"])
    result = await edit_once(emulator)
    assert result.image_urls[0].startswith(emulator.config.foreign_base_url)


async def test_hung_call_times_out_and_is_possibly_billed(emulator: EmulatorServer) -> None:
    emulator.configure(next_faults=["hang"])
    err = await failing_edit(emulator, timeout=0.3)
    assert type(err) is errors.CallTimedOut and err.code == "ReadTimeout" and err.possibly_billed


async def test_slow_model_beyond_the_client_timeout_times_out(emulator_factory: EmulatorFactory) -> None:
    server = emulator_factory(latency_median_s=1.0)
    err = await failing_edit(server, timeout=0.3)
    assert type(err) is errors.CallTimedOut and err.retryable


async def test_api_key_never_appears_in_reprs_errors_or_logs(
    emulator_factory: EmulatorFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)  # httpx and httpcore log every step at DEBUG
    server = emulator_factory(keys=[FAKE_KEY])
    seen: list[object] = []
    async with DashScopeClient(FAKE_KEY, server.base_url, timeout=0.3) as client:
        seen += [client, edit_request()]
        seen.append(await client.edit(edit_request()))
        for fault in ("500", "inspection", "drop", "drop_billed", "malformed_json", "hang"):
            server.configure(next_faults=[fault])
            with pytest.raises(errors.DashScopeError) as info:
                await client.edit(edit_request())
            seen.append(info.value)
    async with DashScopeClient(FAKE_KEY + "x", server.base_url) as wrong:
        with pytest.raises(errors.InvalidApiKey) as bad_key:
            await wrong.edit(edit_request())
        seen += [wrong, bad_key.value]
    texts = [repr(obj) + str(obj) for obj in seen]
    texts += ["".join(traceback.format_exception(obj)) for obj in seen if isinstance(obj, BaseException)]
    assert len(caplog.records) > 10  # the logs really were captured
    for text in [*texts, caplog.text]:
        assert "LEAKCANARY" not in text


# =================================================================================================
# Part 2: scripted raw HTTP server (defined first: part 1 reuses the helpers)
# =================================================================================================


@dataclass
class Seen:
    """One request as it arrived at the raw server."""

    request_line: str
    headers: dict[str, str]
    body: bytes
    arrived: float  # time.monotonic() when the whole request was in
    connection: int


Responder = Callable[[asyncio.StreamWriter, Seen], Awaitable[bool]]  # returns: keep the connection open


class RawServer:
    """A loopback HTTP/1.1 server whose answers are scripted byte for byte by the test."""

    def __init__(self, respond: Responder) -> None:
        self.respond = respond
        self.seen: list[Seen] = []
        self.connections = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    @property
    def base_url(self) -> str:
        assert self._server is not None
        port = self._server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.connections += 1
        connection = self.connections
        try:
            while True:
                head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
                request_line, *lines = head.strip("\r\n").split("\r\n")
                headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines)}
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                seen = Seen(request_line, headers, body, time.monotonic(), connection)
                self.seen.append(seen)
                if not await self.respond(writer, seen):
                    break
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            return  # the client hung up or the test ended: the scripted server simply stops (finally closes)
        finally:
            writer.close()
            self._tasks.discard(task)


def http_response(status: int, body: bytes, content_type: str = "application/json", **headers: str) -> bytes:
    reason = {200: "OK", 401: "Unauthorized", 429: "Too Many Requests", 502: "Bad Gateway"}.get(status, "X")
    lines = [f"HTTP/1.1 {status} {reason}", f"Content-Type: {content_type}", f"Content-Length: {len(body)}"]
    lines += [f"{name.replace('_', '-')}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def success_json(n: int = 1, request_id: str = "rid-raw") -> bytes:
    content = [{"image": f"https://out.example/{request_id}/{k}.png?Expires=1&Signature=s"} for k in range(n)]
    return json.dumps(
        {
            "output": {
                "choices": [{"finish_reason": "stop", "message": {"role": "assistant", "content": content}}]
            },
            "usage": {"width": 1024, "height": 1024, "image_count": n},
            "request_id": request_id,
        }
    ).encode()


async def answer_success(writer: asyncio.StreamWriter, seen: Seen) -> bool:
    writer.write(http_response(200, success_json(), x_request_id="rid-raw"))
    await writer.drain()
    return True


@pytest.fixture
async def raw_server() -> AsyncIterator[Callable[[Responder], Awaitable[RawServer]]]:
    servers: list[RawServer] = []

    async def start(respond: Responder) -> RawServer:
        server = RawServer(respond)
        await server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.stop()


RawFactory = Callable[[Responder], Awaitable[RawServer]]


async def test_wire_request_is_the_documented_post(raw_server: RawFactory) -> None:
    server = await raw_server(answer_success)
    req = EditRequest(
        "qwen-image-edit-plus",
        ("https://in.example/1.png", "oss://dashscope-instant/u/2.png"),
        "把图1的裙子换成图2的",  # non-ASCII travels as UTF-8, not \u escapes
        {"n": 1, "seed": 7, "watermark": False},
    )
    async with DashScopeClient(FAKE_KEY, server.base_url) as client:
        result = await client.edit(req)
    assert result.request_id == "rid-raw" and len(result.image_urls) == 1
    [seen] = server.seen
    assert seen.request_line == f"POST {GENERATION_PATH} HTTP/1.1"
    assert seen.headers["authorization"] == f"Bearer {FAKE_KEY}"
    assert seen.headers["content-type"] == "application/json"
    assert seen.headers["user-agent"] == USER_AGENT
    assert seen.headers["x-dashscope-ossresourceresolve"] == "enable"
    assert json.loads(seen.body) == build_body(req)
    assert "把图1".encode() in seen.body


async def test_calls_share_one_keep_alive_connection(raw_server: RawFactory) -> None:
    server = await raw_server(answer_success)
    async with DashScopeClient(FAKE_KEY, server.base_url) as client:
        for _ in range(3):
            await client.edit(edit_request())
    assert len(server.seen) == 3 and server.connections == 1


async def test_on_send_fires_once_per_call_before_the_request_arrives(raw_server: RawFactory) -> None:
    server = await raw_server(answer_success)
    client_sends: list[float] = []
    call_sends: list[float] = []
    async with DashScopeClient(
        FAKE_KEY, server.base_url, on_send=lambda: client_sends.append(time.monotonic())
    ) as client:
        for _ in range(2):
            await client.edit(edit_request(), on_send=lambda: call_sends.append(time.monotonic()))
    assert len(client_sends) == len(call_sends) == 2
    for sent, seen in zip(call_sends, server.seen, strict=True):
        assert sent <= seen.arrived


async def test_gateway_html_is_a_retryable_server_error(raw_server: RawFactory) -> None:
    html = b"<html><head><title>502 Bad Gateway</title></head><body><h1>502 Bad Gateway</h1></body></html>"

    async def respond(writer: asyncio.StreamWriter, seen: Seen) -> bool:
        writer.write(http_response(502, html, "text/html", x_request_id="rid-gw"))
        await writer.drain()
        return True

    server = await raw_server(respond)
    async with DashScopeClient(FAKE_KEY, server.base_url) as client:
        with pytest.raises(errors.ServerError) as info:
            await client.edit(edit_request())
    assert info.value.retryable and info.value.status == 502 and info.value.request_id == "rid-gw"
    assert "502 Bad Gateway" in info.value.message and "<" not in info.value.message


async def test_oversized_success_is_refused_without_reading_it_all(raw_server: RawFactory) -> None:
    total = 256 * 1024 * 1024  # far more than the client may buffer
    written = 0

    async def respond(writer: asyncio.StreamWriter, seen: Seen) -> bool:
        nonlocal written
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        chunk = b"x" * 65536
        while written < total:
            writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            await writer.drain()  # blocks once the client stops reading and the socket buffers fill
            written += len(chunk)
        return False

    server = await raw_server(respond)
    async with DashScopeClient(FAKE_KEY, server.base_url, max_response_bytes=64 * 1024) as client:
        with pytest.raises(errors.MalformedResponse, match="size cap") as info:
            await client.edit(edit_request())
    assert info.value.possibly_billed and not info.value.retryable
    await asyncio.sleep(0.05)
    assert written < 32 * 1024 * 1024


async def test_declared_oversized_success_is_refused_before_the_body_arrives(raw_server: RawFactory) -> None:
    async def respond(writer: asyncio.StreamWriter, seen: Seen) -> bool:
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 104857600\r\n\r\n{"
        )
        await writer.drain()
        await asyncio.sleep(10)  # the body never comes: only the header can have stopped the client
        return False

    server = await raw_server(respond)
    started = time.monotonic()
    async with DashScopeClient(FAKE_KEY, server.base_url, timeout=5.0) as client:
        with pytest.raises(errors.MalformedResponse, match="size cap"):
            await client.edit(edit_request())
    assert time.monotonic() - started < 2.0


@pytest.mark.parametrize(
    ("status", "family"),
    [(200, errors.ConnectionDropped), (429, errors.Throttled), (401, errors.InvalidApiKey)],
)
async def test_body_cut_off_mid_way_keeps_the_status_family(
    raw_server: RawFactory, status: int, family: type[errors.DashScopeError]
) -> None:
    async def respond(writer: asyncio.StreamWriter, seen: Seen) -> bool:
        head = f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: 500\r\n"
        writer.write(head.encode() + b"x-request-id: rid-cut\r\n\r\n")
        writer.write(b'{"request_id": "rid-cut", "output"')
        await writer.drain()
        return False  # close with 470 bytes missing

    server = await raw_server(respond)
    async with DashScopeClient(FAKE_KEY, server.base_url) as client:
        with pytest.raises(errors.DashScopeError) as info:
            await client.edit(edit_request())
    assert type(info.value) is family and info.value.status == status and info.value.request_id == "rid-cut"
    if status == 200:  # the model ran: this one may be on the bill
        assert info.value.possibly_billed and info.value.retryable


async def test_connection_closed_without_an_answer_is_dropped_and_possibly_billed(
    raw_server: RawFactory,
) -> None:
    async def respond(writer: asyncio.StreamWriter, seen: Seen) -> bool:
        return False

    server = await raw_server(respond)
    async with DashScopeClient(FAKE_KEY, server.base_url) as client:
        with pytest.raises(errors.ConnectionDropped) as info:
            await client.edit(edit_request())
    assert info.value.possibly_billed and info.value.retryable and info.value.code == "RemoteProtocolError"


async def test_slow_drip_answer_hits_the_call_deadline(raw_server: RawFactory) -> None:
    async def respond(writer: asyncio.StreamWriter, seen: Seen) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n")
        for _ in range(100):  # one byte every 50 ms: never trips the per-read timeout
            writer.write(b" ")
            await writer.drain()
            await asyncio.sleep(0.05)
        return False

    server = await raw_server(respond)
    async with DashScopeClient(FAKE_KEY, server.base_url, timeout=1.0, total_timeout=0.4) as client:
        with pytest.raises(errors.CallTimedOut) as info:
            await client.edit(edit_request())
    assert info.value.code == "CallDeadline" and info.value.status == 200 and info.value.possibly_billed


async def test_no_answer_within_the_read_timeout_is_call_timed_out(raw_server: RawFactory) -> None:
    async def respond(writer: asyncio.StreamWriter, seen: Seen) -> bool:
        await asyncio.sleep(10)
        return False

    server = await raw_server(respond)
    sent: list[bool] = []
    async with DashScopeClient(
        FAKE_KEY, server.base_url, timeout=0.3, on_send=lambda: sent.append(True)
    ) as client:
        with pytest.raises(errors.CallTimedOut) as info:
            await client.edit(edit_request())
    assert info.value.code == "ReadTimeout" and info.value.possibly_billed and info.value.retryable
    assert sent == [True] and len(server.seen) == 1


async def test_waiting_too_long_for_a_pooled_connection_is_not_sent(raw_server: RawFactory) -> None:
    async def respond(writer: asyncio.StreamWriter, seen: Seen) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 20\r\n\r\n")
        for _ in range(20):  # keeps the only connection busy without tripping the read timeout
            writer.write(b" ")
            await writer.drain()
            await asyncio.sleep(0.05)
        return False

    server = await raw_server(respond)
    sends: list[str] = []
    async with DashScopeClient(
        FAKE_KEY, server.base_url, timeout=0.3, total_timeout=None, max_connections=1
    ) as client:
        busy = asyncio.create_task(client.edit(edit_request(), on_send=lambda: sends.append("first")))
        await asyncio.sleep(0.1)
        with pytest.raises(errors.ConnectFailed) as info:
            await client.edit(edit_request(), on_send=lambda: sends.append("second"))
        with pytest.raises(errors.MalformedResponse):  # 20 spaces are not JSON
            await busy
    assert info.value.code == "PoolTimeout" and not info.value.possibly_billed
    assert sends == ["first"] and len(server.seen) == 1


async def test_refused_connection_is_connect_failed_and_never_sent() -> None:
    port = free_port()  # nothing listens there
    sends: list[bool] = []
    async with DashScopeClient(
        FAKE_KEY, f"http://127.0.0.1:{port}", on_send=lambda: sends.append(True)
    ) as client:
        with pytest.raises(errors.ConnectFailed) as info:
            await client.edit(edit_request())
    assert info.value.code == "ConnectError" and not info.value.possibly_billed and info.value.retryable
    assert sends == []


async def test_key_echoed_by_a_server_never_reaches_errors_or_logs(
    raw_server: RawFactory, caplog: pytest.LogCaptureFixture
) -> None:
    async def respond(writer: asyncio.StreamWriter, seen: Seen) -> bool:
        echoed = json.dumps({"code": "InvalidApiKey", "message": f"bad {seen.headers['authorization']}"})
        writer.write(http_response(401, echoed.encode(), x_request_id="rid-echo"))
        await writer.drain()
        return True

    server = await raw_server(respond)
    caplog.set_level(logging.DEBUG)
    async with DashScopeClient(FAKE_KEY, server.base_url) as client:
        with pytest.raises(errors.InvalidApiKey) as info:
            await client.edit(edit_request())
    err = info.value
    assert err.fatal_for_run
    assert "LEAKCANARY" not in "".join(traceback.format_exception(err)) + repr(err) + err.message
    assert caplog.records and "LEAKCANARY" not in caplog.text
