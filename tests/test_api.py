"""Pure tests of the DashScope client's core: base URLs, request body and headers, response parsing
and error classification for every code family of docs/dashscope-api.md §4. No network."""

from __future__ import annotations

import json
import traceback
from typing import Any

import httpx
import pytest

from qwenedit import errors
from qwenedit.api import (
    GENERATION_PATH,
    REGIONS,
    USER_AGENT,
    DashScopeClient,
    EditRequest,
    EditResult,
    api_key_from_env,
    build_body,
    build_headers,
    parse_response,
    resolve_base_url,
)
from qwenedit.errors import MissingApiKey
from qwenedit.jobs import Job

FAKE_KEY = "sk-LEAKCANARY0123456789abcdef"
JSON = "application/json"


def success_body(urls: list[str], image_count: int | None = None, **extra: Any) -> bytes:
    body: dict[str, Any] = {
        "output": {
            "choices": [
                {
                    "finish_reason": "stop",
                    "message": {"role": "assistant", "content": [{"image": u} for u in urls]},
                }
            ]
        },
        "usage": {
            "width": 1248,
            "height": 832,
            "image_count": len(urls) if image_count is None else image_count,
        },
        "request_id": "rid-body",
    }
    body.update(extra)
    return json.dumps(body).encode()


def error_body(code: str, message: str, request_id: str = "rid-err") -> bytes:
    return json.dumps({"request_id": request_id, "code": code, "message": message}).encode()


# --- base URL and key -----------------------------------------------------------------------------


def test_regions_map_to_the_documented_hosts() -> None:
    assert REGIONS == {
        "singapore": "https://dashscope-intl.aliyuncs.com",
        "beijing": "https://dashscope.aliyuncs.com",
    }
    assert GENERATION_PATH == "/api/v1/services/aigc/multimodal-generation/generation"


def test_base_url_comes_from_the_region_when_nothing_overrides_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DASHSCOPE_BASE_URL", raising=False)
    assert resolve_base_url("singapore", None) == "https://dashscope-intl.aliyuncs.com"
    assert resolve_base_url("Beijing", None) == "https://dashscope.aliyuncs.com"


def test_base_url_argument_beats_env_which_beats_region(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DASHSCOPE_BASE_URL", "http://127.0.0.1:9000/")
    assert resolve_base_url("singapore", None) == "http://127.0.0.1:9000"
    assert resolve_base_url("singapore", "http://localhost:8765") == "http://localhost:8765"


def test_base_url_drops_a_trailing_sdk_style_api_v1(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DASHSCOPE_BASE_URL", raising=False)
    got = resolve_base_url("beijing", "https://dashscope-intl.aliyuncs.com/api/v1/")
    assert got == "https://dashscope-intl.aliyuncs.com"
    assert (
        resolve_base_url("beijing", "https://gw.example.com/dashscope") == "https://gw.example.com/dashscope"
    )


def test_unknown_region_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DASHSCOPE_BASE_URL", raising=False)
    with pytest.raises(ValueError, match=r"unknown region 'frankfurt'.*beijing, singapore"):
        resolve_base_url("frankfurt", None)


@pytest.mark.parametrize(
    "bad", ["dashscope.aliyuncs.com", "ftp://x.example", "https://u:p@x.example", "http://", "http://h:port"]
)
def test_base_url_must_be_a_plain_http_url(bad: str) -> None:
    with pytest.raises(ValueError):
        resolve_base_url("singapore", bad)


def test_api_key_is_read_from_env_and_stripped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DASHSCOPE_API_KEY", f"  {FAKE_KEY}\n")
    assert api_key_from_env() == FAKE_KEY
    monkeypatch.setenv("OTHER_ACCOUNT_KEY", "sk-other")
    assert api_key_from_env("OTHER_ACCOUNT_KEY") == "sk-other"


@pytest.mark.parametrize("value", [None, "", "   "])
def test_missing_api_key_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, value: str | None) -> None:
    if value is None:
        monkeypatch.delenv("DASHSCOPE_API_KEY", raising=False)
    else:
        monkeypatch.setenv("DASHSCOPE_API_KEY", value)
    with pytest.raises(MissingApiKey, match="DASHSCOPE_API_KEY is not set"):
        api_key_from_env()


@pytest.mark.parametrize("key", ["", "sk-abc def", "sk-abc\ndef", "sk-ключ"])
def test_client_refuses_a_key_that_could_leak_through_a_header_error(key: str) -> None:
    with pytest.raises(ValueError) as info:
        DashScopeClient(key, "http://127.0.0.1:1")
    assert "abc" not in str(info.value) and "ключ" not in str(info.value)


def test_client_repr_never_shows_the_key() -> None:
    client = DashScopeClient(FAKE_KEY, "http://127.0.0.1:1/api/v1")
    assert "LEAKCANARY" not in repr(client)
    assert client.endpoint == "http://127.0.0.1:1" + GENERATION_PATH


# --- request --------------------------------------------------------------------------------------


def test_body_has_one_user_message_with_images_in_order_then_exactly_one_text() -> None:
    req = EditRequest(
        model="qwen-image-edit-plus",
        images=("https://a.example/1.png", "data:image/png;base64,AAAA", "oss://dashscope-instant/x/3.png"),
        prompt="Put the dress from image 2 on the girl in image 1",
        parameters={"n": 2, "seed": 42, "negative_prompt": " ", "prompt_extend": False, "watermark": False},
    )
    assert build_body(req) == {
        "model": "qwen-image-edit-plus",
        "input": {
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"image": "https://a.example/1.png"},
                        {"image": "data:image/png;base64,AAAA"},
                        {"image": "oss://dashscope-instant/x/3.png"},
                        {"text": "Put the dress from image 2 on the girl in image 1"},
                    ],
                }
            ]
        },
        "parameters": {
            "n": 2,
            "seed": 42,
            "negative_prompt": " ",
            "prompt_extend": False,
            "watermark": False,
        },
    }


