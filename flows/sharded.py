"""Scale-out: one manifest split into K shards, each run as a deployment run on a work pool, one report.

``edit_manifest_sharded`` validates the whole manifest (nothing is spent on a broken file), writes K
shard manifests next to its reports under ``{dest}/_runs/{run_id}/shards/`` (image references made
absolute, so any worker that can see the inputs can run them), starts one run of the shard deployment
(``edit-manifest/shard``: the plain ``edit_manifest`` flow) per shard with ``run_deployment``, waits
for them, and writes one consolidated report: results.csv in manifest order, summary.json whose totals
are the sums of the shards', failed.jsonl.

Quota (see ``qwenedit.shards``): shards on the same account share each model's limit (the options'
``rates``, else the model table's). With limits of 2 per period (2/s, Max's 2/min) at most two shards
of one account run at once, each at half of every model's limit less a 10 % headroom
(``shared_headroom``) for the timing jitter between processes; more shards of that account wait their
turn.
Shards on different accounts (``accounts``: names of env vars holding their keys, read on the worker)
each get the full rate. More shards on one account therefore never make a run faster; they spread the
work over machines (isolation, a worker dying costs one shard), nothing more.

A shard run that crashes or fails leaves no report of its own: its rows are rebuilt from the ledger
(done by that run → succeeded; paid but not stored → failed, billed-not-stored; else not attempted),
the consolidated report is written anyway, and the parent run then fails. Rerunning the same manifest
resumes: the ledger under ``dest`` makes every shard skip what is done.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import tempfile
import time
from collections.abc import Sequence
from dataclasses import replace
from decimal import Decimal
from pathlib import Path
from typing import Any

import pandas as pd
from prefect import flow
from prefect.artifacts import acreate_markdown_artifact, acreate_table_artifact
from prefect.client.schemas.objects import FlowRun
from prefect.deployments import arun_deployment

from flows.edit_manifest import approval_in_ui
from qwenedit.api import resolve_base_url
from qwenedit.canary import QuoteApproval
from qwenedit.catalog import ModelTable, cost, format_money
from qwenedit.errors import RunDeclined, ShardsFailed
from qwenedit.inputs import InputResolver
from qwenedit.ledger import Ledger
from qwenedit.manifest import iter_jobs, manifest_base
from qwenedit.options import RunOptions
from qwenedit.rates import model_limits
from qwenedit.report import RESULT_COLUMNS, RunTotals, markdown_summary, results_frame, save_reports
from qwenedit.run import Approver, Prepared, manifest_reading, new_run_id, prepare
from qwenedit.shards import (
    SHARED_HEADROOM,
    ShardPlan,
    chunk_sizes,
    merge_summaries,
    missing_jobs,
    order_failed_rows,
    order_frame,
    plan_shards,
    recovered_results,
    shard_index_of,
    shard_manifest_key,
    shard_row,
    shard_run_id,
)
from qwenedit.storage import open_destination
from qwenedit.summary import RunSummary, StopCause, StoppedBy, Totals

log = logging.getLogger("qwenedit.sharded")

SHARD_DEPLOYMENT = "edit-manifest/shard"


def _is_local(uri: str) -> bool:
    return "://" not in uri or uri.startswith("file://")


def write_shards(
    options: RunOptions, sizes: list[int], *, prices: ModelTable, out_dir: Path
) -> tuple[list[str], list[list[str]], list[Decimal]]:
    """Write the shard manifests (JSONL) into ``out_dir``; returns every job id in manifest order, the
    job ids of each shard, and each shard's worst-case cost (its share of a budget)."""
    resolver = InputResolver(input_root=options.input_root, manifest_dir=manifest_base(options.manifest))
    job_ids: list[str] = []
    per_shard: list[list[str]] = [[] for _ in sizes]
    weights = [Decimal(0)] * len(sizes)
    files = [(out_dir / f"shard-{i:02d}.jsonl").open("w", encoding="utf-8") for i in range(len(sizes))]
    try:
        jobs = iter_jobs(options.manifest, **manifest_reading(options, prices))
        for position, job in enumerate(jobs):
            index = shard_index_of(position, sizes)
            row = shard_row(job, lambda ref: resolver.locate(ref).location)
            files[index].write(json.dumps(row, ensure_ascii=False) + "\n")
            job_ids.append(job.job_id)
            per_shard[index].append(job.job_id)
            weights[index] += cost(job.n, prices.unit_price(job.region, job.model))
    finally:
        for fh in files:
            fh.close()
        resolver.close()
    return job_ids, per_shard, weights


