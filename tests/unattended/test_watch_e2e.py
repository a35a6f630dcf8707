"""One night of the watcher for real: a Prefect server (``prefect server start``, its trigger and action
services on), a process worker, SeaweedFS, the emulator in its own process, and an HTTP receiver on
127.0.0.1 behind a Prefect Custom Webhook notification block installed by ``python -m flows.alerts``.

The watched prefix holds a good manifest (with a forged "processed" marker beside it and a corrupt,
deeply nested one where markers live), a manifest with an invalid row, two drops whose names collide
(``pair.csv`` / ``pair.jsonl``), one over the deployment's policy (``max_n``) and one reading an input
from another bucket (the watcher's default input prefix is the manifest's own bucket), and two manifests whose quotes together cross the deployment's daily
cap, then one more. One tick: the good manifests run; the invalid one, the two over the policy and the pair are failed rows of
the tick artifact, each with its reason; the second cap manifest stops at the cap and the last one is
not started; the emulator billed no more than the cap; the receiver gets the "run failed", "cap" and
"tick had problems" alerts; the good run's page has its story. A second tick bills nothing more.

Every process started here is stopped (by its own id) in ``finally`` blocks; everything binds 127.0.0.1.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from PIL import Image

from devkit.emulator import EmulatorProcess
from devkit.procs import free_port, wait_for_http, wait_until_async
from tests.distributed.test_workers import Procs
from tests.fixtures.prefect import prefect_api

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
API_KEY = "sk-watch-e2e-test-0123456789"
POOL = "qwenedit-watch-test"
GOOD_JOBS = 3
CAP_JOBS = 4  # z-cap-1.csv and z-cap-2.csv each; with good.csv, 11 images at $0.03 cross the daily cap
UNIT_PRICE = Decimal("0.03")  # qwen-image-edit-plus in Singapore, the default model and region
DAILY_CAP = Decimal("0.27")  # good (0.09) + z-cap-1 (0.12) fit; z-cap-2 has room for 2 of its 4 images


class Receiver:
    """An HTTP endpoint on 127.0.0.1 that keeps every JSON body POSTed to it."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        received = self.bodies

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                received.append(json.loads(self.rfile.read(length) or b"{}"))
                self.send_response(204)
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def subjects(self) -> list[str]:
        return [str(b.get("subject")) for b in self.bodies]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    r.thread.start()
    try:
        yield r
    finally:
        r.server.shutdown()
        r.server.server_close()


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Procs]:
    p = Procs(tmp_path)
    try:
        yield p
    finally:
        p.stop_all()


@pytest.fixture
def emulator(tmp_path: Path) -> Iterator[EmulatorProcess]:
    with EmulatorProcess(tmp_path / "emulator", rps=20, render="fast", key=API_KEY) as running:
        yield running


def png_bytes() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (512, 512), (200, 30, 30)).save(buf, format="PNG")
    return buf.getvalue()


def rows_csv(image: str, prompts: list[str]) -> bytes:
    lines = ["job_id,image_1,prompt"] + [f"job-{i},{image},{p}" for i, p in enumerate(prompts)]
    return ("\n".join(lines) + "\n").encode()


def billed_images(emulator: EmulatorProcess) -> int:
    return sum(int(entry["image_count"]) for entry in emulator.ledger())


async def tick_table(client: Any) -> list[dict[str, str]]:
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    artifacts = await client.read_artifacts(
        artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["manifest-tick"]))
    )
    latest = max(artifacts, key=lambda a: a.created)
    data = json.loads(latest.data) if isinstance(latest.data, str) else latest.data
    return list(data)


