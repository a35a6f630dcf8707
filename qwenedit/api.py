"""Async client for DashScope's Qwen image-edit endpoint (``multimodal-generation/generation``).

Pure core, I/O at the edge:

- ``resolve_base_url`` picks the endpoint root (argument > ``DASHSCOPE_BASE_URL`` > region table).
- ``build_body`` / ``build_headers`` turn an ``EditRequest`` into exactly what the API expects.
- ``parse_response`` turns (status, content type, body bytes, ``x-request-id``) into an ``EditResult``
  or raises the ``qwenedit.errors`` family the failure belongs to.
- ``DashScopeClient.edit`` is the only I/O: one ``edit()`` is exactly one HTTP attempt. There are no
  retries here on purpose: the pipeline owns pacing and retries, and a hidden retry of a call that
  silently succeeded would be paid twice.

Behaviours decided here (the API documents none of them):

- A 2xx whose ``usage.image_count`` differs from the number of image URLs is still a success: every
  URL is copied (``image_urls``) and ``image_count`` is kept as the billed figure; ``count_mismatch``
  flags it so the report can show billed-but-not-delivered (or delivered-but-not-billed) images.
- A 2xx that cannot be read as the documented shape (not JSON, no ``output``/``usage``, no image at
  all, or a body over ``max_response_bytes``) is ``MalformedResponse``: possibly billed, not retried.
- A 2xx carrying an error ``code`` and no ``output`` (some gateways answer errors with 200) is
  classified by that code like any other error.
- A non-2xx body that is not JSON (gateway HTML, empty) is classified by its status alone; its
  message is a short, tag-stripped, sanitised excerpt and its code is ``HTTP<status>``.
- Once response headers have arrived, a non-2xx status is trusted even if reading the body then
  fails (a 429 whose body is cut off is still throttling).

The API key lives in one private attribute and in the per-request Authorization header. It is never
logged, never part of ``repr``, and every message taken from the network is scrubbed of ``sk-``
tokens and the key itself. httpx exceptions (which carry the request) are never re-raised: each is
replaced by a taxonomy error raised outside the ``except`` block, so it is not even the context.
"""

from __future__ import annotations

import asyncio
import html
import ipaddress
import json
import logging
import os
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from importlib import metadata
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlsplit

import httpx

from qwenedit import errors

if TYPE_CHECKING:
    from qwenedit.jobs import Job

logger = logging.getLogger(__name__)

REGIONS: Mapping[str, str] = MappingProxyType(
    {
        "singapore": "https://dashscope-intl.aliyuncs.com",
        "beijing": "https://dashscope.aliyuncs.com",
    }
)
GENERATION_PATH = "/api/v1/services/aigc/multimodal-generation/generation"
BASE_URL_ENV = "DASHSCOPE_BASE_URL"
API_KEY_ENV = "DASHSCOPE_API_KEY"

DEFAULT_TIMEOUT_S = 120.0  # per read/write; calls take 5–30 s, the server itself gives up at 300 s
DEFAULT_CONNECT_TIMEOUT_S = 10.0
DEFAULT_TOTAL_TIMEOUT_S = 300.0  # whole call; stops a server that drips bytes under the read timeout
DEFAULT_MAX_CONNECTIONS = 100  # ~2 RPS x 5–30 s latency keeps 10–60 calls in flight
MAX_IDLE_CONNECTIONS = 16  # idle keep-alive connections kept for reuse
# A pooled connection idle this long is not reused. It must stay below the server's own idle
# timeout: a connection the server closes for idleness just as a request goes out on it fails with
# no answer, which reads as "possibly billed" although the server never read the request. 3 s stays
# below the shortest common server idle timeout (5 s: uvicorn, and httpx's own default) even when a
# loaded client notices a response up to ~1 s after the server sent it (stalls measured on 2 cores).
DEFAULT_KEEPALIVE_EXPIRY_S = 3.0
MAX_RESPONSE_BYTES = 1 << 20  # a success body is < 2 KiB; anything near 1 MiB is not DashScope
MAX_MESSAGE_CHARS = 300

OnSend = Callable[[], None]


class SendGate(Protocol):
    """Paces the sends themselves (``qwenedit.pacer.Pacer`` is one): ``before_send`` is awaited just
    before the request's first byte is written; ``after_send`` is called once its headers are written
    (or failed to be)."""

    async def before_send(self) -> None: ...

    def after_send(self) -> None: ...


