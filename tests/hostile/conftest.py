"""Hostile-input kit: tiny loopback HTTP servers that count every hit (a foreign output host, a lying
API, a redirector), a snapshot of the destination to prove stored data was left intact, and the
chaos suite's fixtures (billing spy, manifests, environment)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from tests.chaos.conftest import images_dir, pipeline_env, spy_on, write_manifest
from tests.fixtures.s3 import S3Bucket

__all__ = ["HttpServer", "Reply", "images_dir", "pipeline_env", "snapshot", "spy_on", "write_manifest"]


@dataclass
class Reply:
    """What a ``HttpServer`` answers: status, headers, and a body (bytes or an iterator of chunks)."""

    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes | Callable[[], Iterator[bytes]] = b""


@dataclass
class Hit:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


class HttpServer:
    """A threaded HTTP/1.1 server on 127.0.0.1 that records every request and answers with ``handler``."""

    def __init__(self, handler: Callable[[Hit], Reply]) -> None:
        self.handler = handler
        self.hits: list[Hit] = []
        self.bytes_sent = 0
        self._lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _serve(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                hit = Hit(self.command, self.path, dict(self.headers.items()), self.rfile.read(length))
                with outer._lock:
                    outer.hits.append(hit)
                reply = outer.handler(hit)
                self.send_response(reply.status)
                chunks = reply.body() if callable(reply.body) else None
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                if chunks is None:
                    assert isinstance(reply.body, bytes)
                    self.send_header("content-length", str(len(reply.body)))
                    self.end_headers()
                    self._write(reply.body)
                    return
                self.send_header("transfer-encoding", "chunked")
                self.end_headers()
                try:
                    for chunk in chunks:
                        self._write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                    self._write(b"0\r\n\r\n")
                except (BrokenPipeError, ConnectionResetError):
                    self.close_connection = True  # the client hung up: exactly what a size cap does

            def _write(self, data: bytes) -> None:
                self.wfile.write(data)
                with outer._lock:
                    outer.bytes_sent += len(data)

            do_GET = do_POST = do_HEAD = _serve

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def start(self) -> HttpServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def http_server() -> Iterator[Callable[[Callable[[Hit], Reply]], HttpServer]]:
    """``http_server(handler)`` starts a counting server; all are stopped after the test."""
    servers: list[HttpServer] = []

    def start(handler: Callable[[Hit], Reply]) -> HttpServer:
        server = HttpServer(handler).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


def snapshot(bucket: S3Bucket) -> dict[str, str]:
    """Every key in the bucket with its ETag: equal snapshots mean nothing was added, changed or removed."""
    pages = bucket.client.get_paginator("list_objects_v2").paginate(Bucket=bucket.bucket)
    return {o["Key"]: o["ETag"] for page in pages for o in page.get("Contents", [])}