def test_body_leaves_out_unset_parameters_but_always_sends_the_object() -> None:
    req = EditRequest(
        "qwen-image-edit", ("https://a.example/1.png",), "x", {"n": 1, "size": None, "seed": None}
    )
    assert build_body(req)["parameters"] == {"n": 1}
    assert build_body(EditRequest("m", ("https://a/1.png",), "x"))["parameters"] == {}


def test_request_from_job_carries_the_jobs_parameters_and_resolved_images() -> None:
    job = Job(row=3, job_id="j3", images=("a.png", "s3://b/k.png"), prompt="p", n=2, size="1024*1536", seed=7)
    req = EditRequest.from_job(
        job, ["data:image/png;base64,AA", "https://s3.example/b/k.png?X-Amz-Signature=s"]
    )
    assert req.model == "qwen-image-edit-plus"
    assert req.images == ("data:image/png;base64,AA", "https://s3.example/b/k.png?X-Amz-Signature=s")
    assert build_body(req)["parameters"] == {"n": 2, "size": "1024*1536", "seed": 7}
    with pytest.raises(ValueError, match="2 images but 1 resolved"):
        EditRequest.from_job(job, ["https://x/1.png"])


def test_headers_carry_bearer_key_json_and_our_user_agent() -> None:
    headers = build_headers(FAKE_KEY, EditRequest("m", ("https://a/1.png",), "x"))
    assert headers["Authorization"] == f"Bearer {FAKE_KEY}"
    assert headers["Content-Type"] == "application/json"
    assert headers["User-Agent"] == USER_AGENT and USER_AGENT.startswith("qwenedit/")
    assert "X-DashScope-OssResourceResolve" not in headers


def test_oss_image_switches_on_the_resolve_header() -> None:
    req = EditRequest("m", ("https://a/1.png", "oss://dashscope-instant/u/2.png"), "x")
    assert build_headers(FAKE_KEY, req)["X-DashScope-OssResourceResolve"] == "enable"


def test_request_repr_hides_data_uri_payloads_and_url_signatures() -> None:
    payload = "A" * 50_000
    req = EditRequest(
        "m", (f"data:image/png;base64,{payload}", "https://s3.x/b/k.png?X-Amz-Signature=SECRET"), "x"
    )
    text = repr(req)
    assert payload[:100] not in text and "SECRET" not in text
    assert "data:image/png;base64,<" in text and "https://s3.x/b/k.png" in text


