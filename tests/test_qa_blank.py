"""Output QA's cheaper blank check and PNG integrity walk give the same answers as the whole-image
computation they replaced, on a range of generated images, at the threshold's edge too."""

from __future__ import annotations

import io
import math
import random
import struct
import zlib
from collections.abc import Callable

import pytest
from PIL import Image, ImageDraw, ImageStat

from qwenedit.decode import downscale, reduced_mode
from qwenedit.qa import BLANK, BLANK_SIDE, UNDECODABLE, _is_blank, check_output, inspect_output

_STRIP_BYTES = 4 * 1024 * 1024


def reference_downscale(img: Image.Image, side: int) -> Image.Image:
    """``decode.downscale`` as it was before the blank check went band by band (kept verbatim)."""
    factor = max(1, min(img.width, img.height) // side)
    mode = reduced_mode(img)
    if factor == 1 and mode == img.mode:
        small = img.copy()
    else:
        width, height = img.size
        rows = max(factor, (_STRIP_BYTES // max(1, width * 4)) // factor * factor)
        small = Image.new(mode, (-(-width // factor), -(-height // factor)))
        for top in range(0, height, rows):
            strip = img if rows >= height else img.crop((0, top, width, min(height, top + rows)))
            if strip.mode != mode:
                strip = strip.convert(mode)
            small.paste(strip.reduce(factor) if factor > 1 else strip, (0, top // factor))
    small.thumbnail((side, side), Image.Resampling.BILINEAR)
    return small


def reference_flatten(img: Image.Image) -> Image.Image:
    if img.mode in ("RGB", "L"):
        return img if img.mode == "RGB" else img.convert("RGB")
    rgba = img.convert("RGBA")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, rgba).convert("RGB")


def reference_stddev(img: Image.Image) -> float:
    """The blank statistic computed the old way: the whole reduction, flattened, ImageStat."""
    return max(ImageStat.Stat(reference_flatten(reference_downscale(img, BLANK_SIDE))).stddev)


def _encode(img: Image.Image, fmt: str = "PNG", **params: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **params)
    return buf.getvalue()


def _decoded(data: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(data))
    img.load()
    return img


def block_noise(
    size: tuple[int, int], spread: int, seed: int, block: int = 8, base: int = 128
) -> Image.Image:
    """Grey with random levels in ``block``-px squares: noise the reduction keeps (pixel noise it
    would average away)."""
    rng = random.Random(seed)
    w, h = size
    small = Image.new("L", (-(-w // block), -(-h // block)))
    small.putdata([base + rng.randint(-spread, spread) for _ in range(small.width * small.height)])
    return small.resize(size, Image.Resampling.NEAREST)


def pixel_noise(size: tuple[int, int], spread: int, seed: int) -> Image.Image:
    rng = random.Random(seed)
    img = Image.new("L", size)
    img.putdata([128 + rng.randint(-spread, spread) for _ in range(size[0] * size[1])])
    return img


def scene(size: tuple[int, int], seed: int) -> Image.Image:
    """A flat canvas with a few shapes, somewhere (not always in the middle)."""
    rng = random.Random(seed)
    w, h = size
    img = Image.new("RGB", size, (rng.randrange(256), rng.randrange(256), rng.randrange(256)))
    draw = ImageDraw.Draw(img)
    for _ in range(rng.randint(1, 4)):
        x, y = rng.randrange(w), rng.randrange(h)
        draw.rectangle((x, y, x + rng.randint(1, w // 4 + 1), y + rng.randint(1, h // 4 + 1)), fill="red")
    return img


def edge_mark(size: tuple[int, int]) -> Image.Image:
    """White, with one dark mark near the top edge only: the middle bands see nothing."""
    img = Image.new("RGB", size, "white")
    ImageDraw.Draw(img).rectangle((10, 0, 60, max(1, size[1] // 100)), fill="black")
    return img


def with_transparency(img: Image.Image, seed: int) -> Image.Image:
    """RGBA: random alpha in blocks (some fully transparent, some partly)."""
    alpha = block_noise(img.size, 127, seed, block=16).point(lambda v: 0 if v < 60 else v)
    rgba = img.convert("RGBA")
    rgba.putalpha(alpha)
    return rgba


def palette_with_transparent_index(size: tuple[int, int], seed: int) -> Image.Image:
    img = scene(size, seed).quantize(16)
    img.info["transparency"] = 0
    return _decoded(_encode(img))


SIZES = [
    (1024, 1024),
    (1040, 1024),
    (1248, 832),
    (1024, 1536),
    (4096, 512),
    (300, 257),
    (129, 700),
    (100, 80),
    (16, 16),
    (1, 1),
]

MAKERS: list[tuple[str, Callable[[tuple[int, int], int], Image.Image]]] = [
    ("flat grey", lambda s, _: Image.new("L", s, 200)),
    ("flat colour", lambda s, _: Image.new("RGB", s, (10, 200, 90))),
    ("pixel noise ±3", lambda s, k: pixel_noise(s, 3, k)),
    ("block noise ±1", lambda s, k: block_noise(s, 1, k)),
    ("block noise ±3", lambda s, k: block_noise(s, 3, k)),
    ("block noise ±4 coarse", lambda s, k: block_noise(s, 4, k, block=64)),
    ("scene", scene),
    ("mark at the top edge", lambda s, _: edge_mark(s)),
    ("scene as palette", lambda s, k: scene(s, k).quantize(32)),
    ("palette with a transparent index", palette_with_transparent_index),
    ("scene with alpha", lambda s, k: with_transparency(scene(s, k), k)),
    ("block noise with alpha", lambda s, k: with_transparency(block_noise(s, 3, k), k)),
    ("grey with alpha", lambda s, k: with_transparency(block_noise(s, 3, k), k).convert("LA")),
    ("bilevel", lambda s, k: pixel_noise(s, 100, k).convert("1")),
    ("scene as JPEG", lambda s, k: _decoded(_encode(scene(s, k), "JPEG"))),
    ("noise as JPEG", lambda s, k: _decoded(_encode(block_noise(s, 2, k).convert("RGB"), "JPEG"))),
]


@pytest.mark.parametrize("size", SIZES, ids=[f"{w}x{h}" for w, h in SIZES])
@pytest.mark.parametrize(("name", "make"), MAKERS, ids=[m[0] for m in MAKERS])
def test_blank_answer_matches_the_whole_image_computation_at_every_threshold(
    name: str, make: Callable[[tuple[int, int], int], Image.Image], size: tuple[int, int]
) -> None:
    img = make(size, sum(size))
    stat = reference_stddev(img)

    # At the statistic itself and one float step above it the answer flips: both must agree.
    for threshold in (
        stat,
        math.nextafter(stat, math.inf),
        stat + 0.01,
        max(0.0, stat - 0.01),
        2.0,
        0.0,
        50.0,
    ):
        assert _is_blank(img, threshold) == (stat < threshold), (name, size, stat, threshold)


@pytest.mark.parametrize("size", SIZES, ids=[f"{w}x{h}" for w, h in SIZES])
@pytest.mark.parametrize(("name", "make"), MAKERS, ids=[m[0] for m in MAKERS])
def test_downscale_makes_the_same_pixels_as_before(
    name: str, make: Callable[[tuple[int, int], int], Image.Image], size: tuple[int, int]
) -> None:
    img = make(size, sum(size))
    for side in (BLANK_SIDE, 80):
        new, old = downscale(img, side), reference_downscale(img, side)
        assert (new.mode, new.size) == (old.mode, old.size)
        assert new.tobytes() == old.tobytes()


def test_a_large_image_decided_in_many_strips_matches_too() -> None:
    img = block_noise((4096, 4096), 1, 7, block=32)  # reduced in strips of 256 rows (the memory bound)
    stat = reference_stddev(img)

    assert _is_blank(img, stat) is False
    assert _is_blank(img, math.nextafter(stat, math.inf)) is True


def two_level(raised: int, step: int = 5, size: int = 1024, block: int = 8) -> bytes:
    """A PNG of grey ``block``-px squares, ``raised`` of them (at random) ``step`` levels lighter: its
    reduction has standard deviation step·√(p(1-p)), p = raised / squares."""
    side = size // block
    levels = bytearray([128]) * (side * side)
    for k in random.Random(raised).sample(range(side * side), raised):
        levels[k] += step
    small = Image.frombytes("L", (side, side), bytes(levels))
    return _encode(small.resize((size, size), Image.Resampling.NEAREST))


def test_nearly_blank_noise_just_below_and_above_the_threshold_is_flagged_as_before() -> None:
    # 5·√(p(1-p)) = 2 at p = 0.2: 3276 of 16384 raised squares is just under, 3277 just over.
    below, above = two_level(3276), two_level(3277)
    below_stat, above_stat = reference_stddev(_decoded(below)), reference_stddev(_decoded(above))
    assert 1.999 < below_stat < 2.0 <= above_stat < 2.001

    assert check_output(below, expected=(1024, 1024)) == [BLANK]
    assert check_output(above, expected=(1024, 1024)) == []
    assert check_output(above, expected=None, blank_stddev=math.nextafter(above_stat, math.inf)) == [BLANK]
    assert check_output(above, expected=None, blank_stddev=above_stat) == []


def test_a_palette_whose_only_colours_are_transparent_is_blank_on_white() -> None:
    img = Image.new("P", (1024, 1024), 0)
    img.putpalette([255, 0, 0, 0, 0, 255, 0, 255, 0] + [0] * (253 * 3))
    ImageDraw.Draw(img).rectangle((100, 300, 900, 700), fill=1)  # blue, but transparent too
    img.info["transparency"] = bytes([0, 0, 255])
    transparent = _encode(img)
    img.info["transparency"] = bytes([0, 255, 255])  # now the blue shows
    visible = _encode(img)

    assert check_output(transparent, expected=(1024, 1024)) == [BLANK]
    assert check_output(visible, expected=(1024, 1024)) == []


def test_a_mark_only_at_the_edge_is_not_blank() -> None:
    # The middle bands alone would look blank; the answer must come from the whole image.
    assert check_output(_encode(edge_mark((1024, 1024))), expected=(1024, 1024)) == []


@pytest.mark.parametrize(
    ("make", "failed"),
    [
        (lambda: block_noise((1024, 1024), 0, 1), [BLANK]),
        (lambda: scene((1024, 1024), 3), []),
        (lambda: Image.new("RGBA", (1024, 1024), (0, 0, 0, 0)), [BLANK]),
        (lambda: with_transparency(scene((1024, 1024), 4), 4), []),
        (lambda: Image.new("LA", (1024, 1024), (0, 255)), [BLANK]),
    ],
    ids=["flat grey", "grey scene", "transparent RGBA", "RGBA scene", "black LA"],
)
def test_grey_and_alpha_pngs_are_judged_as_before(make: Callable[[], Image.Image], failed: list[str]) -> None:
    assert check_output(_encode(make()), expected=(1024, 1024)) == failed


@pytest.mark.parametrize(
    ("make", "failed"),
    [
        (lambda: Image.new("RGB", (1024, 1024), (250, 250, 250)), [BLANK]),
        (lambda: scene((1024, 1024), 5), []),
    ],
    ids=["flat", "scene"],
)
def test_jpegs_are_judged_as_before(make: Callable[[], Image.Image], failed: list[str]) -> None:
    assert check_output(_encode(make(), "JPEG", quality=90), expected=(1024, 1024)) == failed


def _chunks(data: bytes) -> list[tuple[int, bytes]]:
    """(offset, type) of each chunk of a PNG."""
    found, pos = [], 8
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        found.append((pos, kind))
        pos += 12 + length
    return found


def _png() -> bytes:
    return _encode(scene((256, 192), 9), compress_level=6)


def test_a_damaged_idat_byte_is_undecodable() -> None:
    data = bytearray(_encode(scene((256, 192), 9), compress_level=0))  # stored: the damage is in the pixels
    idat = next(pos for pos, kind in _chunks(bytes(data)) if kind == b"IDAT")
    data[idat + 8 + 400] ^= 0x01  # one pixel's red level, deep inside the stored block

    assert check_output(bytes(data), expected=(256, 192)) == [UNDECODABLE]


def test_a_corrupt_idat_stream_with_a_matching_crc_is_undecodable() -> None:
    good = _png()
    idat = next(pos for pos, kind in _chunks(good) if kind == b"IDAT")
    length = struct.unpack(">I", good[idat : idat + 4])[0]
    payload = b"\x78\x9c" + b"\xff" * (length - 2)  # zlib header, then an invalid block type
    chunk = struct.pack(">I", length) + b"IDAT" + payload + struct.pack(">I", zlib.crc32(b"IDAT" + payload))

    assert check_output(good[:idat] + chunk + good[idat + 12 + length :], expected=(256, 192)) == [
        UNDECODABLE
    ]


@pytest.mark.parametrize("keep", [0.3, 0.9, 0.999])
def test_a_truncated_png_is_undecodable_but_still_size_checked(keep: float) -> None:
    data = _png()

    assert check_output(data[: int(len(data) * keep)], expected=(256, 190)) == [UNDECODABLE, "size_mismatch"]


def test_the_report_thumbnail_still_comes_from_the_same_decode() -> None:
    found = inspect_output(
        _encode(scene((1024, 1024), 2).quantize(64)), expected=(1024, 1024), thumbnail_side=64
    )

    assert found.failed == []
    assert found.thumbnail is not None and found.thumbnail.startswith("data:image/jpeg;base64,")


@pytest.mark.parametrize("size", [(1024, 1024), (1248, 832), (832, 1248)], ids=["square", "3:2", "2:3"])
def test_a_plainly_non_blank_image_is_judged_from_its_middle_alone(
    size: tuple[int, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    import qwenedit.qa as qa

    reduced: list[tuple[int, int]] = []
    real = qa.reduce_rows

    def counting(img: Image.Image, factor: int, top: int, bottom: int) -> Image.Image:
        reduced.append((top, bottom))
        return real(img, factor, top, bottom)

    monkeypatch.setattr(qa, "reduce_rows", counting)
    img = scene(size, 1).quantize(64)
    ImageDraw.Draw(img).ellipse((size[0] // 3, size[1] // 3, size[0] // 2, size[1] // 2), fill=3)

    assert _is_blank(img, 2.0) is False
    assert sum(bottom - top for top, bottom in reduced) <= size[1] // 2
