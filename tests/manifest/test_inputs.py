"""Input references: parsing, the input root, data URIs, presigned S3 URLs, identities and deep checks."""

from __future__ import annotations

import base64
import hashlib
import io
import os
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from qwenedit.errors import InputError
from qwenedit.inputs import (
    MAX_DATA_URI_BYTES,
    InputResolver,
    data_uri_for,
    inspect_image,
    parse_reference,
    sniff_image_format,
)
from qwenedit.jobs import Job
from qwenedit.testing.procs import free_port
from tests.manifest.conftest import FakeWeb, Route, bomb_png, image_bytes

FORMATS = [
    ("PNG", "png"),
    ("JPEG", "jpeg"),
    ("BMP", "bmp"),
    ("TIFF", "tiff"),
    ("WEBP", "webp"),
    ("GIF", "gif"),
]


@pytest.mark.parametrize(("pillow", "expected"), FORMATS)
def test_every_accepted_format_is_recognised_by_content(pillow: str, expected: str) -> None:
    data = image_bytes(400, 400, pillow)
    assert sniff_image_format(data) == expected
    info = inspect_image(data)
    assert (info.format, info.width, info.height, info.warnings) == (expected, 400, 400, ())


@pytest.mark.parametrize("data", [b"", b"hello", b"%PDF-1.7", b"\x00" * 64, b"RIFF\x00\x00\x00\x00WAVE"])
def test_non_images_are_not_sniffed_as_images(data: bytes) -> None:
    assert sniff_image_format(data) is None


@pytest.mark.parametrize(
    ("ref", "kind", "location"),
    [
        ("https://cdn.example.com/a.png?x=1", "url", "https://cdn.example.com/a.png?x=1"),
        ("HTTP://example.com/a.png", "url", "HTTP://example.com/a.png"),
        ("s3://bucket/path/to/a.png", "s3", "s3://bucket/path/to/a.png"),
        ("file:///data/a%20b.png", "local", "/data/a b.png"),
        ("file://localhost/data/a.png", "local", "/data/a.png"),
        ("images/a.png", "local", "images/a.png"),
        ("  images/a.png  ", "local", "images/a.png"),
        ("C:\\photos\\a.png", "local", "C:\\photos\\a.png"),
        ("data:image/png;base64,iVBORw0KGgo=", "data", "data:image/png;base64,iVBORw0KGgo="),
    ],
)
def test_references_are_classified_by_syntax(ref: str, kind: str, location: str) -> None:
    parsed = parse_reference(ref)
    assert (parsed.kind, parsed.location) == (kind, location)


@pytest.mark.parametrize(
    ("ref", "reason"),
    [
        ("", "image reference is empty"),
        ("https:///a.png", 'URL "https:///a.png" has no host'),
        (
            "https://example.com/a b.png",
            'URL "https://example.com/a b.png" contains spaces; write them as %20',
        ),
        ("s3://bucket", '"s3://bucket" is not an S3 object: write s3://bucket/path/to/image.png'),
        (
            "s3://bucket/folder/",
            '"s3://bucket/folder/" is not an S3 object: write s3://bucket/path/to/image.png',
        ),
        (
            "file://server/share/a.png",
            "file URL \"file://server/share/a.png\" names host 'server'; write file:///absolute/path",
        ),
        (
            "ftp://host/a.png",
            '"ftp://host/a.png": ftp:// references are not supported; '
            "use https://, s3://, a local path or a data: URI",
        ),
        (
            "data:text/plain;base64,aGk=",
            "data URI type 'text/plain' is not an image type (image/png, image/jpeg, …)",
        ),
        ("data:image/png,rawbytes", "data URI must be base64-encoded: data:image/png;base64,..."),
        ("data:nonsense", '"data:nonsense,… (13 bytes)" is not a data URI: write data:image/png;base64,...'),
    ],
)
def test_malformed_references_are_refused_with_a_reason(ref: str, reason: str) -> None:
    with pytest.raises(InputError) as err:
        parse_reference(ref)
    assert err.value.reason == reason


