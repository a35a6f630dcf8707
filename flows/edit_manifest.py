"""The ``edit_manifest`` Prefect flow: a manifest in, edited images and a cost report out.

One async flow run per manifest; one Prefect task run per job, so every job is visible in the UI.
Jobs are read lazily from the manifest and fed through a bounded window of ``max_in_flight``
tasks: a 100,000-row manifest never becomes 100,000 coroutines. Pacing happens inside each task
(``qwenedit.pacer``), so the window only bounds memory and in-flight calls, never the rate.

The whole manifest is validated and quoted before the first call: nothing is spent on a broken file.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
from prefect import flow, task
from prefect.artifacts import acreate_markdown_artifact, acreate_table_artifact
from prefect.cache_policies import NO_CACHE

from qwenedit.api import DashScopeClient, api_key_from_env, resolve_base_url
from qwenedit.inputs import InputResolver
from qwenedit.jobs import Job
from qwenedit.ledger import Ledger
from qwenedit.manifest import Validation, iter_jobs, manifest_base, validate_manifest
from qwenedit.pacer import PacerPool
from qwenedit.pipeline import DEFAULT_OUTPUT_HOSTS, Budget, RunContext, RunStats, new_result, record, run_job
from qwenedit.pricing import PriceTable, load_prices
from qwenedit.redact import install_log_redaction
from qwenedit.report import ResultSpool, markdown_summary, results_frame, write_reports
from qwenedit.storage import make_s3_client, open_destination

log = logging.getLogger("qwenedit.flow")

# Live run contexts by run id. Tasks look their context up here instead of receiving it as a
# parameter: Prefect would try to hash and serialise a parameter, and the context holds clients.
RUNS: dict[str, RunContext] = {}

ARTIFACT_ROW_LIMIT = 1000  # the results table artifact; the full table is in results.csv


class ManifestInvalid(Exception):
    """The manifest has errors; nothing was called."""

    def __init__(self, validation: Any) -> None:
        self.validation = validation
        n = sum(1 for p in validation.problems if p.severity == "error")
        super().__init__(f"manifest has {n} invalid row problem(s); run `qwenedit validate` to see them all")


class DestinationUnusable(Exception):
    """The destination cannot be listed or written; nothing was called."""


def check_destination(destination: Any) -> None:
    """Fail before the first call if the destination cannot be read and written.

    A missing bucket or refused credentials would otherwise fail every job after minutes of store
    retries, and a read-only key would let every call be paid for and then not be stored.
    """
    try:
        next(iter(destination.list_keys("_ledger/")), None)
        destination.put_bytes(".qwenedit-write-check", b"ok\n", "text/plain")
    except Exception as err:
        response = getattr(err, "response", None)
        code = response.get("Error", {}).get("Code") if isinstance(response, dict) else None
        reason = code or f"{type(err).__name__}: {err}"[:200]
        raise DestinationUnusable(f"destination {destination.uri()} cannot be used: {reason}") from None


async def validated(
    manifest: str, region: str, model: str | None, prices: PriceTable, input_root: str | None
) -> Validation:
    """The whole manifest validated and quoted before anything is spent; raises ``ManifestInvalid``."""
    validation = await asyncio.to_thread(
        validate_manifest, manifest, region=region, model=model, prices=prices, input_root=input_root
    )
    if not validation.ok:
        raise ManifestInvalid(validation)
    return validation


def exit_code(summary: dict[str, Any]) -> int:
    """0 every job succeeded or was skipped, 1 some failed, 3 stopped by the breaker or the budget."""
    if summary.get("stopped_by"):
        return 3
    return 1 if summary["by_status"]["failed"] else 0


@task(name="edit-job", cache_policy=NO_CACHE, task_run_name="{job.job_id}", log_prints=False)
async def edit_job(job: Job, run_id: str) -> str:
    """One manifest row: call (paced, retried), record the charge, copy the outputs.

    Returns only the status: the full result goes to the run's spool, and Prefect keeps task results
    in memory for the life of the flow run (20,000 JobResults would grow it for nothing).
    """
    return (await run_job(RUNS[run_id], job)).status


def new_run_id() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ-") + uuid.uuid4().hex[:6]


@flow(name="edit-manifest", log_prints=False)
async def edit_manifest(
    manifest: str,
    dest: str,
    region: str = "singapore",
    base_url: str | None = None,
    rps: float = 2.0,
    max_in_flight: int = 64,
    budget_usd: float | str | None = None,
    report_dir: str | None = None,
    input_root: str | None = None,
    model: str | None = None,
    prices: str | None = None,
    max_attempts: int = 6,
    timeout_s: float = 120.0,
    recall_expired: bool = False,
    allowed_output_hosts: list[str] | None = None,
    run_id: str | None = None,
    api_key_env: str = "DASHSCOPE_API_KEY",
) -> dict[str, Any]:
    """Run every job of ``manifest`` into ``dest``; returns the run summary (see summary.json)."""
    run_id = run_id or new_run_id()
    price_table = load_prices(prices)
    validation = await validated(manifest, region, model, price_table, input_root)

    endpoint = resolve_base_url(region, base_url)
    api_key = api_key_from_env(api_key_env)
    install_log_redaction(api_key)  # no credential in any log line, whoever logs it
    destination = open_destination(dest)
    await asyncio.to_thread(check_destination, destination)  # before anything is paid for
    out_dir = Path(report_dir or "runs") / run_id
    hosts = tuple(allowed_output_hosts or ()) + DEFAULT_OUTPUT_HOSTS + (_host_pattern(endpoint),)
    resolver = InputResolver(
        input_root=input_root, manifest_dir=manifest_base(manifest), s3_client_factory=make_s3_client
    )
    stats = RunStats(total_jobs=validation.job_count)
    io = ThreadPoolExecutor(max_workers=16, thread_name_prefix="qwenedit-io")
    limits = httpx.Limits(max_connections=32, max_keepalive_connections=32)
    budget = Decimal(str(budget_usd)) if budget_usd not in (None, "") else None
    async with DashScopeClient(
        api_key, endpoint, timeout=timeout_s, max_connections=max_in_flight + 8
    ) as client:
        with httpx.Client(timeout=httpx.Timeout(60.0, connect=10.0), limits=limits) as http:
            ctx = RunContext(
                run_id=run_id,
                client=client,
                endpoint=endpoint,
                api_key=api_key,
                dest=destination,
                ledger=Ledger(destination),
                prices=price_table,
                pacers=PacerPool(rps),
                resolve_input=resolver.resolve,
                input_identity=resolver.identity,
                locate_input=lambda ref: resolver.locate(ref).location,
                http=http,
                io=io,
                spool=ResultSpool(out_dir / "results.jsonl"),
                allowed_output_hosts=hosts,
                budget=Budget(budget),
                stats=stats,
                max_attempts=max_attempts,
                recall_expired=recall_expired,
            )
            RUNS[run_id] = ctx
            try:
                jobs = iter_jobs(
                    manifest, region=region, model=model, prices=price_table, input_root=input_root
                )
                await _run_window(ctx, jobs, max_in_flight)
            finally:
                ctx.spool.close()
                RUNS.pop(run_id, None)
                io.shutdown(wait=True)
    summary = _summary(ctx, manifest, dest, endpoint, rps)
    summary["report_dir"] = str(out_dir)
    paths = write_reports(ctx.spool, summary, out_dir)
    await asyncio.to_thread(_upload_reports, destination, run_id, paths)
    await _publish_artifacts(ctx, summary)
    return summary


async def _run_window(ctx: RunContext, jobs: Any, max_in_flight: int) -> None:
    """Feed jobs to task runs, never more than ``max_in_flight`` at once, reading the manifest lazily."""
    pending: set[asyncio.Task[None]] = set()
    for job in jobs:
        while len(pending) >= max_in_flight:
            _, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
        pending.add(asyncio.create_task(_one(ctx, job)))
    if pending:
        await asyncio.wait(pending)


async def _one(ctx: RunContext, job: Job) -> None:
    """Run a job's task; if orchestration itself fails before the job ran, the row is still reported."""
    ctx.unrecorded.add(job.row)
    try:
        await edit_job(job, ctx.run_id)
    except Exception as err:
        log.error("task for job %s failed in orchestration: %s", job.job_id, type(err).__name__)
        if job.row in ctx.unrecorded:  # else the job recorded itself; only Prefect's bookkeeping failed
            result = new_result(job)
            result.error_code, result.error_message = "OrchestrationError", type(err).__name__
            record(ctx, job, result)