# --- success parsing ------------------------------------------------------------------------------


def test_success_gives_urls_in_order_usage_and_request_id() -> None:
    urls = ["https://r.example/0.png?Expires=1&Signature=a", "https://r.example/1.png?Expires=1&Signature=b"]
    result = parse_response(200, JSON, success_body(urls), "rid-header")
    assert result == EditResult("rid-body", tuple(urls), 1248, 832, 2)
    assert not result.count_mismatch
    assert "Signature" not in repr(result)


def test_request_id_falls_back_to_the_x_request_id_header() -> None:
    body = json.loads(success_body(["https://r/0.png"]))
    del body["request_id"]
    assert parse_response(200, JSON, json.dumps(body).encode(), "rid-header").request_id == "rid-header"


def test_content_items_without_an_image_key_are_ignored() -> None:
    body = json.loads(success_body([]))
    body["output"]["choices"][0]["message"]["content"] = [
        {"text": "rewritten prompt"},
        {"image": "https://r/0.png"},
        {"reasoning_content": "..."},
        {"image": "https://r/1.png"},
    ]
    body["usage"]["image_count"] = 2
    result = parse_response(200, JSON, json.dumps(body).encode(), "")
    assert result.image_urls == ("https://r/0.png", "https://r/1.png")


def test_partial_success_bills_what_usage_says() -> None:
    result = parse_response(200, JSON, success_body(["https://r/0.png"], image_count=1), "")
    assert result.image_count == 1 and result.image_urls == ("https://r/0.png",)


@pytest.mark.parametrize(("n_urls", "image_count"), [(2, 3), (3, 2)])
def test_image_count_disagreeing_with_urls_keeps_both_and_flags_it(n_urls: int, image_count: int) -> None:
    urls = [f"https://r/{k}.png" for k in range(n_urls)]
    result = parse_response(200, JSON, success_body(urls, image_count=image_count), "")
    assert result.image_urls == tuple(urls)  # copy every URL we got
    assert result.image_count == image_count  # bill what the API says it charged
    assert result.count_mismatch


def test_missing_width_and_height_do_not_fail_a_paid_call() -> None:
    body = json.loads(success_body(["https://r/0.png"]))
    body["usage"] = {"image_count": 1}
    result = parse_response(200, JSON, json.dumps(body).encode(), "")
    assert (result.width, result.height, result.image_count) == (None, None, 1)


def test_newer_usage_field_names_are_understood() -> None:
    body = json.loads(success_body(["https://r/0.png"]))
    body["usage"] = {
        "output_width": 1024,
        "output_height": 768,
        "output_image_count": 1,
        "input_image_count": 2,
    }
    result = parse_response(200, JSON, json.dumps(body).encode(), "")
    assert (result.width, result.height, result.image_count) == (1024, 768, 1)


def _mutated(mutate: Any) -> bytes:
    body = json.loads(success_body(["https://r/0.png"]))
    mutate(body)
    return json.dumps(body).encode()


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (b"", "not a JSON object: empty response body"),
        (b"<html>oops</html>", "not a JSON object"),
        (b"[1, 2]", "not a JSON object"),
        (b"\xff\xfe garbage", "not a JSON object"),
        (_mutated(lambda b: b.pop("output")), "no 'output'"),
        (_mutated(lambda b: b.pop("usage")), "no 'usage'"),
        (_mutated(lambda b: b["output"].update(choices=[])), "choices missing or empty"),
        (_mutated(lambda b: b["output"]["choices"][0].pop("message")), "content missing"),
        (_mutated(lambda b: b["output"]["choices"][0]["message"].update(content=[])), "no image in output"),
        (_mutated(lambda b: b["usage"].pop("image_count")), "image_count missing"),
        (_mutated(lambda b: b["usage"].update(image_count=True)), "image_count missing"),
        (_mutated(lambda b: b["usage"].update(image_count=-1)), "image_count missing"),
        (_mutated(lambda b: b["usage"].update(image_count="1")), "image_count missing"),
        (
            _mutated(lambda b: b["output"]["choices"][0]["message"].update(content=[{"image": 5}])),
            "not an http",
        ),
        (
            _mutated(lambda b: b["output"]["choices"][0]["message"].update(content=[{"image": "file:///x"}])),
            "http",
        ),
    ],
)
def test_unreadable_success_is_malformed_and_possibly_billed(body: bytes, why: str) -> None:
    with pytest.raises(errors.MalformedResponse, match=why) as info:
        parse_response(200, "text/html" if body.startswith(b"<") else JSON, body, "rid-h")
    err = info.value
    assert err.possibly_billed and not err.retryable and not err.fatal_for_run
    assert err.status == 200 and err.request_id in ("rid-body", "rid-h")


