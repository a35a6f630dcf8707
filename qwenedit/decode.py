"""Bounded image decoding: the one way pixels of an image someone else made are decoded (output QA,
report thumbnails, input validation), so memory per decode has one documented bound.

- ``open_image(data)`` parses the header only (allowed formats); nothing is decoded yet.
- ``decoding(img, max_pixels=..., draft_side=...)`` is a context manager that decodes the pixels under
  two bounds: the image is first reduced at decode time where the format can (JPEG ``draft``: 1/2 …
  1/8 scale), then refused with ``TooLarge`` if what would be decoded is over ``max_pixels`` — before a
  pixel is decoded, from the header alone. The decode then waits for its bytes in the process-wide
  ``BUDGET`` (a byte semaphore), so however many threads check images, the pixels decoded at once
  stay within ``DECODE_MEMORY`` (≈151 MB: one image at the cap, or dozens of ordinary ones at once;
  an image over the budget still runs, alone). Threads wait on memory, not on a fixed count.
- ``downscale(img, side)`` makes a copy at most ``side`` px a side without a full-size converted copy:
  it reduces strip by strip (palette, 16-bit, CMYK… are converted one strip at a time). Its pieces
  (``reduction_factor``, ``strips``, ``reduce_rows``) are public so output QA can reduce only the
  strips it needs, to exactly the same pixels.

The input cap is derived from the API's documented input limits (docs/dashscope-api.md §2): each side
is recommended up to 3072 px, so ``MAX_INPUT_PIXELS`` = 4 × 3072² (37.7 M pixels: 6144 × 6144, or a
48 MP photo, whose JPEG is drafted to 1/8 anyway). Pillow stores RGB as 4 bytes a pixel, so one
decode at the cap is ≤ ~151 MB.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import io
import threading
from collections.abc import Iterator

from PIL import Image

from qwenedit.catalog.limits import MAX_INPUT_SIDE_PX
from qwenedit.errors import TooLarge

# Each side up to 3072 px is what the API documents (recommended 384–3072 px, §2); 4× that area.
MAX_INPUT_PIXELS = 4 * MAX_INPUT_SIDE_PX * MAX_INPUT_SIDE_PX
FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF")
_BYTES_PER_PIXEL = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16B": 2, "I;16L": 2, "I;16N": 2, "LA": 4, "PA": 4}
_REDUCIBLE = ("RGB", "RGBA", "L", "LA")
_STRIP_BYTES = 4 * 1024 * 1024  # a strip converted/reduced at a time in ``downscale``


def decoded_bytes(img: Image.Image) -> int:
    """Memory the image's pixels take once loaded, from its header (and any draft already applied)."""
    return img.width * img.height * _BYTES_PER_PIXEL.get(img.mode, 4)


