"""Secrets stay secret: the API key and the S3 credentials appear nowhere we write or say anything.

The whole pipeline runs with recognisable canaries — a fake API key and a SeaweedFS server whose S3
credentials are canaries too — both as the CLI (a subprocess, progress bar on, every logger at DEBUG)
and as the in-process flow (Python logging captured at DEBUG), succeeding and failing on purpose
(invalid key, S3 down mid-run, wrong S3 secret). Then every place a secret could end up is searched:
console output, log records (with their tracebacks), exception text, local and uploaded reports, the
run ledger, every stored object's metadata, and what Prefect keeps (artifacts, flow-run parameters
and states, logs). A fragment of a canary counts as a leak too, so a truncated key is caught.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import subprocess
import sys
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import qwenedit.run.wiring as wiring
from flows.edit_manifest import edit_manifest
from qwenedit.options import RunOptions
from qwenedit.storage import S3Settings, open_destination
from qwenedit.testing.seaweed import SeaweedServer, ensure_bucket
from tests.pipeline import conftest as pipeline_fixtures

pytestmark = pytest.mark.usefixtures("prefect_server")

# The pipeline tests' fixtures, used here by name.
images_dir = pipeline_fixtures.images_dir
write_manifest = pipeline_fixtures.write_manifest

API_KEY = "sk-SECRET-canary-7f3a9c2e5b1d4e8f"
S3_ACCESS_KEY = "AKIACANARY7F3A9C2E5B"
S3_SECRET_KEY = "SECRET-s3-canary-9d8e7f6a5b4c3d2e1f0a"
WRONG_S3_SECRET = "WRONG-s3-canary-0a1b2c3d4e5f6a7b"
# Distinctive pieces of each canary: a leak of part of a secret is still a leak.
FRAGMENTS = {
    "API key": ("7f3a9c2e5b1d4e8f", "SECRET-canary"),
    "S3 access key": ("ACANARY7F3A9C2E5B", "AKIACANARY"),
    "S3 secret key": ("9d8e7f6a5b4c3d2e1f0a", "s3-canary-9d8e"),
    "wrong S3 secret": ("0a1b2c3d4e5f6a7b", "s3-canary-0a1b"),
}


def leaks(text: str, where: str) -> list[str]:
    found = []
    for name, pieces in FRAGMENTS.items():
        for piece in pieces:
            at = text.find(piece)
            if at >= 0:
                context = text[max(0, at - 80) : at + 40].replace("\n", "⏎")
                found.append(f"{name} in {where}: …{context}…")
                break
    return found


@pytest.fixture(scope="module")
def canary_s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedServer]:
    with SeaweedServer(
        tmp_path_factory.mktemp("canary-seaweed"), access_key=S3_ACCESS_KEY, secret_key=S3_SECRET_KEY
    ) as server:
        yield server


@pytest.fixture
def canary_bucket(canary_s3: SeaweedServer, monkeypatch: pytest.MonkeyPatch) -> str:
    if not canary_s3.running:
        canary_s3.start()
    name = f"canary-{int(time.time() * 1000) % 10_000_000}"
    ensure_bucket(canary_s3.client(), name)
    monkeypatch.setenv("DASHSCOPE_API_KEY", API_KEY)
    for key, value in canary_s3.env().items():
        monkeypatch.setenv(key, value)
    return name


def canary_manifest(write_manifest: Any, canary_s3: SeaweedServer, bucket: str, count: int = 4) -> Path:
    """Local images, plus one input on S3 (presigned for the API: the access key id goes to the API by
    design of presigning, but must appear nowhere we write)."""
    rows = [{"job_id": f"s{i}", "image_1": "square.png", "prompt": f"secret test {i}"} for i in range(count)]
    path = write_manifest(rows)
    canary_s3.client().put_object(
        Bucket=bucket, Key="inputs/square.png", Body=(path.parent / "square.png").read_bytes()
    )
    rows.append(
        {"job_id": "from-s3", "image_1": f"s3://{bucket}/inputs/square.png", "prompt": "secret test s3"}
    )
    return write_manifest(rows)


def everything_stored(server: SeaweedServer, bucket: str) -> Iterator[tuple[str, str]]:
    """(where, text) for every object in the bucket: its body (reports, ledger) and its metadata."""
    client = server.client()
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket)
    for page in pages:
        for obj in page.get("Contents", []):
            key = obj["Key"]
            head = client.head_object(Bucket=bucket, Key=key)
            yield f"metadata of s3://{bucket}/{key}", json.dumps(head.get("Metadata", {}))
            if not key.endswith(".png"):
                body = client.get_object(Bucket=bucket, Key=key)["Body"].read()
                yield f"s3://{bucket}/{key}", body.decode("utf-8", errors="replace")


def everything_local(folder: Path) -> Iterator[tuple[str, str]]:
    for path in folder.rglob("*"):
        if path.is_file():
            yield str(path), path.read_text(errors="replace")


async def everything_prefect_kept() -> list[tuple[str, str]]:
    from prefect.client.orchestration import get_client

    out: list[tuple[str, str]] = []
    async with get_client() as client:
        for artifact in await client.read_artifacts():
            out.append((f"artifact {artifact.key}", artifact.model_dump_json()))
        for flow_run in await client.read_flow_runs():
            out.append((f"flow run {flow_run.name} (parameters, state)", flow_run.model_dump_json()))
        for log in await client.read_logs():
            out.append(("Prefect log", log.model_dump_json()))
    return out


# --- the CLI ---------------------------------------------------------------------------------------


@pytest.mark.slow
def test_the_cli_with_progress_and_every_logger_at_debug_prints_and_writes_no_secret(
    canary_s3: SeaweedServer, canary_bucket: str, emulator_factory: Any, write_manifest: Any, tmp_path: Path
) -> None:
    from prefect.settings import PREFECT_API_URL

    manifest = canary_manifest(write_manifest, canary_s3, canary_bucket)
    env = dict(os.environ)
    env.update(
        PREFECT_API_URL=str(PREFECT_API_URL.value()),
        PREFECT_LOGGING_LEVEL="DEBUG",
        PREFECT_LOGGING_ROOT_LEVEL="DEBUG",  # every library's DEBUG lines reach the console
        COLUMNS="200",
    )
    found: list[str] = []
    outcomes = []
    for name, emulator in (
        ("ok", emulator_factory()),
        ("invalid key", emulator_factory(keys=["sk-someone-else"])),
    ):
        command = [
            sys.executable, "-m", "qwenedit", "run", str(manifest),
            "--dest", f"s3://{canary_bucket}/out-{name.replace(' ', '-')}",
            "--base-url", emulator.base_url,
            "--report-dir", str(tmp_path / "runs"),
            "--rps", "20",
            "--progress",
        ]  # fmt: skip
        done = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=180)
        outcomes.append((name, done.returncode))
        found += leaks(done.stdout, f"stdout ({name})") + leaks(done.stderr, f"stderr ({name})")
        assert "DEBUG" in done.stderr  # the debug logs really were on
    assert outcomes == [("ok", 0), ("invalid key", 3)], outcomes
    for where, text in [*everything_local(tmp_path / "runs"), *everything_stored(canary_s3, canary_bucket)]:
        found += leaks(text, where)
    found += [leak for where, text in asyncio.run(everything_prefect_kept()) for leak in leaks(text, where)]
    assert not found, "secrets leaked:\n  " + "\n  ".join(found)


# --- the flow in process ------------------------------------------------------------------------------


class Capture(logging.Handler):
    """Every record, formatted with its traceback, at any level."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s %(message)s"))
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        # The emulator runs in this process but stands for the remote API: what *it* logs (e.g. its
        # download of a presigned input URL) is the far side's business, not ours.
        if not (record.threadName or "").startswith("emulator-"):
            self.lines.append(self.format(record))


