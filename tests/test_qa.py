"""Output QA: each check flags exactly the images it is about, on a table of good and bad images."""

from __future__ import annotations

import base64
import io
import random
import struct
import time
import zlib
from collections.abc import Callable

import pytest
from PIL import Image, ImageDraw, ImageFile

from qwenedit.qa import (
    BLANK,
    SIZE_MISMATCH,
    SIZE_NOT_REQUESTED,
    TOO_LARGE,
    UNDECODABLE,
    check_output,
    inspect_output,
    qa_cell,
    requested_size,
    thumbnail_data_uri,
)


def _encode(img: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def picture(width: int = 256, height: int = 192, mode: str = "RGB", fmt: str = "PNG") -> bytes:
    """A non-blank picture: a gradient with a product-like shape on it."""
    img = Image.linear_gradient("L").resize((width, height)).convert(mode if mode != "P" else "RGB")
    draw = ImageDraw.Draw(img)
    draw.ellipse(
        (width // 4, height // 4, width * 3 // 4, height * 3 // 4), fill="red" if mode != "L" else 30
    )
    if mode == "P":
        img = img.quantize(64)
    return _encode(img, fmt)


def flat(width: int = 256, height: int = 192, color: object = (240, 240, 240), mode: str = "RGB") -> bytes:
    return _encode(Image.new(mode, (width, height), color))  # type: ignore[arg-type]


def noisy_flat(width: int = 256, height: int = 192) -> bytes:
    """Near-uniform: ±1 level of noise on a grey, as a lossy encoder leaves on a 'blank' image."""
    rng = random.Random(1)
    img = Image.new("L", (width, height), 128)
    img.putdata([128 + rng.choice((-1, 0, 1)) for _ in range(width * height)])
    return _encode(img)


def small_mark(width: int = 512, height: int = 512) -> bytes:
    """A white page with one small dark mark: sparse, but not blank."""
    img = Image.new("RGB", (width, height), "white")
    ImageDraw.Draw(img).rectangle((200, 200, 260, 230), fill="black")
    return _encode(img)


def transparent(width: int = 64, height: int = 64) -> bytes:
    rng = random.Random(2)
    img = Image.new("RGBA", (width, height))
    img.putdata(
        [(rng.randrange(256), rng.randrange(256), rng.randrange(256), 0) for _ in range(width * height)]
    )
    return _encode(img)


def truncated(data: bytes, keep: float = 0.5) -> bytes:
    return data[: int(len(data) * keep)]


def big_header(width: int, height: int) -> bytes:
    """A PNG whose header claims width × height (the pixel data is tiny and wrong: never decoded)."""
    data = bytearray(_encode(Image.new("L", (1, 1))))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    data[16:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return bytes(data)


CASES: list[tuple[str, Callable[[], bytes], tuple[int, int] | None, str | None, list[str]]] = [
    ("good picture", lambda: picture(), (256, 192), None, []),
    ("good palette picture", lambda: picture(mode="P"), (256, 192), None, []),
    ("good greyscale picture", lambda: picture(mode="L"), (256, 192), None, []),
    ("good JPEG", lambda: picture(fmt="JPEG"), (256, 192), None, []),
    ("no expected size given", lambda: picture(), None, None, []),
    ("sparse but not blank", lambda: small_mark(), (512, 512), None, []),
    ("requested size honoured", lambda: picture(1024, 1536), (1024, 1536), "1024*1536", []),
    ("requested size rounded like the API", lambda: picture(1040, 1024), (1040, 1024), "1033*1032", []),
    ("uniform grey", lambda: flat(), (256, 192), None, [BLANK]),
    ("uniform black", lambda: flat(color=(0, 0, 0)), (256, 192), None, [BLANK]),
    ("near-uniform noise", lambda: noisy_flat(), (256, 192), None, [BLANK]),
    ("fully transparent", lambda: transparent(), (64, 64), None, [BLANK]),
    ("smaller than usage said", lambda: picture(128, 96), (256, 192), None, [SIZE_MISMATCH]),
    ("sides swapped", lambda: picture(192, 256), (256, 192), None, [SIZE_MISMATCH]),
    (
        "usage agrees but not what was asked",
        lambda: picture(1024, 1024),
        (1024, 1024),
        "1024*1536",
        [SIZE_NOT_REQUESTED],
    ),
    (
        "asked size without rounding",
        lambda: picture(1033, 1032),
        (1033, 1032),
        "1033*1032",
        [SIZE_NOT_REQUESTED],
    ),
    ("truncated PNG", lambda: truncated(picture()), (256, 192), None, [UNDECODABLE]),
    ("PNG cut just before IEND", lambda: picture()[:-12], (256, 192), None, [UNDECODABLE]),
    (
        "truncated and mis-sized",
        lambda: truncated(picture(128, 96)),
        (256, 192),
        None,
        [UNDECODABLE, SIZE_MISMATCH],
    ),
    ("truncated JPEG", lambda: truncated(picture(fmt="JPEG"), 0.4), (256, 192), None, [UNDECODABLE]),
    ("not an image", lambda: b"<html>upstream connect error</html>", (256, 192), None, [UNDECODABLE]),
    ("empty", lambda: b"", (256, 192), None, [UNDECODABLE]),
    ("blank and mis-sized", lambda: flat(100, 100), (256, 192), None, [SIZE_MISMATCH, BLANK]),
    ("bomb over our limit", lambda: big_header(10_000, 8_000), (10_000, 8_000), None, [TOO_LARGE]),
    ("bomb over Pillow's limit", lambda: big_header(30_000, 30_000), (30_000, 30_000), None, [TOO_LARGE]),
]


@pytest.mark.parametrize(
    ("name", "make", "expected", "requested", "failed"), CASES, ids=[c[0] for c in CASES]
)
def test_each_check_flags_exactly_its_images(
    name: str,
    make: Callable[[], bytes],
    expected: tuple[int, int] | None,
    requested: str | None,
    failed: list[str],
) -> None:
    assert check_output(make(), expected=expected, requested=requested) == failed


def test_truncation_is_caught_even_when_pillow_is_told_to_load_truncated_images(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)

    assert check_output(truncated(picture()), expected=(256, 192)) == [UNDECODABLE]
    assert check_output(picture(), expected=(256, 192)) == []


def test_nothing_in_the_package_turns_on_loading_truncated_images() -> None:
    import qwenedit.cli
    import qwenedit.emulator
    import qwenedit.qa  # noqa: F401

    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_a_bomb_is_refused_from_its_header_without_decoding() -> None:
    bomb = big_header(10_000, 8_000)  # 80 MP, under Pillow's own limit: 240 MB if decoded

    started = time.perf_counter()
    found = inspect_output(bomb, expected=None)

    assert found.failed == [TOO_LARGE]
    assert found.size == (10_000, 8_000)
    assert time.perf_counter() - started < 0.5


def test_the_pixel_limit_is_a_parameter() -> None:
    assert check_output(picture(256, 192), expected=(256, 192), max_pixels=256 * 191) == [TOO_LARGE]


def test_blank_threshold_is_a_parameter() -> None:
    assert check_output(noisy_flat(), expected=None, blank_stddev=0.1) == []


@pytest.mark.parametrize(
    ("size", "pixels"),
    [
        ("1024*1536", (1024, 1536)),
        ("1033*1032", (1040, 1024)),
        ("520 * 600", (512, 608)),
        ("2048*2048", (2048, 2048)),
    ],
)
def test_requested_size_is_rounded_to_sixteen_half_to_even(size: str, pixels: tuple[int, int]) -> None:
    assert requested_size(size) == pixels


@pytest.mark.parametrize("size", ["1024x1024", "1024", "", "a*b"])
def test_a_malformed_requested_size_is_a_caller_error(size: str) -> None:
    with pytest.raises(ValueError):
        requested_size(size)


def test_inspection_reports_size_and_a_thumbnail_from_one_decode() -> None:
    found = inspect_output(picture(640, 480), expected=(640, 480), thumbnail_side=80)

    assert found.failed == []
    assert found.size == (640, 480)
    assert found.thumbnail is not None
    with Image.open(io.BytesIO(base64.b64decode(found.thumbnail.split(",", 1)[1]))) as thumb:
        assert thumb.format == "JPEG"
        assert thumb.size == (80, 60)


def test_no_thumbnail_for_an_undecodable_output() -> None:
    assert inspect_output(truncated(picture()), expected=None, thumbnail_side=80).thumbnail is None


@pytest.mark.parametrize(
    ("make", "side", "size"),
    [
        (lambda: picture(1600, 1200, fmt="JPEG"), 160, (160, 120)),
        (lambda: picture(300, 900), 160, (53, 160)),
        (lambda: picture(100, 50), 160, (100, 50)),
        (lambda: picture(mode="P"), 64, (64, 48)),
        (lambda: transparent(), 32, (32, 32)),
    ],
    ids=["jpeg", "portrait png", "smaller than the box", "palette", "transparent"],
)
def test_thumbnail_fits_the_box_and_keeps_the_aspect(
    make: Callable[[], bytes], side: int, size: tuple[int, int]
) -> None:
    uri = thumbnail_data_uri(make(), side)

    assert uri is not None and uri.startswith("data:image/jpeg;base64,")
    with Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))) as thumb:
        assert thumb.size == size


@pytest.mark.parametrize("data", [b"", b"nope", truncated(picture()), big_header(20_000, 20_000)])
def test_thumbnail_of_a_bad_image_is_none(data: bytes) -> None:
    assert thumbnail_data_uri(data, max_pixels=100_000_000) is None


@pytest.mark.parametrize(
    ("flags", "cell"),
    [
        ([], ""),
        ([[], []], ""),
        ([[BLANK]], "1.png=blank"),
        ([[], [SIZE_MISMATCH, UNDECODABLE], [BLANK]], "2.png=size_mismatch+undecodable; 3.png=blank"),
    ],
)
def test_qa_cell_is_empty_when_all_pass_and_names_each_flagged_output(
    flags: list[list[str]], cell: str
) -> None:
    assert qa_cell(flags) == cell
    assert "," not in cell


def test_a_full_size_output_is_checked_quickly() -> None:
    data = picture(2048, 2048)

    started = time.perf_counter()
    for _ in range(5):
        assert check_output(data, expected=(2048, 2048)) == []
    per_image = (time.perf_counter() - started) / 5

    assert per_image < 0.5, f"{per_image:.3f} s per 2048² image"
