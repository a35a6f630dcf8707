"""Output QA: is a stored output image whole, the size the API said, and not blank?

``check_output(data, expected=(w, h), requested="W*H")`` returns the names of the checks an image
fails, empty when it passes them all:

- ``undecodable``: Pillow cannot decode it completely (not an image, corrupt, or truncated). Decoding
  never relies on ``ImageFile.LOAD_TRUNCATED_IMAGES`` being off: a PNG must also end in its IEND chunk,
  so a cut-off file is caught even if some other code turned that global on.
- ``too_large``: the header claims more than ``max_pixels`` pixels; nothing is decoded (the
  decompression-bomb guard: memory stays below ~4 bytes × ``max_pixels``).
- ``size_mismatch``: its pixel size is not the ``width``×``height`` that ``usage`` reported.
- ``size_not_requested``: a ``size`` "W*H" was asked and the image is not W×H with each side rounded to
  the nearest multiple of 16, as the API does (``1033*1032`` → 1040×1024; docs/dashscope-api.md §3).
- ``blank``: near-uniform: after compositing on white and downscaling to at most ``BLANK_SIDE`` px, no
  RGB channel has a standard deviation of ``blank_stddev`` or more (0–255 scale). The reduction is
  made band by band from the middle out and stops once the rows made prove the image is not blank
  (the same answer as from the whole reduction; a plainly non-blank image costs one or two bands).

The size checks need only the header, so a truncated image still gets them. ``inspect_output`` does
the same work and also returns the pixel size and, on request, a thumbnail from the same decode;
``thumbnail_data_uri`` makes the small embedded JPEGs of ``report.html``. ``qa_cell`` formats one job's
flags for the ``qa`` column of results.csv. Pure functions; safe to call from worker threads.

Decoding is bounded (``qwenedit.decode``): the pixel cap is checked from the header, JPEG thumbnails
are decoded at a reduced scale, images are reduced in their own mode strip by strip (no full-size
RGBA copy), and concurrent decodes share one memory budget.
"""

from __future__ import annotations

import base64
import contextlib
import io
import math
import operator
import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field

from PIL import Image, ImageStat

from qwenedit.decode import (
    MAX_INPUT_PIXELS,
    decoding,
    downscale,
    open_image,
    reduce_rows,
    reduced_mode,
    reduction_factor,
    strips,
)

UNDECODABLE = "undecodable"
TOO_LARGE = "too_large"
SIZE_MISMATCH = "size_mismatch"
SIZE_NOT_REQUESTED = "size_not_requested"
BLANK = "blank"
CHECKS = (UNDECODABLE, TOO_LARGE, SIZE_MISMATCH, SIZE_NOT_REQUESTED, BLANK)

# Outputs are at most 2048×2048 (docs/dashscope-api.md §1); 4× that is headroom, not a size anyone should see.
MAX_PIXELS = 4096 * 4096
# Inputs: the cap derived from the API's documented input sizes (qwenedit.decode).
MAX_THUMBNAIL_PIXELS = MAX_INPUT_PIXELS
BLANK_SIDE = 128
BLANK_STDDEV = 2.0
_BLANK_BANDS = 8  # the blank check reduces the image in this many bands, middle first, and stops early
_BLANK_PROOF_AT = (1, 2, 4)  # ... once the bands made so far (this many) prove the image is not blank
_VARIANCE_MARGIN = 1e-6  # far above the float error of a variance of 8-bit values; far below any image's
_REDUCING_GAP = 2.0  # Image.thumbnail's default: it box-reduces first from twice this scale
_LEVELS = range(256)
_SQUARES = [level * level for level in _LEVELS]
_SIZE = re.compile(r"\s*([0-9]+)\s*\*\s*([0-9]+)\s*")
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@dataclass
class Inspection:
    """What QA found about one image."""

    failed: list[str] = field(default_factory=list)  # check names, in CHECKS order
    size: tuple[int, int] | None = None  # from the header; None if not even that could be read
    thumbnail: str | None = None  # a data: URI, when asked for and the image decoded


def requested_size(size: str) -> tuple[int, int]:
    """The pixel size the API delivers for a requested ``size`` "W*H": each side rounded to a multiple
    of 16, half to even (``"1033*1032"`` → (1040, 1024)). Raises ValueError for anything but "W*H"."""
    m = _SIZE.fullmatch(size)
    if m is None:
        raise ValueError(f'size must be "W*H", got {size!r}')
    return round(int(m.group(1)) / 16) * 16, round(int(m.group(2)) / 16) * 16


