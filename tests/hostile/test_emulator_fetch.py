"""The emulator fetches URL inputs as the real API would: public addresses only, no redirects.

Row 1 of the hostile-input review (issue 19): the emulator followed redirects and fetched any host.
Only loopback servers are used; ``allow_private_urls`` stands for "the project's own tests".
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx

from qwenedit.emulator import EmulatorConfig, EmulatorServer
from tests.emulator.helpers import body, image_bytes, post
from tests.hostile.conftest import Hit, HttpServer, Reply

PNG = image_bytes(64, 48)


def _image(hit: Hit) -> Reply:
    return Reply(200, {"content-type": "image/png"}, PNG)


def test_by_default_a_loopback_url_input_is_refused_without_a_request(
    tmp_path: Path, http_server: Callable[..., HttpServer]
) -> None:
    images = http_server(_image)
    config = EmulatorConfig(rps=1000.0, render="fast", output_dir=str(tmp_path))  # defaults otherwise

    with EmulatorServer(config) as emulator, httpx.Client(base_url=emulator.base_url) as c:
        response = post(c, body([f"{images.base_url}/x.png"]))

    assert response.status_code == 400
    assert response.json()["message"] == "download image failed"
    assert images.hits == []  # not even a connection attempt that reached the server


def test_allowing_private_urls_fetches_the_loopback_input(
    emulator_factory: Callable[..., EmulatorServer], http_server: Callable[..., HttpServer]
) -> None:
    images = http_server(_image)
    emulator = emulator_factory(allow_private_urls=True)

    with httpx.Client(base_url=emulator.base_url) as c:
        response = post(c, body([f"{images.base_url}/x.png"]))

    assert response.status_code == 200, response.text
    assert [h.path for h in images.hits] == ["/x.png"]


def test_a_redirect_is_not_followed_even_when_private_urls_are_allowed(
    emulator_factory: Callable[..., EmulatorServer], http_server: Callable[..., HttpServer]
) -> None:
    target = http_server(_image)
    redirector = http_server(lambda hit: Reply(302, {"location": f"{target.base_url}/secret.png"}))
    emulator = emulator_factory(allow_private_urls=True)

    with httpx.Client(base_url=emulator.base_url) as c:
        response = post(c, body([f"{redirector.base_url}/x.png"]))

    assert response.status_code == 400
    assert response.json()["message"] == "download image failed"
    assert len(redirector.hits) == 1
    assert target.hits == []
