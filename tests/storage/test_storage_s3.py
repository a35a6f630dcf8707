"""S3Settings, the client factory and S3Destination, against a real SeaweedFS server (and moto)."""

from __future__ import annotations

import io
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import boto3
import botocore.exceptions
import pytest

from qwenedit.storage import (
    ConditionalWritesUnsupported,
    InvalidKey,
    LocalDestination,
    MiB,
    S3Destination,
    S3Settings,
    StorageError,
    decode_metadata,
    encode_metadata,
    make_s3_client,
    open_destination,
    parse_size,
)
from tests.fixtures.s3 import S3Bucket
from tests.storage.answers import Answers, conditional, error, response

# ---------------------------------------------------------------------------------------------------------
# Settings (pure)


def test_settings_defaults_suit_aws_and_modern_stores() -> None:
    s = S3Settings.from_env({})
    assert s.endpoint_url is None  # boto3 resolves AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL itself
    assert s.addressing_style == "auto"
    assert s.signature_version == "s3v4"
    assert s.checksum_mode == "when_supported"
    assert s.conditional_writes is True
    assert s.multipart_threshold == 16 * MiB and s.multipart_chunksize == 8 * MiB
    assert s.max_attempts == 3  # botocore's tries per request, the first included


def test_settings_read_every_qwenedit_variable() -> None:
    s = S3Settings.from_env(
        {
            "QWENEDIT_S3_REGION": "cn-hangzhou",
            "QWENEDIT_S3_ADDRESSING_STYLE": "Virtual",
            "QWENEDIT_S3_SIGNATURE_VERSION": "s3",
            "QWENEDIT_S3_CHECKSUM_MODE": "when_required",
            "QWENEDIT_S3_CONDITIONAL_WRITES": "off",
            "QWENEDIT_S3_MULTIPART_THRESHOLD": "32MiB",
            "QWENEDIT_S3_MULTIPART_CHUNKSIZE": "6 M",
            "QWENEDIT_S3_MAX_CONCURRENCY": "2",
            "QWENEDIT_S3_MAX_POOL_CONNECTIONS": "64",
        }
    )
    assert (s.region, s.addressing_style, s.signature_version) == ("cn-hangzhou", "virtual", "s3")
    assert s.checksum_mode == "when_required" and s.conditional_writes is False
    assert (s.multipart_threshold, s.multipart_chunksize) == (32 * MiB, 6 * MiB)
    assert (s.max_concurrency, s.max_pool_connections) == (2, 64)


@pytest.mark.parametrize(
    "env",
    [
        {"QWENEDIT_S3_ADDRESSING_STYLE": "sideways"},
        {"QWENEDIT_S3_CHECKSUM_MODE": "always"},
        {"QWENEDIT_S3_CONDITIONAL_WRITES": "maybe"},
        {"QWENEDIT_S3_MULTIPART_CHUNKSIZE": "1MiB"},
        {"QWENEDIT_S3_MULTIPART_THRESHOLD": "lots"},
    ],
)
def test_settings_reject_invalid_values(env: dict[str, str]) -> None:
    with pytest.raises(ValueError):
        S3Settings.from_env(env)


def test_settings_refuse_zero_attempts() -> None:
    with pytest.raises(ValueError, match="max_attempts"):
        S3Settings(max_attempts=0)


def test_parse_size_accepts_bytes_and_binary_suffixes() -> None:
    assert parse_size("1024") == 1024
    assert parse_size("8MiB") == parse_size("8M") == parse_size("8 mb") == 8 * MiB
    assert parse_size("1GiB") == 1024 * MiB


def test_settings_repr_hides_credentials_in_endpoint() -> None:
    s = S3Settings(endpoint_url="https://AKIAXXXX:supersecret@s3.example.com:9000")
    text = repr(s) + str(s)
    assert "supersecret" not in text and "AKIAXXXX" not in text
    assert "s3.example.com:9000" in text