def _package_version() -> str:
    try:
        return metadata.version("qwenedit")
    except metadata.PackageNotFoundError:  # running from a source tree that was never installed
        return "0+unknown"


USER_AGENT = f"qwenedit/{_package_version()}"


# --- configuration -------------------------------------------------------------------------------


def api_key_from_env(env_var: str = API_KEY_ENV) -> str:
    """The API key from ``env_var`` (default ``DASHSCOPE_API_KEY``); ``MissingApiKey`` if unset or blank."""
    key = os.environ.get(env_var, "").strip()
    if not key:
        raise errors.MissingApiKey(
            f"{env_var} is not set: export the Model Studio API key (sk-...) of the region you call"
        )
    return key


def resolve_base_url(region: str, base_url: str | None = None) -> str:
    """The endpoint root (scheme://host[:port][/prefix], no trailing slash, no ``/api/v1``).

    Precedence: ``base_url`` argument > ``DASHSCOPE_BASE_URL`` > the region table. A trailing
    ``/api/v1`` is dropped so the SDK-style value (``https://dashscope-intl.aliyuncs.com/api/v1``)
    works too.
    """
    chosen = (base_url or "").strip() or os.environ.get(BASE_URL_ENV, "").strip()
    if not chosen:
        try:
            return REGIONS[region.strip().lower()]
        except KeyError:
            known = ", ".join(sorted(REGIONS))
            raise ValueError(f"unknown region {region!r}: use one of {known}, or give a base URL") from None
    return _normalize_base_url(chosen)


