"""Output images: the real size rules (docs/dashscope-api.md §3) and cheap PNG rendering to disk.

The "edit" is a stand-in that still proves the plumbing: the LAST input image scaled/cropped to the
output size, the instruction as a caption, an "EMULATED" mark and, with ``watermark``, a "Qwen-Image"
mark bottom-right. Everything here is CPU work; the app runs it in a worker thread.

``fast`` keeps the emulator cheap enough for 20 RPS on 2 cores: the input becomes a small thumbnail on
a flat palette canvas (one byte per pixel and flat areas: the PNG encodes ~5x faster than RGB). Both
modes write PNGs with ``compress_level=1``: slower zlib levels cost far more CPU for files nobody keeps.

Bad outputs (the ``*_output`` faults, for output QA): the LAST image of the request is ``blank`` (one
flat colour, right size), ``missized`` (half the size ``usage`` reports) or ``truncated`` (a PNG cut in
half, served whole over HTTP); the request's other images stay good, so n > 1 shows both side by side.
"""

from __future__ import annotations

import io
import math
import os
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from PIL import Image, ImageDraw, ImageFont, ImageOps

from qwenedit.emulator.config import RenderMode

TARGET_AREA = 1024 * 1024
BadOutput = Literal["blank", "missized", "truncated"]
BAD_OUTPUT_FAULTS: dict[str, BadOutput] = {
    "blank_output": "blank",
    "missized_output": "missized",
    "truncated_output": "truncated",
}
_FAST_THUMB = 256  # longest side of the thumbnail in fast mode
_PALETTE = [
    (236, 239, 244),
    (229, 236, 246),
    (240, 233, 244),
    (233, 244, 236),
    (246, 240, 229),
    (244, 229, 233),
]


def round_size(width: int, height: int) -> tuple[int, int]:
    """A requested ``size``: each side to the nearest multiple of 16 (Python round: 1032 -> 1024)."""
    return round(width / 16) * 16, round(height / 16) * 16


def auto_size(last_width: int, last_height: int) -> tuple[int, int]:
    """≈1024² pixels at the last input's aspect ratio, each side a multiple of 32 (3:2 -> 1248×832)."""
    ratio = last_width / last_height
    width = math.sqrt(TARGET_AREA * ratio)
    height = width / ratio
    return round(width / 32) * 32, round(height / 32) * 32


def output_size(size: tuple[int, int] | None, last_wh: tuple[int, int]) -> tuple[int, int]:
    """The output dimensions for a request: rounded ``size`` if given, else the auto size."""
    return round_size(*size) if size is not None else auto_size(*last_wh)


@lru_cache(maxsize=8)
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def open_image(data: bytes) -> Image.Image:
    """Open image bytes lazily (header only). Raises OSError/ValueError if not an image."""
    img = Image.open(io.BytesIO(data))
    img.size  # noqa: B018  (forces the header to be parsed)
    return img


def check_image(data: bytes) -> tuple[int, int]:
    """(width, height) of a decodable image; raises OSError/ValueError for anything else."""
    img = open_image(data)
    size = img.size
    if img.format == "PNG":
        img.verify()  # CRCs only, no decompression: cheap
    return size


def _source(img: Image.Image, width: int, height: int, mode: RenderMode) -> Image.Image:
    """The last input as RGB, decoded no larger than needed."""
    box = (_FAST_THUMB, _FAST_THUMB) if mode == "fast" else (width, height)
    if img.format == "JPEG":
        img.draft("RGB", box)  # JPEG DCT scaling: decode at 1/2, 1/4 or 1/8 size
    if getattr(img, "is_animated", False):
        img.seek(0)  # GIF: first frame only, like the real service
    img = ImageOps.exif_transpose(img) or img
    return img.convert("RGB")


def _cover_box(src: tuple[int, int], dst: tuple[int, int]) -> tuple[float, float, float, float]:
    """The centred crop of ``src`` with ``dst``'s aspect ratio (scale to cover, then crop)."""
    sw, sh = src
    dw, dh = dst
    if sw * dh > sh * dw:  # source is wider: crop the sides
        cw = sh * dw / dh
        return ((sw - cw) / 2, 0.0, (sw + cw) / 2, float(sh))
    ch = sw * dh / dw
    return (0.0, (sh - ch) / 2, float(sw), (sh + ch) / 2)


_BLACK, _WHITE, _RED = (0, 0, 0), (255, 255, 255), (220, 30, 30)
_THUMB_COLORS = 200  # fast mode: thumbnail palette size; fixed colours follow it in the palette