def test_client_applies_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret-value-123")
    client = make_s3_client(
        S3Settings(region="eu-central-1", addressing_style="virtual", checksum_mode="when_required")
    )
    cfg: Any = client.meta.config  # botocore sets these attributes dynamically
    assert client.meta.endpoint_url == "http://127.0.0.1:1"  # picked up from AWS_ENDPOINT_URL_S3
    assert client.meta.region_name == "eu-central-1"
    assert cfg.s3 == {"addressing_style": "virtual"}
    assert cfg.signature_version == "s3v4"
    assert cfg.request_checksum_calculation == "when_required"
    assert cfg.response_checksum_validation == "when_required"
    assert "secret-value-123" not in repr(client)


def test_client_uses_standard_retries_with_max_attempts_tries_in_all() -> None:
    client = make_s3_client(S3Settings(endpoint_url="http://127.0.0.1:1", max_attempts=3), session=_session())
    cfg: Any = client.meta.config
    assert cfg.retries == {"mode": "standard", "total_max_attempts": 3}


class _Always500(BaseHTTPRequestHandler):
    """An S3 endpoint that answers every request with 500 InternalError, and counts them."""

    requests = 0

    def _answer(self) -> None:
        type(self).requests += 1
        body = b"<?xml version='1.0'?><Error><Code>InternalError</Code><Message>x</Message></Error>"
        self.send_response(500)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_PUT = do_HEAD = _answer

    def log_message(self, *args: Any) -> None:
        pass


@pytest.mark.parametrize("max_attempts", [1, 3])
def test_botocore_tries_a_failing_request_exactly_max_attempts_times(max_attempts: int) -> None:
    # One retry layer inside the client, bounded: the run's storage retries wrap this, never multiply it.
    _Always500.requests = 0
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Always500)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        settings = S3Settings(
            endpoint_url=f"http://127.0.0.1:{server.server_address[1]}",
            addressing_style="path",
            max_attempts=max_attempts,
        )
        client = make_s3_client(settings, session=_session())
        with pytest.raises(botocore.exceptions.ClientError) as info:
            client.get_object(Bucket="b", Key="k")
    finally:
        server.shutdown()
        server.server_close()
    assert info.value.response["Error"]["Code"] == "InternalError"
    assert _Always500.requests == max_attempts


def _session() -> boto3.Session:
    return boto3.Session(aws_access_key_id="a", aws_secret_access_key="b", region_name="us-east-1")


def test_presigned_urls_are_sigv4_in_us_east_1(seaweed: Any) -> None:
    # boto3 would presign SigV2 in us-east-1 without the explicit s3v4 default.
    url = seaweed.client().generate_presigned_url("get_object", Params={"Bucket": "b-x", "Key": "k"})
    assert "X-Amz-Signature=" in url and "AWSAccessKeyId=" not in url


# ---------------------------------------------------------------------------------------------------------
# Metadata encoding (pure)


def test_metadata_ascii_values_are_stored_verbatim() -> None:
    meta = {"Job-Id": "row-7", "request_id": "abc-123", "model": "qwen-image-edit-plus"}
    assert encode_metadata(meta) == {
        "job-id": "row-7",
        "request_id": "abc-123",
        "model": "qwen-image-edit-plus",
    }


@pytest.mark.parametrize(
    "value",
    ["把这只猫变成一只戴帽子的狗", "line1\nline2", " padded ", "café 100%", "UTF-8''looks-encoded", ""],
)
def test_metadata_unsafe_values_round_trip_through_ascii(value: str) -> None:
    encoded = encode_metadata({"prompt": value})["prompt"]
    assert encoded.isascii() and encoded.isprintable()
    assert decode_metadata({"prompt": encoded}) == {"prompt": value}


