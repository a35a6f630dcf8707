"""Image content: what format the bytes are, whether they decode, and how big they are as a data URI.

``sniff_image_format`` judges by magic bytes, never by a file name; ``inspect_image`` is the deep check
behind ``--check-images`` (a Pillow decode, decompression bombs refused from the header, sides outside
the API's recommended range a warning). No I/O: callers hand in the bytes.
"""

from __future__ import annotations

import base64
import io
import re
from dataclasses import dataclass

from PIL import Image

from qwenedit.catalog.limits import MAX_DATA_URI_BYTES, MAX_INPUT_SIDE_PX, MIN_INPUT_SIDE_PX
from qwenedit.decode import MAX_INPUT_PIXELS, TooLarge, decoding
from qwenedit.errors import InputError

# Each side of an input image should be in this range; outside it the API may refuse the image.
MIN_SIDE_PX = MIN_INPUT_SIDE_PX
MAX_SIDE_PX = MAX_INPUT_SIDE_PX

MIME_TYPES: dict[str, str] = {
    "png": "image/png",
    "jpeg": "image/jpeg",
    "bmp": "image/bmp",
    "tiff": "image/tiff",
    "webp": "image/webp",
    "gif": "image/gif",
}
PILLOW_FORMATS = {"PNG": "png", "JPEG": "jpeg", "MPO": "jpeg", "BMP": "bmp", "TIFF": "tiff", "WEBP": "webp"}
PILLOW_FORMATS["GIF"] = "gif"
ACCEPTED_FORMATS = "JPG, PNG, BMP, TIFF, WEBP or GIF"


def sniff_image_format(data: bytes) -> str | None:
    """The image format by magic bytes: png, jpeg, bmp, tiff, webp, gif, or None."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if data.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if data.startswith((b"GIF87a", b"GIF89a")):
        return "gif"
    if data.startswith(b"BM") and len(data) >= 14:
        return "bmp"
    if data.startswith((b"II*\x00", b"MM\x00*")):
        return "tiff"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return None


def data_uri_for(data: bytes, fmt: str) -> str:
    """``data:image/<fmt>;base64,...`` for ``data`` in a known format."""
    return f"data:{MIME_TYPES[fmt]};base64,{base64.b64encode(data).decode('ascii')}"


def data_uri_length(raw_bytes: int, fmt: str = "jpeg") -> int:
    """The length of the data URI ``raw_bytes`` of a ``fmt`` image would become."""
    return len(f"data:{MIME_TYPES[fmt]};base64,") + 4 * ((raw_bytes + 2) // 3)


def mib_text(n: int) -> str:
    """``n`` bytes as ``"10.0 MiB"``."""
    return f"{n / 1048576:.1f} MiB"


# --- content checks -----------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageInfo:
    """What a content check learned about an image."""

    format: str
    width: int
    height: int
    size: int
    warnings: tuple[str, ...] = ()


def inspect_image(data: bytes) -> ImageInfo:
    """Check that ``data`` is a supported image by content and decodes; raises ``InputError``.

    Decompression bombs (a small file declaring a huge canvas) are refused from the header, before
    any pixel is decoded, and so is anything that would decode to more than ``MAX_INPUT_PIXELS``
    (JPEGs decode at 1/8 scale, so only other formats meet that cap); decodes share the process-wide
    memory budget of ``qwenedit.decode``. Sides outside 384–3072 px are warnings, not errors.
    """
    fmt = sniff_image_format(data)
    if fmt is None:
        head = data[:8]
        shown = "the file is empty" if not data else f"it starts with {head!r}"
        raise InputError(f"is not an image: the content is not {ACCEPTED_FORMATS} ({shown})")
    try:
        # Pillow only warns between 1× and 2× MAX_IMAGE_PIXELS (and raises above); we refuse both.
        # (No warnings.catch_warnings here: it is not thread-safe, and checks run in threads.)
        with Image.open(io.BytesIO(data)) as im:
            width, height = im.size
            pillow_fmt = PILLOW_FORMATS.get(im.format or "")
            refuse_bomb(width, height)
            im.verify()
        with Image.open(io.BytesIO(data)) as im, decoding(im, draft_side=max(1, min(width, height) // 8)):
            pass  # decoded (a JPEG at 1/8 scale: fast) within the pixel cap and the decode budget
    except TooLarge:
        raise InputError(
            f"is {width}×{height} px: decoding it would take more than the {MAX_INPUT_PIXELS:,} pixels "
            f"allowed (4 × {MAX_SIDE_PX}², from the API's largest recommended image); not decoded"
        ) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        # Pillow refuses above 2 × MAX_IMAGE_PIXELS before we see the size (and its warning is raised
        # under -W error); its message has the pixel count.
        found = re.search(r"\((\d+) pixels\)", str(exc))
        declared = f"{int(found.group(1)):,} pixels" if found else "too many pixels"
        raise InputError(
            f"is refused as a decompression bomb: it declares {declared}, "
            f"over the {Image.MAX_IMAGE_PIXELS:,}-pixel safety limit"
        ) from None
    except InputError:
        raise
    except Exception as exc:  # Pillow raises many types for corrupt files (OSError, SyntaxError, ...)
        raise InputError(f"is a damaged {fmt.upper()} file: {exc}") from None
    if pillow_fmt != fmt:
        raise InputError(f"is not a usable image: it looks like {fmt.upper()} but does not decode as one")
    notes = []
    if not (MIN_SIDE_PX <= width <= MAX_SIDE_PX and MIN_SIDE_PX <= height <= MAX_SIDE_PX):
        notes.append(
            f"is {width}×{height} px; the API expects each side between {MIN_SIDE_PX} and {MAX_SIDE_PX} px "
            "and may refuse it"
        )
    return ImageInfo(fmt, width, height, len(data), tuple(notes))


def refuse_bomb(width: int, height: int) -> None:
    """Raise ``InputError`` for a canvas over Pillow's pixel safety limit."""
    limit = Image.MAX_IMAGE_PIXELS
    if limit and width * height > limit:
        raise InputError(
            f"is refused as a decompression bomb: it declares {width * height:,} pixels, "
            f"over the {limit:,}-pixel safety limit"
        )


def max_inline_raw() -> int:
    """The largest raw image whose base64 data URI still fits (prefix of the longest MIME type)."""
    prefix = len("data:image/jpeg;base64,")
    return (MAX_DATA_URI_BYTES - prefix) // 4 * 3
