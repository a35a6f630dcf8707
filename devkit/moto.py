"""An in-process S3 emulator for fast tests: moto's ThreadedMotoServer on a free 127.0.0.1 port.

moto keeps objects in RAM and does not check SigV4 signatures or Content-MD5, so use it for quick
settings/logic tests and :mod:`devkit.seaweed` for anything that needs a real store.
"""

from __future__ import annotations

import httpx

from devkit.s3server import S3TestServer, ensure_bucket

__all__ = ["MotoServer", "ensure_bucket"]


class MotoServer(S3TestServer):
    """``ThreadedMotoServer(ip_address="127.0.0.1", port=0)`` with the same surface as SeaweedServer."""

    def __init__(
        self, access_key: str = "test", secret_key: str = "testtest-secret", region: str = "us-east-1"
    ):
        super().__init__(access_key, secret_key, region)
        self._server: object | None = None
        self._endpoint: str | None = None

    def __repr__(self) -> str:
        return f"MotoServer(endpoint_url={self._endpoint!r})"

    @property
    def endpoint_url(self) -> str:
        if self._endpoint is None:
            raise RuntimeError("MotoServer has not been started")
        return self._endpoint

    def start(self) -> MotoServer:
        if self._server is not None:
            return self
        from moto.server import ThreadedMotoServer  # heavy import: only when a test needs it

        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        host, port = server.get_host_and_port()
        self._server = server
        self._endpoint = f"http://{host}:{port}"
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.stop()  # type: ignore[attr-defined]

    def reset(self) -> None:
        """Forget every bucket and object (moto's state is per process: this resets every moto server)."""
        httpx.post(f"{self.endpoint_url}/moto-api/reset", timeout=10).raise_for_status()
