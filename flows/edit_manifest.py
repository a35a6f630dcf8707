"""The ``edit_manifest`` Prefect flow: the run layer (``qwenedit.run``) with chunks as task runs.

One async flow run per manifest, entered one of two ways: ``edit_manifest(options)`` (deployments,
the library, tests) opens the run itself; ``edit_opened_run(OpenedRun.of(run, approve))`` (the CLI,
through ``qwenedit/cli/_flows.py``) is given a run the caller already opened, as an explicit parameter.
Both then do the same (``drive``). The run layer validates, lists what is done and skips it in bulk,
and groups the remaining rows into chunks; each chunk is one ``edit-chunk`` task run, given its
``Chunk`` and named by its row range, whose final state message gives its outcome counts. A million-row manifest is therefore a few
hundred task runs, and an unchanged row creates none. Per-job detail lives in results.csv, the ledger
and the results artifact; progress is a progress artifact updated during the run.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
from typing import Any
from uuid import UUID

from prefect import flow, task
from prefect.artifacts import (
    acreate_markdown_artifact,
    acreate_progress_artifact,
    acreate_table_artifact,
    aupdate_progress_artifact,
)
from prefect.cache_policies import NO_CACHE
from prefect.exceptions import FlowPauseTimeout
from prefect.flow_runs import apause_flow_run
from prefect.input import RunInput
from prefect.states import Completed, State
from pydantic import BaseModel, PrivateAttr

from flows import runlog
from qwenedit.canary import Question
from qwenedit.options import RunOptions
from qwenedit.report import markdown_summary
from qwenedit.run import Approver, Chunk, Run, outcome_text
from qwenedit.stopping import default_grace, graceful_stop
from qwenedit.summary import RunSummary

log = logging.getLogger("qwenedit.flow")

ARTIFACT_ROW_LIMIT = 1000  # the results table artifact; the full table is in results.csv
ARTIFACT_COLUMNS = (
    "job_id",
    "status",
    "model",
    "region",
    "image_count",
    "cost",
    "currency",
    "attempts",
    "qa",
    "error_code",
    "error_message",
)
PROGRESS_EVERY_S = 10.0
# A cancelled flow run (UI, `prefect flow-run cancel`, a worker shutting down): Prefect's runner (3.9.1, as 3.8.8) sends
# SIGTERM to the flow-run process group and SIGKILL 30 s later (hard-coded in runner/_cancellation_manager.py
# and _process_manager.py). The run gives its calls in flight this much of it; the rest is for reports.
PREFECT_KILL_AFTER_S = 30.0
PREFECT_DRAIN_S = 22.0
PREFECT_CALL_LIMIT_S = 5.0  # a Prefect API call while stopping (the ephemeral server may be gone)


@task(name="edit-chunk", cache_policy=NO_CACHE, persist_result=False, task_run_name="{chunk.name}")
async def edit_chunk(chunk: Chunk) -> State[Any]:
    """One chunk of consecutive rows through the run's shared pacers and window.

    The chunk is passed by reference: task parameters stay in this process (Prefect 3.8 sends a task
    run's name and inputs' dependencies to its API, not the values), ``NO_CACHE`` computes no cache key
    from it, and ``Chunk`` is no dataclass or collection, so Prefect neither walks nor copies it.
    """
    counts = await chunk.run()
    return Completed(message=f"{chunk.name}: {outcome_text(counts)}", data=counts)


class OpenedRun(BaseModel):
    """A run the caller opened (the CLI: every check before Prefect starts), as the flow's parameter.

    The Prefect UI shows its options (as for ``edit_manifest``); the run itself (clients, key, live
    state) and the approver are private attributes: never serialised, never validated.
    """

    options: RunOptions
    _run: Run | None = PrivateAttr(default=None)
    _approve: Approver | None = PrivateAttr(default=None)

    @classmethod
    def of(cls, run: Run, approve: Approver) -> OpenedRun:
        opened = cls(options=run.options)
        opened._run, opened._approve = run, approve
        return opened

    def unwrap(self) -> tuple[Run, Approver]:
        if self._run is None or self._approve is None:
            raise ValueError("an OpenedRun is made in-process by OpenedRun.of(run, approve), not from JSON")
        return self._run, self._approve


@flow(name="edit-manifest", log_prints=False)
async def edit_manifest(options: RunOptions) -> State[dict[str, Any]] | dict[str, Any]:
    """Run every job of ``options.manifest`` into ``options.dest``; returns the run summary."""
    async with Run(options) as run:
        return await drive(run, approval_in_ui(options))


@flow(name="edit-manifest", log_prints=False)
async def edit_opened_run(opened: OpenedRun) -> State[dict[str, Any]] | dict[str, Any]:
    """As ``edit_manifest``, for a run the caller opened and keeps open (the CLI)."""
    run, approve = opened.unwrap()
    return await drive(run, approve)


async def drive(run: Run, approve: Approver) -> State[dict[str, Any]] | dict[str, Any]:
    """Execute an open run with chunks as task runs, finish it, publish its artifacts. The flow run
    ends Completed with the summary in its summary.json form as data (calling the flow returns it) and
    a message that gives the outcome: the counts, and a stop's cause and reason (a spend cap, the
    budget, a declined approval, a signal), so the run's Prefect state says why it stopped."""
    # Installed here, inside the flow run: Prefect's engine replaces the SIGTERM handler when it starts.
    with graceful_stop(run, stop_grace(run.options)), runlog.narrate(run):
        progress = asyncio.create_task(_publish_progress(run))
        try:
            await run.execute(edit_chunk, approve=approve)
        finally:
            progress.cancel()
            await asyncio.wait({progress}, timeout=PREFECT_CALL_LIMIT_S if run.stopping else None)
        summary = await run.finish()
        runlog.ended(summary.to_json())
        publish = _publish_artifacts(run, summary)
        if run.stopping:  # a Ctrl-C also stops an ephemeral Prefect server: never wait a minute on it
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(publish, PREFECT_CALL_LIMIT_S)
        else:
            await publish
    data = summary.to_json()
    if isinstance(approve, UiApproval) and approve.timed_out:
        # The server turns any state after an expired pause into Failed("... never resumed"), which says why;
        # the summary still reaches the caller as the flow's return value.
        return data
    return Completed(message=runlog.outcome_text(data), data=data)