async def approved_above(options: RunOptions, prepared: Prepared, approve: Approver | None = None) -> None:
    """``approve_above`` for a sharded run: its shards never ask (each holds only part of the quote), so
    this run asks once, before any shard starts, about the whole manifest's worst case — in the Prefect
    UI (``approve``, for tests). Declined, or no answer in time: ``RunDeclined``, nothing started."""
    limit = options.approve_above_amount()
    quote = prepared.validation.quote
    if limit is None or quote.fits(*limit):
        return
    amount, currency = limit
    question = QuoteApproval(
        jobs=quote.jobs,
        projected=format_money(quote.total(currency), currency),
        limit=format_money(amount, currency),
    )
    if not await (approve or approval_in_ui(options))(question):
        raise RunDeclined(f"{question.headline()}, and it was not approved: no shard was started")


@flow(name="edit-manifest-sharded", log_prints=False)
async def edit_manifest_sharded(
    options: RunOptions,
    shards: int = 2,
    accounts: list[str] | None = None,
    shard_deployment: str = SHARD_DEPLOYMENT,
    shard_timeout_s: float | None = None,
    poll_interval_s: float = 5.0,
    shared_headroom: float = SHARED_HEADROOM,
) -> dict[str, Any]:
    """Run ``options.manifest`` as ``shards`` deployment runs of ``shard_deployment``; returns the
    consolidated summary (also written, with results.csv and failed.jsonl, to ``report_dir/run_id/``
    and ``{dest}/_runs/{run_id}/``). Each shard's options are the parent's with its own manifest,
    account, rate, budget share and run id."""
    started = time.monotonic()
    run_id = options.run_id or new_run_id()
    accounts = list(accounts or [options.api_key_env])
    prepared = await asyncio.to_thread(prepare, options)
    await approved_above(options, prepared)  # asked once for the whole run, before any shard starts
    destination = open_destination(options.dest)
    sizes = chunk_sizes(prepared.validation.job_count, shards)
    with tempfile.TemporaryDirectory(prefix="qwenedit-shards-") as tmp:
        job_ids, shard_jobs, weights = await asyncio.to_thread(
            write_shards, options, sizes, prices=prepared.prices, out_dir=Path(tmp)
        )
        for i in range(len(sizes)):
            data = (Path(tmp) / f"shard-{i:02d}.jsonl").read_bytes()
            key = shard_manifest_key(run_id, i)
            await asyncio.to_thread(destination.put_bytes, key, data, "application/x-ndjson")
    budget = options.budget_amount()
    # Each model's own limit (the options' rates, else the table's) as this run may use it; the shards
    # of one account split every one of them (qwenedit.shards.shard_share).
    limit_of = model_limits(options.rates, prepared.prices, options.rate_share)
    models = {line.model for line in prepared.validation.quote.lines}
    plans = plan_shards(
        sizes,
        accounts,
        {model: limit_of(model) for model in models},
        budget=None if budget is None else budget[0],
        weights=weights,
        shared_headroom=shared_headroom,
    )
    # The shard manifests hold absolute paths; local ones stay readable only under the input root.
    shard_root = options.input_root or (
        manifest_base(options.manifest) if _is_local(options.manifest) else None
    )
    gates = {p.account: asyncio.Semaphore(p.parallel) for p in plans}

    def shard_options(plan: ShardPlan) -> RunOptions:
        return options.with_changes(
            manifest=destination.uri(shard_manifest_key(run_id, plan.index)),
            input_root=shard_root,
            rate_share=options.rate_share * plan.share,
            budget=None if plan.budget is None or budget is None else f"{plan.budget} {budget[1]}",
            run_id=shard_run_id(run_id, plan.index),
            api_key_env=plan.account,
            prompt_template=None,  # the shard manifests carry the filled prompts
            canary=0,  # a canary belongs to a whole run, not to each shard
            approve_above=None,  # so does the approval: this run asked it for the whole manifest
        )

    async def launch(plan: ShardPlan) -> FlowRun | str:
        parameters = {"options": shard_options(plan).model_dump(mode="json")}
        async with gates[plan.account]:
            try:
                return await arun_deployment(
                    shard_deployment,
                    parameters=parameters,
                    flow_run_name=shard_run_id(run_id, plan.index),
                    idempotency_key=f"qwenedit-shard:{shard_run_id(run_id, plan.index)}",
                    timeout=shard_timeout_s,
                    poll_interval=poll_interval_s,
                )
            except Exception as err:  # the API refused the run: report the shard, run the others
                log.error("shard %d could not be started: %s", plan.index, type(err).__name__)
                return f"not started: {type(err).__name__}: {err}"

    log.info(
        "run %s: %d jobs in %d shards on %s", run_id, prepared.validation.job_count, len(plans), accounts
    )
    outcomes = await asyncio.gather(*(launch(p) for p in plans))
    summary, frame, failed = await asyncio.to_thread(
        consolidate,
        destination,
        run_id,
        plans,
        outcomes,
        job_ids,
        shard_jobs,
        options.report_dir,
        shard_root,
        prepared.prices,
    )
    wall = time.monotonic() - started
    out_dir = Path(options.report_dir) / run_id
    summary = summary.with_changes(
        manifest=options.manifest,
        dest=options.dest,
        endpoint=resolve_base_url(options.region, options.base_url),
        budget=options.budget,
        wall_time_s=round(wall, 3),
        request_rate=round(summary.requests_sent / wall, 4) if wall > 0 else 0.0,
        rates=list(options.rates),
        accounts=accounts,
        report_dir=str(out_dir),
    )
    await asyncio.to_thread(write_consolidated, destination, run_id, out_dir, frame, summary, failed)
    await _publish_artifacts(run_id, summary)
    bad = [s for s in summary.shards or () if s["state"] != "COMPLETED"]
    if bad:
        names = ", ".join(s["run_id"] for s in bad)
        raise ShardsFailed(
            f"{len(bad)} of {len(plans)} shard runs did not complete ({names}); "
            f"their rows are in {out_dir / 'results.csv'}; rerun the same manifest to resume"
        )
    return summary.to_json()


