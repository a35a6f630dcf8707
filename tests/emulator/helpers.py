"""Small builders shared by the emulator tests: input images, request bodies, a POST helper."""

from __future__ import annotations

import base64
import io
from typing import Any

import httpx
from PIL import Image

from qwenedit.emulator.config import GENERATION_PATH

MODEL = "qwen-image-edit-plus"
KEY = "sk-test"


def image_bytes(
    width: int = 96, height: int = 64, fmt: str = "PNG", color: tuple[int, int, int] = (200, 40, 40)
) -> bytes:
    """A small solid image encoded as ``fmt``."""
    buf = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buf, format=fmt)
    return buf.getvalue()


def data_uri(data: bytes, mime: str = "image/png") -> str:
    """A base64 data URI of ``data`` claiming ``mime``."""
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def png_uri(width: int = 96, height: int = 64) -> str:
    """A data URI of a small PNG of the given size."""
    return data_uri(image_bytes(width, height))


def body(
    images: list[str] | None = None, text: str = "make it blue", model: str = MODEL, **parameters: Any
) -> dict[str, Any]:
    """A generation request body as the API documents it."""
    content: list[dict[str, str]] = [{"image": img} for img in (images or [png_uri()])]
    content.append({"text": text})
    return {
        "model": model,
        "input": {"messages": [{"role": "user", "content": content}]},
        "parameters": parameters,
    }


def post(client: httpx.Client, payload: Any, key: str | None = KEY, **kwargs: Any) -> httpx.Response:
    """POST to the generation endpoint with a Bearer key (None: no Authorization header)."""
    headers = {"Authorization": f"Bearer {key}"} if key is not None else {}
    headers.update(kwargs.pop("headers", {}))
    if isinstance(payload, (bytes, str)):
        return client.post(GENERATION_PATH, content=payload, headers=headers, **kwargs)
    return client.post(GENERATION_PATH, json=payload, headers=headers, **kwargs)


def image_urls(response: httpx.Response) -> list[str]:
    """The output image URLs of a successful response."""
    return [item["image"] for item in response.json()["output"]["choices"][0]["message"]["content"]]