@pytest.fixture
def debug_logs() -> Iterator[Capture]:
    capture = Capture()
    root = logging.getLogger()
    previous = {name: logging.getLogger(name).level for name in ("", *logging.root.manager.loggerDict)}
    root.addHandler(capture)
    for name in previous:
        logging.getLogger(name).setLevel(logging.DEBUG)
    yield capture
    root.removeHandler(capture)
    for name, level in previous.items():
        logging.getLogger(name).setLevel(level)


@pytest.mark.slow
async def test_the_flow_at_debug_level_leaks_no_secret_when_it_succeeds_or_fails(
    canary_s3: SeaweedServer,
    canary_bucket: str,
    emulator_factory: Any,
    write_manifest: Any,
    debug_logs: Capture,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Failing fast: two store tries, no boto3 retries (the default survives minutes of outage).
    no_retries = dataclasses.replace(S3Settings.from_env(), max_attempts=1, connect_timeout=1.0)
    monkeypatch.setattr(wiring, "open_destination", lambda uri: open_destination(uri, no_retries))
    manifest = canary_manifest(write_manifest, canary_s3, canary_bucket)
    debug_logs.lines.clear()  # from here on only the pipeline's records (setup used S3 too)
    ok = emulator_factory(latency_median_s=0.5)
    refused = emulator_factory(keys=["sk-someone-else"])
    errors: list[str] = []

    async def run(name: str, base_url: str) -> None:
        try:
            await edit_manifest(
                RunOptions(
                    manifest=str(manifest),
                    dest=f"s3://{canary_bucket}/{name}",
                    base_url=base_url,
                    report_dir=str(tmp_path / "runs"),
                    rates=("20",),
                    store_attempts=2,  # failing fast: two store tries (the default survives minutes of outage)
                    backoff_base=0.05,
                )
            )
        except Exception as exc:  # a failed flow: its exception text is searched too
            errors.append("".join(traceback.format_exception(exc)))

    await run("ok", ok.base_url)
    await run("invalid-key", refused.base_url)
    # S3 goes down while calls are in flight.
    answered = ok.stats()["requests"]
    flow = asyncio.ensure_future(run("s3-down", ok.base_url))
    while ok.stats()["requests"] == answered and not flow.done():  # the first answer of this run
        await asyncio.sleep(0.02)
    await asyncio.to_thread(canary_s3.stop)
    try:
        await flow
    finally:
        await asyncio.to_thread(canary_s3.start)
    # The wrong S3 secret: every store call is refused (SignatureDoesNotMatch).
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", WRONG_S3_SECRET)
    await run("wrong-s3-secret", ok.base_url)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", S3_SECRET_KEY)

    records = list(debug_logs.lines)  # before the searches below make S3 calls of their own
    assert len(records) > 50 and any(line.startswith("DEBUG") for line in records)
    found = [leak for line in records for leak in leaks(line, "a log record")]
    found += [leak for text in errors for leak in leaks(text, "an exception")]
    for where, text in [*everything_local(tmp_path / "runs"), *everything_stored(canary_s3, canary_bucket)]:
        found += leaks(text, where)
    found += [leak for where, text in await everything_prefect_kept() for leak in leaks(text, where)]
    reports = "".join(text for _, text in everything_local(tmp_path / "runs"))
    assert "InvalidApiKey" in reports  # the failures really happened
    assert "StorageUnavailable" in reports or "CopyFailed" in reports
    assert not found, f"{len(found)} secret leak(s):\n  " + "\n  ".join(sorted(set(found))[:30])


def test_no_object_that_holds_a_secret_shows_it_in_its_repr(
    canary_bucket: str, emulator: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from qwenedit.api import DashScopeClient
    from qwenedit.pipeline import RunServices

    client = DashScopeClient(API_KEY, emulator.base_url)
    destination = open_destination(f"s3://{canary_bucket}/x")
    fields: dict[str, Any] = {f.name: None for f in dataclasses.fields(RunServices)}
    fields.update(api_key=API_KEY, client=client, dest=destination, run_id="r", endpoint=emulator.base_url)
    context = RunServices(**fields)
    found: list[str] = []
    for name, thing in (
        ("DashScopeClient", client),
        ("S3Destination", destination),
        ("RunServices", context),
    ):
        found += leaks(repr(thing), f"repr({name})") + leaks(str(thing), f"str({name})")
    asyncio.run(client.aclose())
    assert not found, "\n".join(found)