def _base(src: Image.Image, width: int, height: int, mode: RenderMode) -> Image.Image:
    """What every output of one request starts from (computed once per request).

    fast: the thumbnail, quantized to a palette ("P": 1 byte per pixel, so the PNG encodes several
    times faster than RGB). full: the input scaled to cover the output size and centre-cropped.
    """
    if mode == "fast":
        thumb = src.copy()
        thumb.thumbnail((_FAST_THUMB, _FAST_THUMB), Image.Resampling.NEAREST)
        return thumb.quantize(_THUMB_COLORS, method=Image.Quantize.FASTOCTREE)
    box = _cover_box(src.size, (width, height))
    return src.resize((width, height), Image.Resampling.BILINEAR, box=box, reducing_gap=2.0)


def _canvas(base: Image.Image, width: int, height: int, index: int) -> tuple[Image.Image, dict[str, Any]]:
    """Output ``index``'s canvas and the inks to draw on it with (palette indices or RGB)."""
    background = _PALETTE[index % len(_PALETTE)]
    if base.mode == "P":
        palette = (base.getpalette() or [])[: _THUMB_COLORS * 3]
        palette += [0] * (_THUMB_COLORS * 3 - len(palette))
        for rgb in (background, _BLACK, _WHITE, _RED):
            palette.extend(rgb)
        canvas = Image.new("P", (width, height), _THUMB_COLORS)
        canvas.putpalette(palette)
        canvas.paste(base, ((width - base.width) // 2, (height - base.height) // 2))
        first = _THUMB_COLORS
        return canvas, {"black": first + 1, "white": first + 2, "red": first + 3}
    # Tint all but the first so the n outputs differ, as the real ones do.
    canvas = Image.blend(base, Image.new("RGB", base.size, background), 0.15) if index else base.copy()
    return canvas, {"black": _BLACK, "white": _WHITE, "red": _RED}


def render_image(
    base: Image.Image,
    width: int,
    height: int,
    *,
    caption: str,
    index: int,
    count: int,
    watermark: bool,
) -> Image.Image:
    """Output ``index`` of ``count``: exactly ``width`` × ``height``, captioned and marked."""
    canvas, ink = _canvas(base, width, height, index)
    draw = ImageDraw.Draw(canvas)
    small = max(12, min(width, height) // 40)
    font = _font(small)
    band = small * 3
    draw.rectangle((0, height - band, width, height), fill=ink["black"])
    text = caption if len(caption) <= 120 else caption[:117] + "..."
    draw.text((small // 2, height - band + small // 2), text, fill=ink["white"], font=font)
    draw.text(
        (small // 2, small // 2), f"EMULATED {index + 1}/{count}", fill=ink["red"], font=_font(small * 2)
    )
    if watermark:
        mark = "Qwen-Image"
        left, top, right, bottom = draw.textbbox((0, 0), mark, font=font)
        draw.text(
            (width - (right - left) - small, height - band - (bottom - top) - small),
            mark,
            fill=ink["white"],
            font=font,
            stroke_width=1,
            stroke_fill=ink["black"],
        )
    return canvas


def render_outputs(
    last_image: bytes,
    size: tuple[int, int],
    count: int,
    *,
    caption: str,
    watermark: bool,
    mode: RenderMode,
    out_dir: Path,
    bad_output: BadOutput | None = None,
) -> list[Path]:
    """Render ``count`` PNGs into ``out_dir`` as ``0.png``, ``1.png``, ... and return their paths.

    ``bad_output`` spoils the last one (see the module docstring)."""
    width, height = size
    base = _base(_source(open_image(last_image), width, height, mode), width, height, mode)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for k in range(count):
        bad = bad_output if k == count - 1 else None
        if bad == "blank":
            img = Image.new("L", (width, height), 236)
        else:
            img = render_image(
                base, width, height, caption=caption, index=k, count=count, watermark=watermark
            )
        if bad == "missized":
            img = img.resize((max(16, width // 2), max(16, height // 2)), Image.Resampling.NEAREST)
        path = out_dir / f"{k}.png"
        tmp = out_dir / f".{k}.png.tmp"
        if bad == "truncated":
            buf = io.BytesIO()
            img.save(buf, format="PNG", compress_level=1)
            tmp.write_bytes(buf.getvalue()[: buf.tell() // 2])
        else:
            img.save(tmp, format="PNG", compress_level=1)
        os.replace(tmp, path)  # a reader never sees half a file
        paths.append(path)
    return paths