def _summary(ctx: RunContext, manifest: str, dest: str, endpoint: str, rps: float) -> dict[str, Any]:
    stats = ctx.stats
    summary: dict[str, Any] = {"run_id": ctx.run_id, "manifest": manifest, "dest": dest, "endpoint": endpoint}
    summary.update(stats.totals.to_dict())
    stopped_by = None
    if ctx.breaker.reason is not None:
        stopped_by = {
            "cause": "breaker",
            "code": ctx.breaker.reason.code,
            "message": ctx.breaker.reason.message,
        }
    elif ctx.budget.exhausted:
        stopped_by = {"cause": "budget", "limit": str(ctx.budget.limit)}
    summary.update(
        {
            "stopped_by": stopped_by,
            "budget": None if ctx.budget.limit is None else str(ctx.budget.limit),
            "wall_time_s": round(time.monotonic() - stats.started, 3),
            "requests_sent": stats.requests_sent,
            "request_rate": round(stats.request_rate(), 4),
            "rps_limit": rps,
            "throttled_429": stats.throttled,
        }
    )
    return summary


def _upload_reports(destination: Any, run_id: str, paths: dict[str, Path]) -> None:
    types = {".csv": "text/csv", ".json": "application/json", ".jsonl": "application/x-ndjson"}
    for name, path in paths.items():
        try:
            destination.put_bytes(f"_runs/{run_id}/{name}", path.read_bytes(), types[path.suffix])
        except Exception as err:  # the local copy exists; say so rather than fail the finished run
            log.warning("could not upload %s to the destination: %s", name, type(err).__name__)


async def _publish_artifacts(ctx: RunContext, summary: dict[str, Any]) -> None:
    try:
        results, extra_keys = ctx.spool.in_manifest_order()
        frame = results_frame(itertools.islice(results, ARTIFACT_ROW_LIMIT), extra_keys)
        frame = frame.drop(columns=["outputs"]).astype(str)
        await acreate_table_artifact(
            key=f"results-{ctx.run_id.lower().replace('_', '-')}"[:60],
            table=[{str(k): v for k, v in rec.items()} for rec in frame.to_dict(orient="records")],
            description=f"Per-job results of run {ctx.run_id} (first {ARTIFACT_ROW_LIMIT} rows)",
        )
        await acreate_markdown_artifact(
            key=f"summary-{ctx.run_id.lower()}"[:60],
            markdown=markdown_summary(summary),
            description=f"Summary of run {ctx.run_id}",
        )
    except Exception as err:  # no Prefect API (e.g. plain asyncio use): the files are the record
        log.info("artifacts not published: %s", type(err).__name__)


def _host_pattern(endpoint: str) -> str:
    parts = urlsplit(endpoint)
    return f"{parts.hostname}:{parts.port}" if parts.port else str(parts.hostname)
