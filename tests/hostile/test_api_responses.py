"""Hostile or broken API answers: not JSON, nested to death, huge, missing fields, outputs on hosts we
must not fetch from, redirects, output "images" that never end.

Every case ends with a located, clear reason in the job's row, the other jobs' outputs untouched, and
no request to a host outside the allowlist.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

from flows.edit_manifest import edit_manifest
from qwenedit.options import RunOptions
from qwenedit.pipeline import DEFAULT_OUTPUT_HOSTS, host_allowed
from tests.chaos.conftest import PRICE, chaos_rows, check_invariants, read_results, timed_run
from tests.hostile.conftest import Hit, Reply, snapshot

pytestmark = pytest.mark.usefixtures("prefect_server")

PNG_1PX = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6360f8cfc0f01f0005000201a5e3f3b30000000049454e44ae426082"
)


def params(manifest: Path, bucket: Any, base_url: str, tmp_path: Path, **kwargs: Any) -> dict[str, Any]:
    return {
        "manifest": str(manifest),
        "dest": bucket.uri("out"),
        "base_url": base_url,
        "report_dir": str(tmp_path / "reports"),
        "rates": ("20",),
        **kwargs,
    }


def success_body(urls: list[str], request_id: str | None = None) -> bytes:
    return json.dumps(
        {
            "output": {
                "choices": [
                    {
                        "finish_reason": "stop",
                        "message": {"role": "assistant", "content": [{"image": u} for u in urls]},
                    }
                ]
            },
            "usage": {"width": 512, "height": 512, "image_count": len(urls)},
            "request_id": request_id or str(uuid.uuid4()),
        }
    ).encode()


def api_calls(server: Any) -> list[Hit]:
    return [h for h in server.hits if h.method == "POST"]


# --- the emulator's own broken answers ----------------------------------------------------------------


@pytest.mark.parametrize("fault", ["malformed_json", "malformed_fields"])
async def test_a_200_that_is_not_json_or_lacks_output_is_possibly_billed_never_retried_and_others_are_untouched(
    fault: str, pipeline_env: Any, emulator_factory: Any, spy_on: Any, write_manifest: Any, tmp_path: Path
) -> None:
    emulator = emulator_factory(next_faults=[fault])
    spy = spy_on(emulator)
    rows = chaos_rows(3)
    run = await timed_run(
        edit_manifest(
            RunOptions(
                **params(write_manifest(rows), pipeline_env, emulator.base_url, tmp_path, max_in_flight=1)
            )
        )
    )
    table = read_results(run.summary or {})
    broken = table.iloc[0]
    assert broken["status"] == "failed" and broken["error_code"] == "MalformedResponse"
    assert broken["possibly_billed"] == "True"
    assert broken["attempts"] == "1"  # a 200 may have been billed: never retried
    assert list(table["status"][1:]) == ["succeeded", "succeeded"]
    assert len(spy.calls_for(rows[0]["prompt"])) == 1
    check_invariants(spy=spy, bucket=pipeline_env, prefix="out", rows=rows, runs=[run])


# --- a lying API (a loopback server speaking the protocol badly) ---------------------------------------


async def test_a_200_nested_too_deep_to_parse_is_a_malformed_possibly_billed_answer_not_a_crash(
    pipeline_env: Any, http_server: Any, write_manifest: Any, tmp_path: Path
) -> None:
    # 200 000 nested arrays fit well within the 1 MiB answer cap but blow Python's JSON recursion limit.
    body = b'{"request_id": "rid-deep", "output": ' + b"[" * 200_000
    api = http_server(lambda hit: Reply(200, {"content-type": "application/json"}, body))
    rows = chaos_rows(1)
    run = await timed_run(
        edit_manifest(RunOptions(**params(write_manifest(rows), pipeline_env, api.base_url, tmp_path)))
    )
    row = read_results(run.summary or {}).iloc[0]
    assert row["status"] == "failed"
    assert row["error_code"] == "MalformedResponse", row["error_message"]
    assert row["possibly_billed"] == "True"  # it was a 200: the model may have run and billed
    assert len(api_calls(api)) == 1


async def test_a_huge_answer_is_cut_at_the_size_cap_without_reading_it_and_is_possibly_billed(
    pipeline_env: Any, http_server: Any, write_manifest: Any, tmp_path: Path
) -> None:
    def endless() -> Iterator[bytes]:
        yield b'{"request_id": "rid-huge", "output": {"text": "'
        for _ in range(400):  # 400 MiB if anyone read it all
            yield b"x" * (1 << 20)

    api = http_server(lambda hit: Reply(200, {"content-type": "application/json"}, endless))
    rows = chaos_rows(1)
    run = await timed_run(
        edit_manifest(RunOptions(**params(write_manifest(rows), pipeline_env, api.base_url, tmp_path)))
    )
    row = read_results(run.summary or {}).iloc[0]
    assert (row["status"], row["error_code"]) == ("failed", "MalformedResponse")
    assert "size cap" in row["error_message"]
    assert row["possibly_billed"] == "True"
    assert len(api_calls(api)) == 1
    assert api.bytes_sent < 64 * (1 << 20)  # the client hung up long before the end


@pytest.mark.slow
async def test_output_urls_on_a_foreign_host_are_refused_not_fetched_and_stay_billed(
    pipeline_env: Any,
    emulator_factory: Any,
    spy_on: Any,
    http_server: Any,
    write_manifest: Any,
    tmp_path: Path,
) -> None:
    foreign = http_server(lambda hit: Reply(200, {"content-type": "image/png"}, PNG_1PX))
    emulator = emulator_factory(foreign_base_url=foreign.base_url, next_faults=["foreign_host"])
    spy = spy_on(emulator)
    rows = chaos_rows(3, n=2)
    manifest = write_manifest(rows)
    run = await timed_run(
        edit_manifest(
            RunOptions(**params(manifest, pipeline_env, emulator.base_url, tmp_path, max_in_flight=1))
        )
    )

    assert foreign.hits == []  # refused before any request
    row = read_results(run.summary or {}).iloc[0]
    assert (row["status"], row["error_code"]) == ("failed", "OutputHostRefused")
    assert "'127.0.0.1'" in row["error_message"] and "not fetched" in row["error_message"]
    assert Decimal(row["cost"]) == 2 * PRICE and row["billed_not_stored"] == "2"
    keys = set(snapshot(pipeline_env))
    assert not any(k.startswith(f"out/{rows[0]['job_id']}/") for k in keys)
    check_invariants(spy=spy, bucket=pipeline_env, prefix="out", rows=rows, runs=[run])


@pytest.mark.slow
async def test_a_redirect_from_an_allowed_output_host_to_a_foreign_one_is_not_followed(
    pipeline_env: Any, http_server: Any, write_manifest: Any, tmp_path: Path
) -> None:
    foreign = http_server(lambda hit: Reply(200, {"content-type": "image/png"}, PNG_1PX))
    redirector = http_server(lambda hit: Reply(302, {"location": f"{foreign.base_url}/stolen.png"}))
    api = http_server(
        lambda hit: Reply(
            200,
            {"content-type": "application/json"},
            success_body([f"{redirector.base_url}/out/1.png?Expires=9999999999"]),
        )
    )
    rows = chaos_rows(1)
    host = redirector.base_url.removeprefix("http://")
    run = await timed_run(
        edit_manifest(
            RunOptions(
                **params(
                    write_manifest(rows), pipeline_env, api.base_url, tmp_path, allowed_output_hosts=[host]
                )
            )
        )
    )
    row = read_results(run.summary or {}).iloc[0]
    assert len(redirector.hits) >= 1 and foreign.hits == []
    assert (row["status"], row["error_code"]) == ("failed", "CopyFailed")
    assert "302" in row["error_message"]
    assert row["billed_not_stored"] == "1" and Decimal(row["cost"]) == PRICE


@pytest.mark.parametrize(
    "url",
    [
        "file:///etc/passwd",
        "ftp://127.0.0.1/x.png",
        "data:image/png;base64,iVBORw0KGgo=",
        "//127.0.0.1:1/x.png",
    ],
)
async def test_output_urls_with_other_schemes_are_refused_as_malformed_and_possibly_billed(
    url: str, pipeline_env: Any, http_server: Any, write_manifest: Any, tmp_path: Path
) -> None:
    # The client refuses these before the pipeline's host allowlist even sees them.
    api = http_server(lambda hit: Reply(200, {"content-type": "application/json"}, success_body([url])))
    rows = chaos_rows(1)
    run = await timed_run(
        edit_manifest(RunOptions(**params(write_manifest(rows), pipeline_env, api.base_url, tmp_path)))
    )
    row = read_results(run.summary or {}).iloc[0]
    assert (row["status"], row["error_code"]) == ("failed", "MalformedResponse"), row["error_message"]
    assert "not an http(s) URL" in row["error_message"]
    assert row["possibly_billed"] == "True"  # a 200: the spend is flagged, not silently dropped
    assert len(api_calls(api)) == 1
    assert not any(k.startswith("out/c000/") for k in snapshot(pipeline_env))


@pytest.mark.slow
async def test_an_output_image_that_never_ends_is_cut_at_the_limit_and_leaves_no_partial_object(
    pipeline_env: Any, http_server: Any, write_manifest: Any, tmp_path: Path
) -> None:
    def endless_png() -> Iterator[bytes]:
        yield PNG_1PX[:16]
        for _ in range(200):  # 200 MiB, no content-length (chunked)
            yield b"\0" * (1 << 20)

    outputs = http_server(lambda hit: Reply(200, {"content-type": "image/png"}, endless_png))
    host = outputs.base_url.removeprefix("http://")
    api = http_server(
        lambda hit: Reply(
            200, {"content-type": "application/json"}, success_body([f"{outputs.base_url}/o/1.png"])
        )
    )
    rows = chaos_rows(1)
    before = snapshot(pipeline_env)
    run = await timed_run(
        edit_manifest(
            RunOptions(
                **params(
                    write_manifest(rows), pipeline_env, api.base_url, tmp_path, allowed_output_hosts=[host]
                )
            )
        )
    )
    row = read_results(run.summary or {}).iloc[0]
    assert (row["status"], row["error_code"]) == ("failed", "CopyFailed")
    assert "limit" in row["error_message"]
    assert row["billed_not_stored"] == "1"
    after = snapshot(pipeline_env)
    assert not [k for k in after if k.startswith(f"out/{rows[0]['job_id']}/") and k not in before]
    assert len(outputs.hits) == 1  # not retried: a body over the limit will be over it again
    uploads = pipeline_env.client.list_multipart_uploads(Bucket=pipeline_env.bucket).get("Uploads", [])
    assert uploads == []  # no abandoned multipart upload keeps the partial bytes (and bills storage)


# --- the allowlist itself --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "allowed"),
    [
        ("https://dashscope-result-sh.oss-cn-shanghai.aliyuncs.com/1.png?Expires=1", True),
        ("https://dashscope-result-sgp.oss-ap-southeast-1.aliyuncs.com/1.png", True),
        ("https://DASHSCOPE-RESULT-SH.OSS-CN-SHANGHAI.ALIYUNCS.COM/1.png", True),  # case-insensitive
        # Only the documented result buckets: not any OSS bucket, not any aliyuncs host.
        ("https://someones-bucket.oss-cn-shanghai.aliyuncs.com/1.png", False),
        ("https://dashscope-result-sh.aliyuncs.com/1.png", False),
        ("https://dashscope-result-x.evil.oss-cn-shanghai.aliyuncs.com/1.png", False),  # * is one label
        ("https://dashscope-result-sh.oss-cn-shanghai.aliyuncs.com.evil.example/1.png", False),
        ("https://evil.example/dashscope-result-sh.oss-cn-shanghai.aliyuncs.com/1.png", False),
        ("https://dashscope-result-sh.oss-cn-shanghai.aliyuncs.com@evil.example/1.png", False),  # userinfo
        ("https://evil.example#@dashscope-result-sh.oss-cn-shanghai.aliyuncs.com/1.png", False),
        # Backslash: urllib and httpx both read the host as the aliyuncs one, so that is where it goes.
        ("https://evil.example\\@dashscope-result-sh.oss-cn-shanghai.aliyuncs.com/1.png", True),
        ("https://dashscope-result-sh.oss-cn-shanghai.aliyuncs.com\\.evil.example/1.png", False),
        ("http://169.254.169.254/latest/meta-data/", False),  # cloud metadata
        ("http://127.0.0.1:8080/x.png", False),
        ("http://[::1]/x.png", False),
        ("file:///etc/passwd", False),
        ("gopher://dashscope-result-sh.oss-cn-shanghai.aliyuncs.com/x", False),
        ("https://dashscope-result-sh.oss-cn-shanghai.aliyuncs.com./1.png", False),  # trailing dot: refuse
    ],
)
def test_output_host_allowlist_refuses_lookalikes_and_tricks(url: str, allowed: bool) -> None:
    assert host_allowed(url, DEFAULT_OUTPUT_HOSTS) is allowed
    if allowed:  # the check and the fetcher agree on the host: no parser differential to exploit
        assert httpx.URL(url).host.lower().endswith(".aliyuncs.com")