def test_oversized_success_body_is_malformed() -> None:
    with pytest.raises(errors.MalformedResponse, match="size cap"):
        parse_response(200, JSON, success_body(["https://r/0.png"])[:100], "rid", truncated=True)


def test_a_200_carrying_an_error_code_is_classified_by_the_code() -> None:
    with pytest.raises(errors.Throttled) as info:
        parse_response(200, JSON, error_body("Throttling.RateQuota", "Requests rate limit exceeded"), "")
    assert info.value.code == "Throttling.RateQuota" and info.value.request_id == "rid-err"


# --- error classification: every family of docs/dashscope-api.md §4 ------------------------------------------

INVALID = "InvalidParameter"
ERROR_CASES: list[tuple[int, str, str, type[errors.DashScopeError]]] = [
    (
        400,
        INVALID,
        "Required parameter(s) missing or invalid, please check the request parameters.",
        errors.RequestRejected,
    ),
    (400, INVALID, "No messages found in input", errors.RequestRejected),
    (400, INVALID, "messages length only support 1", errors.RequestRejected),
    (400, INVALID, "content length only support 2", errors.RequestRejected),
    (400, INVALID, "lack of image or text", errors.RequestRejected),
    (400, INVALID, "num_images_per_prompt must be 1", errors.RequestRejected),
    (400, INVALID, "Invalid image format or corrupted file", errors.RequestRejected),
    (400, INVALID, "image format error", errors.RequestRejected),
    (400, INVALID, "url error, please check url！", errors.RequestRejected),
    (400, INVALID, "Required body invalid, please check the request body format.", errors.RequestRejected),
    (
        400,
        INVALID,
        "The provided URL does not appear to be valid. Ensure it is correctly formatted.",
        errors.RequestRejected,
    ),
    (400, INVALID, "Exceeded limit on max bytes per data-uri item : 10485760", errors.RequestRejected),
    (400, INVALID, "download image failed", errors.InputDownloadFailed),
    (400, INVALID, "Failed to download multimodal content.", errors.InputDownloadFailed),
    (
        400,
        INVALID,
        "Download the media resource timed out during the data inspection process.",
        errors.InputDownloadFailed,
    ),
    (400, INVALID, "Model not exist.", errors.ModelNotFound),
    (
        400,
        "InvalidParameter.DataInspection",
        "Unable to download the media resource during the data inspection process.",
        errors.InputDownloadFailed,
    ),
    (
        400,
        "DataInspectionFailed",
        "Input or output data may contain inappropriate content.",
        errors.ContentRejected,
    ),
    (400, "DataInspectionFailed", "Input data may contain inappropriate content.", errors.ContentRejected),
    (400, "DataInspectionFailed", "Output data may contain inappropriate content.", errors.ContentRejected),
    (
        400,
        "DataInspectionFailed",
        "Input xxx data may contain inappropriate content.",
        errors.ContentRejected,
    ),
    (
        400,
        "IPInfringementSuspect",
        "Input data is suspected of being involved in IP infringement.",
        errors.ContentRejected,
    ),
    (400, "BadRequest.EmptyInput", "Required input parameter missing from request.", errors.RequestRejected),
    (
        400,
        "BadRequest.EmptyParameters",
        'Required parameter "parameters" missing from request.',
        errors.RequestRejected,
    ),
    (
        400,
        "BadRequest.EmptyModel",
        'Required parameter "model" missing from request.',
        errors.RequestRejected,
    ),
    (400, "BadRequest.IllegalInput", "The input parameter requires json format.", errors.RequestRejected),
    (
        400,
        "BadRequest.InputDownloadFailed",
        "Failed to download the input file: xxx.",
        errors.InputDownloadFailed,
    ),
    (400, "InvalidURL", "Invalid URL provided in your request.", errors.RequestRejected),
    (400, "Arrearage", "Access denied, please make sure your account is in good standing.", errors.Arrearage),
    (400, "InternalError.Algo", "Missing Content-Length of multimodal url.", errors.RequestRejected),
    (
        400,
        "InternalError.Algo",
        "InternalError.Algo.InvalidParameter: The image length and width do not meet the model restrictions.",
        errors.RequestRejected,
    ),
    (401, "InvalidApiKey", "Invalid API-key provided.", errors.InvalidApiKey),
    (401, "InvalidApiKey", "No API-key provided.", errors.InvalidApiKey),
    (401, "NOT AUTHORIZED", "workspace mismatch", errors.InvalidApiKey),
    (403, "AccessDenied", "Access denied.", errors.AccessDenied),
    (403, "AccessDenied", "current user api does not support asynchronous calls.", errors.AccessDenied),
    (
        403,
        "AccessDenied.Unpurchased",
        "Access to model denied. Please make sure you are eligible for using the model.",
        errors.AccessDenied,
    ),
    (403, "Model.AccessDenied", "Model access denied.", errors.AccessDenied),
    (403, "Workspace.AccessDenied", "Workspace access denied.", errors.AccessDenied),
    (
        403,
        "AllocationQuota.FreeTierOnly",
        "The free tier of the model has been exhausted. If you wish to continue "
        'access the model on a paid basis, please disable the "use free tier '
        'only" mode in the management console.',
        errors.FreeTierExhausted,
    ),
    (404, "ModelNotFound", "Model can not be found.", errors.ModelNotFound),
    (404, "ModelNotFound", "The model xxx does not exist.", errors.ModelNotFound),
    (408, "RequestTimeOut", "Request timed out, please try again later.", errors.ServerError),
    (500, "RequestTimeOut", "Request timed out, please try again later.", errors.ServerError),
    (413, "BadRequest.TooLarge", "Payload Too Large.", errors.PayloadTooLarge),
    (429, "Throttling", "Requests throttling triggered.", errors.Throttled),
    (429, "Throttling.RateQuota", "Requests rate limit exceeded, please try again later.", errors.Throttled),
    (429, "Throttling.RateQuota", "You exceeded your current requests list.", errors.Throttled),
    (429, "LimitRequests", "You have exceeded your request limit.", errors.Throttled),
    (
        429,
        "Throttling.BurstRate",
        "Request rate increased too quickly. To ensure system stability, please "
        "adjust your client logic to scale requests more smoothly over time.",
        errors.Throttled,
    ),
    (
        429,
        "Throttling.AllocationQuota",
        "Allocated quota exceeded, please increase your quota limit.",
        errors.Throttled,
    ),
    (429, "Throttling.AllocationQuota", "Free allocated quota exceeded.", errors.FreeTierExhausted),
    (429, "CommodityNotPurchased", "Commodity has not purchased yet.", errors.BillOverdue),
    (429, "PrepaidBillOverdue", "The prepaid bill is overdue.", errors.BillOverdue),
    (429, "PostpaidBillOverdue", "The postpaid bill is overdue.", errors.BillOverdue),
    (
        500,
        "InternalError",
        "An internal error has occured, please try again later or contact service support.",
        errors.ServerError,
    ),
    (500, "InternalError", "Internal server error!", errors.ServerError),
    (500, "InternalError.Algo", "inference internal error.", errors.ServerError),
    (
        500,
        "InternalError.Algo",
        "An internal error has occured during execution, please try again later or contact service support.",
        errors.ServerError,
    ),
    (
        500,
        "InternalError.Algo",
        "An error occurred in model serving, error message is: [Request rejected by inference engine!]",
        errors.ServerError,
    ),
    (
        500,
        "InternalError.Timeout",
        "An internal timeout error has occured during execution, please try again later.",
        errors.ServerError,
    ),
    (500, "SystemError", "An system error has occured, please try again later.", errors.ServerError),
    (500, "ModelServiceFailed", "Failed to request model service.", errors.ServerError),
    (500, "InternalError.Upload", "Failed to upload result.", errors.ServerError),
    (503, "ModelUnavailable", "Model is unavailable, please try again later.", errors.ServiceUnavailable),
    (
        503,
        "ModelServingError",
        "Too many requests. Your requests are being throttled due to system "
        "capacity limits. Please try again later.",
        errors.ServiceUnavailable,
    ),
]