def test_metadata_over_the_2kib_budget_shortens_the_longest_value() -> None:
    prompt = "把背景换成海滩，保留人物的姿势和光线。" * 60  # ~1,100 characters, ~10 KB encoded
    encoded = encode_metadata({"prompt": prompt, "job_id": "row-42", "request_id": "7b1c-req"})
    assert sum(len(k) + len(v) for k, v in encoded.items()) <= 2048
    assert encoded["job_id"] == "row-42" and encoded["request_id"] == "7b1c-req"
    decoded = decode_metadata(encoded)["prompt"]
    assert decoded.endswith("…") and prompt.startswith(decoded[:-1]) and len(decoded) > 100


def test_metadata_that_cannot_fit_at_all_is_dropped_not_sent() -> None:
    encoded = encode_metadata({"a": "x" * 100, "b": "y" * 100}, budget=50)
    assert sum(len(k) + len(v) for k, v in encoded.items()) <= 50


def test_metadata_names_must_be_ascii_tokens() -> None:
    with pytest.raises(ValueError):
        encode_metadata({"提示": "x"})


# ---------------------------------------------------------------------------------------------------------
# open_destination


def test_open_destination_parses_s3_uri_literally(seaweed: Any) -> None:
    dest = open_destination("s3://my-bucket/runs/2026 01/", seaweed.settings(), session=seaweed.session())
    assert isinstance(dest, S3Destination)
    assert (dest.bucket, dest.prefix) == ("my-bucket", "runs/2026 01/")
    assert dest.uri("j1/0.png") == "s3://my-bucket/runs/2026 01/j1/0.png"


def test_open_destination_local_paths_and_file_uris(tmp_path: Any) -> None:
    a = open_destination(str(tmp_path / "out"))
    b = open_destination(f"file://{tmp_path}/out%20dir")
    assert isinstance(a, LocalDestination) and a.root == tmp_path / "out"
    assert isinstance(b, LocalDestination) and b.root == tmp_path / "out dir"


@pytest.mark.parametrize("uri", ["gs://bucket/x", "s3:///nobucket", "file://remote-host/x"])
def test_open_destination_refuses_unsupported_uris(uri: str) -> None:
    with pytest.raises(StorageError):
        open_destination(uri, S3Settings())


# ---------------------------------------------------------------------------------------------------------
# S3Destination on SeaweedFS


def test_create_only_put_keeps_the_first_object(s3_bucket: S3Bucket) -> None:
    dest = s3_bucket.destination("out")
    assert dest.put_create_only("j1/0.png", io.BytesIO(b"first"), "image/png", {"job": "j1"}) == "created"
    assert dest.put_create_only("j1/0.png", io.BytesIO(b"second"), "image/png", {"job": "other"}) == "exists"
    assert dest.get_bytes("j1/0.png") == b"first"
    head = dest.head("j1/0.png")
    assert head is not None and head["metadata"] == {"job": "j1"} and head["size"] == 5
    assert s3_bucket.keys() == ["out/j1/0.png"]


def test_create_only_multipart_upload_is_refused_when_key_exists(s3_bucket: S3Bucket) -> None:
    dest = s3_bucket.destination(multipart_threshold=5 * MiB, multipart_chunksize=5 * MiB)
    body = os.urandom(11 * MiB)
    assert dest.put_create_only("big.png", io.BytesIO(body), "image/png") == "created"
    assert dest.put_create_only("big.png", io.BytesIO(b"x" * 11 * MiB), "image/png") == "exists"
    assert dest.get_bytes("big.png") == body
    # The refused multipart upload was aborted, not left dangling.
    assert s3_bucket.client.list_multipart_uploads(Bucket=s3_bucket.bucket).get("Uploads", []) == []


def test_metadata_with_chinese_prompt_round_trips(s3_bucket: S3Bucket) -> None:
    dest = s3_bucket.destination()
    meta = {"prompt": "把背景换成海滩，保留人物", "job_id": "row-1", "note": "two\nlines"}
    assert dest.put_create_only("a.png", io.BytesIO(b"png"), "image/png", meta) == "created"
    head = dest.head("a.png")
    assert head is not None
    assert head["metadata"] == meta
    assert head["content_type"] == "image/png"
    # What the store holds is plain ASCII, readable by any S3 tool.
    raw = s3_bucket.client.head_object(Bucket=s3_bucket.bucket, Key="a.png")["Metadata"]
    assert all(v.isascii() for v in raw.values())
    assert raw["job_id"] == "row-1"