def _state_name(outcome: FlowRun | str) -> str:
    if isinstance(outcome, str):
        return "NOT_STARTED"
    return outcome.state.type.value if outcome.state is not None else "UNKNOWN"


def _read_shard_report(
    destination: Any, shard_id: str, report_dir: str | None
) -> tuple[pd.DataFrame, RunSummary, list[dict[str, Any]]] | None:
    """A completed shard's results.csv, summary.json and failed.jsonl: from the destination (any
    machine), else from the local report dir (same machine); None if neither has all three."""

    def from_dest(name: str) -> bytes | None:
        data: bytes | None = destination.get_bytes(f"_runs/{shard_id}/{name}")
        return data

    def from_local(name: str) -> bytes | None:
        path = Path(report_dir or "runs") / shard_id / name
        return path.read_bytes() if path.is_file() else None

    for read in (from_dest, from_local):
        parts = [read(n) for n in ("results.csv", "summary.json", "failed.jsonl")]
        if all(p is not None for p in parts):
            csv_bytes, summary_bytes, failed_bytes = (p or b"" for p in parts)
            frame = pd.read_csv(io.BytesIO(csv_bytes), dtype=str, keep_default_na=False)
            failed = [json.loads(line) for line in failed_bytes.decode("utf-8").splitlines() if line.strip()]
            return frame, RunSummary.from_json(json.loads(summary_bytes)), failed
    return None


def _as_text_frame(results: list[Any]) -> pd.DataFrame:
    """Results as results.csv would hold them (same formatting as the shards' own files)."""
    text = results_frame(results).to_csv(index=False)
    return pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False)


