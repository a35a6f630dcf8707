"""The emulator's ASGI app: the DashScope generation endpoint, signed output links, control endpoints.

One request on the generation endpoint goes: arrival (clock read before anything else) → auth →
account-level failure → body → model → rate limit (per account and model, at arrival time) → validation
→ inputs fetched and checked → a fault drawn → latency (``asyncio.sleep``; a client that hangs up is
noticed) → outcome (error, success, partial, drop, malformed...) → billing ledger → response.

CPU work (big JSON bodies, image decoding, PNG rendering) runs in worker threads so the event loop keeps
reading arrival times accurately while 20 requests per second come in.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import shutil
import tempfile
import time
import uuid
import weakref
from collections import deque
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import Message, Receive, Scope, Send

from qwenedit.emulator import signing
from qwenedit.emulator.books import Books, key_id
from qwenedit.emulator.clock import SYSTEM_CLOCK, Clock
from qwenedit.emulator.config import (
    ACCOUNT_FAILURES,
    GENERATION_PATH,
    ConfigError,
    EmulatorConfig,
    apply_changes,
    burst_rule,
    check_config,
    model_limit,
    public_view,
)
from qwenedit.emulator.faults import FaultDice
from qwenedit.emulator.ratelimit import RateLimiter
from qwenedit.emulator.render import BAD_OUTPUT_FAULTS, check_image, output_size, render_outputs
from qwenedit.emulator.validate import (
    MSG_500,
    MSG_503,
    MSG_ASYNC,
    MSG_BAD_PATH,
    MSG_BURST,
    MSG_DOWNLOAD,
    MSG_INSPECTION,
    MSG_NOT_IMAGE,
    MSG_THROTTLED,
    MSG_TOO_LARGE,
    Rejection,
    ValidRequest,
    api_key_from_header,
    check_key,
    check_mime_matches,
    decode_data_uri,
    invalid,
    model_of,
    parse_json_body,
    validate_request,
)
from qwenedit.netguard import arefusal

_TRANSPORT = "qwenedit.emulator.transport"
_BIG_BODY = 256 * 1024  # parse bodies above this size off the event loop
_SWEEP_EVERY = 256  # requests between two sweeps of expired outputs


class EmulatedDrop(Exception):
    """Raised in place of a dropped connection when the app runs without a real transport (in-process)."""


@dataclass
class _Outcome:
    """What the fault/latency stage decided for one valid request."""

    fault: str
    image_count: int
    disconnected: bool


class EmulatorState:
    """Everything one running emulator holds: config, books, limiter, dice, secret, output store."""

    def __init__(self, config: EmulatorConfig) -> None:
        check_config(config)
        self.config = config
        self.books = Books(config.max_arrivals)
        self.limiter = RateLimiter()
        self.dice = FaultDice(config.seed)
        self.secret = secrets.token_bytes(32)
        self._owns_output_dir = config.output_dir is None
        self._output_dir = Path(config.output_dir) if config.output_dir else None
        self._http: httpx.AsyncClient | None = None
        self._rendered: deque[tuple[float, str]] = deque()  # (expires, request_id), oldest first
        self._since_sweep = 0
        self._answered: weakref.WeakKeyDictionary[Any, float] = weakref.WeakKeyDictionary()

    def note_answers(self, transport: Any, send: Send) -> Send:
        """``send`` that records when each answer on ``transport`` was complete (for ``idle_close_s``)."""

        async def noting(message: Message) -> None:
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                # Stamped before the last bytes go out: a client that has the whole answer never
                # sees an older stamp (the idle time is never under-counted).
                self._answered[transport] = self.clock.monotonic()
            await send(message)

        return noting

    async def closed_while_idle(self, transport: Any) -> bool:
        """The ``idle_close_s`` fault: a keep-alive connection idle that long was closed by the server
        just as this request came in. Closes it (FIN, like an idle timeout) and returns True; the
        request is not read, not counted as an arrival and not billed."""
        limit = self.config.idle_close_s
        last = self._answered.get(transport)
        if limit is None or last is None or self.clock.monotonic() - last < limit:
            return False
        self.books.fault("idle_close")
        transport.close()
        # Let uvicorn see the connection is gone, so it sends no response (not even a 500).
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        return True

    @property
    def clock(self) -> Clock:
        """The configured clock, or the system's."""
        return self.config.clock or SYSTEM_CLOCK

    @property
    def output_dir(self) -> Path:
        """Where outputs are written (created on first use)."""
        if self._output_dir is None:
            self._output_dir = Path(tempfile.mkdtemp(prefix="qwenedit-emulator-"))
        self._output_dir.mkdir(parents=True, exist_ok=True)
        return self._output_dir

    @property
    def http(self) -> httpx.AsyncClient:
        """The client that downloads URL inputs (created on first use, on the app's loop)."""
        if self._http is None:
            # Never follow a redirect: its target would escape the address check (a 3xx is a failed download).
            self._http = httpx.AsyncClient(timeout=self.config.download_timeout_s, follow_redirects=False)
        return self._http

    def configure(self, changes: Mapping[str, Any]) -> None:
        """Apply a runtime change of knobs (raises ConfigError and changes nothing if one is bad)."""
        self.config = apply_changes(self.config, changes)
        if "seed" in changes:
            self.dice.reseed(self.config.seed)

    def reset(self) -> None:
        """Forget books, rate windows and forced faults; restart the random sequences from the seed."""
        self.books.reset()
        self.limiter.reset()
        self.config.next_faults.clear()
        self.dice.reseed(self.config.seed)

    def account_for(self, key: str) -> str:
        """The account a key belongs to (by default each key is its own account, named by its hash)."""
        return self.config.accounts.get(key) or "acct-" + key_id(key)[4:]

    def remember_output(self, request_id: str, expires: float) -> None:
        """Track a rendered output so it can be deleted once its links have expired."""
        self._rendered.append((expires, request_id))

    def expired_outputs(self, now: float) -> list[Path]:
        """Directories of outputs whose links have all expired (removed from tracking)."""
        self._since_sweep += 1
        keep = self.config.keep_outputs
        every = _SWEEP_EVERY if keep is None else min(_SWEEP_EVERY, max(1, keep // 4))
        if self._since_sweep < every:
            return []
        self._since_sweep = 0
        out = []
        while self._rendered and (
            self._rendered[0][0] < now or (keep is not None and len(self._rendered) > keep)
        ):
            out.append(self.output_dir / self._rendered.popleft()[1])
        return out

    async def aclose(self) -> None:
        """Close the download client and remove the output directory if the emulator made it."""
        if self._http is not None:
            await self._http.aclose()
            self._http = None
        if self._owns_output_dir and self._output_dir is not None:
            shutil.rmtree(self._output_dir, ignore_errors=True)
            self._output_dir = None


class EmulatorApp(Starlette):
    """Starlette app that also hands route handlers the raw transport (to drop connections)."""

    emulator: EmulatorState

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            # uvicorn's ``send`` is a bound method of the request cycle, which holds the transport.
            transport = getattr(getattr(send, "__self__", None), "transport", None)
            scope[_TRANSPORT] = transport
            if transport is not None:
                if await self.emulator.closed_while_idle(transport):
                    return
                send = self.emulator.note_answers(transport, send)
        await super().__call__(scope, receive, send)


def create_app(config: EmulatorConfig | None = None) -> EmulatorApp:
    """A fresh emulator as an ASGI app (serve it with uvicorn, or call it in-process)."""
    state = EmulatorState(config or EmulatorConfig())

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        await state.aclose()

    app = EmulatorApp(
        routes=[
            Route(GENERATION_PATH, _generation, methods=["POST"]),
            Route("/api/v1/{rest:path}", _bad_path, methods=["GET", "POST", "PUT", "DELETE"]),
            Route("/_emulator/outputs/{request_id}/{index:int}.png", _output, methods=["GET", "HEAD"]),
            Route("/_emulator/ledger", _ledger, methods=["GET"]),
            Route("/_emulator/stats", _stats, methods=["GET"]),
            Route("/_emulator/arrivals", _arrivals, methods=["GET"]),
            Route("/_emulator/config", _config, methods=["GET", "POST"]),
            Route("/_emulator/reset", _reset, methods=["POST"]),
            Route("/_emulator/health", _health, methods=["GET"]),
        ],
        lifespan=lifespan,
    )
    app.emulator = state
    return app


def _state(request: Request) -> EmulatorState:
    app = request.app
    assert isinstance(app, EmulatorApp)
    return app.emulator


# --- the generation endpoint -----------------------------------------------------------------------


def _api_headers(request_id: str, arrival_wall: float) -> dict[str, str]:
    now = time.time()
    cost_ms = str(int((now - arrival_wall) * 1000))
    return {
        "x-request-id": request_id,
        "x-dashscope-call-gateway": "true",
        "x-dashscope-finished": "true",
        "x-dashscope-timeout": "298",
        "req-arrive-time": str(int(arrival_wall * 1000)),
        "resp-start-time": str(int(now * 1000)),
        "req-cost-time": cost_ms,
        "x-envoy-upstream-service-time": cost_ms,
        "server": "istio-envoy",
        "vary": "Origin,Access-Control-Request-Method,Access-Control-Request-Headers, Accept-Encoding",
    }


def _error(rejection: Rejection, request_id: str, arrival_wall: float) -> JSONResponse:
    return JSONResponse(
        {"request_id": request_id, "code": rejection.code, "message": rejection.message},
        status_code=rejection.status,
        headers=_api_headers(request_id, arrival_wall),
    )


async def _generation(request: Request) -> Response:
    state = _state(request)
    jitter = state.dice.jitter(state.config.arrival_jitter_s)
    if jitter > 0:
        await asyncio.sleep(jitter)  # the way in: network jitter before the API counts the request
    arrival = state.clock.monotonic()  # first thing: this is what the rate limit counts
    arrival_wall = time.time()
    config = state.config
    request_id = str(uuid.uuid4())
    account = ""
    model = ""
    try:
        key = api_key_from_header(request.headers.get("authorization"))
        check_key(key, config.keys)
        assert key is not None
        account = state.account_for(key)
        failure = config.key_failures.get(key) or config.key_failures.get(account)
        if failure:
            status, message = ACCOUNT_FAILURES[failure]
            raise Rejection(status, failure, message)
        if request.headers.get("x-dashscope-async", "").lower() == "enable":
            raise Rejection(403, "AccessDenied", MSG_ASYNC)
        raw = await _read_body(request, config.max_body_bytes)
        body = await asyncio.to_thread(parse_json_body, raw) if len(raw) > _BIG_BODY else parse_json_body(raw)
        model = model_of(body)
        _check_rate(state, account, model, arrival)
        valid = validate_request(
            body,
            config.models,
            strict_size_n=config.strict_size_n,
            unknown_model_404=config.unknown_model_404,
            max_prompt_chars=config.max_prompt_chars,
            max_negative_prompt_chars=config.max_negative_prompt_chars,
            max_data_uri_bytes=config.max_data_uri_bytes,
            oss_resolve=request.headers.get("x-dashscope-ossresourceresolve", "").lower() == "enable",
        )
        del body, raw
        inputs = await _fetch_inputs(state, valid.images)
        last_wh = await asyncio.to_thread(_check_inputs, inputs)
        outcome = await _run_model(state, request, valid)
        if outcome.fault in ("500", "503", "inspection"):
            raise _FAULT_ERRORS[outcome.fault]
    except _Dropped:
        state.books.arrived(arrival, account, model, "dropped")  # book first: the client may look at once
        return await _drop(request)
    except Rejection as rejection:
        state.books.arrived(arrival, account, model, rejection.status, rejection.code)
        return _error(rejection, request_id, arrival_wall)

    # From here on the model "ran": the request is billed whatever happens to the connection.
    state.books.bill(request_id, account, key, valid.model, outcome.image_count)
    size = output_size(valid.size, last_wh)
    headers = _api_headers(request_id, arrival_wall)
    fault = outcome.fault
    if outcome.disconnected or fault == "drop_billed":
        state.books.arrived(arrival, account, model, "dropped" if fault == "drop_billed" else "client_gone")
        return await _drop(request)
    if fault in ("malformed_json", "malformed_fields"):
        state.books.arrived(arrival, account, model, 200)
        if fault == "malformed_json":
            return Response(b"<html><body>upstream connect error</body></html>", 200, headers, "text/html")
        usage = {"width": size[0], "height": size[1], "image_count": outcome.image_count}
        return JSONResponse({"request_id": request_id, "usage": usage}, headers=headers)

    expires = int(state.clock.time() + config.url_ttl_s)
    out_dir = state.output_dir / request_id
    await asyncio.to_thread(
        render_outputs,
        inputs[-1],
        size,
        outcome.image_count,
        caption=valid.prompt,
        watermark=valid.watermark,
        mode=config.render,
        out_dir=out_dir,
        bad_output=BAD_OUTPUT_FAULTS.get(fault),
    )
    del inputs
    state.remember_output(request_id, expires)
    _sweep(state)
    if fault == "foreign_host":
        base = config.foreign_base_url
    else:
        base = config.public_base_url or f"{request.url.scheme}://{request.url.netloc}"
    urls = [
        signing.signed_url(base, state.secret, request_id, k, expires) for k in range(outcome.image_count)
    ]
    state.books.arrived(arrival, account, model, 200)
    return JSONResponse(
        {
            "output": {
                "choices": [
                    {
                        "finish_reason": "stop",
                        "message": {"role": "assistant", "content": [{"image": url} for url in urls]},
                    }
                ]
            },
            "usage": {"width": size[0], "height": size[1], "image_count": outcome.image_count},
            "request_id": request_id,
        },
        headers=headers,
    )


_FAULT_ERRORS = {
    "500": Rejection(500, "InternalError.Algo", MSG_500),
    "503": Rejection(503, "ModelUnavailable", MSG_503),
    "inspection": Rejection(400, "DataInspectionFailed", MSG_INSPECTION),
}


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise Rejection(413, "BadRequest.TooLarge", MSG_TOO_LARGE)
    chunks = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise Rejection(413, "BadRequest.TooLarge", MSG_TOO_LARGE)
        chunks.append(chunk)
    return b"".join(chunks)


def _check_rate(state: EmulatorState, account: str, model: str, arrival: float) -> None:
    config = state.config
    spec = config.models.get(model)
    limit, window = model_limit(spec, config.rps)
    if config.burst_max is not None and not state.limiter.admit(
        "burst", account, model, arrival, config.burst_max, config.burst_window_s
    ):
        raise Rejection(429, "Throttling.BurstRate", MSG_BURST)
    if config.burst_guard:
        burst_limit, burst_window = burst_rule(spec, config.rps)
        if not state.limiter.admit("model-burst", account, model, arrival, burst_limit, burst_window):
            raise Rejection(429, "Throttling.BurstRate", MSG_BURST)
    if not state.limiter.admit("rate", account, model, arrival, limit, window):
        raise Rejection(429, "Throttling.RateQuota", MSG_THROTTLED)


async def _fetch_inputs(state: EmulatorState, refs: tuple[str, ...]) -> list[bytes]:
    """The bytes of every input image: data URIs decoded, URLs downloaded (concurrently)."""
    return list(await asyncio.gather(*(_fetch_one(state, ref) for ref in refs)))


async def _fetch_one(state: EmulatorState, ref: str) -> bytes:
    if ref[:5].lower() == "data:":
        if len(ref) > _BIG_BODY:  # base64-decoding megabytes would stall the loop's arrival clock
            return await asyncio.to_thread(_decode_checked, ref)
        return _decode_checked(ref)
    if ref[:6].lower() == "oss://":
        raise invalid(MSG_DOWNLOAD)  # temporary uploads are not emulated
    limit = state.config.max_image_bytes
    if await arefusal(ref, allow_private=state.config.allow_private_urls) is not None:
        raise invalid(MSG_DOWNLOAD)  # the real API cannot reach loopback or private addresses either
    try:
        async with state.http.stream("GET", ref) as response:
            if response.status_code != 200:
                raise invalid(MSG_DOWNLOAD)
            chunks = []
            size = 0
            async for chunk in response.aiter_bytes():
                size += len(chunk)
                if size > limit:
                    raise invalid(MSG_DOWNLOAD)
                chunks.append(chunk)
    except (httpx.HTTPError, ValueError):
        raise invalid(MSG_DOWNLOAD) from None
    return b"".join(chunks)


def _decode_checked(ref: str) -> bytes:
    mime, payload = decode_data_uri(ref)
    check_mime_matches(mime, payload)
    return payload


def _check_inputs(inputs: list[bytes]) -> tuple[int, int]:
    """Every input must decode as an image; returns the last one's (width, height)."""
    last = (0, 0)
    for data in inputs:
        try:
            last = check_image(data)
        except Exception:  # Pillow raises many kinds for garbage
            raise invalid(MSG_NOT_IMAGE) from None
    return last


async def _run_model(state: EmulatorState, request: Request, valid: ValidRequest) -> _Outcome:
    """Draw the fault, wait out the latency, and say how many images came out."""
    config = state.config
    fault = state.dice.pick_fault(config)
    if fault != "ok":
        state.books.fault(fault)
    delay = config.hang_s if fault == "hang" else state.dice.latency(config)
    disconnected = await _sleep_unless_disconnected(request, delay)
    if fault == "drop":
        raise _Dropped()
    count = valid.n
    if fault == "partial" and valid.n > 1:
        count = state.dice.partial_count(valid.n)
    return _Outcome(fault=fault, image_count=count, disconnected=disconnected)


class _Dropped(Exception):
    """Internal: drop this connection without an answer; nothing is billed."""


async def _sleep_unless_disconnected(request: Request, seconds: float) -> bool:
    """Sleep ``seconds`` without blocking the loop; return True early if the client hung up."""
    if seconds <= 0:
        return False

    async def wait_disconnect() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    waiter = asyncio.ensure_future(wait_disconnect())
    try:
        done, _ = await asyncio.wait({waiter}, timeout=seconds)
        return waiter in done
    finally:
        waiter.cancel()


async def _drop(request: Request) -> Response:
    """Close the connection without any HTTP response (a reset, as a crashed gateway would)."""
    transport = request.scope.get(_TRANSPORT)
    if transport is None:
        raise EmulatedDrop("emulated dropped connection")
    transport.abort()
    # Let uvicorn see the connection is gone, so it neither sends this response nor a 500.
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    return Response(status_code=500)


def _sweep(state: EmulatorState) -> None:
    """Delete outputs whose links have expired (outputs live on disk; disk must not grow forever)."""
    stale = state.expired_outputs(state.clock.time())
    if stale:
        asyncio.get_running_loop().run_in_executor(None, _remove_dirs, stale)


def _remove_dirs(paths: list[Path]) -> None:
    for path in paths:
        shutil.rmtree(path, ignore_errors=True)


async def _bad_path(request: Request) -> Response:
    request_id = str(uuid.uuid4())
    return _error(invalid(MSG_BAD_PATH), request_id, time.time())


# --- output links ----------------------------------------------------------------------------------


async def _output(request: Request) -> Response:
    state = _state(request)
    request_id = request.path_params["request_id"]
    index = request.path_params["index"]
    oss_id = uuid.uuid4().hex[:24].upper()
    headers = {"x-oss-request-id": oss_id, "server": "AliyunOSS"}
    problem = signing.check_signature(
        state.secret,
        request_id,
        index,
        request.query_params.get("Expires"),
        request.query_params.get("Signature"),
        state.clock.time(),
    )
    if problem is not None:
        message = {
            "AccessDenied": "Request has expired." if request.query_params.get("Expires") else "AccessDenied",
            "SignatureDoesNotMatch": "The request signature we calculated does not match the signature "
            "you provided.",
        }[problem]
        body = signing.oss_error_xml(problem, message, oss_id)
        return Response(body, 403, headers, media_type="application/xml")
    path = state.output_dir / request_id / f"{index}.png"
    if not path.is_file():
        body = signing.oss_error_xml("NoSuchKey", "The specified key does not exist.", oss_id)
        return Response(body, 404, headers, media_type="application/xml")
    return FileResponse(path, headers=headers, media_type="image/png")


# --- control endpoints -----------------------------------------------------------------------------


async def _ledger(request: Request) -> Response:
    return JSONResponse(_state(request).books.ledger())


async def _stats(request: Request) -> Response:
    return JSONResponse(_state(request).books.stats())


async def _arrivals(request: Request) -> Response:
    return JSONResponse(_state(request).books.arrivals())


async def _config(request: Request) -> Response:
    state = _state(request)
    if request.method == "POST":
        try:
            changes = json.loads(await request.body() or b"{}")
            if not isinstance(changes, dict):
                raise ConfigError("the body must be a JSON object of settings")
            state.configure(changes)
        except (ValueError, TypeError) as exc:  # ConfigError is a ValueError
            return JSONResponse({"error": str(exc)}, status_code=400)
    return JSONResponse(public_view(state.config))


async def _reset(request: Request) -> Response:
    _state(request).reset()
    return JSONResponse({"reset": True})


async def _health(request: Request) -> Response:
    return PlainTextResponse("ok")
