"""How to talk to an S3-compatible store: :class:`S3Settings` and THE S3 client factory.

Every S3 call in qwenedit goes through a client made by :func:`make_s3_client` (objects stored in one
request through its signer, pool and retry settings: :mod:`qwenedit.storage.put`); create-only uploads
through s3transfer use a second client from :func:`make_conditional_client` (``If-None-Match: *`` on
every put). Settings hold no credentials: boto3's standard chain supplies them.

Environment variables (:meth:`S3Settings.from_env` reads ``QWENEDIT_S3_*``; boto3 reads ``AWS_*``):

===================================  ==============================================================
Variable                             Meaning
===================================  ==============================================================
``AWS_ACCESS_KEY_ID``                Credentials, through boto3's standard chain (also
``AWS_SECRET_ACCESS_KEY``            ``AWS_PROFILE`` / ``~/.aws/credentials``, SSO, instance
``AWS_SESSION_TOKEN``                roles). Never stored in :class:`S3Settings`.
``AWS_PROFILE``                      Named profile (credentials, region, even ``endpoint_url``).
``AWS_ENDPOINT_URL_S3``              Endpoint of the S3-compatible store; wins over
                                     ``AWS_ENDPOINT_URL``. Unset → AWS S3.
``AWS_ENDPOINT_URL``                 Endpoint for every AWS service (when ``..._S3`` is unset).
``AWS_REGION``, ``AWS_DEFAULT_REGION``  Region (R2: ``auto``; OSS: e.g. ``cn-hangzhou``).
``AWS_CA_BUNDLE``                    CA bundle for a TLS endpoint signed by a private CA.
``QWENEDIT_S3_REGION``               Region for the S3 client only (wins over the two above).
``QWENEDIT_S3_ADDRESSING_STYLE``     ``auto`` (default) | ``path`` | ``virtual``. OSS needs
                                     ``virtual``; IP-address endpoints always use path style.
``QWENEDIT_S3_SIGNATURE_VERSION``    Default ``s3v4`` (boto3 would presign SigV2 in us-east-1).
``QWENEDIT_S3_CHECKSUM_MODE``        ``when_supported`` (default) | ``when_required`` (OSS, older
                                     MinIO/Ceph, B2 and other stores rejecting aws-chunked bodies).
``QWENEDIT_S3_CONDITIONAL_WRITES``   ``on`` (default, ``If-None-Match: *``) | ``off`` (HEAD-then-PUT).
``QWENEDIT_S3_MULTIPART_THRESHOLD``  Bytes, or with a KiB/MiB/GiB (K/M/G) suffix. Default 16 MiB.
``QWENEDIT_S3_MULTIPART_CHUNKSIZE``  Part size, at least 5 MiB. Default 8 MiB.
``QWENEDIT_S3_MAX_CONCURRENCY``      Parts uploaded in parallel per object. Default 4.
``QWENEDIT_S3_MAX_POOL_CONNECTIONS`` Connection pool size per client. Default 32: keep it at least
                                     the number of copies running at once.
===================================  ==============================================================

``AWS_MAX_ATTEMPTS`` and ``AWS_RETRY_MODE`` have no effect: the factory sets botocore's retries
explicitly (see :func:`make_s3_client`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any, Literal

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config

from qwenedit.redact import redact_userinfo
from qwenedit.storage.base import GiB, KiB, MiB

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

_ADDRESSING_STYLES = ("auto", "path", "virtual")
_CHECKSUM_MODES = ("when_supported", "when_required")
_SIZE_RE = re.compile(r"^\s*(\d+)\s*([KMG]i?B?|B)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "B": 1, "K": KiB, "M": MiB, "G": GiB}


def parse_size(text: str) -> int:
    """Parse ``"16777216"``, ``"16MiB"``, ``"16M"`` or ``"16 MB"`` into bytes (binary units)."""
    m = _SIZE_RE.match(text)
    if not m:
        raise ValueError(f"not a size: {text!r} (use bytes or a KiB/MiB/GiB suffix)")
    unit = (m.group(2) or "").upper()[:1]
    return int(m.group(1)) * _SIZE_UNITS[unit]


def _parse_bool(name: str, text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{name}={text!r}: expected on/off")


@dataclass(frozen=True)
class S3Settings:
    """How to talk to the S3-compatible store. Holds no credentials: those come from boto3's chain."""

    endpoint_url: str | None = None  # None → AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL / config file / AWS
    region: str | None = None  # None → AWS_REGION / AWS_DEFAULT_REGION / profile
    addressing_style: Literal["auto", "path", "virtual"] = "auto"
    signature_version: str = "s3v4"
    checksum_mode: Literal["when_supported", "when_required"] = "when_supported"
    conditional_writes: bool = True
    multipart_threshold: int = 16 * MiB
    multipart_chunksize: int = 8 * MiB
    max_concurrency: int = 4
    max_pool_connections: int = 32
    ca_bundle: str | None = None  # None → AWS_CA_BUNDLE / system bundle
    profile: str | None = None  # None → AWS_PROFILE / default
    connect_timeout: float = 10.0
    read_timeout: float = 120.0
    # Tries per request, the first included, in botocore's "standard" retry mode (see make_s3_client).
    max_attempts: int = 3

    def __post_init__(self) -> None:
        if self.addressing_style not in _ADDRESSING_STYLES:
            raise ValueError(
                f"addressing_style must be one of {_ADDRESSING_STYLES}, not {self.addressing_style!r}"
            )
        if self.checksum_mode not in _CHECKSUM_MODES:
            raise ValueError(f"checksum_mode must be one of {_CHECKSUM_MODES}, not {self.checksum_mode!r}")
        if self.multipart_chunksize < 5 * MiB:
            raise ValueError("multipart_chunksize must be at least 5 MiB (S3's minimum part size)")
        if self.multipart_threshold < 1 or self.max_concurrency < 1 or self.max_pool_connections < 1:
            raise ValueError("multipart_threshold, max_concurrency and max_pool_connections must be positive")
        if self.max_attempts < 1:
            raise ValueError("max_attempts counts the first try: it must be at least 1")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> S3Settings:
        """Read the ``QWENEDIT_S3_*`` variables (see the module docstring); boto3 reads the ``AWS_*`` ones."""
        env = os.environ if environ is None else environ
        kw: dict[str, Any] = {}
        if v := env.get("QWENEDIT_S3_REGION"):
            kw["region"] = v
        if v := env.get("QWENEDIT_S3_ADDRESSING_STYLE"):
            kw["addressing_style"] = v.strip().lower()
        if v := env.get("QWENEDIT_S3_SIGNATURE_VERSION"):
            kw["signature_version"] = v.strip()
        if v := env.get("QWENEDIT_S3_CHECKSUM_MODE"):
            kw["checksum_mode"] = v.strip().lower()
        if v := env.get("QWENEDIT_S3_CONDITIONAL_WRITES"):
            kw["conditional_writes"] = _parse_bool("QWENEDIT_S3_CONDITIONAL_WRITES", v)
        if v := env.get("QWENEDIT_S3_MULTIPART_THRESHOLD"):
            kw["multipart_threshold"] = parse_size(v)
        if v := env.get("QWENEDIT_S3_MULTIPART_CHUNKSIZE"):
            kw["multipart_chunksize"] = parse_size(v)
        if v := env.get("QWENEDIT_S3_MAX_CONCURRENCY"):
            kw["max_concurrency"] = int(v)
        if v := env.get("QWENEDIT_S3_MAX_POOL_CONNECTIONS"):
            kw["max_pool_connections"] = int(v)
        return cls(**kw)

    def __repr__(self) -> str:
        # An endpoint written as https://user:pass@host must not leak through a log line.
        parts = []
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "endpoint_url":
                value = redact_userinfo(value)
            parts.append(f"{f.name}={value!r}")
        return f"S3Settings({', '.join(parts)})"

    __str__ = __repr__

    def transfer_config(self) -> TransferConfig:
        """s3transfer settings for uploads: memory per upload ≈ chunk size × (concurrency + 1)."""
        cfg = TransferConfig(
            multipart_threshold=self.multipart_threshold,
            multipart_chunksize=self.multipart_chunksize,
            max_concurrency=self.max_concurrency,
            use_threads=True,
            preferred_transfer_client="classic",
        )
        # s3transfer buffers up to 10 parts of a non-seekable stream by default; bound it to what the
        # threads can actually upload so a fast source cannot run ahead of a slow store.
        cfg.max_in_memory_upload_chunks = self.max_concurrency
        return cfg

    def botocore_config(self) -> Config:
        """The botocore ``Config`` every client of these settings gets (see :func:`make_s3_client`)."""
        return Config(
            region_name=self.region,
            signature_version=self.signature_version,
            s3={"addressing_style": self.addressing_style},
            request_checksum_calculation=self.checksum_mode,
            response_checksum_validation=self.checksum_mode,
            max_pool_connections=self.max_pool_connections,
            retries={"mode": "standard", "total_max_attempts": self.max_attempts},
            connect_timeout=self.connect_timeout,
            read_timeout=self.read_timeout,
        )


