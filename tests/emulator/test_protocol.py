"""The generation endpoint over real HTTP: success shape, validation errors, auth, account failures."""

from __future__ import annotations

import io
import re
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from PIL import Image

from qwenedit.emulator import EmulatorServer
from tests.emulator.helpers import KEY, MODEL, body, data_uri, image_bytes, image_urls, png_uri, post

GENERIC = "Required parameter(s) missing or invalid, please check the request parameters."


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmulatorServer]:
    """One emulator for the read-only checks of this module (starting one per case would be slower)."""
    from qwenedit.emulator import EmulatorConfig

    config = EmulatorConfig(rps=10_000, render="fast", output_dir=str(tmp_path_factory.mktemp("out")))
    with EmulatorServer(config) as server:
        yield server


@pytest.fixture
def client(shared: EmulatorServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=shared.base_url, timeout=10) as c:
        yield c


def test_success_has_the_documented_shape(client: httpx.Client) -> None:
    response = post(
        client, body([png_uri(300, 200)], n=2, watermark=False, negative_prompt=" ", stream=False)
    )

    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    payload = response.json()
    assert set(payload) == {"output", "usage", "request_id"}
    assert payload["usage"] == {"width": 1248, "height": 832, "image_count": 2}
    uuid.UUID(payload["request_id"])
    assert response.headers["x-request-id"] == payload["request_id"]
    (choice,) = payload["output"]["choices"]
    assert choice["finish_reason"] == "stop"
    assert choice["message"]["role"] == "assistant"
    assert len(choice["message"]["content"]) == 2
    for url in image_urls(response):
        assert re.search(
            r"/_emulator/outputs/[-0-9a-f]+/\d\.png\?Expires=\d+&OSSAccessKeyId=.+&Signature=", url
        )


def test_outputs_download_as_pngs_of_the_reported_size(client: httpx.Client) -> None:
    response = post(client, body([png_uri(64, 64), png_uri(90, 160)], n=3))

    usage = response.json()["usage"]
    assert (usage["width"], usage["height"]) == (768, 1376)  # 9:16 follows the LAST image
    for url in image_urls(response):
        download = httpx.get(url)
        assert download.status_code == 200
        assert download.headers["content-type"] == "image/png"
        with Image.open(io.BytesIO(download.content)) as img:
            assert img.format == "PNG"
            assert img.size == (768, 1376)


@pytest.mark.parametrize(
    ("last", "expected"),
    [
        ((300, 200), (1248, 832)),
        ((100, 100), (1024, 1024)),
        ((160, 90), (1376, 768)),
        ((140, 100), (1216, 864)),
    ],
)
def test_auto_size_follows_the_last_image_aspect_ratio(
    client: httpx.Client, last: tuple[int, int], expected: tuple[int, int]
) -> None:
    response = post(client, body([png_uri(50, 150), png_uri(*last)]))

    assert (response.json()["usage"]["width"], response.json()["usage"]["height"]) == expected


@pytest.mark.parametrize(
    ("size", "expected"),
    [("1033*1032", (1040, 1024)), ("1024*1536", (1024, 1536)), ("2048*512", (2048, 512))],
)
def test_size_sides_round_to_multiples_of_16(
    client: httpx.Client, size: str, expected: tuple[int, int]
) -> None:
    response = post(client, body(size=size))

    usage = response.json()["usage"]
    assert (usage["width"], usage["height"]) == expected
    with Image.open(io.BytesIO(httpx.get(image_urls(response)[0]).content)) as img:
        assert img.size == expected


def test_qwen_image_edit_ignores_size_and_follows_the_input(client: httpx.Client) -> None:
    response = post(client, body([png_uri(200, 200)], model="qwen-image-edit", size="1536*1024"))

    assert response.status_code == 200
    assert response.json()["usage"] == {"width": 1024, "height": 1024, "image_count": 1}


def test_unknown_parameters_are_accepted(client: httpx.Client) -> None:
    response = post(client, body(stream=False, result_format="message", anything={"nested": True}))

    assert response.status_code == 200


def test_long_prompt_is_truncated_not_rejected(client: httpx.Client) -> None:
    response = post(client, body(text="x" * 5000, negative_prompt="y" * 900))

    assert response.status_code == 200


def _without_text() -> dict[str, Any]:
    b = body()
    b["input"]["messages"][0]["content"].pop()
    return b


def _two_texts() -> dict[str, Any]:
    b = body()
    b["input"]["messages"][0]["content"].append({"text": "again"})
    return b


def _two_messages() -> dict[str, Any]:
    b = body()
    b["input"]["messages"].append(b["input"]["messages"][0])
    return b


