"""What every S3 test server shares: its credentials, and the env, settings, session and client aimed at it.

:class:`S3TestServer` is the base of :class:`~devkit.seaweed.SeaweedServer` (a real store in
its own process) and :class:`~devkit.moto.MotoServer` (in-process, fast). A subclass provides
``endpoint_url`` (and ``ca_bundle`` when it serves HTTPS), ``start`` and ``stop``; clients are made by
the one factory, :func:`qwenedit.storage.make_s3_client`. :func:`ensure_bucket` creates a bucket
idempotently on any of them.
"""

from __future__ import annotations

from types import TracebackType
from typing import TYPE_CHECKING, Self

import boto3
import botocore.exceptions

from qwenedit.storage import S3Settings, make_s3_client

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

__all__ = ["S3TestServer", "ensure_bucket"]


def ensure_bucket(client: S3Client, name: str) -> None:
    """Create bucket ``name`` unless this account already owns it."""
    region = client.meta.region_name
    try:
        if region and region not in ("us-east-1", "aws-global"):
            client.create_bucket(
                Bucket=name,
                CreateBucketConfiguration={"LocationConstraint": region},  # type: ignore[typeddict-item]
            )
        else:
            client.create_bucket(Bucket=name)
    except botocore.exceptions.ClientError as exc:
        if exc.response.get("Error", {}).get("Code") not in (
            "BucketAlreadyOwnedByYou",
            "BucketAlreadyExists",
        ):
            raise


class S3TestServer:
    """An S3-compatible server on loopback with one set of credentials, usable as a context manager."""

    def __init__(self, access_key: str, secret_key: str, region: str) -> None:
        self.access_key = access_key
        self.secret_key = secret_key
        self.region = region

    @property
    def endpoint_url(self) -> str:
        """``http(s)://127.0.0.1:<port>`` of the running server."""
        raise NotImplementedError

    @property
    def ca_bundle(self) -> str | None:
        """The certificate to trust when the server speaks HTTPS (None: plain HTTP)."""
        return None

    def start(self) -> Self:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def env(self) -> dict[str, str]:
        """Environment for a process (or monkeypatched test) that should use this server."""
        env = {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_ENDPOINT_URL_S3": self.endpoint_url,
            "AWS_DEFAULT_REGION": self.region,
            "QWENEDIT_S3_ADDRESSING_STYLE": "path",
        }
        if self.ca_bundle:
            env["AWS_CA_BUNDLE"] = self.ca_bundle
        return env

    def settings(self, **overrides: object) -> S3Settings:
        """S3Settings pointing at this server (path style, 2 attempts), with ``overrides`` applied."""
        base: dict[str, object] = {
            "endpoint_url": self.endpoint_url,
            "region": self.region,
            "addressing_style": "path",
            "max_attempts": 2,
            "ca_bundle": self.ca_bundle,
        }
        base.update(overrides)
        return S3Settings(**base)  # type: ignore[arg-type]

    def session(self) -> boto3.Session:
        """A boto3 session holding this server's credentials (no environment needed)."""
        return boto3.Session(
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name=self.region,
        )

    def client(self, **overrides: object) -> S3Client:
        """An S3 client for this server, made by the one factory."""
        return make_s3_client(self.settings(**overrides), session=self.session())

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