RETRYABLE = (errors.InputDownloadFailed, errors.Throttled, errors.ServerError, errors.ServiceUnavailable)


@pytest.mark.parametrize(("status", "code", "message", "family"), ERROR_CASES)
def test_every_documented_error_lands_in_its_family(
    status: int, code: str, message: str, family: type[errors.DashScopeError]
) -> None:
    with pytest.raises(errors.DashScopeError) as info:
        parse_response(status, "application/json; charset=utf-8", error_body(code, message), "rid-header")
    err = info.value
    assert type(err) is family
    assert (err.status, err.code, err.message, err.request_id) == (status, code, message, "rid-err")
    assert err.retryable == issubclass(family, RETRYABLE)
    assert err.fatal_for_run == issubclass(family, errors.AccountError)
    assert not err.possibly_billed  # an answered error is never billed


@pytest.mark.parametrize(
    ("code", "fatal"),
    [
        ("InvalidApiKey", True),
        ("Arrearage", True),
        ("AccessDenied", True),
        ("AccessDenied.Unpurchased", True),
        ("Model.AccessDenied", True),
        ("AllocationQuota.FreeTierOnly", True),
        ("PrepaidBillOverdue", True),
        ("PostpaidBillOverdue", True),
        ("Throttling.RateQuota", False),
        ("DataInspectionFailed", False),
    ],
)
def test_account_level_codes_stop_the_run_and_others_do_not(code: str, fatal: bool) -> None:
    status = {"InvalidApiKey": 401, "Arrearage": 400, "DataInspectionFailed": 400}.get(code, 403)
    if "Bill" in code or "Throttling" in code:
        status = 429
    with pytest.raises(errors.DashScopeError) as info:
        parse_response(status, JSON, error_body(code, "m"), "")
    assert info.value.fatal_for_run is fatal
    assert not (info.value.fatal_for_run and info.value.retryable)