class DecodeBudget:
    """A byte semaphore: ``hold(n)`` waits until ``n`` more bytes fit in ``limit`` (a request larger
    than the whole budget waits until nothing else is held, then runs alone)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0
        self.peak = 0
        self._cond = threading.Condition()

    @contextlib.contextmanager
    def hold(self, n: int) -> Iterator[None]:
        with self._cond:
            self._cond.wait_for(lambda: self.held == 0 or self.held + n <= self.limit)
            self.held += n
            self.peak = max(self.peak, self.held)
        try:
            yield
        finally:
            if n >= _TRIM_BYTES:
                _give_back()
            with self._cond:
                self.held -= n
                self._cond.notify_all()


# glibc keeps freed memory in the arena of the thread that freed it; with many check threads, each
# thread's arena would keep its last big image resident and the budget would bound nothing. After a
# big decode its pages are handed back (``malloc_trim``: every arena). A no-op off glibc.
_TRIM_BYTES = 16 * 1024 * 1024


def _load_trim() -> ctypes._CFuncPtr | None:  # type: ignore[name-defined]
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc.malloc_trim  # type: ignore[no-any-return]
    except (OSError, AttributeError):
        return None


_MALLOC_TRIM = _load_trim()


def _give_back() -> None:
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


# Pixels decoded at once, process-wide: one image at the cap (or many small ones side by side).
DECODE_MEMORY = MAX_INPUT_PIXELS * 4
BUDGET = DecodeBudget(DECODE_MEMORY)


def open_image(data: bytes) -> Image.Image:
    """The image, header parsed and nothing decoded (Pillow's own bomb check stays on)."""
    img = Image.open(io.BytesIO(data), formats=FORMATS)
    img.size  # noqa: B018  (the header is parsed by now)
    return img


@contextlib.contextmanager
def decoding(
    img: Image.Image,
    *,
    max_pixels: int = MAX_INPUT_PIXELS,
    draft_side: int | None = None,
    budget: DecodeBudget | None = None,
) -> Iterator[Image.Image]:
    """``img`` loaded within the bounds (see the module doc); raises ``TooLarge`` without decoding.

    ``draft_side``: the smallest side length still needed (JPEG decodes at the largest 1/2^k scale
    that keeps at least that many px a side). The pixels stay counted in the budget until the block
    ends, and the image is closed then (its pixels freed): do all work on the full image inside it.
    """
    if draft_side is not None and img.format == "JPEG":
        img.draft(img.mode if img.mode in ("RGB", "L") else "RGB", (draft_side, draft_side))
    if img.width * img.height > max_pixels:
        raise TooLarge(f"{img.width}×{img.height} px is over the {max_pixels:,}-pixel decoding limit")
    if getattr(img, "is_animated", False):
        img.seek(0)
    with (budget or BUDGET).hold(decoded_bytes(img)):
        try:
            img.load()
            yield img
        finally:
            img.close()  # the pixels are freed before the budget is released (and memory handed back)


def reduced_mode(img: Image.Image) -> str:
    """The mode ``downscale`` reduces ``img`` in: its own if reducible; RGB for colour without alpha (a
    palette with no transparency, CMYK, YCbCr...), L for bilevel; RGBA otherwise. Reducing RGBA costs
    several times RGB, and an alpha of 255 everywhere changes nothing a reader of the copy sees."""
    if img.mode in _REDUCIBLE:
        return img.mode
    if img.mode == "1":
        return "L"
    if img.mode == "P":
        alpha = "transparency" in img.info or (img.palette is not None and "A" in img.palette.mode)
        return "RGBA" if alpha else "RGB"
    if img.mode in ("CMYK", "YCbCr", "LAB", "HSV"):
        return "RGB"
    return "RGBA"


def reduction_factor(size: tuple[int, int], side: int) -> int:
    """The integer box-reduction factor ``downscale`` uses to bring ``size`` near ``side`` px a side."""
    return max(1, min(size) // side)


def strips(img: Image.Image, factor: int, max_rows: int | None = None) -> list[tuple[int, int]]:
    """Source row ranges ``(top, bottom)`` that tile ``img`` top to bottom for ``reduce_rows``: each
    a multiple of ``factor`` rows high (bar the last) and small enough that one converted strip
    stays near ``_STRIP_BYTES``; ``max_rows`` caps the height further."""
    rows = max(factor, (_STRIP_BYTES // max(1, img.width * 4)) // factor * factor)
    if max_rows is not None:
        rows = min(rows, max(factor, max_rows // factor * factor))
    return [(top, min(img.height, top + rows)) for top in range(0, img.height, rows)]


def reduce_rows(img: Image.Image, factor: int, top: int, bottom: int) -> Image.Image:
    """Source rows ``top``..``bottom`` of ``img`` in ``reduced_mode`` and reduced ``factor`` times.

    ``top`` must be a multiple of ``factor`` (``bottom`` too, unless it is the image's height): the
    result is then exactly those rows of the whole image's reduction (box reduction works block by
    block, and mode conversion pixel by pixel), which ``downscale`` and output QA rely on."""
    mode = reduced_mode(img)
    if mode == img.mode and mode not in ("RGBA", "LA") and factor > 1:  # (Pillow premultiplies those whole)
        return img.reduce(factor, (0, top, img.width, bottom))  # no copy of the strip first
    strip = img if (top, bottom) == (0, img.height) else img.crop((0, top, img.width, bottom))
    if strip.mode != mode:
        strip = strip.convert(mode)
    if factor > 1:
        return strip.reduce(factor)
    return img.copy() if strip is img else strip


def downscale(img: Image.Image, side: int) -> Image.Image:
    """A copy no larger than ``side`` px a side, in RGB, RGBA, L or LA (see ``reduced_mode``), made
    by integer box reduction strip by strip, then a bilinear thumbnail: no full-size copy is made."""
    factor = reduction_factor(img.size, side)
    if factor == 1 and reduced_mode(img) == img.mode:
        small = img.copy()
    else:
        parts = strips(img, factor)
        if len(parts) == 1:
            small = reduce_rows(img, factor, 0, img.height)
        else:
            small = Image.new(reduced_mode(img), (-(-img.width // factor), -(-img.height // factor)))
            for top, bottom in parts:
                small.paste(reduce_rows(img, factor, top, bottom), (0, top // factor))
    small.thumbnail((side, side), Image.Resampling.BILINEAR)
    return small
