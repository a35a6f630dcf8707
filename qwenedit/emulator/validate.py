"""Pure request validation with the real API's codes and messages (docs/dashscope-api.md §1, §2, §4, §7).

Nothing here does I/O: the app feeds in the header and the parsed body and gets back either a
``ValidRequest`` or a ``Rejection`` carrying ``(status, code, message)`` exactly as DashScope sends them.
Image *contents* are checked later (they may need a download), but the checks on bytes already in hand
(data-URI size, MIME type against magic bytes) live here too.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from qwenedit.catalog.limits import (
    MAX_DATA_URI_BYTES,
    MAX_SIDE,
    MIN_SIDE,
    NEGATIVE_PROMPT_LIMIT,
    PROMPT_LIMIT,
    SEED_MAX,
)
from qwenedit.emulator.config import ModelSpec
from qwenedit.inputs import sniff_image_format

MSG_GENERIC = "Required parameter(s) missing or invalid, please check the request parameters."
MSG_BODY = "Required body invalid, please check the request body format."
MSG_NO_KEY = "No API-key provided."
MSG_BAD_KEY = "Invalid API-key provided."
MSG_EMPTY_MODEL = 'Required parameter "model" missing from request.'
MSG_EMPTY_INPUT = "Required input parameter missing from request."
MSG_MODEL_400 = "Model not exist."
MSG_MODEL_404 = "Model can not be found."
MSG_NO_MESSAGES = "No messages found in input"
MSG_MESSAGES_LEN = "messages length only support 1"
MSG_LACK = "lack of image or text"
MSG_N_ONE = "num_images_per_prompt must be 1"
MSG_URL_INVALID = "The provided URL does not appear to be valid. Ensure it is correctly formatted."
MSG_DATA_URI_TOO_BIG = "Exceeded limit on max bytes per data-uri item : {limit}"
MSG_DOWNLOAD = "download image failed"
MSG_NOT_IMAGE = "Invalid image format or corrupted file"
MSG_FORMAT = "image format error"
MSG_ASYNC = "current user api does not support asynchronous calls."
MSG_THROTTLED = "Requests rate limit exceeded, please try again later."
MSG_BURST = (
    "Request rate increased too quickly. To ensure system stability, please adjust your client logic to "
    "scale requests more smoothly over time."
)
MSG_500 = "An internal error has occured during execution, please try again later or contact service support."
MSG_503 = "Model is unavailable, please try again later."
MSG_INSPECTION = "Input or output data may contain inappropriate content."
MSG_BAD_PATH = "url error, please check url！"
MSG_TOO_LARGE = "Payload Too Large."

SIZE_MIN, SIZE_MAX = MIN_SIDE, MAX_SIDE
_SIZE_RE = re.compile(r"^\d+\*\d+$")
_DATA_URI_HEADER_MAX = 256  # "data:<mime>;<params>;base64," is short; never scan a 10 MB payload for it

# MIME subtypes that name the same thing (image/jpg is common in the wild and the docs).
_MIME_ALIASES = {"jpg": "jpeg", "tif": "tiff", "x-ms-bmp": "bmp", "x-bmp": "bmp"}


class Rejection(Exception):
    """The request is refused with this HTTP status, code and message."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message


def invalid(message: str = MSG_GENERIC) -> Rejection:
    """A 400 InvalidParameter rejection."""
    return Rejection(400, "InvalidParameter", message)


@dataclass(frozen=True)
class ValidRequest:
    """A request that passed every check that needs no I/O. The prompt is already truncated."""

    model: str
    images: tuple[str, ...]
    prompt: str
    n: int
    size: tuple[int, int] | None  # requested W, H before rounding; None: auto
    seed: int | None
    watermark: bool
    negative_prompt: str | None