GATEWAY_HTML = (
    b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n<center><h1>502 Bad Gateway</h1>"
    b"</center>\r\n<hr><center>istio-envoy</center>\r\n</body>\r\n</html>\r\n" + b"<!-- padding -->" * 200
)


@pytest.mark.parametrize(
    ("status", "body", "family"),
    [
        (502, GATEWAY_HTML, errors.ServerError),
        (504, GATEWAY_HTML, errors.ServerError),
        (503, b"<html><body>Service Temporarily Unavailable</body></html>", errors.ServiceUnavailable),
        (429, b"<html>Too Many Requests</html>", errors.Throttled),
        (401, b"Unauthorized", errors.InvalidApiKey),
        (403, b"", errors.AccessDenied),
        (500, b"", errors.ServerError),
        (400, b"   ", errors.RequestRejected),
        (302, b"", errors.UnexpectedResponse),
    ],
)
def test_non_json_errors_are_classified_by_status(status: int, body: bytes, family: type) -> None:
    with pytest.raises(errors.DashScopeError) as info:
        parse_response(status, "text/html", body, "rid-header")
    err = info.value
    assert type(err) is family
    assert err.code == f"HTTP{status}" and err.request_id == "rid-header"
    assert "<" not in err.message and "\n" not in err.message and len(err.message) <= 300


def test_gateway_html_message_is_a_readable_excerpt() -> None:
    with pytest.raises(errors.ServerError) as info:
        parse_response(502, "text/html; charset=utf-8", GATEWAY_HTML, "")
    assert info.value.message.startswith("non-JSON body (text/html): 502 Bad Gateway 502 Bad Gateway")


def test_empty_error_body_says_so() -> None:
    with pytest.raises(errors.ServerError, match="empty response body"):
        parse_response(500, "", b"", "rid")


def test_json_error_without_code_gets_the_status_as_code() -> None:
    with pytest.raises(errors.ServiceUnavailable) as info:
        parse_response(503, JSON, b'{"msg": "busy"}', "")
    assert (info.value.code, info.value.message) == ("HTTP503", "busy")


