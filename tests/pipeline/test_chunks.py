"""Chunks as Prefect's unit of work, and the unchanged rerun that costs no task run and no per-row request."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.client.schemas.sorting import TaskRunSort

import qwenedit.run.wiring as wiring
from flows.edit_manifest import edit_manifest
from qwenedit.htmlreport import CONTACT_LIMIT, FLAGGED_LIMIT
from qwenedit.options import RunOptions
from qwenedit.run.chunks import Chunks
from qwenedit.storage import open_destination
from tests.pipeline.conftest import simple_rows

pytestmark = pytest.mark.usefixtures("prefect_server")


class CountingDestination:
    """A destination that counts every call made to it by name (and the listing prefixes)."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.calls: Counter[str] = Counter()
        self.listed: list[str] = []
        self.read: list[str] = []

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        if not callable(attr):
            return attr

        def counted(*args: Any, **kwargs: Any) -> Any:
            self.calls[name] += 1
            if name in ("list_keys", "list_keys_unordered"):  # the latter: S3's partitioned bulk listing
                self.listed.append(str(args[0] if args else kwargs.get("prefix", "")))
            if name == "get_bytes":
                self.read.append(str(args[0]))
            return attr(*args, **kwargs)

        return counted


async def task_runs_of(state: Any, expect: int = 0, timeout_s: float = 60.0) -> list[Any]:
    """The flow run's task runs; waits (bounded) until ``expect`` of them are recorded in a final state:
    the server records task-run states from events, a little after the flow returns."""
    flow_run_id = state.state_details.flow_run_id
    deadline = asyncio.get_running_loop().time() + timeout_s
    async with get_client() as client:
        while True:
            runs = await client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])),
                sort=TaskRunSort.EXPECTED_START_TIME_ASC,
            )
            final = [r for r in runs if r.state is not None and r.state.is_final()]
            if len(final) >= expect or asyncio.get_running_loop().time() > deadline:
                return runs
            await asyncio.sleep(0.2)


@pytest.mark.slow
async def test_jobs_run_in_chunks_named_by_row_range_and_an_unchanged_rerun_creates_no_task_run(
    pipeline_env: Any,
    emulator_factory: Any,
    write_manifest: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    emulator = emulator_factory(rps=50.0)
    manifest = write_manifest(simple_rows(5))
    destinations: list[CountingDestination] = []

    def counting(uri: str) -> CountingDestination:
        destinations.append(CountingDestination(open_destination(uri)))
        return destinations[-1]

    monkeypatch.setattr(wiring, "open_destination", counting)

    def options() -> RunOptions:
        return RunOptions(
            manifest=str(manifest),
            dest=pipeline_env.uri("out"),
            base_url=emulator.base_url,
            report_dir=str(tmp_path / "reports"),
            rates=("50",),
            chunk_size=2,
        )

    first = await edit_manifest(options(), return_state=True)
    summary = await first.result()
    assert summary["by_status"]["succeeded"] == 5 and summary["chunks"] == 3
    runs = await task_runs_of(first, expect=3)
    assert sorted(r.name for r in runs) == ["rows 1-2", "rows 3-4", "rows 5-5"]
    assert all(r.state is not None and r.state.is_completed() for r in runs)
    messages = sorted(r.state.message for r in runs if r.state is not None)
    assert messages == ["rows 1-2: 2 succeeded", "rows 3-4: 2 succeeded", "rows 5-5: 1 succeeded"]
    calls = emulator.stats()["requests"]

    second = await edit_manifest(options(), return_state=True)
    again = await second.result()
    assert again["by_status"]["skipped"] == 5 and again["chunks"] == 0
    assert await task_runs_of(second) == []  # no task run for a done row
    assert emulator.stats()["requests"] == calls  # no call
    store = destinations[-1]
    # Per run, not per row: the destination check, one listing of the done markers, the report uploads.
    assert store.listed == ["_ledger/", "_ledger/_done/"]
    assert store.calls["head"] == 0
    # The only reads are report.html's contact-sheet thumbnails: output images, bounded, never the ledger.
    assert sorted(store.read) == [f"job-{i:04d}/1.png" for i in range(5)]
    assert CONTACT_LIMIT + FLAGGED_LIMIT < 1000
    assert (
        store.calls["put_bytes"] == 1 + 4
    )  # the write check, then results.csv, summary.json, failed.jsonl, report.html


@pytest.mark.slow
async def test_a_failed_chunk_does_not_fail_its_siblings_and_its_rows_are_reported(
    pipeline_env: Any,
    emulator_factory: Any,
    write_manifest: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    emulator = emulator_factory(rps=50.0)
    manifest = write_manifest(simple_rows(4))
    real = Chunks.run_chunk

    async def broken_second_chunk(self: Any, chunk: Any) -> dict[str, int]:
        if chunk.index == 1:
            raise RuntimeError("orchestration failed before the chunk ran")
        return await real(self, chunk)

    monkeypatch.setattr(Chunks, "run_chunk", broken_second_chunk)
    options = RunOptions(
        manifest=str(manifest),
        dest=pipeline_env.uri("out"),
        base_url=emulator.base_url,
        report_dir=str(tmp_path / "reports"),
        rates=("50",),
        chunk_size=2,
    )
    summary = await edit_manifest(options)
    assert summary["by_status"] == {"succeeded": 2, "failed": 2, "skipped": 0, "not_attempted": 0}
    assert emulator.stats()["requests"] == 2  # the broken chunk's rows were never called

    monkeypatch.setattr(Chunks, "run_chunk", real)
    rerun = await edit_manifest(options.with_changes(run_id=None))
    assert rerun["by_status"] == {"succeeded": 2, "failed": 0, "skipped": 2, "not_attempted": 0}