def _normalize_base_url(url: str) -> str:
    parts = urlsplit(url.strip())
    try:
        parts.port  # noqa: B018 -- parsing the port is what raises for a bad one
    except ValueError:
        raise ValueError(f"base URL has an invalid port: {_describe_url(url)!r}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"base URL must be http(s)://host[:port], got {_describe_url(url)!r}")
    if parts.username or parts.password or parts.query or parts.fragment:
        raise ValueError("base URL must not carry credentials, a query or a fragment")
    path = parts.path.rstrip("/")
    if path.endswith("/api/v1"):
        path = path[: -len("/api/v1")]
    if parts.scheme == "http" and not _is_loopback(parts.hostname):
        # Allowed (a private gateway may terminate TLS elsewhere), but the key travels in clear text.
        logger.warning("DashScope base URL %s uses plain http: the API key is sent unencrypted", parts.netloc)
    return f"{parts.scheme}://{parts.netloc}{path}"


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# --- request --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EditRequest:
    """One call: 1–3 images (URL, data URI or ``oss://``, in the order the prompt numbers them),
    one instruction, and the ``parameters`` the row sets (None values are left out)."""

    model: str
    images: tuple[str, ...]
    prompt: str
    parameters: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_job(cls, job: Job, resolved_images: Sequence[str]) -> EditRequest:
        """The request for ``job`` once its image references are resolved to URLs / data URIs."""
        if len(resolved_images) != len(job.images):
            raise ValueError(
                f"job {job.job_id}: {len(job.images)} images but {len(resolved_images)} resolved"
            )
        return cls(job.model, tuple(resolved_images), job.prompt, job.parameters())

    def __repr__(self) -> str:
        # Data URIs can be 10 MiB and presigned URLs carry credentials: show neither in logs.
        images = ", ".join(_describe_url(i) for i in self.images)
        return f"EditRequest(model={self.model!r}, images=[{images}], parameters={dict(self.parameters)!r})"


def build_body(req: EditRequest) -> dict[str, Any]:
    """The JSON body: one user message (the images in order, then exactly one text item) and the
    ``parameters`` that are set. ``parameters`` is always present: the API rejects a body without it
    (``BadRequest.EmptyParameters``)."""
    content: list[dict[str, str]] = [{"image": image} for image in req.images]
    content.append({"text": req.prompt})
    parameters = {name: value for name, value in req.parameters.items() if value is not None}
    return {
        "model": req.model,
        "input": {"messages": [{"role": "user", "content": content}]},
        "parameters": parameters,
    }


def build_headers(api_key: str, req: EditRequest) -> dict[str, str]:
    """The request headers; ``oss://`` images need the resolve header or the API cannot read them."""
    headers = {
        "Authorization": f"Bearer {api_key}",
        "Content-Type": "application/json",
        "Accept": "application/json",
        "User-Agent": USER_AGENT,
    }
    if any(image.startswith("oss://") for image in req.images):
        headers["X-DashScope-OssResourceResolve"] = "enable"
    return headers


# --- response -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EditResult:
    """A successful call: the output URLs in order (valid ~24 h) and what was billed."""

    request_id: str
    image_urls: tuple[str, ...]
    width: int | None  # usage.width; None if a 2xx left it out (never fail a paid call over it)
    height: int | None
    image_count: int  # usage.image_count: the number billed, even if it disagrees with image_urls
    # Seconds from the request's first byte to its complete answer (the server's time, without the
    # waits before the send: pool, connect, send gate); None when the transport does not report its
    # steps (httpx.MockTransport, ASGITransport).
    answered_in_s: float | None = field(default=None, compare=False)

    @property
    def count_mismatch(self) -> bool:
        """True when the API billed a different number of images than it returned URLs for."""
        return self.image_count != len(self.image_urls)

    def __repr__(self) -> str:
        # Output URLs are signed bearer links for 24 h: keep their signatures out of logs.
        urls = ", ".join(_describe_url(u) for u in self.image_urls)
        return (
            f"EditResult(request_id={self.request_id!r}, image_urls=[{urls}], width={self.width!r}, "
            f"height={self.height!r}, image_count={self.image_count!r})"
        )


def parse_response(
    status: int,
    content_type: str,
    body: bytes,
    header_request_id: str = "",
    *,
    truncated: bool = False,
    secret: str = "",
) -> EditResult:
    """Turn one HTTP answer into an ``EditResult`` or raise its ``errors.DashScopeError``.

    ``truncated`` says ``body`` is only the first bytes of a longer answer (over the size cap);
    ``secret`` is scrubbed from every message in addition to anything that looks like a key.
    """
    document = _json_object(body)
    request_id = _request_id(document, header_request_id)
    if not 200 <= status < 300:
        if document is None or truncated:
            raise errors.classify(status, "", _body_excerpt(content_type, body, secret), request_id)
        code = _text(document.get("code"))
        message = _text(document.get("message")) or _text(document.get("msg"))
        raise errors.classify(status, _clean(code, secret, 100), _clean(message, secret), request_id)

    def malformed(why: str) -> errors.MalformedResponse:
        return errors.MalformedResponse("MalformedResponse", why, status=status, request_id=request_id)

    if truncated:
        raise malformed("response body is larger than the client's size cap")
    if document is None:
        raise malformed(f"body is not a JSON object: {_body_excerpt(content_type, body, secret)}")
    code = _text(document.get("code"))
    if code and "output" not in document:
        message = _clean(_text(document.get("message")), secret)
        raise errors.classify(status, _clean(code, secret, 100), message, request_id)
    output = document.get("output")
    usage = document.get("usage")
    if not isinstance(output, dict):
        raise malformed("no 'output' object")
    if not isinstance(usage, dict):
        raise malformed("no 'usage' object")
    urls = _image_urls(output)
    if isinstance(urls, str):
        raise malformed(urls)
    # qwen-image-3.0 renames the usage fields (output_*); accept both so a newer model still bills.
    image_count = _first_int(usage, "image_count", "output_image_count")
    if image_count is None or image_count < 0:
        raise malformed("usage.image_count missing or not a non-negative integer")
    if not urls:
        raise malformed(f"no image in output (usage.image_count={image_count})")
    width = _first_int(usage, "width", "output_width")
    height = _first_int(usage, "height", "output_height")
    return EditResult(request_id, urls, width, height, image_count)


def _json_object(body: bytes) -> dict[str, Any] | None:
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):  # UnicodeDecodeError, JSONDecodeError; hostile nesting depth
        return None
    return document if isinstance(document, dict) else None


def _request_id(document: dict[str, Any] | None, header_request_id: str) -> str:
    from_body = _text(document.get("request_id")) if document is not None else ""
    return _clean(from_body or header_request_id, "", 100)


