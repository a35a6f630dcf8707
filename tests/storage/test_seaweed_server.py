"""The test servers themselves: SeaweedServer (loopback only, restartable with its data) and MotoServer."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import botocore.exceptions
import psutil
import pytest

from devkit.moto import MotoServer
from devkit.seaweed import SeaweedServer, ensure_bucket
from qwenedit.storage import MiB, S3Destination, encode_metadata
from tests.storage.answers import stable_headers

pytestmark = pytest.mark.slow  # starts SeaweedFS servers of its own (plain and TLS) and restarts one


@pytest.fixture(scope="module")
def own_seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedServer]:
    # Not the session server: these tests kill and restart it.
    with SeaweedServer(tmp_path_factory.mktemp("own-weed"), access_key="own", secret_key="own-secret-1") as s:
        yield s


def test_server_listens_on_loopback_only(own_seaweed: SeaweedServer) -> None:
    assert own_seaweed.pid is not None
    proc = psutil.Process(own_seaweed.pid)
    listening = [c.laddr for c in proc.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN]
    assert listening, "weed is not listening at all"
    assert {addr.ip for addr in listening} == {"127.0.0.1"}
    assert own_seaweed.ports["s3"] in {addr.port for addr in listening}
    cmdline = proc.cmdline()
    assert "-master.telemetry=false" in cmdline and "-ip.bind=127.0.0.1" in cmdline


def test_ports_and_their_grpc_twins_are_distinct(own_seaweed: SeaweedServer) -> None:
    ports = list(own_seaweed.ports.values())
    everything = ports + [p + 10000 for p in ports]
    assert len(set(everything)) == len(everything) == 10
    assert own_seaweed.endpoint_url == f"http://127.0.0.1:{own_seaweed.ports['s3']}"


def test_stop_and_start_keep_ports_and_data(own_seaweed: SeaweedServer) -> None:
    client = own_seaweed.client()
    ensure_bucket(client, "survives")
    dest = S3Destination("survives", "p", settings=own_seaweed.settings(), session=own_seaweed.session())
    assert dest.put_create_only("j/0.png", io.BytesIO(b"kept"), "image/png", {"job": "j"}) == "created"
    endpoint = own_seaweed.endpoint_url

    own_seaweed.stop()  # SIGKILL right after the acknowledged write
    assert not own_seaweed.running
    down = own_seaweed.client(max_attempts=1, connect_timeout=1.0)
    with pytest.raises(botocore.exceptions.EndpointConnectionError):
        down.list_buckets()

    own_seaweed.start()
    assert own_seaweed.running and own_seaweed.endpoint_url == endpoint
    # The same destination object (and its pooled clients) works again after the outage.
    assert dest.get_bytes("j/0.png") == b"kept"
    head = dest.head("j/0.png")
    assert head is not None and head["metadata"] == {"job": "j"}
    assert dest.put_create_only("j/0.png", io.BytesIO(b"new"), "image/png") == "exists"


def test_env_points_a_separate_process_at_the_server(own_seaweed: SeaweedServer) -> None:
    ensure_bucket(own_seaweed.client(), "from-env")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "QWENEDIT_S3_"))}
    env.update(own_seaweed.env())
    assert env["QWENEDIT_S3_ADDRESSING_STYLE"] == "path" and env["AWS_DEFAULT_REGION"] == "us-east-1"
    code = (
        "import json; from qwenedit.storage import open_destination\n"
        "d = open_destination('s3://from-env/sub')\n"
        "a = d.put_bytes('x.txt', b'hi', 'text/plain')\n"
        "b = d.put_bytes('x.txt', b'ho', overwrite=False)\n"
        "print(json.dumps([a, b]))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60, check=True
    )
    assert json.loads(out.stdout) == ["created", "exists"]
    assert own_seaweed.client().get_object(Bucket="from-env", Key="sub/x.txt")["Body"].read() == b"hi"


def test_credentials_are_enforced(own_seaweed: SeaweedServer) -> None:
    import boto3

    from qwenedit.storage import make_s3_client

    wrong = boto3.Session(aws_access_key_id="own", aws_secret_access_key="guess", region_name="us-east-1")
    client = make_s3_client(own_seaweed.settings(max_attempts=1), session=wrong)
    with pytest.raises(botocore.exceptions.ClientError):
        client.list_buckets()


def test_logs_go_to_the_data_dir(own_seaweed: SeaweedServer) -> None:
    assert own_seaweed.log_path.parent == own_seaweed.data_dir
    assert own_seaweed.log_path.stat().st_size > 0
    assert "own-secret-1" not in own_seaweed.log_path.read_text(errors="replace")
    assert "own-secret-1" not in repr(own_seaweed)


def test_identities_file_is_private(own_seaweed: SeaweedServer) -> None:
    cfg = Path(own_seaweed.data_dir) / "s3-identities.json"
    assert cfg.stat().st_mode & 0o077 == 0


def test_moto_server_binds_loopback_and_resets(moto_s3: MotoServer) -> None:
    moto_s3.reset()  # moto's state is process-global: start from a known point
    assert moto_s3.endpoint_url.startswith("http://127.0.0.1:")
    assert moto_s3.env()["AWS_ENDPOINT_URL_S3"] == moto_s3.endpoint_url
    client = moto_s3.client()
    ensure_bucket(client, "moto-bucket")
    ensure_bucket(client, "moto-bucket")  # idempotent
    assert [b["Name"] for b in client.list_buckets()["Buckets"]] == ["moto-bucket"]
    moto_s3.reset()
    assert client.list_buckets()["Buckets"] == []


# ---------------------------------------------------------------------------------------------------------
# Over TLS, where boto3 switches to aws-chunked uploads with trailing checksums


@pytest.fixture(scope="module")
def tls_seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedServer]:
    with SeaweedServer(tmp_path_factory.mktemp("tls-weed"), tls=True) as s:
        ensure_bucket(s.client(), "tls-bucket")
        yield s


def _record_put_headers(dest: S3Destination) -> list[dict[str, str]]:
    seen: list[dict[str, str]] = []

    def record(request: Any, **_: Any) -> None:
        seen.append({k: v.decode() if isinstance(v, bytes) else v for k, v in request.headers.items()})

    for op in ("PutObject", "UploadPart"):  # one PUT (the destination's writer) and s3transfer's multipart
        for client in (dest.client, dest._cond_client()):
            client.meta.events.register(f"before-send.s3.{op}", record)
    return seen


def test_tls_create_only_uploads_with_trailing_checksums(tls_seaweed: SeaweedServer) -> None:
    assert tls_seaweed.endpoint_url.startswith("https://127.0.0.1:")
    assert tls_seaweed.env()["AWS_CA_BUNDLE"] == tls_seaweed.ca_bundle
    dest = S3Destination(
        "tls-bucket",
        "chunked",
        settings=tls_seaweed.settings(
            multipart_threshold=5 * 1024 * 1024, multipart_chunksize=5 * 1024 * 1024
        ),
        session=tls_seaweed.session(),
    )
    seen = _record_put_headers(dest)
    small, big = b"\x89PNG small", os.urandom(6 * MiB)
    meta = {"prompt": "换成夜景"}
    assert dest.put_create_only("a.png", io.BytesIO(small), "image/png", meta) == "created"
    assert dest.put_create_only("big.png", io.BytesIO(big), "image/png", meta) == "created"
    assert dest.put_create_only("big.png", io.BytesIO(b"x"), "image/png") == "exists"
    assert any(h.get("Content-Encoding") == "aws-chunked" for h in seen), "the TLS mode was not exercised"
    assert dest.get_bytes("a.png") == small and dest.get_bytes("big.png") == big
    head = dest.head("big.png")
    assert head is not None and head["metadata"] == meta


def test_tls_when_required_sends_plain_bodies(tls_seaweed: SeaweedServer) -> None:
    dest = S3Destination(
        "tls-bucket",
        "plain",
        settings=tls_seaweed.settings(checksum_mode="when_required"),
        session=tls_seaweed.session(),
    )
    seen = _record_put_headers(dest)
    assert dest.put_create_only("a.png", io.BytesIO(b"png"), "image/png") == "created"
    assert dest.put_create_only("a.png", io.BytesIO(b"other"), "image/png") == "exists"
    assert seen and not any("aws-chunked" in h.get("Content-Encoding", "") for h in seen)
    assert not any(k.lower().startswith("x-amz-checksum") for h in seen for k in h)
    assert dest.get_bytes("a.png") == b"png"


def test_tls_one_put_sends_what_put_object_sends(tls_seaweed: SeaweedServer) -> None:
    # The destination's writer over HTTPS: an aws-chunked body with a trailing CRC32, as boto3 sends it.
    dest = S3Destination(
        "tls-bucket", "writer", settings=tls_seaweed.settings(), session=tls_seaweed.session()
    )
    seen = _record_put_headers(dest)
    body, meta = os.urandom(50_000), encode_metadata({"prompt": "换成夜景"})
    dest.client.put_object(
        Bucket="tls-bucket",
        Key="writer/c.png",
        Body=body,
        ContentType="image/png",
        Metadata=meta,
        IfNoneMatch="*",
    )
    assert dest.put_create_only("w.png", io.BytesIO(body), "image/png", {"prompt": "换成夜景"}) == "created"
    assert dest.put_create_only("w.png", io.BytesIO(b"x"), "image/png") == "exists"
    by_client, by_writer = (stable_headers(h) for h in seen[:2])
    assert by_writer == by_client
    assert by_writer["content-encoding"] == "aws-chunked"
    assert by_writer["x-amz-content-sha256"] == "STREAMING-UNSIGNED-PAYLOAD-TRAILER"
    assert dest.get_bytes("w.png") == body
    head = dest.head("w.png")
    assert head is not None and head["metadata"] == {"prompt": "换成夜景"}