def test_local_file_becomes_a_data_uri_typed_by_content_not_name(tmp_path: Path) -> None:
    data = image_bytes(400, 400, "PNG")
    (tmp_path / "photo.jpg").write_bytes(data)  # a PNG wearing a .jpg name
    resolver = InputResolver(manifest_dir=tmp_path)
    uri = resolver.resolve("photo.jpg")
    assert uri.startswith("data:image/png;base64,")
    assert base64.b64decode(uri.split(",", 1)[1]) == data
    assert resolver.resolve(f"file://{tmp_path / 'photo.jpg'}") == uri


def test_urls_and_data_uris_pass_through_untouched(tmp_path: Path) -> None:
    resolver = InputResolver(manifest_dir=tmp_path)
    assert resolver.resolve("https://example.com/a.png") == "https://example.com/a.png"
    uri = data_uri_for(image_bytes(), "png")
    assert resolver.resolve(uri) == uri


@pytest.mark.parametrize("ref", ["../secret.png", "/etc/passwd", "sub/../../x.png", "~/x.png"])
def test_local_reads_outside_the_input_root_are_refused(tmp_path: Path, ref: str) -> None:
    root = tmp_path / "root"
    root.mkdir()
    resolver = InputResolver(manifest_dir=root)
    with pytest.raises(InputError, match="is outside the input root"):
        resolver.resolve(ref)


def test_symlinks_out_of_the_root_are_refused_but_symlinks_inside_it_work(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "real").mkdir(parents=True)
    (root / "real" / "a.png").write_bytes(image_bytes())
    (tmp_path / "secret.png").write_bytes(image_bytes())
    (root / "inside.png").symlink_to(root / "real" / "a.png")
    (root / "escape.png").symlink_to(tmp_path / "secret.png")
    resolver = InputResolver(manifest_dir=root)
    assert resolver.resolve("inside.png").startswith("data:image/png;base64,")
    with pytest.raises(InputError, match=r"outside the input root .* \(after following symlinks\)"):
        resolver.resolve("escape.png")
    with pytest.raises(InputError, match="after following symlinks"):
        resolver.identity("escape.png")


def test_input_root_can_be_wider_than_the_manifest_folder(tmp_path: Path) -> None:
    (tmp_path / "shared").mkdir()
    (tmp_path / "shared" / "a.png").write_bytes(image_bytes())
    (tmp_path / "manifests").mkdir()
    narrow = InputResolver(manifest_dir=tmp_path / "manifests")
    wide = InputResolver(manifest_dir=tmp_path / "manifests", input_root=tmp_path)
    with pytest.raises(InputError):
        narrow.resolve("../shared/a.png")
    assert wide.resolve("../shared/a.png").startswith("data:image/png")


def _file_with_uri_length(path: Path, uri_length: int) -> None:
    """Write a PNG padded so its data URI is exactly ``uri_length`` bytes."""
    prefix = len("data:image/png;base64,")
    raw = (uri_length - prefix) // 4 * 3
    head = image_bytes(8, 8)
    path.write_bytes(head + b"\0" * (raw - len(head)))
    assert len(data_uri_for(path.read_bytes(), "png")) == uri_length


def test_data_uri_limit_is_10_mib_of_the_whole_uri_and_the_error_names_the_row(tmp_path: Path) -> None:
    prefix = len("data:image/png;base64,")
    at_limit = MAX_DATA_URI_BYTES - (MAX_DATA_URI_BYTES - prefix) % 4
    _file_with_uri_length(tmp_path / "fits.png", at_limit)
    _file_with_uri_length(tmp_path / "over.png", at_limit + 4)
    resolver = InputResolver(manifest_dir=tmp_path)
    assert len(resolver.resolve("fits.png")) == at_limit <= MAX_DATA_URI_BYTES
    job = Job(row=7, job_id="big-one", images=("fits.png", "over.png"), prompt="p")
    with pytest.raises(InputError) as err:
        resolver.resolve_job(job)
    assert (err.value.row, err.value.job_id, err.value.column) == (7, "big-one", "image_2")
    assert str(err.value).startswith(
        'row 7 (job_id "big-one"), column image_2: "over.png" is 7.5 MiB; sent inline'
    )
    assert "over the API's 10 MiB limit" in str(err.value)