def test_truncated_error_body_is_classified_by_status() -> None:
    with pytest.raises(errors.Throttled):
        parse_response(429, JSON, error_body("Throttling", "x")[:10], "", truncated=True)


def test_messages_from_the_wire_are_scrubbed_of_keys_and_control_characters() -> None:
    echoed = f"Invalid API-key provided: {FAKE_KEY}\nAuthorization: Bearer {FAKE_KEY}\x1b[31m"
    with pytest.raises(errors.InvalidApiKey) as info:
        parse_response(401, JSON, error_body("InvalidApiKey", echoed), "")
    text = str(info.value) + repr(info.value) + info.value.message
    assert "LEAKCANARY" not in text and "\n" not in text and "\x1b" not in text
    # A key that does not look like sk-... is still scrubbed when the client names it as the secret.
    with pytest.raises(errors.RequestRejected) as info2:
        parse_response(400, "text/plain", b"bad header: custom-key-123", "", secret="custom-key-123")
    assert "custom-key-123" not in str(info2.value)


# --- transport failures (httpx.MockTransport: no network) -----------------------------------------


def _client_raising(exc: Exception, **kwargs: Any) -> DashScopeClient:
    def handler(request: httpx.Request) -> httpx.Response:
        raise exc

    return DashScopeClient(
        FAKE_KEY,
        "http://127.0.0.1:1",
        http=httpx.AsyncClient(transport=httpx.MockTransport(handler)),
        **kwargs,
    )


REQ = EditRequest("qwen-image-edit-plus", ("https://a.example/1.png",), "make it blue", {"n": 1})


@pytest.mark.parametrize(
    ("exc", "family", "possibly_billed"),
    [
        (httpx.ConnectError("[Errno 111] Connection refused"), errors.ConnectFailed, False),
        (httpx.ConnectTimeout("timed out"), errors.ConnectFailed, False),
        (httpx.PoolTimeout("no free connection"), errors.ConnectFailed, False),
        (httpx.ReadTimeout("timed out"), errors.CallTimedOut, True),
        (httpx.WriteTimeout("timed out"), errors.CallTimedOut, True),
        (
            httpx.RemoteProtocolError("Server disconnected without sending a response."),
            errors.ConnectionDropped,
            True,
        ),
        (httpx.ReadError("connection reset"), errors.ConnectionDropped, True),
        (httpx.WriteError("broken pipe"), errors.ConnectionDropped, True),
        (httpx.LocalProtocolError(f"Illegal header value b'Bearer {FAKE_KEY}'"), errors.ConnectFailed, False),
    ],
)
async def test_network_failures_map_to_transport_errors_without_the_httpx_exception(
    exc: Exception, family: type[errors.DashScopeError], possibly_billed: bool
) -> None:
    async with _client_raising(exc) as client:
        with pytest.raises(errors.DashScopeError) as info:
            await client.edit(REQ)
    err = info.value
    assert type(err) is family
    assert err.retryable and not err.fatal_for_run and err.possibly_billed is possibly_billed
    assert err.code == type(exc).__name__ and err.status is None
    # Nothing from httpx travels with it: no cause, no context, so no request (and no key) in tracebacks.
    assert err.__cause__ is None and err.__context__ is None
    text = "".join(traceback.format_exception(err)) + repr(err)
    assert "LEAKCANARY" not in text and "Request" not in text.replace("RequestError", "")


async def test_on_send_is_not_called_when_the_transport_fails_before_a_response() -> None:
    sent: list[str] = []
    async with _client_raising(
        httpx.ConnectError("refused"), on_send=lambda: sent.append("client")
    ) as client:
        with pytest.raises(errors.ConnectFailed):
            await client.edit(REQ, on_send=lambda: sent.append("call"))
    assert sent == []


async def test_client_does_not_close_an_http_client_it_was_given() -> None:
    http = httpx.AsyncClient(
        transport=httpx.MockTransport(
            lambda r: httpx.Response(200, content=success_body(["https://r/0.png"]))
        )
    )
    async with DashScopeClient(FAKE_KEY, "http://127.0.0.1:1", http=http) as client:
        result = await client.edit(REQ)
    assert result.image_urls == ("https://r/0.png",)
    assert not http.is_closed
    await http.aclose()
