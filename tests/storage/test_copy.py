"""copy_url: streaming an output URL into a destination, and how each failure is classified."""

from __future__ import annotations

import errno
import hashlib
import socket
import threading
import traceback
import tracemalloc
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import boto3
import httpx
import pytest

from devkit.procs import free_port
from qwenedit.storage import (
    CopyError,
    LocalDestination,
    MiB,
    PutOutcome,
    S3Destination,
    S3Settings,
    copy_url,
)
from tests.fixtures.s3 import S3Bucket

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SECRET_QUERY = "Expires=1999999999&OSSAccessKeyId=LTAIsecretkeyid&Signature=c2VjcmV0LXNpZ25hdHVyZQ%3D%3D"
_BLOCK = 256 * 1024


def _body_block(i: int) -> bytes:
    # Deterministic, incompressible-enough content; the first block starts like a PNG.
    seed = hashlib.sha256(i.to_bytes(8, "big")).digest()
    block = seed * (_BLOCK // len(seed))
    return PNG_MAGIC + block[len(PNG_MAGIC) :] if i == 0 else block


def _expected_sha256(size: int) -> str:
    h = hashlib.sha256()
    sent, i = 0, 0
    while sent < size:
        part = _body_block(i)[: size - sent]
        h.update(part)
        sent += len(part)
        i += 1
    return h.hexdigest()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    hits: Counter[str] = Counter()  # noqa: RUF012 (shared on purpose: the tests read it)

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _stream(self, size: int, *, length: bool = True, stop_after: int | None = None) -> None:
        self.send_response(200)
        self.send_header("Content-Type", self.headers.get("X-Test-Type", "image/png"))
        if length:
            self.send_header("Content-Length", str(size))
        else:
            self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        sent, i = 0, 0
        limit = size if stop_after is None else stop_after
        while sent < limit:
            part = _body_block(i)[: limit - sent]
            if length:
                self.wfile.write(part)
            else:
                self.wfile.write(f"{len(part):x}\r\n".encode() + part + b"\r\n")
            sent += len(part)
            i += 1
        if stop_after is not None:
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True
            return
        if not length:
            self.wfile.write(b"0\r\n\r\n")

    def _small(self, status: int, ctype: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        path = parts.path
        self.hits[path] += 1
        q = parse_qs(parts.query)
        size = int(q.get("size", ["1000"])[0])
        if path.startswith("/img/"):
            self._stream(size)
        elif path.startswith("/chunked/"):
            self._stream(size, length=False)
        elif path.startswith("/drop/"):
            self._stream(size, stop_after=size // 2)
        elif path.startswith("/status/"):
            code = int(path.rsplit("/", 1)[1])
            self._small(code, "application/xml", b"<Error><Code>AccessDenied</Code></Error>")
        elif path == "/html":
            self._small(200, "text/html; charset=utf-8", b"<html>login page</html>")
        elif path == "/octet/png":
            self._small(200, "application/octet-stream", PNG_MAGIC + b"rest-of-image")
        elif path == "/octet/text":
            self._small(200, "application/octet-stream", b"definitely not an image")
        elif path == "/jpeg":
            self._small(200, "image/jpeg", b"\xff\xd8\xff\xe0jpegdata")
        else:
            self._small(404, "text/plain", b"no route")


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # clients hanging up mid-body (the size-limit tests) are expected here


@pytest.fixture(scope="module")
def source() -> Iterator[str]:
    server = _QuietServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=httpx.Timeout(10.0)) as client:
        yield client


def _url(source: str, path: str, **params: int) -> str:
    extra = "".join(f"&{k}={v}" for k, v in params.items())
    return f"{source}{path}?{SECRET_QUERY}{extra}"


def _assert_no_secret(err: CopyError) -> None:
    for text in (str(err), repr(err), err.message, *map(str, err.args)):
        assert "Signature" not in text and "LTAIsecretkeyid" not in text and "c2VjcmV0" not in text
    # Nor in the chained exceptions a traceback would print.
    printed = "".join(traceback.format_exception(err))
    assert "Signature" not in printed and "LTAIsecretkeyid" not in printed


# ---------------------------------------------------------------------------------------------------------
# Success paths


def test_copy_streams_a_large_body_with_bounded_memory(s3_bucket: S3Bucket, source: str) -> None:
    size = 40 * MiB
    dest = s3_bucket.destination(
        "out", multipart_threshold=5 * MiB, multipart_chunksize=5 * MiB, max_concurrency=1
    )
    dest.put_bytes("warm-up", b"x")  # lazy boto3 set-up must not count
    with httpx.Client(timeout=30) as http:
        tracemalloc.start()
        try:
            base = tracemalloc.get_traced_memory()[0]
            outcome = copy_url(
                http, _url(source, "/img/big.png", size=size), dest, "j1/0.png", max_bytes=64 * MiB
            )
            peak = tracemalloc.get_traced_memory()[1] - base
        finally:
            tracemalloc.stop()
    assert outcome == "created"
    assert peak < size / 2, f"peak {peak / MiB:.1f} MiB for a {size / MiB:.0f} MiB body"
    stored = dest.get_bytes("j1/0.png")
    assert stored is not None and hashlib.sha256(stored).hexdigest() == _expected_sha256(size)
    head = dest.head("j1/0.png")
    assert head is not None and head["size"] == size and head["content_type"] == "image/png"


def test_copy_is_create_only_and_skips_the_download_when_stored(
    s3_bucket: S3Bucket, source: str, http: httpx.Client
) -> None:
    dest = s3_bucket.destination("runs")
    meta = {"job_id": "j2", "prompt": "换成蓝色背景", "request_id": "req-1"}
    url = _url(source, "/img/j2.png", size=300_000)
    assert copy_url(http, url, dest, "j2/0.png", metadata=meta) == "created"
    before = _Handler.hits["/img/j2.png"]
    # A rerun after the URL expired must still see the stored image, without touching the URL.
    assert copy_url(http, _url(source, "/status/403"), dest, "j2/0.png", metadata=meta) == "exists"
    assert _Handler.hits["/img/j2.png"] == before
    head = dest.head("j2/0.png")
    assert head is not None and head["metadata"] == meta and head["size"] == 300_000


def test_copy_race_with_another_writer_answers_exists(
    s3_bucket: S3Bucket, source: str, http: httpx.Client
) -> None:
    dest = s3_bucket.destination()
    dest.put_bytes("j3/0.png", b"written by someone else", "image/png")
    url = _url(source, "/img/j3.png", size=1000)
    assert copy_url(http, url, dest, "j3/0.png", check_existing=False) == "exists"
    assert dest.get_bytes("j3/0.png") == b"written by someone else"


def test_copy_without_content_length_streams_too(
    s3_bucket: S3Bucket, source: str, http: httpx.Client
) -> None:
    dest = s3_bucket.destination()
    assert copy_url(http, _url(source, "/chunked/a.png", size=700_000), dest, "c.png") == "created"
    stored = dest.get_bytes("c.png")
    assert stored is not None and hashlib.sha256(stored).hexdigest() == _expected_sha256(700_000)


def test_copy_keeps_the_sources_image_type(tmp_path: Path, source: str, http: httpx.Client) -> None:
    dest = LocalDestination(tmp_path)
    assert copy_url(http, _url(source, "/jpeg"), dest, "a.jpg") == "created"
    head = dest.head("a.jpg")
    assert head is not None and head["content_type"] == "image/jpeg"


def test_copy_accepts_octet_stream_that_is_really_an_image(
    tmp_path: Path, source: str, http: httpx.Client
) -> None:
    dest = LocalDestination(tmp_path)
    assert copy_url(http, _url(source, "/octet/png"), dest, "a.png", content_type="image/png") == "created"
    assert dest.get_bytes("a.png") == PNG_MAGIC + b"rest-of-image"
    head = dest.head("a.png")
    assert head is not None and head["content_type"] == "image/png"


# ---------------------------------------------------------------------------------------------------------
# Failure classification (and no credentials in any message)


@pytest.mark.parametrize("status", [403, 404])
def test_forbidden_or_missing_source_means_expired(
    tmp_path: Path, source: str, http: httpx.Client, status: int
) -> None:
    with pytest.raises(CopyError) as info:
        copy_url(http, _url(source, f"/status/{status}"), LocalDestination(tmp_path), "a.png")
    err = info.value
    assert err.expired and not err.retryable and err.where == "source"
    assert str(status) in str(err)
    _assert_no_secret(err)


@pytest.mark.parametrize("status", [500, 503, 429])
def test_server_errors_are_retryable(tmp_path: Path, source: str, http: httpx.Client, status: int) -> None:
    with pytest.raises(CopyError) as info:
        copy_url(http, _url(source, f"/status/{status}"), LocalDestination(tmp_path), "a.png")
    assert info.value.retryable and not info.value.expired
    _assert_no_secret(info.value)


def test_unreachable_source_is_retryable(tmp_path: Path, http: httpx.Client) -> None:
    port = free_port()  # nothing listens here
    with pytest.raises(CopyError) as info:
        copy_url(http, f"http://127.0.0.1:{port}/x.png?{SECRET_QUERY}", LocalDestination(tmp_path), "a.png")
    assert info.value.retryable and not info.value.expired
    _assert_no_secret(info.value)


def test_connection_dropped_mid_body_is_retryable_and_stores_nothing(
    s3_bucket: S3Bucket, source: str, http: httpx.Client
) -> None:
    dest = s3_bucket.destination(multipart_threshold=5 * MiB, multipart_chunksize=5 * MiB)
    with pytest.raises(CopyError) as info:
        copy_url(http, _url(source, "/drop/x.png", size=12 * MiB), dest, "d.png")
    assert info.value.retryable
    _assert_no_secret(info.value)
    assert not dest.exists("d.png")
    assert s3_bucket.client.list_multipart_uploads(Bucket=s3_bucket.bucket).get("Uploads", []) == []


def test_body_over_the_limit_by_content_length_is_refused_before_download(
    tmp_path: Path, source: str, http: httpx.Client
) -> None:
    with pytest.raises(CopyError) as info:
        copy_url(
            http,
            _url(source, "/img/huge.png", size=5 * MiB),
            LocalDestination(tmp_path),
            "a.png",
            max_bytes=MiB,
        )
    assert not info.value.retryable and not info.value.expired
    assert "limit" in str(info.value)
    _assert_no_secret(info.value)
    assert not (tmp_path / "a.png").exists()


@pytest.mark.parametrize("make_dest", ["local", "s3"])
def test_body_over_the_limit_without_content_length_is_cut_off(
    tmp_path: Path, s3_bucket: S3Bucket, source: str, http: httpx.Client, make_dest: str
) -> None:
    dest = LocalDestination(tmp_path) if make_dest == "local" else s3_bucket.destination()
    with pytest.raises(CopyError) as info:
        copy_url(http, _url(source, "/chunked/huge.png", size=3 * MiB), dest, "a.png", max_bytes=MiB)
    assert not info.value.retryable
    _assert_no_secret(info.value)
    assert not dest.exists("a.png")
    assert list(dest.list_keys()) == []


@pytest.mark.parametrize("path", ["/html", "/octet/text"])
def test_non_image_bodies_are_refused(tmp_path: Path, source: str, http: httpx.Client, path: str) -> None:
    dest = LocalDestination(tmp_path)
    with pytest.raises(CopyError, match="not an image") as info:
        copy_url(http, _url(source, path), dest, "a.png")
    assert not info.value.retryable
    _assert_no_secret(info.value)
    assert not dest.exists("a.png")


def test_store_refusing_the_write_is_a_destination_error(
    s3_bucket: S3Bucket, source: str, http: httpx.Client
) -> None:
    wrong = boto3.Session(
        aws_access_key_id="test", aws_secret_access_key="not-the-secret", region_name="us-east-1"
    )
    dest = S3Destination(s3_bucket.bucket, settings=s3_bucket.settings, session=wrong)
    with pytest.raises(CopyError) as info:
        copy_url(http, _url(source, "/img/x.png", size=1000), dest, "a.png")
    err = info.value
    assert err.where == "dest" and not err.retryable and not err.expired
    assert "not-the-secret" not in str(err)
    _assert_no_secret(err)
    assert s3_bucket.keys() == []


def test_unreachable_store_is_a_retryable_destination_error(
    tmp_path: Path, source: str, http: httpx.Client
) -> None:
    port = free_port()  # nothing listens here
    settings = S3Settings(endpoint_url=f"http://127.0.0.1:{port}", addressing_style="path", max_attempts=1)
    session = boto3.Session(aws_access_key_id="a", aws_secret_access_key="b", region_name="us-east-1")
    dest = S3Destination("bucket", settings=settings, session=session)
    with pytest.raises(CopyError) as info:
        copy_url(http, _url(source, "/img/x.png", size=1000), dest, "a.png")
    assert info.value.where == "dest" and info.value.retryable
    _assert_no_secret(info.value)


class _FailingStore(LocalDestination):
    """A local destination whose writes fail with a given exception."""

    def __init__(self, root: Path, exc: BaseException) -> None:
        super().__init__(root)
        self.exc = exc

    def put_create_only(self, *args: object, **kwargs: object) -> PutOutcome:
        raise self.exc


@pytest.mark.parametrize(
    ("exc", "retryable"),
    [
        (ConnectionResetError(errno.ECONNRESET, "reset by peer"), True),
        (OSError(errno.ENOSPC, "No space left on device"), False),
        (PermissionError(errno.EACCES, "Permission denied"), False),
    ],
    ids=["network reset", "disk full", "permission denied"],
)
def test_a_destination_failure_is_retryable_only_if_it_is_an_outage(
    tmp_path: Path, source: str, http: httpx.Client, exc: BaseException, retryable: bool
) -> None:
    with pytest.raises(CopyError) as info:
        copy_url(http, _url(source, "/img/x.png", size=1000), _FailingStore(tmp_path, exc), "a.png")
    assert info.value.where == "dest" and info.value.retryable is retryable
    _assert_no_secret(info.value)


def test_a_bug_in_the_destination_surfaces_as_itself_not_as_a_copy_failure(
    tmp_path: Path, source: str, http: httpx.Client
) -> None:
    store = _FailingStore(tmp_path, TypeError("unsupported operand type(s)"))
    with pytest.raises(TypeError, match="unsupported operand"):
        copy_url(http, _url(source, "/img/x.png", size=1000), store, "a.png")