def _image_urls(output: dict[str, Any]) -> tuple[str, ...] | str:
    """The ``image`` items of every choice, in order; a string explains why the shape is wrong."""
    choices = output.get("choices")
    if not isinstance(choices, list) or not choices:
        return "output.choices missing or empty"
    urls: list[str] = []
    for choice in choices:
        message = choice.get("message") if isinstance(choice, dict) else None
        content = message.get("content") if isinstance(message, dict) else None
        if not isinstance(content, list):
            return "output.choices[].message.content missing"
        for item in content:
            # Newer models add {"text": ...} items next to the images: only image items matter.
            if not isinstance(item, dict) or "image" not in item:
                continue
            url = item["image"]
            if not isinstance(url, str) or not url.startswith(("https://", "http://")):
                return f"content item 'image' is not an http(s) URL: {_describe_url(str(url))!r}"
            urls.append(url)
    return tuple(urls)


def _first_int(mapping: dict[str, Any], *names: str) -> int | None:
    for name in names:
        value = mapping.get(name)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    return ""


# --- sanitising -----------------------------------------------------------------------------------

_KEY_LIKE = re.compile(r"\bsk-[A-Za-z0-9_\-]{4,}")
_BEARER = re.compile(r"(?i)\bbearer\s+\S+")
_TAG = re.compile(r"<[^>]{0,500}>")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]+")