def stop_grace(options: RunOptions) -> float:
    """Seconds a stop gives the calls in flight: the option (default: the client timeout + 15 s), and in a
    flow-run process started by a Prefect worker or runner, no more than its SIGKILL leaves."""
    grace = options.stop_grace_s or default_grace(options.timeout_s)
    if os.environ.get("PREFECT__FLOW_RUN_ID"):  # set by Prefect's runner for the flow-run process
        grace = min(grace, PREFECT_DRAIN_S)
    return grace


class CanaryApproval(RunInput):
    """The form a deployment run's canary shows in the Prefect UI."""

    approve: bool = False


def approval_in_ui(options: RunOptions) -> UiApproval:
    """Pause the flow run after the canary (or before a run above ``approve_above``) until someone approves
    or declines in the Prefect UI; a pause that times out (``approval_timeout_s``) declines: nothing more
    is spent."""
    return UiApproval(options)


class UiApproval:
    """The approver of a deployment run: a pause with a form in the Prefect UI. ``timed_out``: a pause ran
    out, so Prefect's server ends the flow run Failed ("... never resumed") whatever the flow returns."""

    def __init__(self, options: RunOptions) -> None:
        self.options = options
        self.timed_out = False

    async def __call__(self, outcome: Question) -> bool:
        options = self.options
        form = CanaryApproval.with_initial_data(description=outcome.markdown(), approve=False)
        runlog.approval_asked(options, options.approval_timeout_s)
        try:
            answer = await apause_flow_run(
                wait_for_input=form, timeout=int(options.approval_timeout_s), key=outcome.key
            )
        except FlowPauseTimeout:
            self.timed_out = True
            log.warning(
                "no approval within %.0f s: the rest of the run is not started", options.approval_timeout_s
            )
            runlog.approval_answered(options, False, " (no answer in time)")
            return False
        runlog.approval_answered(options, bool(answer.approve))
        return bool(answer.approve)


def _artifact_key(kind: str, run_id: str) -> str:
    return f"{kind}-{run_id.lower().replace('_', '-')}"[:60]


def progress_text(run: Run) -> str:
    """The run's counts as one markdown line (the progress artifact's description)."""
    stats = run.stats
    t = stats.totals
    spend = ", ".join(f"{a} {c}" for c, a in t.total_cost().items()) or "0"
    outcomes = " · ".join(f"{n} {status}" for status, n in stats.outcomes().items())
    return (
        f"{stats.finished}/{stats.total_jobs} rows · {outcomes} · {t.images} images · {spend} · "
        f"{stats.requests_sent} requests · {stats.request_rate():.2f} req/s · "
        f"chunks {run.chunks_done}/{run.chunks_started}"
    )


async def _publish_progress(run: Run) -> None:
    """A progress artifact moved every few seconds while the run lasts (and once more at the end)."""
    artifact: UUID | None = None
    try:
        while True:
            pct = 100.0 * run.stats.finished / max(1, run.stats.total_jobs)
            if artifact is None:
                artifact = await acreate_progress_artifact(
                    pct, key=_artifact_key("progress", run.run_id), description=progress_text(run)
                )
            else:
                await aupdate_progress_artifact(artifact, pct, description=progress_text(run))
            await asyncio.sleep(PROGRESS_EVERY_S)
    except asyncio.CancelledError:
        if artifact is not None:
            with contextlib.suppress(Exception):
                pct = 100.0 * run.stats.finished / max(1, run.stats.total_jobs)
                await aupdate_progress_artifact(artifact, pct, description=progress_text(run))
        raise
    except Exception as err:  # no Prefect API: the terminal and the reports still show progress
        log.info("progress artifact not published: %s", type(err).__name__)


async def _publish_artifacts(run: Run, summary: RunSummary) -> None:
    try:
        # The rows that did something (an unchanged rerun of a million rows publishes an empty table).
        results, _ = run.state.spool.in_manifest_order(skipped_after=0)
        rows = [
            {col: str(getattr(r, col)) for col in ARTIFACT_COLUMNS}
            for r in itertools.islice(results, ARTIFACT_ROW_LIMIT)
        ]
        skipped = run.stats.totals.counts.get("skipped", 0)
        await acreate_table_artifact(
            key=_artifact_key("results", run.run_id),
            table=rows or [dict.fromkeys(ARTIFACT_COLUMNS, "")],
            description=(
                f"Jobs of run {run.run_id} that ran or failed (first {ARTIFACT_ROW_LIMIT}); "
                f"{skipped} unchanged rows skipped; every row is in results.csv"
            ),
        )
        await acreate_markdown_artifact(
            key=_artifact_key("summary", run.run_id),
            markdown=markdown_summary(summary),
            description=f"Summary of run {run.run_id}",
        )
    except Exception as err:  # no Prefect API (e.g. plain asyncio use): the files are the record
        log.info("artifacts not published: %s", type(err).__name__)


__all__ = ["OpenedRun", "RunOptions", "drive", "edit_chunk", "edit_manifest", "edit_opened_run"]
