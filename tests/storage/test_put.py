"""PutWriter, the single-request write path of S3 destinations: the same request as ``put_object``, the
same retries and the same errors, against SeaweedFS and moto (TLS: tests/storage/test_seaweed_server.py)."""

from __future__ import annotations

import dataclasses
import datetime
import io
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from unittest import mock

import boto3
import botocore.exceptions
import botocore.session
import pytest
from botocore.auth import S3SigV4Auth
from botocore.config import Config
from botocore.credentials import Credentials, RefreshableCredentials

from qwenedit.errors import is_transient_storage_error, s3_error_code, s3_reason, s3_status
from qwenedit.storage import MiB, S3Destination, S3Settings, encode_metadata, make_s3_client
from qwenedit.storage.put import PutWriter, _Headers, _Request, _S3SigV4Auth
from tests.fixtures.s3 import S3Bucket
from tests.storage.answers import Answers, error, error_body, response, stable_headers

# ---------------------------------------------------------------------------------------------------------
# The request (pure: no store)


def _writer(**settings: Any) -> PutWriter:
    session = boto3.Session(aws_access_key_id="AKIDTEST", aws_secret_access_key="not-a-secret")
    return PutWriter(make_s3_client(S3Settings(**settings), session=session))


@pytest.mark.parametrize(
    ("settings", "base"),
    [
        ({"endpoint_url": "http://127.0.0.1:9000"}, "http://127.0.0.1:9000/my-bucket/"),
        (
            {"endpoint_url": "http://s3.example.test:9000", "addressing_style": "path"},
            "http://s3.example.test:9000/my-bucket/",
        ),
        (
            {"endpoint_url": "https://s3.example.test", "addressing_style": "virtual"},
            "https://my-bucket.s3.example.test/",
        ),
    ],
    ids=["ip-auto-is-path", "path", "virtual"],
)
def test_bucket_url_and_signing_scope_come_from_the_clients_endpoint_resolution(
    settings: dict[str, Any], base: str
) -> None:
    writer = _writer(region="eu-west-1", **settings)
    assert writer._bucket("my-bucket") == (base, "eu-west-1", "s3")


def _signed(auth_cls: type[S3SigV4Auth], url: str, trailer: bool, token: str | None) -> dict[str, str]:
    headers = {
        "Content-Type": "image/png",
        "If-None-Match": "*",
        "x-amz-meta-job": "j1",
        "Expect": "100-continue",
    }
    where = "trailer" if trailer else "header"
    context = {
        "client_config": Config(),
        "has_streaming_input": True,
        "checksum": {
            "request_algorithm": {"in": where, "name": "x-amz-checksum-crc32", "algorithm": "crc32"}
        },
    }
    if trailer:
        headers["Content-Encoding"] = "aws-chunked"
    else:
        headers["x-amz-checksum-crc32"] = "AAAAAA=="
    request = _Request(url, b"body bytes", _Headers(headers), context)
    auth_cls(Credentials("AKIDTEST", "not-a-secret", token), "s3", "us-east-1").add_auth(request)
    return dict(request.headers)


@pytest.mark.parametrize("trailer", [False, True])
@pytest.mark.parametrize("token", [None, "session-token"])
@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:8333/b/k%20ey.png", "https://b.s3.example.test/a/b~c.json"]
)
def test_the_signature_is_botocores_own(url: str, trailer: bool, token: str | None) -> None:
    at = datetime.datetime(2026, 12, 6, 17, 0, 0)
    with mock.patch("botocore.auth.get_current_datetime", return_value=at):
        ours = _signed(_S3SigV4Auth, url, trailer, token)
        botocores = _signed(S3SigV4Auth, url, trailer, token)
    assert ours == botocores
    assert "Signature=" in ours["Authorization"]


def test_headers_ignore_case_like_botocores() -> None:
    headers = _Headers({"Content-Type": "a"})
    assert (
        "content-type" in headers
        and headers["CONTENT-TYPE"] == "a"
        and headers.get_all("content-type") == ["a"]
    )
    headers["content-type"] = "b"
    assert dict(headers) == {"content-type": "b"}
    del headers["Content-Type"]
    assert "Content-Type" not in headers and headers.get("content-type", "none") == "none"


# ---------------------------------------------------------------------------------------------------------
# Against SeaweedFS


def _record(client: Any) -> Answers:
    return Answers().install(client)