def test_long_chinese_prompt_does_not_break_the_upload(s3_bucket: S3Bucket) -> None:
    dest = s3_bucket.destination()
    prompt = "请把这张商品照片的背景换成纯白色，并保持阴影自然。" * 80
    assert (
        dest.put_create_only("p.png", io.BytesIO(b"png"), "image/png", {"prompt": prompt, "job": "j"})
        == "created"
    )
    head = dest.head("p.png")
    assert head is not None and head["metadata"]["job"] == "j"
    assert prompt.startswith(head["metadata"]["prompt"].rstrip("…"))


@pytest.mark.parametrize(
    ("prefix", "key"),
    [
        ("runs/2026-01 nightly", "job one/0.png"),
        ("a+b=c~d", "k+e=y~1.png"),
        ("输出/ünïcode", "作业-1/0.png"),
        ("", "odd !$&'()*,;@ chars.png"),
    ],
)
def test_unusual_key_characters_round_trip(s3_bucket: S3Bucket, prefix: str, key: str) -> None:
    dest = s3_bucket.destination(prefix)
    assert dest.put_create_only(key, io.BytesIO(b"data"), "image/png") == "created"
    assert dest.put_create_only(key, io.BytesIO(b"other"), "image/png") == "exists"
    assert dest.get_bytes(key) == b"data"
    assert dest.exists(key)
    assert list(dest.list_keys()) == [key]
    full = f"{prefix}/{key}" if prefix else key
    assert s3_bucket.keys() == [full]
    assert dest.uri(key) == f"s3://{s3_bucket.bucket}/{full}"


def test_list_keys_paginates_and_filters_by_prefix(s3_bucket: S3Bucket) -> None:
    dest = s3_bucket.destination("p")
    for i in range(23):
        dest.put_bytes(f"jobs/{i:03d}.json", b"{}", "application/json")
    dest.put_bytes("other/x.json", b"{}", "application/json")
    s3_bucket.client.put_object(Bucket=s3_bucket.bucket, Key="outside.json", Body=b"{}")

    calls: list[str] = []
    dest.listing_client.meta.events.register(
        "before-call.s3.ListObjectsV2", lambda **kw: calls.append("list")
    )
    keys = list(dest.list_keys("jobs/", page_size=5))
    assert keys == [f"jobs/{i:03d}.json" for i in range(23)]
    assert len(calls) == 5  # 23 keys, 5 per page
    assert list(dest.list_keys("oth")) == ["other/x.json"]
    assert len(list(dest.list_keys())) == 24


def test_put_bytes_overwrites_unless_told_not_to(s3_bucket: S3Bucket) -> None:
    dest = s3_bucket.destination("r")
    assert dest.put_bytes("summary.json", b"1", "application/json") == "created"
    assert dest.put_bytes("summary.json", b"2", "application/json") == "created"
    assert dest.get_bytes("summary.json") == b"2"
    assert dest.put_bytes("summary.json", b"3", "application/json", overwrite=False) == "exists"
    assert dest.get_bytes("summary.json") == b"2"
    head = dest.head("summary.json")
    assert head is not None and head["content_type"] == "application/json"


def test_missing_keys_read_as_none(s3_bucket: S3Bucket) -> None:
    dest = s3_bucket.destination("x")
    assert dest.get_bytes("nope.json") is None
    assert dest.head("nope.json") is None
    assert not dest.exists("nope.json")
    assert list(dest.list_keys()) == []


@pytest.mark.parametrize("key", ["../escape.png", "/abs.png", "a//b.png", "a/./b.png", "a/", "", "a/../../b"])
def test_keys_that_could_escape_the_prefix_are_refused(s3_bucket: S3Bucket, key: str) -> None:
    dest = s3_bucket.destination("safe")
    with pytest.raises(InvalidKey):
        dest.put_create_only(key, io.BytesIO(b"x"), "image/png")
    with pytest.raises(InvalidKey):
        dest.put_bytes(key, b"x")
    assert s3_bucket.keys() == []


