"""Approval in the Prefect UI: a flow run with a canary (and no terminal) pauses with a form; resuming it
with ``approve: true`` runs the rest, and a pause that times out declines without spending more."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterKey,
    FlowRunFilter,
    FlowRunFilterState,
    FlowRunFilterStateType,
)
from prefect.client.schemas.objects import StateType
from prefect.flow_runs import aresume_flow_run

from flows.edit_manifest import edit_manifest
from qwenedit.options import RunOptions
from qwenedit.run import exit_code, new_run_id
from tests.gates.helpers import billed_calls, results
from tests.pipeline.conftest import simple_rows

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_server")]


def options_for(manifest: Path, bucket: Any, emulator: Any, tmp_path: Path, **kwargs: Any) -> RunOptions:
    return RunOptions(
        manifest=str(manifest),
        dest=bucket.uri("out"),
        base_url=emulator.base_url,
        report_dir=str(tmp_path / "reports"),
        rates=("20",),
        run_id=new_run_id(),
        **kwargs,
    )


async def paused_flow_run(run_id: str, flow: asyncio.Task[Any], within_s: float = 120.0) -> Any:
    """The paused flow run of the run ``run_id`` (found by its parameters), once it has paused."""
    paused = FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.PAUSED])))
    deadline = time.monotonic() + within_s
    async with get_client() as client:
        while time.monotonic() < deadline:
            assert not flow.done(), "the flow ended without pausing"
            for flow_run in await client.read_flow_runs(flow_run_filter=paused):
                if flow_run.parameters.get("options", {}).get("run_id") == run_id:
                    return flow_run
            await asyncio.wait({flow}, timeout=0.2)  # poll the API, or see the flow end early
    raise AssertionError(f"no paused flow run of {run_id} within {within_s} s")


async def test_a_canary_flow_run_pauses_for_approval_and_resumes_when_approved(
    pipeline_env: Any, emulator_factory: Any, write_manifest: Any, tmp_path: Path
) -> None:
    emulator = emulator_factory()
    rows = simple_rows(6)
    for i, row in enumerate(rows):
        row["sku"] = f"SKU-{i % 2}"
    options = options_for(write_manifest(rows), pipeline_env, emulator, tmp_path, canary=2, group_by=("sku",))
    flow = asyncio.create_task(edit_manifest(options))
    flow_run = await paused_flow_run(str(options.run_id), flow)

    assert billed_calls(emulator) == 2  # the canary only, while it waits
    assert flow_run.state.state_details.pause_key == "canary"
    async with get_client() as client:  # the form's description shows the canary and the projected spend
        inputs = await client.filter_flow_run_input(
            flow_run_id=flow_run.id, key_prefix="paused-canary", limit=10, exclude_keys=set()
        )
    shown = " ".join(i.value for i in inputs)
    assert "Canary: 2 jobs" in shown and "The rest: 4 jobs" in shown

    await aresume_flow_run(UUID(str(flow_run.id)), run_input={"approve": True})
    summary = await asyncio.wait_for(flow, timeout=120)

    assert summary["by_status"]["succeeded"] == 6 and summary["stopped_by"] is None
    assert exit_code(summary) == 0
    assert billed_calls(emulator) == 6
    async with get_client() as client:  # the roll-up is in the flow run's summary artifact
        artifacts = await client.read_artifacts(
            artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=[f"summary-{str(options.run_id).lower()}"])
            )
        )
    (artifact,) = artifacts
    assert "By sku" in str(artifact.data) and "SKU-1" in str(artifact.data)


async def test_resuming_without_approve_declines(
    pipeline_env: Any, emulator_factory: Any, write_manifest: Any, tmp_path: Path
) -> None:
    emulator = emulator_factory()
    options = options_for(write_manifest(simple_rows(4)), pipeline_env, emulator, tmp_path, canary=1)
    flow = asyncio.create_task(edit_manifest(options))
    flow_run = await paused_flow_run(str(options.run_id), flow)
    await aresume_flow_run(UUID(str(flow_run.id)), run_input={"approve": False})
    summary = await asyncio.wait_for(flow, timeout=120)

    assert summary["stopped_by"]["cause"] == "declined" and exit_code(summary) == 3
    assert summary["by_status"]["not_attempted"] == 3
    assert billed_calls(emulator) == 1


async def test_a_flow_run_nobody_approves_in_time_stops_without_spending_more(
    pipeline_env: Any, emulator_factory: Any, write_manifest: Any, tmp_path: Path
) -> None:
    emulator = emulator_factory()
    options = options_for(
        write_manifest(simple_rows(5)), pipeline_env, emulator, tmp_path, canary=1, approval_timeout_s=2
    )
    summary = await asyncio.wait_for(edit_manifest(options), timeout=120)

    assert billed_calls(emulator) == 1
    assert summary["stopped_by"]["cause"] == "declined"
    assert exit_code(summary) == 3
    table = results(summary)
    assert sorted(table["status"]) == ["not_attempted"] * 4 + ["succeeded"]
    assert set(table.loc[table["status"] == "not_attempted", "error_code"]) == {"NotApproved"}