def _clean(text: str, secret: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    """One line, no control characters (no log injection), no key, at most ``limit`` characters."""
    if secret:
        text = text.replace(secret, "sk-***")
    text = _KEY_LIKE.sub("sk-***", text)
    text = _BEARER.sub("Bearer ***", text)
    text = " ".join(_CONTROL.sub(" ", text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _body_excerpt(content_type: str, body: bytes, secret: str) -> str:
    if not body.strip():
        return "empty response body"
    text = body[: 16 * MAX_MESSAGE_CHARS].decode("utf-8", errors="replace")
    if "html" in content_type.lower() or text.lstrip().startswith("<"):
        text = html.unescape(_TAG.sub(" ", text))
    kind = content_type.split(";")[0].strip() or "no content type"
    return _clean(f"non-JSON body ({kind}): {text}", secret)


def _describe_url(url: str) -> str:
    """A log-safe description of an image reference: no query string, no data-URI payload."""
    if url.startswith("data:"):
        head = url.split(",", 1)[0]
        return f"{head},<{len(url)} chars>"
    return url.split("?", 1)[0][:200]


# --- client ---------------------------------------------------------------------------------------


class _Send:
    """Per-call record of whether the request went out (told once to the on_send hooks), whether it
    went out *completely*, and of the response status and x-request-id once headers arrive; fed by
    httpcore's trace hook."""

    def __init__(self, hooks: Sequence[OnSend], gate: SendGate | None = None) -> None:
        self._hooks = hooks
        self._gate = gate
        self._gate_open = False
        self.sent = False
        self.sent_at: float | None = None  # time.monotonic() when the first byte was about to go out (traced)
        self.traced = False  # the transport reports its steps (httpcore); False: assume the worst
        self.body_sent = False  # every byte of the request was handed to the socket
        self.status: int | None = None  # set once response headers arrive
        self.request_id = ""  # the x-request-id header, once response headers arrive

    async def trace(self, event: str, info: Mapping[str, Any]) -> None:
        self.traced = True
        # "http11.send_request_headers.started" (or http2.*): the pool gave us a live connection
        # and the first request byte is about to be written. This is the moment a pacer cares about.
        if event.endswith("send_request_headers.started"):
            if not self.sent and self._gate is not None:
                await self._gate.before_send()  # httpcore awaits this before the first byte is written
                self._gate_open = True
            if self.sent_at is None:
                self.sent_at = time.monotonic()
            self.mark_sent()
        elif event.endswith(("send_request_headers.complete", "send_request_headers.failed")):
            self.close_gate()
        elif event.endswith("send_request_body.complete"):
            self.body_sent = True

    @property
    def provably_unsent(self) -> bool:
        """True only when the transport reported its steps and the request body never finished
        going out: the server cannot hold a whole request (its length is declared), so the model
        cannot have run it or billed it. Unknown (no trace) is never "unsent"."""
        return self.traced and not self.body_sent and self.status is None

    def close_gate(self) -> None:
        """Tell the gate this request's headers are written (or never will be); once."""
        if self._gate_open and self._gate is not None:
            self._gate_open = False
            try:
                self._gate.after_send()
            except Exception:
                logger.exception("after_send hook failed")

    def mark_sent(self) -> None:
        if self.sent:
            return
        self.sent = True
        for hook in self._hooks:
            try:
                hook()
            except Exception:  # a pacer bug must not turn a sent (maybe billed) call into a crash
                logger.exception("on_send hook failed")


class DashScopeClient:
    """Async client for the image-edit endpoint over one shared, keep-alive connection pool.

    ``edit()`` makes exactly one HTTP attempt and either returns an ``EditResult`` or raises an
    ``errors.DashScopeError``; it never retries. ``on_send`` (client-wide, and per ``edit()`` call)
    is called once per request when its first byte is about to be written: after connection-pool
    wait and connect, so a pacer can count real departures. Transports without httpcore's trace
    hook (``httpx.MockTransport``, ``ASGITransport``) report the send when response headers arrive.

    "Possibly billed" only when it may be true: a transport failure after the whole request went out
    (or on a transport that does not report its steps) is ``ConnectionDropped``/``CallTimedOut``;
    one while the request was still being written is ``ConnectFailed`` (not billed). Pooled
    connections idle ``keepalive_expiry`` seconds are not reused (below the server's idle timeout, so
    the client never sends on a connection the server is closing).

    Timeouts: ``timeout`` bounds each read and write and the wait for a free pooled connection;
    ``connect_timeout`` the TCP/TLS connect; ``total_timeout`` the whole call (None: no deadline).
    ``http`` lets a caller share its own ``httpx.AsyncClient`` (its limits apply, these timeouts are
    still set per request, and ``aclose`` leaves it open).
    """

    def __init__(
        self,
        api_key: str,
        base_url: str,
        *,
        timeout: float = DEFAULT_TIMEOUT_S,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT_S,
        total_timeout: float | None = DEFAULT_TOTAL_TIMEOUT_S,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        max_response_bytes: int = MAX_RESPONSE_BYTES,
        on_send: OnSend | None = None,
        http: httpx.AsyncClient | None = None,
        keepalive_expiry: float = DEFAULT_KEEPALIVE_EXPIRY_S,
    ) -> None:
        api_key = api_key.strip()
        # A key with whitespace or control characters would make h11 raise an error that quotes the
        # header value, i.e. the key; refuse it here with a message that does not.
        if not api_key or not api_key.isascii() or not api_key.isprintable() or " " in api_key:
            raise ValueError("API key is empty or contains whitespace / non-ASCII characters")
        self._api_key = api_key
        self.base_url = _normalize_base_url(base_url)
        self.endpoint = self.base_url + GENERATION_PATH
        self._timeout = httpx.Timeout(timeout, connect=connect_timeout, pool=timeout)
        self._total_timeout = total_timeout
        self._max_response_bytes = max_response_bytes
        self._on_send = on_send
        self._owns_http = http is None
        self._http = http or httpx.AsyncClient(
            limits=httpx.Limits(
                max_connections=max_connections,
                # httpcore checks every idle pooled connection (a syscall each) whenever it places a
                # request: hundreds of idle connections cost more CPU than the calls themselves.
                max_keepalive_connections=min(max_connections, MAX_IDLE_CONNECTIONS),
                keepalive_expiry=keepalive_expiry,
            ),
            timeout=self._timeout,
        )

    def __repr__(self) -> str:
        return f"DashScopeClient(base_url={self.base_url!r}, api_key='sk-***')"

    async def __aenter__(self) -> DashScopeClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection pool (only if this client created it)."""
        if self._owns_http:
            await self._http.aclose()

    async def edit(
        self, req: EditRequest, *, on_send: OnSend | None = None, gate: SendGate | None = None
    ) -> EditResult:
        """One HTTP attempt for ``req``: the result, or the taxonomy error it failed with.

        ``gate`` (e.g. the call's ``Pacer``) spaces the sends themselves: its ``before_send`` is
        awaited just before the first byte is written (after pool wait and connect) and its
        ``after_send`` called once the headers are out. Transports without httpcore's trace hook
        never call it."""
        body = json.dumps(build_body(req), ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        headers = build_headers(self._api_key, req)
        send = _Send([hook for hook in (self._on_send, on_send) if hook is not None], gate)
        started = time.monotonic()
        failure: errors.DashScopeError | None = None
        try:
            async with asyncio.timeout(self._total_timeout):
                status, content_type, data, truncated, header_rid = await self._exchange(body, headers, send)
        except TimeoutError:
            failure = self._deadline_failure(send)
        except httpx.HTTPError as exc:
            failure = self._transport_failure(exc, send)
        finally:
            send.close_gate()
        # Raised here, outside the except blocks, so the httpx exception (which holds the request
        # and its Authorization header) is not even chained as __context__.
        if failure is not None:
            logger.debug("POST %s failed after %.2fs: %r", req.model, time.monotonic() - started, failure)
            raise failure
        logger.debug(
            "POST %s -> HTTP %s request_id=%s in %.2fs",
            req.model,
            status,
            header_rid or "?",
            time.monotonic() - started,
        )
        result = parse_response(
            status, content_type, data, header_rid, truncated=truncated, secret=self._api_key
        )
        if send.sent_at is None:
            return result
        return replace(result, answered_in_s=time.monotonic() - send.sent_at)

    async def _exchange(
        self, body: bytes, headers: dict[str, str], send: _Send
    ) -> tuple[int, str, bytes, bool, str]:
        """Send, then read at most ``max_response_bytes`` of the answer without buffering more."""
        cap = self._max_response_bytes
        async with self._http.stream(
            "POST",
            self.endpoint,
            content=body,
            headers=headers,
            timeout=self._timeout,
            extensions={"trace": send.trace},
        ) as response:
            send.mark_sent()  # no-op unless the transport has no trace hook
            send.status = response.status_code
            content_type = response.headers.get("content-type", "")
            header_rid = send.request_id = _clean(response.headers.get("x-request-id", ""), "", 100)
            declared = response.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > cap and 200 <= response.status_code < 300:
                return response.status_code, content_type, b"", True, header_rid
            data = bytearray()
            truncated = False
            async for chunk in response.aiter_bytes():
                room = cap - len(data)
                if len(chunk) > room:
                    data += chunk[:room]
                    truncated = True
                    break  # leaving the block closes the response and drops the connection
                data += chunk
            return response.status_code, content_type, bytes(data), truncated, header_rid

    def _deadline_failure(self, send: _Send) -> errors.DashScopeError:
        message = f"no complete answer within the {self._total_timeout:g}s call deadline"
        if send.status is not None and not 200 <= send.status < 300:
            return errors.classify(send.status, "", message, send.request_id)
        if send.provably_unsent:
            return errors.ConnectFailed("CallDeadline", message + " (request not completely sent)")
        if send.sent:
            return errors.CallTimedOut(
                "CallDeadline", message, status=send.status, request_id=send.request_id
            )
        return errors.ConnectFailed("CallDeadline", message + " (request not sent)")

    def _transport_failure(self, exc: httpx.HTTPError, send: _Send) -> errors.DashScopeError:
        """Map an httpx exception to the taxonomy; the message is scrubbed, the request dropped."""
        name = type(exc).__name__
        message = _clean(f"{name} talking to {urlsplit(self.base_url).netloc}: {exc}", self._api_key)
        status, request_id = send.status, send.request_id
        if status is not None and not 200 <= status < 300:
            # The status line arrived before the body failed: trust it (a cut-off 429 is throttling).
            return errors.classify(status, "", message, request_id)
        if isinstance(exc, httpx.DecodingError):
            return errors.MalformedResponse(name, message, status=status, request_id=request_id)
        # PoolTimeout: no connection was free in time, so nothing was sent (not billed).
        if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout | httpx.ProxyError):
            return errors.ConnectFailed(name, message)
        if isinstance(exc, httpx.UnsupportedProtocol | httpx.LocalProtocolError):
            return errors.ConnectFailed(name, message)  # refused locally before anything was sent
        if send.provably_unsent:
            # The connection failed while the request was still being written (httpcore swallows the
            # write error and reports the read that follows): no complete request reached the server.
            return errors.ConnectFailed(name, message + " (request not completely sent: not billed)")
        if isinstance(exc, httpx.TimeoutException):  # ReadTimeout, WriteTimeout
            return errors.CallTimedOut(name, message, status=status, request_id=request_id)
        # ReadError, WriteError, RemoteProtocolError, CloseError...: the connection broke after the
        # request started going out, so the model may have run and billed it.
        return errors.ConnectionDropped(name, message, status=status, request_id=request_id)
