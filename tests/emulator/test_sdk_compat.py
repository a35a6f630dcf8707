"""The official `dashscope` SDK talks to the emulator exactly as it talks to the real API.

Both request examples of the seed doc (qwen-image-edit-plus-api.txt) run unchanged apart from the base
URL: three-image fusion with http URLs (served by a tiny local file server) and single-image editing with
a base64 data URI. Every returned URL must download as a PNG.
"""

from __future__ import annotations

import functools
import io
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from qwenedit.emulator import EmulatorServer
from tests.emulator.helpers import data_uri, image_bytes

dashscope = pytest.importorskip("dashscope")


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        return  # keep per-request access lines out of the test output


@pytest.fixture
def image_host(tmp_path: Path) -> Iterator[str]:
    """A static file server on loopback with input1..3.png of different shapes, like the seed's."""
    for name, size in {"input1.png": (300, 400), "input2.png": (320, 320), "input3.png": (420, 280)}.items():
        Image.new("RGB", size, (30, 90, 160)).save(tmp_path / name)
    handler = functools.partial(_QuietHandler, directory=str(tmp_path))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture
def sdk(emulator: EmulatorServer, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The dashscope module pointed at the emulator (restored afterwards)."""
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setattr(dashscope, "base_http_api_url", f"{emulator.base_url}/api/v1")
    return dashscope


def _assert_pngs(urls: list[str], size: tuple[int, int]) -> None:
    for url in urls:
        download = httpx.get(url, timeout=10)
        assert download.status_code == 200
        with Image.open(io.BytesIO(download.content)) as img:
            assert (img.format, img.size) == ("PNG", size)


def test_seed_multi_image_fusion_example_works_with_the_sdk(
    sdk: Any, emulator: EmulatorServer, image_host: str
) -> None:
    messages = [
        {
            "role": "user",
            "content": [
                {"image": f"{image_host}/input1.png"},
                {"image": f"{image_host}/input2.png"},
                {"image": f"{image_host}/input3.png"},
                {
                    "text": "Make the girl from Image 1 wear the black dress from Image 2 and sit in the "
                    "pose from Image 3."
                },
            ],
        }
    ]

    response = sdk.MultiModalConversation.call(
        api_key="sk-test",
        model="qwen-image-edit-plus",
        messages=messages,
        stream=False,
        n=2,
        watermark=False,
        negative_prompt=" ",
        prompt_extend=True,
    )

    assert response.status_code == 200, (response.code, response.message)
    content = response.output.choices[0].message.content
    assert len(content) == 2
    assert response.usage.image_count == 2
    assert (response.usage.width, response.usage.height) == (1248, 832)  # the last image is 3:2
    assert response.request_id == emulator.ledger()[0]["request_id"]
    _assert_pngs([item["image"] for item in content], (1248, 832))


def test_seed_base64_single_image_example_works_with_the_sdk(sdk: Any, emulator: EmulatorServer) -> None:
    image = data_uri(image_bytes(280, 200, fmt="PNG"), "image/png")
    messages = [
        {
            "role": "user",
            "content": [
                {"image": image},
                {
                    "text": "Generate an image that matches the depth map, following this description: A "
                    "dilapidated red bicycle is parked on a muddy path with a dense primeval forest in the "
                    "background."
                },
            ],
        }
    ]

    response = sdk.MultiModalConversation.call(
        api_key="sk-test",
        model="qwen-image-edit-plus",
        messages=messages,
        stream=False,
        n=2,
        watermark=False,
        negative_prompt=" ",
        prompt_extend=True,
    )

    assert response.status_code == 200, (response.code, response.message)
    content = response.output.choices[0].message.content
    assert response.usage.image_count == len(content) == 2
    _assert_pngs([item["image"] for item in content], (1216, 864))  # 1.4:1 → the doc's 1216×864


def test_sdk_with_size_and_n1_gets_the_rounded_size(sdk: Any) -> None:
    messages = [{"role": "user", "content": [{"image": data_uri(image_bytes())}, {"text": "make it blue"}]}]

    response = sdk.MultiModalConversation.call(
        api_key="sk-test",
        model="qwen-image-edit-plus",
        messages=messages,
        stream=False,
        n=1,
        size="1033*1032",
    )

    assert response.status_code == 200
    assert (response.usage.width, response.usage.height) == (1040, 1024)


@pytest.mark.parametrize(
    ("call_kwargs", "status", "code"),
    [
        ({"api_key": "bogus"}, 401, "InvalidApiKey"),
        ({"api_key": "sk-test", "n": 7}, 400, "InvalidParameter"),
        ({"api_key": "sk-test", "model": "qwen-image-edit", "n": 2}, 400, "InvalidParameter"),
    ],
)
def test_sdk_sees_errors_with_their_code(
    sdk: Any, call_kwargs: dict[str, Any], status: int, code: str
) -> None:
    messages = [{"role": "user", "content": [{"image": data_uri(image_bytes())}, {"text": "make it blue"}]}]
    kwargs: dict[str, Any] = {"model": "qwen-image-edit-plus", "messages": messages, "stream": False}

    response = sdk.MultiModalConversation.call(**(kwargs | call_kwargs))

    assert (response.status_code, response.code) == (status, code)
    assert response.request_id


def test_sdk_sees_a_forced_server_fault(sdk: Any, emulator: EmulatorServer) -> None:
    emulator.configure(next_faults=["503"])
    messages = [{"role": "user", "content": [{"image": data_uri(image_bytes())}, {"text": "x"}]}]

    response = sdk.MultiModalConversation.call(
        api_key="sk-test", model="qwen-image-edit-plus", messages=messages, stream=False
    )

    assert (response.status_code, response.code) == (503, "ModelUnavailable")
    assert emulator.ledger() == []