def make_s3_client(settings: S3Settings | None = None, *, session: boto3.Session | None = None) -> S3Client:
    """THE S3 client factory: every S3 call in qwenedit goes through a client made here.

    ``session`` lets a caller supply credentials explicitly (tests, a Prefect ``AwsCredentials`` block's
    ``get_boto3_session()``); otherwise boto3's standard chain (env, profile, SSO, instance role) applies.

    **Retries: two layers, one per time scale.** The client retries a single request in botocore's
    ``standard`` mode, at most ``settings.max_attempts`` tries in all (default 3, the first included:
    botocore's ``total_max_attempts``) with botocore's own short jittered backoff; that rides out a
    glitch of one request (a dropped connection, a 500, a ``SlowDown``). An *outage* (the store down for
    a minute) is not the client's to handle: the run's storage retry layer (``qwenedit.retry`` with
    :func:`qwenedit.errors.is_transient_storage_error`) retries the whole operation with the run's
    backoff, so a request is tried at most ``max_attempts`` × (that layer's attempts) times. Standard
    mode also draws retries from a per-client quota, so in an outage botocore soon stops retrying and
    fails fast to the outer layer. ``max_attempts=1`` turns botocore's retries off (failure-path tests).
    """
    s = settings if settings is not None else S3Settings.from_env()
    sess = session if session is not None else boto3.Session(profile_name=s.profile)
    kwargs: dict[str, Any] = {"config": s.botocore_config()}
    if s.endpoint_url is not None:
        kwargs["endpoint_url"] = s.endpoint_url
    if s.ca_bundle is not None:
        kwargs["verify"] = s.ca_bundle
    client: S3Client = sess.client("s3", **kwargs)
    return client


def _add_if_none_match(params: dict[str, Any], **_: Any) -> None:
    params["IfNoneMatch"] = "*"


def make_conditional_client(settings: S3Settings, session: boto3.Session | None = None) -> S3Client:
    """A client from :func:`make_s3_client` whose every PutObject/CompleteMultipartUpload is create-only.

    Event hooks are per client, not per call or thread, so conditional writes get a client of their own
    with the hook registered for good: a PutObject on the main client is never accidentally conditional.
    """
    client = make_s3_client(settings, session=session)
    for op in ("PutObject", "CompleteMultipartUpload"):
        client.meta.events.register(f"before-parameter-build.s3.{op}", _add_if_none_match)
    return client
