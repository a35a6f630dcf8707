"""``EmulatorServer``: the emulator on a real loopback port, served by uvicorn in a background thread.

Used by tests, the demo and benchmarks. The socket is bound before the thread starts (port 0 → a free
port, no race), so ``base_url`` is known at once. The books and config are read and changed directly
(same process); a separate-process emulator offers the same through ``/_emulator/*``.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from types import TracebackType
from typing import Any, Self

import uvicorn

from qwenedit.emulator.app import EmulatorApp, create_app
from qwenedit.emulator.config import EmulatorConfig

KEEP_ALIVE_S = 75  # longer than any client pool's idle timeout, so pooled connections get reused


def bind_socket(host: str = "127.0.0.1", port: int = 0) -> socket.socket:
    """A listening TCP socket on ``host:port`` (port 0: a free one)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(1024)
    sock.set_inheritable(True)
    return sock


def uvicorn_config(app: EmulatorApp, *, access_log: bool = False, log_config: Any = None) -> uvicorn.Config:
    """The uvicorn settings the emulator runs with, in tests and from the CLI alike."""
    return uvicorn.Config(
        app,
        log_config=log_config,
        log_level="warning",
        access_log=access_log,
        timeout_keep_alive=KEEP_ALIVE_S,
        timeout_graceful_shutdown=2,
        server_header=False,  # the app sends DashScope-like headers itself
        proxy_headers=False,
        lifespan="on",
        workers=1,
    )


class EmulatorServer:
    """A DashScope emulator listening on 127.0.0.1 in a background thread; use as a context manager."""

    def __init__(
        self, config: EmulatorConfig | None = None, *, host: str = "127.0.0.1", port: int = 0
    ) -> None:
        self.app = create_app(config)
        self._host = host
        self._port = port
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self.base_url = ""

    @property
    def config(self) -> EmulatorConfig:
        """The live configuration (change it with ``configure``)."""
        return self.app.emulator.config

    @property
    def output_dir(self) -> str:
        """Where the rendered outputs are written."""
        return str(self.app.emulator.output_dir)

    def start(self) -> Self:
        """Bind, start serving, and return once the server accepts connections."""
        if self._thread is not None:
            raise RuntimeError("emulator already started")
        sock = bind_socket(self._host, self._port)
        port = sock.getsockname()[1]
        self.base_url = f"http://{self._host}:{port}"
        self._server = uvicorn.Server(uvicorn_config(self.app))
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [sock]}, name=f"emulator-{port}", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + 15
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                sock.close()
                raise RuntimeError("emulator failed to start")
            time.sleep(0.005)
        return self  # uvicorn owns the socket now and closes it on shutdown

    def request_stop(self) -> None:
        """Ask the server to stop and return at once; :meth:`stop` then waits for it. uvicorn takes ~0.2 s
        to shut down, which a caller can spend on other work (the test fixtures do)."""
        if self._server is not None:
            self._server.should_exit = True

    def stop(self) -> None:
        """Stop serving (requests still sleeping are cancelled after a short grace period)."""
        if self._server is None or self._thread is None:
            return
        self._server.should_exit = True
        self._thread.join(timeout=10)
        self._server = None
        self._thread = None
        asyncio.run(self.app.emulator.aclose())  # no-op if the lifespan already cleaned up

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # --- the books and knobs --------------------------------------------------------------------------

    def ledger(self) -> list[dict[str, Any]]:
        """Every charge: ``request_id, account, key_id, model, image_count, time``."""
        return self.app.emulator.books.ledger()

    def billed_images(self) -> int:
        """Total images charged so far."""
        return sum(entry["image_count"] for entry in self.ledger())

    def stats(self) -> dict[str, Any]:
        """Request counters: requests, by_status, by_code, throttled_429, faults, billed, arrivals."""
        return self.app.emulator.books.stats()

    def arrivals(self) -> list[dict[str, Any]]:
        """The arrival log, in arrival order: ``time`` (``time.monotonic()`` of this process when the request
        came in), ``account``, ``model`` and ``status``: the HTTP status sent, or ``"dropped"`` (closed
        without a response) or ``"client_gone"`` (the client hung up first; still billed)."""
        return self.app.emulator.books.arrivals()

    def configure(self, **changes: Any) -> None:
        """Change knobs at runtime (e.g. ``fail_500=0.2``, ``next_faults=["drop"]``, ``rps=5``)."""
        self.app.emulator.configure(changes)

    def reset(self) -> None:
        """Clear the books, rate windows and forced faults."""
        self.app.emulator.reset()