async def test_one_tick_runs_the_good_manifest_and_fails_each_bad_drop_with_its_reason_and_alerts(
    procs: Procs, emulator: EmulatorProcess, s3_env: Any, receiver: Receiver, tmp_path: Path
) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterKey,
        LogFilter,
        LogFilterFlowRunId,
    )
    from prefect.deployments import arun_deployment

    from flows.scheduled import artifact_key

    bucket = s3_env
    port = free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "AWS_", "DASHSCOPE_"))}
    env.update(
        {
            "PREFECT_HOME": str(tmp_path / "prefect-home"),
            "PREFECT_API_URL": api_url,
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_WORKER_QUERY_SECONDS": "1",
            "PREFECT_RUNNER_POLL_FREQUENCY": "1",
            "PREFECT_LOGGING_LEVEL": "INFO",
            "DASHSCOPE_API_KEY": API_KEY,
            "DASHSCOPE_BASE_URL": emulator.base_url,
            **bucket.env,
        }
    )
    prefect = str(VENV_BIN / "prefect")
    server = procs.start(
        "server",
        [
            prefect,
            "server",
            "start",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--no-ui",
            "--analytics-off",
        ],
        env,
    )
    wait_for_http(
        f"{api_url}/health", what="prefect server", timeout_s=150, proc=server, log=procs.log_path("server")
    )

    def run_module(*args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=240
        )
        assert done.returncode == 0, done.stderr[-3000:]
        return done.stdout

    watch, edited = bucket.uri("incoming/"), bucket.uri("edited/")
    run_module(
        "flows.deploy", "--pool", POOL, "--watch", watch, "--dest", edited, "--only", "edit,scheduler",
        "--interval", "86400", "--paused", "--poll-interval", "1", "--param", f"report_dir={tmp_path / 'reports'}",
        "--param", f"daily_budget={DAILY_CAP} USD", "--param", "max_n=2",
    )  # fmt: skip
    installed = run_module("flows.alerts", "--webhook", receiver.url)
    assert "qwenedit-alert-failed" in installed and "qwenedit-alert-watch" in installed
    procs.start("worker", [prefect, "worker", "start", "--pool", POOL, "--limit", "2", "--name", "w"], env, 2)

    # --- the drops ----------------------------------------------------------------------------------
    s3 = bucket.client
    s3.put_object(Bucket=bucket.bucket, Key="inputs/red.png", Body=png_bytes())
    red = bucket.uri("inputs/red.png")
    good = s3.put_object(
        Bucket=bucket.bucket, Key="incoming/good.csv", Body=rows_csv(red, ["make it blue"] * GOOD_JOBS)
    )
    # A dropper's forgery beside it ("processed", the right ETag), and a parser bomb where markers live.
    forged = {"version": "etag:" + good["ETag"].strip('"'), "outcome": "processed"}
    s3.put_object(
        Bucket=bucket.bucket, Key="incoming/good.csv.processed.json", Body=json.dumps(forged).encode()
    )
    s3.put_object(Bucket=bucket.bucket, Key="edited/_watch/good.csv.json", Body=b"[" * 30_000 + b"]" * 30_000)
    s3.put_object(Bucket=bucket.bucket, Key="incoming/bad.csv", Body=rows_csv(red, ["fine", ""]))
    s3.put_object(Bucket=bucket.bucket, Key="incoming/pair.csv", Body=rows_csv(red, ["one"]))
    # Over the deployment's policy: n = 3 with max_n = 2; an input outside the manifest's own bucket.
    over = f"job_id,image_1,prompt,n\nover-1,{red},three please,3\n"
    s3.put_object(Bucket=bucket.bucket, Key="incoming/over.csv", Body=over.encode())
    foreign = rows_csv("s3://someone-elses-bucket/private/secret.png", ["copy it"])
    s3.put_object(Bucket=bucket.bucket, Key="incoming/foreign.csv", Body=foreign)
    pair_jsonl = json.dumps({"job_id": "p", "image_1": red, "prompt": "two"}) + "\n"
    s3.put_object(Bucket=bucket.bucket, Key="incoming/pair.jsonl", Body=pair_jsonl.encode())
    # Sorted last: their quotes together cross the daily cap, and zz-late.csv comes after the cap.
    for name in ("z-cap-1.csv", "z-cap-2.csv"):
        s3.put_object(Bucket=bucket.bucket, Key=f"incoming/{name}", Body=rows_csv(red, ["cap"] * CAP_JOBS))
    s3.put_object(Bucket=bucket.bucket, Key="incoming/zz-late.csv", Body=rows_csv(red, ["late"]))

    with prefect_api(api_url):
        tick = await arun_deployment(
            "process-new-manifests/nightly", poll_interval=1, timeout=360, as_subflow=False
        )
        assert tick.state is not None and tick.state.is_completed(), tick.state
        async with get_client() as client:
            rows = {Path(r["manifest"]).name: r for r in await tick_table(client)}
            assert rows["good.csv"]["outcome"] == "processed"
            assert rows["bad.csv"]["outcome"] == "failed"
            assert "ManifestInvalid" in rows["bad.csv"]["reason"]
            assert "not retried until a new version" in rows["bad.csv"]["reason"]
            for name in ("over.csv", "foreign.csv"):  # refused by the policy before any call
                assert rows[name]["outcome"] == "failed" and "ManifestInvalid" in rows[name]["reason"]
            for name, other in (("pair.csv", "pair.jsonl"), ("pair.jsonl", "pair.csv")):
                assert rows[name]["outcome"] == "failed" and f"'{other}'" in rows[name]["reason"]
            assert rows["z-cap-1.csv"]["outcome"] == "processed"
            assert (
                rows["z-cap-2.csv"]["outcome"] == "stopped" and "spend_cap" in rows["z-cap-2.csv"]["reason"]
            )
            assert rows["zz-late.csv"]["outcome"] == "not_started"
            assert "spend cap reached" in rows["zz-late.csv"]["reason"]
            billed = billed_images(emulator)
            # Only good manifests were billed (3 + 4 + what z-cap-2 had room for), never over the cap.
            assert billed >= GOOD_JOBS + CAP_JOBS and billed * UNIT_PRICE <= DAILY_CAP, billed

            marker = json.loads(
                s3.get_object(Bucket=bucket.bucket, Key="edited/_watch/good.csv.json")["Body"].read()
            )
            assert (
                marker["outcome"] == "processed" and marker["summary"]["by_status"]["succeeded"] == GOOD_JOBS
            )
            bad = json.loads(
                s3.get_object(Bucket=bucket.bucket, Key="edited/_watch/bad.csv.json")["Body"].read()
            )
            assert bad["outcome"] == "failed"

            # The good run's page tells its story; its results have a stable per-manifest artifact key.
            logs = await client.read_logs(
                LogFilter(flow_run_id=LogFilterFlowRunId(any_=[UUID(marker["flow_run_id"])]))
            )
            text = "\n".join(entry.message for entry in logs)
            assert "started: manifest" in text and "quote:" in text and "summary:" in text
            key = artifact_key(bucket.uri("incoming/good.csv"))
            keyed = await client.read_artifacts(
                artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key]))
            )
            assert keyed and "| 3 | 3 |" in str(keyed[0].data), "no results under the manifest's stable key"

            # The alerts, sent by the Prefect server through the webhook block.
            async def alerted() -> bool:
                subjects = receiver.subjects()
                return {
                    "qwenedit: a run failed",
                    "qwenedit: the watcher's tick had problems",
                    "qwenedit: a run reached a spending cap",
                } <= set(subjects)

            await wait_until_async(
                alerted, what=f"alerts (got {receiver.subjects()})", timeout_s=180, interval_s=1
            )
            failed_alert = next(b for b in receiver.bodies if b["subject"] == "qwenedit: a run failed")
            assert "of edit-manifest ended Failed" in failed_alert["body"]
            assert "ManifestInvalid" in failed_alert["body"]
            watch_alert = next(b for b in receiver.bodies if "tick" in str(b["subject"]))
            assert "5 failed manifest(s)" in watch_alert["body"] and "spend_cap" in watch_alert["body"]
            cap_alert = next(b for b in receiver.bodies if "cap" in str(b["subject"]))
            assert "z-cap-2.csv" in cap_alert["body"] and "spend_cap" in cap_alert["body"]

            # A second tick: nothing runs again (the refused version waits for a new one).
            again = await arun_deployment(
                "process-new-manifests/nightly", poll_interval=1, timeout=240, as_subflow=False
            )
            assert again.state is not None and again.state.is_completed(), again.state
            rows = {Path(r["manifest"]).name: r for r in await tick_table(client)}
            for name in ("good.csv", "bad.csv", "over.csv", "foreign.csv"):
                assert rows[name]["outcome"] == "skipped", rows[name]
            assert "drop a new version" in rows["bad.csv"]["reason"]
            assert rows["z-cap-2.csv"]["outcome"] == "stopped"  # the day's cap is still reached
            assert rows["zz-late.csv"]["outcome"] == "not_started"
            assert billed_images(emulator) == billed
    print("\nWATCH-E2E-ALERTS " + json.dumps(receiver.bodies))