def _without(*path: str) -> dict[str, Any]:
    b = body()
    node: Any = b
    for part in path[:-1]:
        node = node[part]
    del node[path[-1]]
    return b


_BIG = 10_485_760
_OVERSIZED_URI = "data:image/png;base64," + "A" * (_BIG - len("data:image/png;base64,") + 4)

BODY = "Required body invalid, please check the request body format."
BAD_URL = "The provided URL does not appear to be valid. Ensure it is correctly formatted."
NOT_IMAGE = "Invalid image format or corrupted file"
LACK = "lack of image or text"
IP = "InvalidParameter"
_ONLY_TEXT = {"input": {"messages": [{"role": "user", "content": [{"text": "x"}]}]}}

VALIDATION_CASES: list[tuple[str, Callable[[], Any], int, str, str]] = [
    ("not json", lambda: b"{not json", 400, IP, BODY),
    ("json array", lambda: b"[]", 400, IP, BODY),
    ("no model", lambda: _without("model"), 400, "BadRequest.EmptyModel",
     'Required parameter "model" missing from request.'),
    ("unknown model", lambda: body(model="qwen-image-edit-ultra"), 400, IP, "Model not exist."),
    ("no input", lambda: _without("input"), 400, "BadRequest.EmptyInput",
     "Required input parameter missing from request."),
    ("no messages", lambda: _without("input", "messages"), 400, IP, "No messages found in input"),
    ("two messages", _two_messages, 400, IP, "messages length only support 1"),
    ("no text", _without_text, 400, IP, LACK),
    ("two texts", _two_texts, 400, IP, LACK),
    ("no image", lambda: body() | _ONLY_TEXT, 400, IP, LACK),
    ("four images", lambda: body([png_uri()] * 4), 400, IP, GENERIC),
    ("n=7", lambda: body(n=7), 400, IP, GENERIC),
    ("n=0", lambda: body(n=0), 400, IP, GENERIC),
    ("n not int", lambda: body(n="2"), 400, IP, GENERIC),
    ("n=2 on qwen-image-edit", lambda: body(model="qwen-image-edit", n=2), 400, IP,
     "num_images_per_prompt must be 1"),
    ("size with x", lambda: body(size="1024x1024"), 400, IP, GENERIC),
    ("size too small", lambda: body(size="511*1024"), 400, IP, GENERIC),
    ("size too big", lambda: body(size="1024*2049"), 400, IP, GENERIC),
    ("size with n=2", lambda: body(size="1024*1024", n=2), 400, IP, GENERIC),
    ("negative seed", lambda: body(seed=-1), 400, IP, GENERIC),
    ("seed too big", lambda: body(seed=2_147_483_648), 400, IP, GENERIC),
    ("watermark not bool", lambda: body(watermark="yes"), 400, IP, GENERIC),
    ("data uri too big", lambda: body([_OVERSIZED_URI]), 400, IP,
     "Exceeded limit on max bytes per data-uri item : 10485760"),
    ("not an image", lambda: body([data_uri(b"hello, world" * 10)]), 400, IP, NOT_IMAGE),
    ("mime mismatch", lambda: body([data_uri(image_bytes(fmt="JPEG"), "image/png")]), 400, IP,
     "image format error"),
    ("corrupted png", lambda: body([data_uri(image_bytes()[:60])]), 400, IP, NOT_IMAGE),
    ("local path", lambda: body(["/etc/passwd"]), 400, IP, BAD_URL),
    ("oss without header", lambda: body(["oss://dashscope-instant/x/y.png"]), 400, IP, BAD_URL),
]  # fmt: skip


@pytest.mark.parametrize(
    ("payload", "status", "code", "message"),
    [pytest.param(*case[1:], id=case[0]) for case in VALIDATION_CASES],
)
def test_invalid_requests_get_the_real_code_and_message(
    client: httpx.Client, payload: Callable[[], Any], status: int, code: str, message: str
) -> None:
    response = post(client, payload())

    assert response.status_code == status
    error = response.json()
    assert error == {"request_id": error["request_id"], "code": code, "message": message}
    assert response.headers["x-request-id"] == error["request_id"]


def test_a_jpeg_labelled_jpg_is_accepted(client: httpx.Client) -> None:
    response = post(client, body([data_uri(image_bytes(fmt="JPEG"), "image/jpg")]))

    assert response.status_code == 200


def test_validation_failures_are_not_billed(shared: EmulatorServer, client: httpx.Client) -> None:
    before = len(shared.ledger())

    post(client, body(n=9))

    assert len(shared.ledger()) == before


def test_missing_key_is_401_no_api_key(client: httpx.Client) -> None:
    response = post(client, body(), key=None)

    assert response.status_code == 401
    assert response.json()["code"] == "InvalidApiKey"
    assert response.json()["message"] == "No API-key provided."


