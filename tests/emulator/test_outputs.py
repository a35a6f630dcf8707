"""Output links (signed, expiring), input images given as URLs, rendering, and the in-process app."""

from __future__ import annotations

import io
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import pytest
from PIL import Image

from devkit.clock import FakeClock
from devkit.procs import free_port, wait_until
from qwenedit.emulator import EmulatedDrop, EmulatorConfig, EmulatorServer, create_app
from qwenedit.emulator.config import GENERATION_PATH
from qwenedit.emulator.render import auto_size, render_outputs, round_size
from tests.emulator.helpers import body, image_bytes, image_urls, png_uri, post


def _one_url(server: EmulatorServer, **params: Any) -> str:
    with httpx.Client(base_url=server.base_url) as c:
        return image_urls(post(c, body(**params)))[0]


def _with_query(url: str, **changes: str) -> str:
    parts = urlsplit(url)
    query = {k: v[0] for k, v in parse_qs(parts.query).items()} | changes
    return parts._replace(query=urlencode(query)).geturl()


def test_link_expires_after_its_ttl(emulator_factory: Callable[..., EmulatorServer]) -> None:
    clock = FakeClock()
    server = emulator_factory(url_ttl_s=1, clock=clock)
    url = _one_url(server)

    assert httpx.get(url).status_code == 200
    clock.advance(2.05)
    expired = httpx.get(url)

    assert expired.status_code == 403
    assert "<Code>AccessDenied</Code>" in expired.text
    assert "Request has expired." in expired.text


def test_expiry_defaults_to_24_hours(emulator: EmulatorServer) -> None:
    expires = int(parse_qs(urlsplit(_one_url(emulator)).query)["Expires"][0])

    assert expires == pytest.approx(time.time() + 86_400, abs=5)


@pytest.mark.parametrize(
    "tamper",
    [
        lambda url: _with_query(url, Signature="AAAAAAAAAAAAAAAAAAAAAAAA"),
        lambda url: _with_query(url, Expires=str(int(time.time()) + 10 * 86_400)),
        lambda url: url.replace("/0.png", "/1.png"),
        lambda url: url.split("?")[0],
    ],
    ids=["signature", "extended expiry", "other image", "no query"],
)
def test_tampered_links_are_refused(emulator: EmulatorServer, tamper: Callable[[str], str]) -> None:
    url = _one_url(emulator, n=2)

    response = httpx.get(tamper(url))

    assert response.status_code == 403
    assert response.text.startswith("<?xml")


def test_link_of_another_emulator_is_refused(emulator_factory: Callable[..., EmulatorServer]) -> None:
    first, second = emulator_factory(), emulator_factory()
    url = _one_url(first)

    assert httpx.get(url.replace(first.base_url, second.base_url)).status_code == 403


def test_outputs_are_written_to_the_output_dir(
    emulator_factory: Callable[..., EmulatorServer], tmp_path: Path
) -> None:
    server = emulator_factory(output_dir=str(tmp_path))
    url = _one_url(server, n=2)

    request_id = urlsplit(url).path.split("/")[-2]
    assert sorted(p.name for p in (tmp_path / request_id).iterdir()) == ["0.png", "1.png"]


def test_public_base_url_is_used_for_links(emulator_factory: Callable[..., EmulatorServer]) -> None:
    server = emulator_factory(public_base_url="http://emulator.local:9999")

    assert _one_url(server).startswith("http://emulator.local:9999/_emulator/outputs/")


def test_http_url_inputs_are_downloaded(emulator: EmulatorServer) -> None:
    source = _one_url(emulator)  # the emulator's own output doubles as an http image (1248×832 → 3:2)

    with httpx.Client(base_url=emulator.base_url) as c:
        response = post(c, body([png_uri(50, 50), source]))

    assert response.status_code == 200
    assert response.json()["usage"]["width"] == 1248


@pytest.mark.parametrize(
    ("make_url", "message"),
    [
        (lambda base: f"http://127.0.0.1:{free_port()}/x.png", "download image failed"),
        (lambda base: f"{base}/_emulator/outputs/nope/0.png", "download image failed"),
        (lambda base: f"{base}/_emulator/health", "Invalid image format or corrupted file"),
    ],
    ids=["unreachable", "403", "not an image"],
)
def test_bad_url_inputs_are_400(
    emulator: EmulatorServer, make_url: Callable[[str], str], message: str
) -> None:
    with httpx.Client(base_url=emulator.base_url) as c:
        response = post(c, body([make_url(emulator.base_url)]))

    assert response.status_code == 400
    assert response.json()["code"] == "InvalidParameter"
    assert response.json()["message"] == message