def test_head_then_put_fallback_is_create_only_too(s3_bucket: S3Bucket) -> None:
    dest = s3_bucket.destination(conditional_writes=False)
    assert not dest.conditional_writes
    assert dest.put_create_only("k.png", io.BytesIO(b"one"), "image/png") == "created"
    assert dest.put_create_only("k.png", io.BytesIO(b"two"), "image/png") == "exists"
    assert dest.get_bytes("k.png") == b"one"


def test_conditional_header_never_leaks_onto_plain_writes(s3_bucket: S3Bucket) -> None:
    # put_bytes(overwrite=True) must really overwrite, even after conditional writes on the same destination.
    dest = s3_bucket.destination()
    dest.put_create_only("a.png", io.BytesIO(b"1"), "image/png")
    dest.put_bytes("state.json", b"1")
    assert dest.put_bytes("state.json", b"2") == "created"
    assert dest.get_bytes("state.json") == b"2"


def test_probe_detects_honoured_conditional_writes(s3_bucket: S3Bucket) -> None:
    dest = s3_bucket.destination("pre")
    assert dest.probe_conditional_writes() is True
    assert dest.conditional_writes
    assert s3_bucket.keys() == []  # the canary was cleaned up


def test_probe_falls_back_when_store_ignores_if_none_match(s3_bucket: S3Bucket) -> None:
    # Simulates rclone/JuiceFS, which silently overwrite: every create-only PUT is answered 200.
    dest = s3_bucket.destination()
    Answers(forever=response(200), when=conditional).install(dest.client)
    assert dest.probe_conditional_writes() is False
    assert not dest.conditional_writes
    assert dest.put_create_only("k.png", io.BytesIO(b"one"), "image/png") == "created"
    assert dest.put_create_only("k.png", io.BytesIO(b"two"), "image/png") == "exists"
    assert dest.get_bytes("k.png") == b"one"


_NOT_IMPLEMENTED = error(501, "NotImplemented", "If-None-Match not supported")


@pytest.mark.parametrize("streamed", [False, True], ids=["one-put", "s3transfer"])
def test_store_refusing_if_none_match_switches_to_head_then_put(s3_bucket: S3Bucket, streamed: bool) -> None:
    dest = s3_bucket.destination()
    for client in (dest.client, dest._cond_client()):
        Answers(forever=_NOT_IMPLEMENTED, when=conditional).install(client)

    def body(data: bytes) -> Any:  # a reader of unknown size goes through s3transfer
        return _Reader(data) if streamed else io.BytesIO(data)

    with pytest.raises(ConditionalWritesUnsupported, match="QWENEDIT_S3_CONDITIONAL_WRITES=off"):
        dest.put_create_only("s.png", body(b"s"), "image/png")
    assert not dest.conditional_writes
    assert s3_bucket.keys() == []
    assert dest.put_create_only("s.png", body(b"s"), "image/png") == "created"  # the retry
    assert dest.put_create_only("s.png", body(b"t"), "image/png") == "exists"
    assert dest.get_bytes("s.png") == b"s"


class _Reader:
    def __init__(self, data: bytes) -> None:
        self._body = io.BytesIO(data)

    def read(self, n: int = -1) -> bytes:
        return self._body.read(n)


def test_a_501_about_a_checksum_is_an_error_not_a_switch(s3_bucket: S3Bucket) -> None:
    dest = s3_bucket.destination()
    Answers(error(501, "NotImplemented", "x-amz-checksum-crc32 is not supported")).install(dest.client)
    with pytest.raises(botocore.exceptions.ClientError, match="NotImplemented"):
        dest.put_create_only("s.png", io.BytesIO(b"s"), "image/png")
    assert dest.conditional_writes