@pytest.mark.parametrize("checksum_mode", ["when_supported", "when_required"])
def test_the_writer_sends_what_put_object_sends(s3_bucket: S3Bucket, checksum_mode: str) -> None:
    dest = s3_bucket.destination(checksum_mode=checksum_mode)
    seen = _record(dest.client)
    meta = encode_metadata({"prompt": "换成夜景", "job-id": "j1"})
    body = os.urandom(60_000)
    dest.client.put_object(
        Bucket=s3_bucket.bucket,
        Key="by-client.png",
        Body=body,
        ContentType="image/png",
        Metadata=meta,
        IfNoneMatch="*",
    )
    dest.writer.put(s3_bucket.bucket, "by-writer.png", body, "image/png", meta, create_only=True)
    by_client, by_writer = (stable_headers(h) for h in seen.seen)
    assert by_writer == by_client
    assert by_writer["if-none-match"] == "*" and by_writer["x-amz-meta-job-id"] == "j1"
    assert ("x-amz-checksum-crc32" in by_writer) == (checksum_mode == "when_supported")
    for key in ("by-client.png", "by-writer.png"):
        head = dest.head(key)
        assert head is not None and head["metadata"] == {"prompt": "换成夜景", "job-id": "j1"}
        assert head["content_type"] == "image/png" and dest.get_bytes(key) == body


def test_create_only_on_an_existing_key_is_a_412_precondition_failed(s3_bucket: S3Bucket) -> None:
    dest = s3_bucket.destination()
    seen = _record(dest.client)
    dest.writer.put(s3_bucket.bucket, "k.json", b"1", "application/json", create_only=True)
    with pytest.raises(botocore.exceptions.ClientError) as info:
        dest.writer.put(s3_bucket.bucket, "k.json", b"2", "application/json", create_only=True)
    assert (s3_error_code(info.value), s3_status(info.value)) == ("PreconditionFailed", 412)
    assert len(seen.seen) == 2  # not retried
    dest.writer.put(s3_bucket.bucket, "k.json", b"3", "application/json")  # a plain put overwrites
    assert dest.get_bytes("k.json") == b"3"


def test_a_5xx_is_retried_then_succeeds(s3_bucket: S3Bucket) -> None:
    dest = s3_bucket.destination(max_attempts=3)
    seen = Answers(error(500, "InternalError"), error(503, "SlowDown")).install(dest.client)
    assert dest.put_bytes("r.json", b"{}", "application/json", overwrite=False) == "created"
    assert len(seen.seen) == 3
    assert dest.get_bytes("r.json") == b"{}"


def test_a_200_carrying_an_error_is_retried_like_a_500(s3_bucket: S3Bucket) -> None:
    dest = s3_bucket.destination(max_attempts=2)
    seen = Answers(response(200, error_body("InternalError", "late failure"))).install(dest.client)
    dest.put_bytes("late.json", b"{}", "application/json")
    assert len(seen.seen) == 2
    assert dest.get_bytes("late.json") == b"{}"


def test_retries_stop_after_max_attempts_with_the_stores_error(s3_bucket: S3Bucket) -> None:
    dest = s3_bucket.destination(max_attempts=2)
    seen = Answers(forever=error(503, "ServiceUnavailable", "down")).install(dest.client)
    with pytest.raises(botocore.exceptions.ClientError) as info:
        dest.put_create_only("o.png", io.BytesIO(b"png"), "image/png", size=3)
    assert (s3_error_code(info.value), s3_status(info.value)) == ("ServiceUnavailable", 503)
    assert is_transient_storage_error(info.value)
    assert len(seen.seen) == 2
    assert s3_bucket.keys() == []


def test_a_missing_bucket_is_reported_by_code_and_not_retried(moto_s3: Any) -> None:
    # moto, not SeaweedFS: SeaweedFS creates a missing bucket on the first PUT.
    dest = S3Destination(
        "no-such-bucket-put", settings=moto_s3.settings(max_attempts=3), session=moto_s3.session()
    )
    seen = _record(dest.client)
    with pytest.raises(botocore.exceptions.ClientError) as info:
        dest.put_bytes("a.json", b"{}")
    assert s3_error_code(info.value) == "NoSuchBucket" and s3_reason(info.value) == "no such bucket"
    assert isinstance(info.value, dest.client.exceptions.NoSuchBucket)
    assert not is_transient_storage_error(info.value)
    assert len(seen.seen) == 1