def test_key_without_sk_prefix_is_401_invalid_key(client: httpx.Client) -> None:
    response = post(client, body(), key="not-a-key")

    assert response.status_code == 401
    assert response.json()["message"] == "Invalid API-key provided."


def test_unknown_path_under_api_is_url_error(client: httpx.Client) -> None:
    response = client.post("/api/v1/services/aigc/image-generation/generation", json={})

    assert response.status_code == 400
    assert response.json()["message"] == "url error, please check url！"


def test_async_header_is_refused(client: httpx.Client) -> None:
    response = post(client, body(), headers={"X-DashScope-Async": "enable"})

    assert response.status_code == 403
    assert response.json()["message"] == "current user api does not support asynchronous calls."


def test_configured_keys_reject_others(emulator_factory: Callable[..., EmulatorServer]) -> None:
    server = emulator_factory(keys={"sk-good"})
    with httpx.Client(base_url=server.base_url) as c:
        assert post(c, body(), key="sk-good").status_code == 200
        bad = post(c, body(), key="sk-other")

    assert bad.status_code == 401
    assert bad.json()["message"] == "Invalid API-key provided."


@pytest.mark.parametrize(
    ("failure", "status"),
    [
        ("Arrearage", 400),
        ("AllocationQuota.FreeTierOnly", 403),
        ("AccessDenied", 403),
        ("PrepaidBillOverdue", 429),
    ],
)
def test_key_configured_with_an_account_failure_answers_it(
    emulator_factory: Callable[..., EmulatorServer], failure: str, status: int
) -> None:
    server = emulator_factory(key_failures={"sk-broke": failure})
    with httpx.Client(base_url=server.base_url) as c:
        response = post(c, body(), key="sk-broke")
        healthy = post(c, body(), key="sk-fine")

    assert response.status_code == status
    assert response.json()["code"] == failure
    assert healthy.status_code == 200
    assert [e["key_id"] for e in server.ledger()] == [server.ledger()[0]["key_id"]]


def test_account_failure_can_be_switched_on_at_runtime_by_account_name(
    emulator_factory: Callable[..., EmulatorServer],
) -> None:
    server = emulator_factory(accounts={"sk-a": "team", "sk-b": "team"})
    with httpx.Client(base_url=server.base_url) as c:
        assert post(c, body(), key="sk-a").status_code == 200
        c.post("/_emulator/config", json={"key_failures": {"team": "Arrearage"}}).raise_for_status()
        response = post(c, body(), key="sk-b")

    assert response.status_code == 400
    assert response.json()["message"] == "Access denied, please make sure your account is in good standing."


def test_ledger_never_holds_the_raw_key(emulator: EmulatorServer) -> None:
    with httpx.Client(base_url=emulator.base_url) as c:
        post(c, body(n=2), key="sk-secret-value-123")
        ledger_text = c.get("/_emulator/ledger").text
        stats_text = c.get("/_emulator/stats").text + c.get("/_emulator/arrivals").text

    (entry,) = emulator.ledger()
    assert entry["image_count"] == 2
    assert entry["model"] == MODEL
    assert "sk-secret" not in ledger_text + stats_text
    assert entry["key_id"].startswith("key-")


def test_the_fixture_key_is_accepted(emulator: EmulatorServer) -> None:
    with httpx.Client(base_url=emulator.base_url) as c:
        assert post(c, body(), key=KEY).status_code == 200


def test_unknown_model_can_answer_404_model_not_found(
    emulator_factory: Callable[..., EmulatorServer],
) -> None:
    server = emulator_factory(unknown_model_404=True)
    with httpx.Client(base_url=server.base_url) as c:
        response = post(c, body(model="qwen-image-edit-ultra"))

    assert response.status_code == 404
    assert (response.json()["code"], response.json()["message"]) == (
        "ModelNotFound",
        "Model can not be found.",
    )


def test_oversized_body_is_413(emulator_factory: Callable[..., EmulatorServer]) -> None:
    server = emulator_factory(max_body_bytes=50_000)
    with httpx.Client(base_url=server.base_url) as c:
        response = post(c, body([png_uri(400, 400)], text="x" * 60_000))

    assert response.status_code == 413
    assert response.json()["code"] == "BadRequest.TooLarge"


def test_lenient_mode_allows_size_with_several_images(
    emulator_factory: Callable[..., EmulatorServer],
) -> None:
    server = emulator_factory(strict_size_n=False)
    with httpx.Client(base_url=server.base_url) as c:
        response = post(c, body(size="1024*1536", n=2))

    assert response.status_code == 200
    assert response.json()["usage"] == {"width": 1024, "height": 1536, "image_count": 2}