def check_output(
    data: bytes,
    *,
    expected: tuple[int, int] | None,
    requested: str | None = None,
    max_pixels: int = MAX_PIXELS,
    blank_stddev: float = BLANK_STDDEV,
) -> list[str]:
    """The QA checks ``data`` fails (names from ``CHECKS``); empty when all pass.

    ``expected`` is ``(usage.width, usage.height)``; ``requested`` the job's ``size`` or None.
    """
    return inspect_output(
        data, expected=expected, requested=requested, max_pixels=max_pixels, blank_stddev=blank_stddev
    ).failed


def inspect_output(
    data: bytes,
    *,
    expected: tuple[int, int] | None,
    requested: str | None = None,
    max_pixels: int = MAX_PIXELS,
    blank_stddev: float = BLANK_STDDEV,
    thumbnail_side: int | None = None,
) -> Inspection:
    """``check_output`` plus the image's size and (``thumbnail_side``) a thumbnail from the same decode."""
    target = requested_size(requested) if requested else None
    found = Inspection()
    failed: set[str] = set()
    try:
        img = _open(data)
    except Image.DecompressionBombError:
        found.failed = [TOO_LARGE]
        return found
    except Exception:  # Pillow raises many kinds for garbage
        found.failed = [UNDECODABLE]
        return found
    with img:
        found.size = img.size
        if expected is not None and img.size != tuple(expected):
            failed.add(SIZE_MISMATCH)
        if target is not None and img.size != target:
            failed.add(SIZE_NOT_REQUESTED)
        if img.width * img.height > max_pixels:
            failed.add(TOO_LARGE)
        else:
            with contextlib.ExitStack() as decoded:
                try:
                    full = decoded.enter_context(decoding(img, max_pixels=max_pixels))
                    if full.format == "PNG" and not _png_complete(data):
                        raise OSError("PNG ends before its IEND chunk")
                except Exception:
                    failed.add(UNDECODABLE)
                else:
                    if _is_blank(full, blank_stddev):
                        failed.add(BLANK)
                    if thumbnail_side is not None:
                        found.thumbnail = _jpeg_uri(downscale(full, thumbnail_side))
    found.failed = [c for c in CHECKS if c in failed]
    return found


def thumbnail_data_uri(
    data: bytes, max_side: int = 160, *, max_pixels: int = MAX_THUMBNAIL_PIXELS
) -> str | None:
    """A small JPEG of the image as a ``data:`` URI (longest side ``max_side``); None if it does not
    decode or would decode to more than ``max_pixels`` (JPEGs are decoded at a reduced scale first,
    so a large JPEG is cheap and allowed)."""
    try:
        with _open(data) as img, decoding(img, max_pixels=max_pixels, draft_side=max_side) as full:
            return _jpeg_uri(downscale(full, max_side))
    except Exception:  # not an image, damaged, or over the pixel cap
        return None


def qa_cell(flags: Sequence[Sequence[str]]) -> str:
    """One job's QA flags for results.csv: ``""`` when every output passed, else
    ``"1.png=blank; 3.png=size_mismatch+undecodable"``: ``flags[k]`` is output ``k + 1``, named as the
    pipeline stores it (``{job_id}/1.png`` …); no commas, so the cell never needs quoting."""
    return "; ".join(f"{k}.png=" + "+".join(checks) for k, checks in enumerate(flags, start=1) if checks)


def _open(data: bytes) -> Image.Image:
    # Pillow's own bomb check (a warning, then an error at 2× its larger threshold) stays on; our
    # ``max_pixels`` is checked from the header before any pixel is decoded.
    return open_image(data)


def _png_complete(data: bytes) -> bool:
    """Walk the PNG's chunks: True only if an IEND chunk is reached inside the data."""
    if not data.startswith(_PNG_SIGNATURE):
        return False
    pos = len(_PNG_SIGNATURE)
    while pos + 12 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        pos += 12 + length
        if kind == b"IEND":
            return pos <= len(data)
    return False