def test_resolving_a_non_image_local_file_fails_clearly(tmp_path: Path) -> None:
    (tmp_path / "notes.png").write_text("just text")
    with pytest.raises(InputError, match=r'"notes.png" is not an image: the content is not JPG, PNG'):
        InputResolver(manifest_dir=tmp_path).resolve("notes.png")


def test_identity_is_the_content_hash_for_files_and_data_uris(tmp_path: Path) -> None:
    data = image_bytes(400, 400)
    (tmp_path / "a.png").write_bytes(data)
    (tmp_path / "copy.png").write_bytes(data)
    resolver = InputResolver(manifest_dir=tmp_path)
    expected = "sha256:" + hashlib.sha256(data).hexdigest()
    assert resolver.identity("a.png") == expected
    assert resolver.identity("copy.png") == expected  # moving/copying a file does not redo the work
    assert resolver.identity(data_uri_for(data, "png")) == expected
    (tmp_path / "a.png").write_bytes(image_bytes(400, 400, colour="red"))
    os.utime(tmp_path / "a.png", ns=(1, 1))  # a new mtime: the cached hash must not be reused
    assert resolver.identity("a.png") != expected
    assert resolver.identity("https://example.com/a.png?v=2") == "https://example.com/a.png?v=2"


def test_remote_manifest_resolves_relative_references_next_to_it_and_refuses_local_files() -> None:
    resolver = InputResolver(manifest_dir="s3://bucket/drops/2026-11/")
    assert resolver.locate("img/a.png").location == "s3://bucket/drops/2026-11/img/a.png"
    web = InputResolver(manifest_dir="https://example.com/drops/")
    assert web.locate("a.png").location == "https://example.com/drops/a.png"
    assert resolver.locate("../2026-10/b.png").location == "s3://bucket/drops/2026-10/b.png"
    with pytest.raises(InputError, match=r'"../../../x.png" climbs above s3://bucket/'):
        resolver.locate("../../../x.png")
    with pytest.raises(
        InputError, match="local files are not read for a manifest from s3://bucket/drops/2026-11/"
    ):
        resolver.locate("/etc/passwd")


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_decompression_bombs_are_refused_from_the_header() -> None:
    with pytest.raises(InputError) as err:
        inspect_image(bomb_png(10000, 10000))  # between 1× and 2× Pillow's limit: Pillow only warns
    assert err.value.reason == (
        "is refused as a decompression bomb: it declares 100,000,000 pixels, "
        "over the 89,478,485-pixel safety limit"
    )
    with pytest.raises(InputError, match="it declares 400,000,000 pixels, over"):
        inspect_image(bomb_png(20000, 20000))  # above 2×: Pillow raises


