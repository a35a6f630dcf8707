"""An in-process S3 emulator for fast tests: moto's ThreadedMotoServer on a free 127.0.0.1 port.

moto keeps objects in RAM and does not check SigV4 signatures or Content-MD5, so use it for quick
settings/logic tests and :mod:`qwenedit.testing.seaweed` for anything that needs a real store.
"""

from __future__ import annotations

from types import TracebackType
from typing import TYPE_CHECKING

import boto3
import httpx

from qwenedit.storage import S3Settings, make_s3_client
from qwenedit.testing.seaweed import ensure_bucket

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

__all__ = ["MotoServer", "ensure_bucket"]


class MotoServer:
    """``ThreadedMotoServer(ip_address="127.0.0.1", port=0)`` with the same surface as SeaweedServer."""

    def __init__(
        self, access_key: str = "test", secret_key: str = "testtest-secret", region: str = "us-east-1"
    ):
        self.access_key = access_key
        self.secret_key = secret_key
        self.region = region
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

    def env(self) -> dict[str, str]:
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_ENDPOINT_URL_S3": self.endpoint_url,
            "AWS_DEFAULT_REGION": self.region,
            "QWENEDIT_S3_ADDRESSING_STYLE": "path",
        }

    def settings(self, **overrides: object) -> S3Settings:
        base: dict[str, object] = {
            "endpoint_url": self.endpoint_url,
            "region": self.region,
            "addressing_style": "path",
            "max_attempts": 2,
        }
        base.update(overrides)
        return S3Settings(**base)  # type: ignore[arg-type]

    def session(self) -> boto3.Session:
        return boto3.Session(
            aws_access_key_id=self.access_key, aws_secret_access_key=self.secret_key, region_name=self.region
        )

    def client(self, **overrides: object) -> S3Client:
        return make_s3_client(self.settings(**overrides), session=self.session())

    def __enter__(self) -> MotoServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