def consolidate(
    destination: Any,
    run_id: str,
    plans: Sequence[ShardPlan],
    outcomes: Sequence[FlowRun | str],
    job_ids: list[str],
    shard_jobs: list[list[str]],
    report_dir: str | None,
    input_root: str | None,
    prices: ModelTable | None = None,
) -> tuple[RunSummary, pd.DataFrame, list[dict[str, Any]]]:
    """The shards' reports merged; rows of shards without a report rebuilt from the ledger. The summary
    has the run's totals, stop and shards; the caller adds what it knows of the run."""
    ledger = Ledger(destination)
    frames: list[pd.DataFrame] = []
    parts: list[RunSummary | Totals] = []
    failed: list[dict[str, Any]] = []
    shard_info: list[dict[str, Any]] = []
    for plan, outcome in zip(plans, outcomes, strict=True):
        sid = shard_run_id(run_id, plan.index)
        state = _state_name(outcome)
        report = _read_shard_report(destination, sid, report_dir) if state == "COMPLETED" else None
        info: dict[str, Any] = {
            "index": plan.index,
            "run_id": sid,
            "account_env": plan.account,
            "rate_share": plan.share,
            "rates": {model: str(limit) for model, limit in plan.rates.items()},
            "parallel": plan.parallel,
            "jobs": plan.jobs,
            "budget": None if plan.budget is None else str(plan.budget),
            "flow_run_id": None if isinstance(outcome, str) else str(outcome.id),
            "state": state,
            "report": "shard" if report is not None else "ledger",
        }
        wanted = shard_jobs[plan.index]
        if report is not None:
            frame, shard_summary, shard_failed = report
            frames.append(frame)
            parts.append(shard_summary)
            failed.extend(shard_failed)
            lost = set(missing_jobs(frame, wanted))
            reason = f"shard run {sid} reported no result for the job"
            info["wall_time_s"] = shard_summary.wall_time_s
            info["requests_sent"] = shard_summary.requests_sent
            info["request_rate"] = shard_summary.request_rate
            info["throttled_429"] = shard_summary.throttled_429
            stop = shard_summary.stopped_by
            info["stopped_by"] = None if stop is None else stop.to_json()
        else:
            lost = set(wanted)
            reason = outcome if isinstance(outcome, str) else f"shard run {sid} ended {state}"
        if lost:
            shard_uri = destination.uri(shard_manifest_key(run_id, plan.index))
            jobs = [j for j in iter_jobs(shard_uri, input_root=input_root, prices=prices) if j.job_id in lost]
            recovered = recovered_results(jobs, sid, ledger.done, ledger.charges, reason)
            frames.append(_as_text_frame(recovered))
            totals = RunTotals()
            for result in recovered:
                totals.add(result)
            parts.append(totals.totals())
            failed.extend(r.manifest_row for r in recovered if r.manifest_row is not None)
            info["recovered_rows"] = len(recovered)
        shard_info.append(info)
    frame = pd.concat(frames, ignore_index=True) if frames else _as_text_frame([])
    extras = [c for c in frame.columns if c not in RESULT_COLUMNS]
    frame = order_frame(frame.reindex(columns=[*RESULT_COLUMNS, *extras]).fillna(""), job_ids)
    merged = merge_summaries(parts)
    stops = merged.stops
    unfinished = tuple(s["index"] for s in shard_info if s["state"] != "COMPLETED")
    stopped_by: StoppedBy | None = None
    if unfinished:
        stopped_by = StoppedBy(StopCause.SHARD_FAILED, shards=unfinished, shard_stops=stops)
    elif stops:
        stopped_by = replace(stops[0], shard_stops=stops)
    summary = RunSummary(
        run_id=run_id,
        manifest="",
        dest="",
        endpoint="",
        totals=merged.totals,
        report_dir=str(Path(report_dir or "runs") / run_id),
        stopped_by=stopped_by,
        requests_sent=merged.requests_sent,
        throttled_429=merged.throttled_429,
        shards=shard_info,
    )
    return summary, frame, order_failed_rows(failed, job_ids)


def write_consolidated(
    destination: Any,
    run_id: str,
    out_dir: Path,
    frame: pd.DataFrame,
    summary: RunSummary,
    failed: list[dict[str, Any]],
) -> None:
    """results.csv, summary.json and failed.jsonl into ``out_dir`` and ``{dest}/_runs/{run_id}/``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {name: out_dir / name for name in ("results.csv", "summary.json", "failed.jsonl")}
    frame.to_csv(paths["results.csv"], index=False)
    paths["summary.json"].write_text(
        json.dumps(summary.to_json(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    paths["failed.jsonl"].write_text(
        "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in failed), encoding="utf-8"
    )
    save_reports(destination, run_id, paths)


async def _publish_artifacts(run_id: str, summary: RunSummary) -> None:
    try:
        table = [{k: str(v) for k, v in s.items()} for s in summary.shards or ()]
        await acreate_table_artifact(
            key=f"shards-{run_id.lower()}"[:60], table=table, description=f"Shard runs of {run_id}"
        )
        await acreate_markdown_artifact(
            key=f"summary-{run_id.lower()}"[:60],
            markdown=markdown_summary(summary),
            description=f"Consolidated summary of sharded run {run_id}",
        )
    except Exception as err:  # no Prefect API: the files are the record
        log.info("artifacts not published: %s", type(err).__name__)