def test_refused_credentials_are_not_retried_and_the_secret_stays_out(s3_bucket: S3Bucket) -> None:
    bad = boto3.Session(
        aws_access_key_id="test", aws_secret_access_key="wrong-secret-put", region_name="us-east-1"
    )
    settings = s3_bucket.server.settings(max_attempts=3)
    dest = S3Destination(s3_bucket.bucket, settings=settings, session=bad)
    seen = _record(dest.client)
    with pytest.raises(botocore.exceptions.ClientError) as info:
        dest.put_create_only("x.png", io.BytesIO(b"x"), "image/png")
    assert s3_status(info.value) == 403
    assert not is_transient_storage_error(info.value)
    assert len(seen.seen) == 1
    assert "wrong-secret-put" not in f"{info.value} {info.value.response}"
    assert all("wrong-secret-put" not in str(v) for h in seen.seen for v in h.values())


def test_an_unreachable_store_is_a_transient_connection_error_after_the_retries(s3_bucket: S3Bucket) -> None:
    from devkit.procs import free_port

    closed = f"http://127.0.0.1:{free_port()}"
    settings = dataclasses.replace(s3_bucket.server.settings(max_attempts=2), endpoint_url=closed)
    dest = S3Destination(s3_bucket.bucket, settings=settings, session=s3_bucket.server.session())
    seen = _record(dest.client)
    with pytest.raises(botocore.exceptions.EndpointConnectionError) as info:
        dest.put_bytes("a.json", b"{}")
    assert is_transient_storage_error(info.value)
    assert len(seen.seen) == 2


def test_refreshable_credentials_are_refreshed_when_they_expire(s3_bucket: S3Bucket) -> None:
    good = s3_bucket.server.session().get_credentials().get_frozen_credentials()
    refreshed: list[int] = []

    def refresh() -> dict[str, Any]:
        refreshed.append(1)
        later = datetime.datetime.now(datetime.UTC) + datetime.timedelta(hours=1)
        return {
            "access_key": good.access_key,
            "secret_key": good.secret_key,
            "token": None,
            "expiry_time": later.isoformat(),
        }

    expired = (datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=5)).isoformat()
    stale = {
        "access_key": good.access_key,
        "secret_key": "stale-secret",
        "token": None,
        "expiry_time": expired,
    }
    core = botocore.session.get_session()
    core._credentials = RefreshableCredentials.create_from_metadata(stale, refresh, "test")
    session = boto3.Session(botocore_session=core, region_name="us-east-1")
    dest = S3Destination(s3_bucket.bucket, settings=s3_bucket.settings, session=session)
    assert dest.put_bytes("fresh.json", b"{}", overwrite=False) == "created"
    assert refreshed
    assert dest.get_bytes("fresh.json") == b"{}"


def test_a_body_of_a_mebibyte_or_more_waits_for_100_continue(s3_bucket: S3Bucket) -> None:
    dest = s3_bucket.destination()
    seen = _record(dest.client)
    big, small = os.urandom(2 * MiB), b"x"
    assert dest.put_create_only("big.png", io.BytesIO(big), "image/png") == "created"
    assert dest.put_create_only("small.png", io.BytesIO(small), "image/png") == "created"
    assert [h.get("Expect") for h in seen.seen] == ["100-continue", None]
    assert dest.get_bytes("big.png") == big


def test_one_writer_serves_many_threads(s3_bucket: S3Bucket) -> None:
    dest = s3_bucket.destination("t")
    with ThreadPoolExecutor(8) as pool:
        outcomes = list(
            pool.map(lambda i: dest.put_bytes(f"{i}.json", b"%d" % i, overwrite=False), range(40))
        )
    assert outcomes == ["created"] * 40
    assert sorted(s3_bucket.keys()) == sorted(f"t/{i}.json" for i in range(40))


# ---------------------------------------------------------------------------------------------------------
# moto


def test_moto_create_only_metadata_and_exists(moto_bucket: S3Bucket) -> None:
    dest = moto_bucket.destination("w")
    meta = {"prompt": "红色的车", "output-index": "1"}
    data = os.urandom(20_000)
    assert dest.put_create_only("j/1.png", io.BytesIO(data), "image/png", meta, size=len(data)) == "created"
    assert dest.put_create_only("j/1.png", io.BytesIO(b"x"), "image/png", meta, size=1) == "exists"
    assert dest.put_bytes("j/done.json", b"{}", "application/json") == "created"
    head = dest.head("j/1.png")
    assert head is not None and head["metadata"] == meta and head["size"] == len(data)
    assert dest.get_bytes("j/1.png") == data
