"""The API's documented limits on one request (docs/dashscope-api.md §1), in one place.

Validation (``manifest/rules.py``), the input resolver (``inputs/``), the model table's defaults
(``catalog/models.py``) and the emulator (``emulator/``) read them from here. Per-model rules that
differ (``max_n``, the size range, ``prompt_extend``) live in the model table.
"""

from __future__ import annotations

from typing import Final

MAX_IMAGES: Final = 3
"""Input images per request."""
MAX_N: Final = 6
"""Output images per request (the plus and max families; qwen-image-edit makes one)."""
PROMPT_LIMIT: Final = 800
"""Prompt characters the API reads; the rest is silently dropped."""
PROMPT_LIMIT_2_0: Final = 1300
"""Prompt length the qwen-image-2.0 generation reads (the docs say tokens; counted here as characters)."""
NEGATIVE_PROMPT_LIMIT: Final = 500
"""Negative-prompt characters the API reads."""
SEED_MAX: Final = 2_147_483_647
"""The largest ``seed``."""
MIN_SIDE: Final = 512
"""The smallest side of an output ``size`` (the plus family)."""
MAX_SIDE: Final = 2048
"""The largest side of an output ``size`` (the plus family)."""
AREA_MIN_PIXELS: Final = 512 * 512
"""The smallest output area (width × height) of the qwen-image-2.0 generation."""
AREA_MAX_PIXELS: Final = 2048 * 2048
"""The largest output area (width × height) of the qwen-image-2.0 generation."""
SIZE_MULTIPLE: Final = 16
"""The API rounds each side of an output ``size`` to a multiple of this."""
MAX_DATA_URI_BYTES: Final = 10 * 1024 * 1024
"""One inline image: the whole ``data:`` URI, in bytes."""
MAX_IMAGE_BYTES: Final = 10 * 1024 * 1024
"""One image the API downloads (URLs, presigned S3)."""
MIN_INPUT_SIDE_PX: Final = 384
"""Each side of an input image should be at least this; below it the API may refuse the image."""
MAX_INPUT_SIDE_PX: Final = 3072
"""Each side of an input image should be at most this; above it the API may refuse the image."""