@pytest.mark.parametrize("fmt", ["JPEG", "WEBP", "BMP", "GIF", "TIFF"])
def test_every_documented_input_format_is_accepted(emulator: EmulatorServer, fmt: str) -> None:
    from tests.emulator.helpers import data_uri

    uri = data_uri(image_bytes(120, 80, fmt=fmt), f"image/{fmt.lower()}")
    with httpx.Client(base_url=emulator.base_url) as c:
        response = post(c, body([uri]))

    assert response.status_code == 200
    assert response.json()["usage"]["width"] == 1248


@pytest.mark.parametrize("mode", ["fast", "full"])
def test_rendering_gives_exact_sizes_and_distinct_images(tmp_path: Path, mode: str) -> None:
    paths = render_outputs(
        image_bytes(640, 480, fmt="JPEG"),
        (1184, 896),
        2,
        caption="Replace the background with Antarctica",
        watermark=True,
        mode=mode,  # type: ignore[arg-type]
        out_dir=tmp_path,
    )

    images = [Image.open(p) for p in paths]
    assert [img.size for img in images] == [(1184, 896)] * 2
    assert images[0].tobytes() != images[1].tobytes()


def test_watermark_changes_the_bottom_right_corner(tmp_path: Path) -> None:
    def corner(watermark: bool) -> bytes:
        (path,) = render_outputs(
            image_bytes(),
            (1024, 1024),
            1,
            caption="x",
            watermark=watermark,
            mode="fast",
            out_dir=tmp_path / str(watermark),
        )
        with Image.open(path) as img:
            return img.crop((824, 824, 1024, 1000)).tobytes()

    assert corner(True) != corner(False)


@pytest.mark.parametrize(
    ("ratio", "expected"),
    [((3, 2), (1248, 832)), ((1, 1), (1024, 1024)), ((16, 9), (1376, 768)), ((9, 16), (768, 1376)),
     ((4, 3), (1184, 896)), ((2, 3), (832, 1248)), ((21, 9), (1568, 672))],
)  # fmt: skip
def test_auto_size_reproduces_the_documented_examples(
    ratio: tuple[int, int], expected: tuple[int, int]
) -> None:
    assert auto_size(*ratio) == expected


def test_size_rounding_uses_python_round() -> None:
    assert round_size(1033, 1032) == (1040, 1024)


async def test_app_works_in_process_without_a_server(tmp_path: Path) -> None:
    app = create_app(EmulatorConfig(output_dir=str(tmp_path), render="fast"))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://emulator") as client:
        ok = await client.post(GENERATION_PATH, json=body(n=2), headers={"Authorization": "Bearer sk-x"})
        url = ok.json()["output"]["choices"][0]["message"]["content"][1]["image"]
        image = await client.get(url)
        app.emulator.configure({"next_faults": ["drop"]})
        with pytest.raises(EmulatedDrop):
            await client.post(GENERATION_PATH, json=body(), headers={"Authorization": "Bearer sk-x"})

    assert ok.status_code == 200
    assert url.startswith("http://emulator/_emulator/outputs/")
    assert Image.open(io.BytesIO(image.content)).size == (1248, 832)
    assert len(app.emulator.books.ledger()) == 1


def test_keep_outputs_bounds_the_files_on_disk(
    emulator_factory: Callable[..., EmulatorServer], tmp_path: Path
) -> None:
    server = emulator_factory(output_dir=str(tmp_path), keep_outputs=4)
    with httpx.Client(base_url=server.base_url) as c:
        first = image_urls(post(c, body()))[0]
        for _ in range(11):
            post(c, body())
    # Old outputs are removed off the event loop, just after the answer that triggered the sweep.
    wait_until(lambda: len(list(tmp_path.iterdir())) <= 5, what="output sweep", timeout_s=3, interval_s=0.02)

    assert len(list(tmp_path.iterdir())) <= 5
    assert httpx.get(first).status_code == 404
    assert len(server.ledger()) == 12