def test_truncated_jpeg_is_caught_by_decoding() -> None:
    data = image_bytes(800, 800, "JPEG")
    with pytest.raises(InputError, match="is a damaged JPEG file: image file is truncated"):
        inspect_image(data[: len(data) // 2])


@pytest.mark.parametrize(("size", "warns"), [((384, 3072), False), ((383, 500), True), ((3073, 400), True)])
def test_sides_outside_384_to_3072_px_warn(size: tuple[int, int], warns: bool) -> None:
    buf = io.BytesIO()
    Image.new("L", size).save(buf, "PNG")
    assert bool(inspect_image(buf.getvalue()).warnings) is warns


# --- URLs: HEAD, bounded and short ---------------------------------------------------------------


def test_url_check_uses_head_and_reports_http_failures(fake_web: FakeWeb) -> None:
    png = image_bytes()
    fake_web.routes["/ok.png"] = Route(headers={"Content-Type": "image/png"}, body=png)
    fake_web.routes["/page"] = Route(headers={"Content-Type": "text/html; charset=utf-8"}, body=b"<html>")
    fake_web.routes["/huge.png"] = Route(headers={"Content-Type": "image/png", "Content-Length": "20000000"})
    resolver = InputResolver(http_timeout_s=2, allow_private_urls=True)  # fake_web is on loopback
    assert resolver.check(fake_web.url("/ok.png")).errors == []
    assert fake_web.requests == [("HEAD", "/ok.png")]
    assert resolver.check(fake_web.url("/missing.png")).errors == [
        f'"{fake_web.url("/missing.png")}" answered HTTP 404'
    ]
    assert resolver.check(fake_web.url("/page")).errors == [
        f'"{fake_web.url("/page")}" serves text/html, not an image'
    ]
    assert resolver.check(fake_web.url("/huge.png")).errors == [
        f'"{fake_web.url("/huge.png")}" is 19.1 MiB; the API takes at most 10.0 MiB'
    ]
    resolver.close()


def test_url_that_refuses_head_is_tried_with_a_one_byte_get(fake_web: FakeWeb) -> None:
    fake_web.routes["/signed.png"] = Route(
        head_status=403, headers={"Content-Type": "image/png"}, body=image_bytes()
    )
    with InputResolver(allow_private_urls=True) as resolver:
        assert resolver.check(fake_web.url("/signed.png")).errors == []
    assert fake_web.requests == [("HEAD", "/signed.png"), ("GET", "/signed.png")]


def test_unreachable_url_is_an_error_not_a_crash() -> None:
    port = free_port()  # nothing listens there
    with InputResolver(http_timeout_s=1, allow_private_urls=True) as resolver:
        errors = resolver.check(f"http://127.0.0.1:{port}/a.png").errors
    assert len(errors) == 1 and errors[0].startswith(
        f'"http://127.0.0.1:{port}/a.png" cannot be reached: ConnectError'
    )


# --- S3 (a real S3 server: SeaweedFS) -------------------------------------------------------------


def test_s3_reference_becomes_a_working_presigned_url_and_an_etag_identity(s3_env: Any) -> None:
    data = image_bytes(400, 400)
    s3_env.client.put_object(Bucket=s3_env.bucket, Key="in/a.png", Body=data)
    resolver = InputResolver(presign_expiry_s=6 * 3600)
    url = resolver.resolve(f"s3://{s3_env.bucket}/in/a.png")
    assert "X-Amz-Expires=21600" in url
    assert httpx.get(url).content == data  # the API would fetch exactly this
    etag = s3_env.client.head_object(Bucket=s3_env.bucket, Key="in/a.png")["ETag"].strip('"')
    assert resolver.identity(f"s3://{s3_env.bucket}/in/a.png") == f"s3://{s3_env.bucket}/in/a.png#{etag}"
    inline = InputResolver(s3_mode="data_uri").resolve(f"s3://{s3_env.bucket}/in/a.png")
    assert inline == data_uri_for(data, "png")
    assert resolver.check(f"s3://{s3_env.bucket}/in/a.png").errors == []


def test_missing_s3_object_is_a_clear_error(s3_env: Any) -> None:
    resolver = InputResolver()
    with pytest.raises(InputError, match=f'"s3://{s3_env.bucket}/nope.png": no such object'):
        resolver.resolve(f"s3://{s3_env.bucket}/nope.png")
    assert resolver.check(f"s3://{s3_env.bucket}/nope.png").errors == [
        f'"s3://{s3_env.bucket}/nope.png": no such object'
    ]