def api_key_from_header(authorization: str | None) -> str | None:
    """The key from ``Authorization: Bearer <key>``, or None when there is none."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return None
    return token


def check_key(key: str | None, keys: Any) -> None:
    """401 InvalidApiKey unless ``key`` is acceptable (``keys`` None: anything starting with ``sk-``)."""
    if key is None:
        raise Rejection(401, "InvalidApiKey", MSG_NO_KEY)
    ok = key.startswith("sk-") if keys is None else key in keys
    if not ok:
        raise Rejection(401, "InvalidApiKey", MSG_BAD_KEY)


def parse_json_body(raw: bytes) -> dict[str, Any]:
    """The body as a JSON object, or 400 InvalidParameter."""
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise invalid(MSG_BODY) from None
    if not isinstance(body, dict):
        raise invalid(MSG_BODY)
    return body


def model_of(body: Mapping[str, Any]) -> str:
    """The ``model`` field, or 400 BadRequest.EmptyModel."""
    model = body.get("model")
    if not isinstance(model, str) or not model.strip():
        raise Rejection(400, "BadRequest.EmptyModel", MSG_EMPTY_MODEL)
    return model


def validate_request(
    body: Mapping[str, Any],
    models: Mapping[str, ModelSpec],
    *,
    strict_size_n: bool = True,
    unknown_model_404: bool = False,
    max_prompt_chars: int = PROMPT_LIMIT,
    max_negative_prompt_chars: int = NEGATIVE_PROMPT_LIMIT,
    max_data_uri_bytes: int = MAX_DATA_URI_BYTES,
    oss_resolve: bool = False,
) -> ValidRequest:
    """Check a parsed body in the order the real service does; return it normalised or raise Rejection."""
    model = model_of(body)
    spec = models.get(model)
    if spec is None:
        raise Rejection(404, "ModelNotFound", MSG_MODEL_404) if unknown_model_404 else invalid(MSG_MODEL_400)

    images, prompt = _check_messages(body.get("input"))
    parameters = body.get("parameters", {})
    if parameters is None:
        parameters = {}
    if not isinstance(parameters, dict):
        raise invalid()
    n = _check_n(parameters.get("n", 1), spec)
    size = _check_size(parameters.get("size"), n, spec, strict_size_n)
    seed = _check_seed(parameters.get("seed"))
    watermark = _check_bool(parameters.get("watermark", False))
    _check_bool(parameters.get("prompt_extend", True))
    negative = parameters.get("negative_prompt")
    if negative is not None and not isinstance(negative, str):
        raise invalid()
    for ref in images:
        check_image_ref(ref, max_data_uri_bytes=max_data_uri_bytes, oss_resolve=oss_resolve)
    return ValidRequest(
        model=model,
        images=images,
        prompt=prompt[: spec.prompt_chars or max_prompt_chars],  # the real service truncates silently
        n=n,
        size=size,
        seed=seed,
        watermark=watermark,
        negative_prompt=None if negative is None else negative[:max_negative_prompt_chars],
    )


def _check_messages(inp: Any) -> tuple[tuple[str, ...], str]:
    if not isinstance(inp, dict):
        raise Rejection(400, "BadRequest.EmptyInput", MSG_EMPTY_INPUT)
    messages = inp.get("messages")
    if not isinstance(messages, list) or not messages:
        raise invalid(MSG_NO_MESSAGES)
    if len(messages) != 1:
        raise invalid(MSG_MESSAGES_LEN)
    message = messages[0]
    if not isinstance(message, dict) or message.get("role") != "user":
        raise invalid()
    content = message.get("content")
    if not isinstance(content, list):
        raise invalid(MSG_LACK)
    images: list[str] = []
    texts: list[str] = []
    for item in content:
        if not isinstance(item, dict) or len(item) != 1:
            raise invalid()
        ((key, value),) = item.items()
        if key == "image" and isinstance(value, str) and value:
            images.append(value)
        elif key == "text" and isinstance(value, str):
            texts.append(value)
        else:
            raise invalid()
    if not images or len(texts) != 1:
        raise invalid(MSG_LACK)
    if len(images) > 3:
        raise invalid()
    return tuple(images), texts[0]


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_n(n: Any, spec: ModelSpec) -> int:
    if not _is_int(n):
        raise invalid()
    if spec.max_n == 1 and n != 1:
        raise invalid(MSG_N_ONE)
    if not 1 <= n <= spec.max_n:
        raise invalid()
    return int(n)


def _check_size(size: Any, n: int, spec: ModelSpec, strict_size_n: bool) -> tuple[int, int] | None:
    if size is None:
        return None
    if not isinstance(size, str) or not _SIZE_RE.match(size):
        raise invalid()
    w, h = (int(side) for side in size.split("*"))
    if spec.min_pixels is not None and spec.max_pixels is not None:
        if not spec.min_pixels <= w * h <= spec.max_pixels:  # the 2.0 generation: an area rule
            raise invalid()
    elif not (SIZE_MIN <= w <= SIZE_MAX and SIZE_MIN <= h <= SIZE_MAX):
        raise invalid()
    if not spec.accepts_size:
        return None  # qwen-image-edit: "resolution cannot be specified", the output follows the input
    if strict_size_n and spec.size_only_with_n1 and n != 1:
        raise invalid()
    return w, h


def _check_seed(seed: Any) -> int | None:
    if seed is None:
        return None
    if not _is_int(seed) or not 0 <= seed <= SEED_MAX:
        raise invalid()
    return int(seed)


def _check_bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise invalid()
    return value


def check_image_ref(ref: str, *, max_data_uri_bytes: int, oss_resolve: bool) -> None:
    """Reject image references that are wrong before anything is fetched."""
    lowered = ref[:16].lower()
    if lowered.startswith("data:"):
        if len(ref) > max_data_uri_bytes:
            raise invalid(MSG_DATA_URI_TOO_BIG.format(limit=max_data_uri_bytes))
        if _data_uri_header(ref) is None:
            raise invalid(MSG_NOT_IMAGE)
    elif lowered.startswith("oss://"):
        if not oss_resolve:
            raise invalid(MSG_URL_INVALID)
    elif not lowered.startswith(("http://", "https://")):
        raise invalid(MSG_URL_INVALID)


def _data_uri_header(ref: str) -> tuple[str, int] | None:
    """``(mime, payload offset)`` of a ``data:<mime>[;params];base64,`` URI, or None."""
    comma = ref.find(",", 0, _DATA_URI_HEADER_MAX)
    if ref[:5].lower() != "data:" or comma < 0:
        return None
    mime, *params = ref[5:comma].split(";")
    if "base64" not in (p.strip().lower() for p in params):
        return None
    return mime.strip().lower(), comma + 1


def decode_data_uri(ref: str) -> tuple[str, bytes]:
    """``(mime, payload)`` of a base64 data URI (already passed check_image_ref), or 400."""
    header = _data_uri_header(ref)
    if header is None:
        raise invalid(MSG_NOT_IMAGE)
    mime, start = header
    try:
        payload = base64.b64decode(ref[start:])  # lenient about line breaks, like most servers
    except (binascii.Error, ValueError):
        raise invalid(MSG_NOT_IMAGE) from None
    return mime, payload


def check_mime_matches(mime: str, data: bytes) -> str:
    """The sniffed format if it is an image matching the data URI's MIME type; else 400."""
    fmt = sniff_image_format(data)
    if fmt is None:
        raise invalid(MSG_NOT_IMAGE)
    kind, _, subtype = mime.partition("/")
    subtype = _MIME_ALIASES.get(subtype, subtype)
    if kind != "image" or subtype != fmt:
        raise invalid(MSG_FORMAT)
    return fmt