def _is_blank(img: Image.Image, threshold: float) -> bool:
    """Whether the flattened ``downscale(img, BLANK_SIDE)``'s largest channel standard deviation is
    under ``threshold``: the same answer, from less work when the image is plainly not blank.

    The image is reduced band by band, middle first, into the box reduction ``downscale`` makes
    (each band's pixels are exactly those rows of it). After 1, 2 and 4 bands, the rows of the final
    image (after ``downscale``'s bilinear thumbnail, when it has one) that depend only on the rows
    reduced so far are exact, and over n pixels, for any n_S of them, n·var ≥ n_S·var_S (the
    variance about the overall mean is at least that about the subset's own). So n_S·var_S ≥
    n·threshold² (plus a margin far above float error) proves the image is not blank, and the other
    bands are never reduced. Otherwise the whole reduction is made and judged exactly as before.
    """
    factor = reduction_factor(img.size, BLANK_SIDE)
    reduction = Image.new(reduced_mode(img), (-(-img.width // factor), -(-img.height // factor)))
    bands = strips(img, factor, max_rows=-(-img.height // _BLANK_BANDS))
    middle = img.height / 2
    bands.sort(key=lambda band: abs((band[0] + band[1]) / 2 - middle))
    covered = [False] * reduction.height
    for done, (top, bottom) in enumerate(bands, start=1):
        reduction.paste(reduce_rows(img, factor, top, bottom), (0, top // factor))
        covered[top // factor : -(-bottom // factor)] = [True] * (-(-bottom // factor) - top // factor)
        if done in _BLANK_PROOF_AT and done < len(bands) and _proves_not_blank(reduction, covered, threshold):
            return False
    reduction.thumbnail((BLANK_SIDE, BLANK_SIDE), Image.Resampling.BILINEAR)
    return max(ImageStat.Stat(_flatten(reduction)).stddev) < threshold


def _proves_not_blank(reduction: Image.Image, covered: list[bool], threshold: float) -> bool:
    """Whether the exact rows of the final blank-check image (``reduction`` thumbnailed as
    ``downscale`` does) that depend only on ``covered`` rows already prove it is not blank."""
    if max(reduction.size) <= BLANK_SIDE:  # no thumbnail: the reduced rows are the final rows
        small, exact = reduction, covered
    else:
        small = reduction.copy()
        small.thumbnail((BLANK_SIDE, BLANK_SIDE), Image.Resampling.BILINEAR)
        scale = reduction.height / small.height
        if reduction.width / small.width >= 2 * _REDUCING_GAP or scale >= 2 * _REDUCING_GAP:
            return False  # resize would box-reduce first: rows mix otherwise; leave it to the whole
        # Output row j of a bilinear resize reads the input rows within ±max(scale, 1) of
        # (j + 0.5)·scale (Pillow's support), rounded: one more row each side is a safe bound.
        reach = max(scale, 1.0)
        exact = []
        for j in range(small.height):
            centre = (j + 0.5) * scale
            first = max(0, math.floor(centre - reach) - 1)
            exact.append(all(covered[first : math.ceil(centre + reach) + 2]))
    histogram: list[int] = []
    rows = 0
    for top, bottom in _runs(exact):
        part = _flatten(small.crop((0, top, small.width, bottom)), gray=True).histogram()
        histogram = [a + b for a, b in zip(histogram, part, strict=True)] if histogram else part
        rows += bottom - top
    if not rows:
        return False
    floor = small.width * small.height * (threshold * threshold + _VARIANCE_MARGIN)
    return _spread(histogram, small.width * rows) >= floor


def _runs(flags: list[bool]) -> list[tuple[int, int]]:
    """The ``(start, end)`` of each run of True in ``flags``."""
    runs, start = [], None
    for k, flag in enumerate([*flags, False]):
        if flag and start is None:
            start = k
        elif not flag and start is not None:
            runs.append((start, k))
            start = None
    return runs


def _spread(histogram: list[int], count: int) -> float:
    """The largest channel's count·variance (sum of squared deviations) of an 8-bit histogram."""
    spreads = []
    for band in range(0, len(histogram), 256):
        h = histogram[band : band + 256]
        total = sum(map(operator.mul, h, _LEVELS))
        squares = sum(map(operator.mul, h, _SQUARES))
        spreads.append(squares - total * total / count)
    return max(spreads)


def _flatten(img: Image.Image, *, gray: bool = False) -> Image.Image:
    """RGB on a white background (a fully transparent image is blank, whatever its RGB); with
    ``gray``, an L image stays L (its one channel is each of the three RGB would repeat)."""
    if img.mode in ("RGB", "L"):  # nothing to composite
        return img if img.mode == "RGB" or gray else img.convert("RGB")
    rgba = img.convert("RGBA")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, rgba).convert("RGB")


def _jpeg_uri(img: Image.Image) -> str:
    buf = io.BytesIO()
    _flatten(img).save(buf, format="JPEG", quality=70, optimize=True)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
