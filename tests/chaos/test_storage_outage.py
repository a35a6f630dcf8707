"""The destination goes away mid-run: S3 stopped and restarted, output URLs expiring meanwhile.

These tests stop the chaos suite's own SeaweedFS server (``private_seaweed``), never the session's.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

import qwenedit.run.wiring as wiring
from flows.edit_manifest import edit_manifest
from qwenedit.options import RunOptions
from qwenedit.storage import S3Settings, open_destination
from tests.chaos.conftest import PRICE, RunRecord, chaos_rows, check_invariants, read_results, timed_run

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_server")]  # the chaos suite: minutes


def params(manifest: Path, bucket: Any, emulator: Any, tmp_path: Path, **kwargs: Any) -> dict[str, Any]:
    return {
        "manifest": str(manifest),
        "dest": bucket.uri("out"),
        "base_url": emulator.base_url,
        "report_dir": str(tmp_path / "reports"),
        "rates": ("10",),
        **kwargs,
    }


async def wait_until(predicate: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out waiting for the run to get there"
        await asyncio.sleep(0.02)


@pytest.mark.slow
async def test_s3_down_for_30_seconds_mid_run_then_back_every_job_finishes_paid_once_and_stored(
    outage_bucket: Any,
    private_seaweed: Any,
    emulator_factory: Any,
    spy_on: Any,
    write_manifest: Any,
    tmp_path: Path,
) -> None:
    emulator = emulator_factory(latency_median_s=0.4)
    spy = spy_on(emulator)
    rows = chaos_rows(16)
    started = time.monotonic()
    flow = asyncio.ensure_future(
        edit_manifest(RunOptions(**params(write_manifest(rows), outage_bucket, emulator, tmp_path)))
    )
    await wait_until(lambda: len(emulator.ledger()) >= 3)  # some calls answered, others on their way
    await asyncio.to_thread(private_seaweed.stop)
    stopped_at = time.monotonic()
    assert not flow.done(), "the run finished before the outage began"
    await asyncio.sleep(30)
    billed_during_outage = len(emulator.ledger())
    await asyncio.to_thread(private_seaweed.start)
    summary = await flow
    run = RunRecord(started=started, ended=time.monotonic(), summary=summary)

    assert time.monotonic() - stopped_at >= 30
    assert summary["by_status"]["succeeded"] == 16, read_results(summary)[
        ["job_id", "status", "error_message"]
    ]
    assert billed_during_outage < 16 or len(emulator.ledger()) == 16  # jobs waited, none gave up
    found = check_invariants(spy=spy, bucket=outage_bucket, prefix="out", rows=rows, runs=[run])
    assert found.billed_images == found.stored_images == 16 and found.jobs_billed_twice == 0
    reports = outage_bucket.client.list_objects_v2(
        Bucket=outage_bucket.bucket, Prefix=f"out/_runs/{run.run_id}/"
    )
    assert reports.get("KeyCount") == 4  # the reports (csv, json, jsonl, html) were uploaded after the outage


@pytest.mark.slow
async def test_outputs_that_expire_while_s3_is_down_fail_as_expired_stay_billed_and_recall_pays_once_more(
    outage_bucket: Any,
    private_seaweed: Any,
    emulator_factory: Any,
    spy_on: Any,
    write_manifest: Any,
    tmp_path: Path,
) -> None:
    emulator = emulator_factory(url_ttl_s=2.0, latency_median_s=1.0)
    spy = spy_on(emulator)
    rows = chaos_rows(2)
    manifest = write_manifest(rows)
    started = time.monotonic()
    flow = asyncio.ensure_future(
        edit_manifest(RunOptions(**params(manifest, outage_bucket, emulator, tmp_path)))
    )
    await wait_until(lambda: spy.first_call() is not None)  # calls are in the model: answers come in 1 s
    await asyncio.to_thread(private_seaweed.stop)
    await asyncio.sleep(5)  # the answers' 2 s links expire while nothing can be stored
    await asyncio.to_thread(private_seaweed.start)
    first = RunRecord(started=started, ended=time.monotonic(), summary=await flow)
    first.ended = time.monotonic()

    table = read_results(first.summary or {})
    assert list(table["status"]) == ["failed", "failed"]
    assert set(table["error_code"]) == {"OutputsExpired"}
    assert all("outputs expired before they were stored" in m for m in table["error_message"])
    assert [Decimal(c) for c in table["cost"]] == [PRICE, PRICE]  # billed, so reported
    assert list(table["billed_not_stored"]) == ["1", "1"]
    assert first.summary is not None and first.summary["billed_not_stored_images"] == 2

    # The same command again: nothing is called, the reason now says how to pay again.
    second = await timed_run(edit_manifest(RunOptions(**params(manifest, outage_bucket, emulator, tmp_path))))
    again = read_results(second.summary or {})
    assert len(emulator.ledger()) == 2
    assert list(again["error_code"]) == ["OutputsExpired", "OutputsExpired"]
    assert all("--recall-expired" in m for m in again["error_message"])
    assert list(again["cost"]) == ["0", "0"]

    # --recall-expired: exactly one more paid call per job, and the images are stored.
    third = await timed_run(
        edit_manifest(RunOptions(**params(manifest, outage_bucket, emulator, tmp_path, recall_expired=True)))
    )
    assert third.summary is not None and third.summary["by_status"]["succeeded"] == 2
    assert len(emulator.ledger()) == 4
    check_invariants(
        spy=spy,
        bucket=outage_bucket,
        prefix="out",
        rows=rows,
        runs=[first, second, third],
        recalled=frozenset(r["job_id"] for r in rows),
    )


async def test_a_paid_call_whose_charge_record_cannot_be_written_is_reported_as_billed_but_not_stored(
    outage_bucket: Any,
    private_seaweed: Any,
    emulator_factory: Any,
    spy_on: Any,
    write_manifest: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # An outage longer than the store retries (shortened here: 2 tries, no boto3 retries) while an
    # answered call waits to write its charge record.
    no_retries = dataclasses.replace(S3Settings.from_env(), max_attempts=1, connect_timeout=1.0)
    monkeypatch.setattr(wiring, "open_destination", lambda uri: open_destination(uri, no_retries))
    emulator = emulator_factory(latency_median_s=1.0)
    spy = spy_on(emulator)
    rows = chaos_rows(1)
    started = time.monotonic()
    flow = asyncio.ensure_future(
        edit_manifest(
            RunOptions(
                **params(write_manifest(rows), outage_bucket, emulator, tmp_path),
                store_attempts=2,
                backoff_base=0.05,
            )
        )
    )
    await wait_until(lambda: spy.first_call() is not None)
    await asyncio.to_thread(private_seaweed.stop)
    try:
        summary = await flow
    finally:
        await asyncio.to_thread(private_seaweed.start)
    run = RunRecord(started=started, ended=time.monotonic(), summary=summary)

    row = read_results(summary).iloc[0]
    assert row["status"] == "failed" and row["error_code"] == "StorageUnavailable"
    assert Decimal(row["cost"]) == PRICE  # the call was answered and billed
    assert row["billed_not_stored"] == "1", "a billed image that was not stored is not listed as such"
    assert summary["billed_not_stored_images"] == 1
    check_invariants(spy=spy, bucket=outage_bucket, prefix="out", rows=rows, runs=[run])
