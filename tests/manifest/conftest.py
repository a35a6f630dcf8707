"""Helpers for the manifest/pricing/inputs/validate tests: image bytes, a loopback HTTP server, the CLI."""

from __future__ import annotations

import io
import json
import struct
import threading
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from typer.testing import CliRunner

from qwenedit.cli import app

HEADER = "job_id,image_1,image_2,image_3,prompt"


def image_bytes(width: int = 512, height: int = 512, fmt: str = "PNG", colour: str = "teal") -> bytes:
    """A real, small image in ``fmt``."""
    buf = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(buf, fmt)
    return buf.getvalue()


def bomb_png(width: int, height: int) -> bytes:
    """A tiny PNG whose header declares ``width``×``height``: decoding it would need gigabytes."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1-bit greyscale
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )


@dataclass
class CliOutcome:
    exit_code: int
    stdout: str
    stderr: str

    @property
    def json(self) -> dict[str, Any]:
        return json.loads(self.stdout)

    def messages(self) -> list[str]:
        return [p["message"] for p in self.json["problems"]]


def run_validate(*args: str | Path) -> CliOutcome:
    """``qwenedit validate ARGS`` in-process, on a wide terminal (so rich does not wrap lines)."""
    result = CliRunner().invoke(app, ["validate", *map(str, args)], env={"COLUMNS": "250"})
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return CliOutcome(result.exit_code, result.stdout, result.stderr)


@pytest.fixture
def validate_cli() -> Any:
    return run_validate


@dataclass
class Route:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    head_status: int | None = None  # answer HEAD differently (e.g. 405)


class FakeWeb:
    """A loopback HTTP server answering GET/HEAD from a routing table; records requests."""

    def __init__(self) -> None:
        self.routes: dict[str, Route] = {}
        self.requests: list[tuple[str, str]] = []
        web = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self, head: bool) -> None:
                web.requests.append((self.command, self.path))
                route = web.routes.get(self.path, Route(404, body=b"not found"))
                status = route.head_status if head and route.head_status is not None else route.status
                self.send_response(status)
                headers = {"Content-Length": str(len(route.body)), **route.headers}
                for k, v in headers.items():
                    self.send_header(k, v)
                self.end_headers()
                if not head:
                    self.wfile.write(route.body)

            def do_GET(self) -> None:
                self._answer(head=False)

            def do_HEAD(self) -> None:
                self._answer(head=True)

            def log_message(self, *args: Any) -> None:
                return  # keep per-request access lines out of the test output

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def url(self, path: str) -> str:
        return self.base_url + path


@pytest.fixture
def fake_web() -> Iterator[FakeWeb]:
    web = FakeWeb()
    web.thread.start()
    try:
        yield web
    finally:
        web.server.shutdown()
        web.server.server_close()