def test_put_bytes_create_only_retries_by_itself_after_the_switch(s3_bucket: S3Bucket) -> None:
    dest = s3_bucket.destination()
    Answers(forever=_NOT_IMPLEMENTED, when=conditional).install(dest.client)
    assert dest.put_bytes("done.json", b"1", "application/json", overwrite=False) == "created"
    assert dest.put_bytes("done.json", b"2", "application/json", overwrite=False) == "exists"
    assert dest.get_bytes("done.json") == b"1"


def test_conflicting_concurrent_write_is_exists_only_if_the_other_writer_won(s3_bucket: S3Bucket) -> None:
    dest = s3_bucket.destination()
    conflict = error(409, "ConditionalRequestConflict", "concurrent write")
    Answers(forever=conflict, when=conditional).install(dest.client)
    with pytest.raises(botocore.exceptions.ClientError, match="ConditionalRequestConflict"):
        dest.put_create_only("c.png", io.BytesIO(b"mine"), "image/png")  # nobody won: retry later
    dest.put_bytes("c.png", b"theirs", "image/png")  # the other writer lands
    assert dest.put_create_only("c.png", io.BytesIO(b"mine"), "image/png") == "exists"
    assert dest.get_bytes("c.png") == b"theirs"
    assert dest.conditional_writes


def test_missing_bucket_is_an_error_not_a_missing_key(seaweed: Any) -> None:
    dest = S3Destination("no-such-bucket-xyz", settings=seaweed.settings(), session=seaweed.session())
    with pytest.raises(botocore.exceptions.ClientError, match="NoSuchBucket"):
        dest.get_bytes("a.json")


def test_settings_from_environment_reach_the_store(s3_env: S3Bucket) -> None:
    # In-process pipeline runs build everything from os.environ.
    dest = open_destination(s3_env.uri("env-run"))
    assert isinstance(dest, S3Destination)
    assert dest.settings.addressing_style == "path"
    assert dest.put_bytes("ok.txt", b"ok", "text/plain") == "created"
    assert s3_env.keys() == ["env-run/ok.txt"]


def test_wrong_credentials_fail_loudly_without_echoing_the_secret(seaweed: Any) -> None:
    import boto3

    bad = boto3.Session(
        aws_access_key_id="test", aws_secret_access_key="wrong-secret-xyz", region_name="us-east-1"
    )
    dest = S3Destination("does-not-matter", settings=seaweed.settings(max_attempts=1), session=bad)
    with pytest.raises(botocore.exceptions.ClientError) as info:
        dest.put_bytes("x", b"x")
    assert "wrong-secret-xyz" not in str(info.value)


# ---------------------------------------------------------------------------------------------------------
# moto: the same settings work there too


def test_moto_create_only_and_metadata(moto_bucket: S3Bucket) -> None:
    dest = moto_bucket.destination("m")
    meta = {"prompt": "红色的车", "job": "j9"}
    assert dest.put_create_only("j9/0.png", io.BytesIO(b"one"), "image/png", meta) == "created"
    assert dest.put_create_only("j9/0.png", io.BytesIO(b"two"), "image/png", meta) == "exists"
    head = dest.head("j9/0.png")
    assert head is not None and head["metadata"] == meta
    assert list(dest.list_keys()) == ["j9/0.png"]


def test_moto_with_when_required_checksums_and_env_settings(
    moto_bucket: S3Bucket, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in moto_bucket.env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("QWENEDIT_S3_CHECKSUM_MODE", "when_required")
    dest = open_destination(moto_bucket.uri("req"))
    assert isinstance(dest, S3Destination)
    assert dest.settings.checksum_mode == "when_required"
    sent: list[dict[str, str]] = []
    dest.client.meta.events.register(
        "before-send.s3.PutObject", lambda request, **_: sent.append(dict(request.headers))
    )
    dest.put_bytes("a.json", b"{}", "application/json")
    assert not any(k.lower().startswith("x-amz-checksum") for k in sent[0])
    assert dest.get_bytes("a.json") == b"{}"
