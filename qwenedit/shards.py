"""Pure helpers for running one manifest as several Prefect deployment runs ("shards").

The sharded flow (``flows/sharded.py``) does the I/O; everything it decides is computed here:

- **Splitting.** ``chunk_sizes`` cuts the manifest into K contiguous, balanced shards (manifest order
  is kept inside each shard and across shards). ``shard_row`` turns a ``Job`` back into a JSONL
  manifest row whose image references no longer depend on where the shard manifest lives: a relative
  local path becomes absolute, a path relative to an ``s3://`` or ``https://`` manifest becomes the full
  URI. Input identities (content hashes, ``s3://b/k#etag``) do not change, so the jobs' fingerprints and
  the ledger's done records are the same whichever way the manifest is run.
- **Quota.** The API allows ``rps`` requests in any one-second window per (account, model). Each shard
  paces itself (the pacer is per process), so shards that share an account must share its rate. K
  shards paced at ``rps/K`` each would keep the *average* right but not the window: three shards at
  0.67 req/s, each with gaps of 1.5 s, can all land in the same second. ``safe_parallelism`` picks the
  largest number ``m`` of shards of one account that may run *at once* such that
  ``m × ⌈margin·rps/m⌉ ≤ ⌈margin·rps⌉`` — each of the ``m`` shards, paced at ``rps/m`` with gaps of
  ``1/(margin·rps/m)`` s, puts at most ``⌈margin·rps/m⌉`` requests in any one-second window, so together
  they never exceed what one process pacing at ``rps`` would. For ``rps = 2`` that is ``m ≤ 2`` (two
  shards at 1 req/s, gaps 1.02 s, at most 1 each per window); further shards of that account wait.
  ``rps`` is each model's own count per period (a per-minute limit is the same proof over a minute):
  ``plan_shards`` takes every model's limit and uses the smallest ``m`` that is safe for all of them
  (``shard_share``); each shard then paces every model at the same share of that model's own limit.
  Shards on different accounts (or regions: separate endpoints, separate quotas) each get the full rate.
  Shards that share an account also keep a headroom (``SHARED_HEADROOM``, 0.9 of their share): the
  proof above holds only while each request arrives within the pacer's 2 % margin (~20 ms at 1 req/s)
  of its permit's schedule. On a loaded 2-core machine (load 6–14) two shards pacing at exactly 1 req/s
  drifted 25–56 ms and drew 1–4 × 429s in each of four 60-job runs; at 0.9 (~130 ms of slack per shard)
  none drew a 429 in five runs (load 4–6; at load 4, 1.0 also drew none). Sharding one account never
  makes a run faster, so the headroom costs nothing that sharding could have gained.
- **Budget.** A budget cannot be shared live across processes, so it is split in proportion to each
  shard's worst-case cost (``split_budget``), rounded down so the parts never add up to more.
- **Consolidation.** Each shard writes its own report under ``{dest}/_runs/{shard_run_id}/``.
  ``merge_summaries`` adds their typed summaries' totals (exact decimals); ``order_frame`` puts the result rows back in
  manifest order; ``recovered_results`` reports the jobs of a shard whose run crashed from the ledger:
  done by that run → succeeded, paid for but not stored → failed and counted as billed-not-stored,
  otherwise → not attempted. A rerun resumes: the ledger makes it skip every done job.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import ROUND_DOWN, Decimal
from typing import Any

import pandas as pd

from qwenedit.catalog import RateLimit
from qwenedit.errors import JobCode
from qwenedit.jobs import Job
from qwenedit.ledger import Charge, Done
from qwenedit.pacer import DEFAULT_MARGIN
from qwenedit.rates import scaled
from qwenedit.report import JobResult, escape_formula
from qwenedit.summary import STATUSES, CostLine, RunSummary, StoppedBy, Totals

MANIFEST_SUFFIXES = (".csv", ".jsonl")
BUDGET_QUANTUM = Decimal("0.000001")
SHARD_CRASHED = JobCode.SHARD_RUN_FAILED
SHARED_HEADROOM = 0.9  # fraction of its share a shard paces at when it shares an account with others


# --- splitting -------------------------------------------------------------------------------------


def chunk_sizes(n_jobs: int, shards: int) -> list[int]:
    """Sizes of ``shards`` contiguous chunks of ``n_jobs`` (differing by at most one; no empty chunk)."""
    if shards < 1:
        raise ValueError(f"shards must be at least 1, got {shards}")
    if n_jobs <= 0:
        return []
    k = min(shards, n_jobs)
    base, extra = divmod(n_jobs, k)
    return [base + 1 if i < extra else base for i in range(k)]


def shard_index_of(position: int, sizes: Sequence[int]) -> int:
    """The shard holding the job at 0-based ``position`` in the manifest, for ``chunk_sizes`` sizes."""
    total = 0
    for index, size in enumerate(sizes):
        total += size
        if position < total:
            return index
    raise IndexError(f"position {position} is beyond the {total} jobs of the shards")


def shard_row(job: Job, locate: Callable[[str], str]) -> dict[str, Any]:
    """The job as a JSONL manifest row with every image reference made absolute by ``locate``."""
    row = job.to_manifest_row()
    row["images"] = [locate(ref) for ref in job.images]
    return row


def shard_run_id(parent_run_id: str, index: int) -> str:
    return f"{parent_run_id}-s{index:02d}"


def shard_manifest_key(parent_run_id: str, index: int) -> str:
    """Where a shard's manifest is stored, relative to the destination (next to the parent's reports)."""
    return f"_runs/{parent_run_id}/shards/shard-{index:02d}.jsonl"


# --- quota -----------------------------------------------------------------------------------------


def window_bound(rps: float, parallel: int, margin: float = DEFAULT_MARGIN) -> int:
    """Most requests ``parallel`` processes, each pacing at ``rps/parallel``, can put in one 1-s window.

    One pacer at rate ``r`` spaces permits ``1/(margin·r)`` apart, so a half-open one-second window
    holds at most ``⌈margin·r⌉`` of them (``margin < 1`` keeps ``margin·r`` off an integer).
    """
    if rps <= 0 or parallel < 1:
        raise ValueError("rps must be positive and parallel at least 1")
    return parallel * math.ceil(margin * rps / parallel)


def safe_parallelism(rps: float, shards: int, margin: float = DEFAULT_MARGIN) -> int:
    """Largest ``m ≤ shards`` whose window bound is no worse than a single pacer at ``rps`` (at least 1)."""
    ceiling = window_bound(rps, 1, margin)
    best = 1
    for m in range(1, max(1, shards) + 1):
        if window_bound(rps, m, margin) <= ceiling:
            best = m
    return best


def split_budget(budget: Decimal | None, weights: Sequence[Decimal]) -> list[Decimal | None]:
    """``budget`` split in proportion to ``weights`` (equal parts if all are zero), rounded down."""
    if budget is None:
        return [None] * len(weights)
    if not weights:
        return []
    total = sum(weights, Decimal(0))
    if total <= 0:
        weights = [Decimal(1)] * len(weights)
        total = Decimal(len(weights))
    return [(budget * w / total).quantize(BUDGET_QUANTUM, rounding=ROUND_DOWN) for w in weights]


@dataclass(frozen=True)
class ShardPlan:
    """One shard: which jobs, which account (the name of the env var holding its key), what rates."""

    index: int
    jobs: int
    account: str
    share: float  # of every model's limit as the parent may use it: 1 alone on an account
    rates: Mapping[str, RateLimit]  # each model's limit for this shard (the parent's × share)
    budget: Decimal | None
    parallel: int  # how many shards of this account may run at once


def shard_share(
    limits: Iterable[RateLimit],
    shards: int,
    *,
    margin: float = DEFAULT_MARGIN,
    shared_headroom: float = SHARED_HEADROOM,
) -> tuple[int, float]:
    """``(parallel, share)`` for ``shards`` shards of one account running models with these ``limits``
    (each model's own): at most ``parallel`` of them at once, each pacing every model at ``share`` of
    that model's limit. ``parallel`` is the smallest ``safe_parallelism`` over the models' counts per
    period (one shard paces all its models at once); alone, a shard keeps the whole limit (share 1),
    else it gets ``shared_headroom / parallel``."""
    counts = sorted({limit.count for limit in limits})
    if not counts:
        raise ValueError("no rate limits to share: the shards run no model")
    parallel = min(safe_parallelism(count, shards, margin) for count in counts)
    return parallel, 1.0 if parallel == 1 else shared_headroom / parallel


def plan_shards(
    sizes: Sequence[int],
    accounts: Sequence[str],
    limits: Mapping[str, RateLimit],
    *,
    budget: Decimal | None = None,
    weights: Sequence[Decimal] | None = None,
    margin: float = DEFAULT_MARGIN,
    shared_headroom: float = SHARED_HEADROOM,
) -> list[ShardPlan]:
    """Assign shards to accounts round-robin and give each the share of every model's limit
    (``limits``: model → its limit as the parent run may use it) its account can safely split
    (``shard_share``)."""
    if not accounts:
        raise ValueError("at least one account (the name of an env var holding an API key) is needed")
    if len(set(accounts)) != len(accounts):
        raise ValueError(f"accounts listed twice: {sorted({a for a in accounts if accounts.count(a) > 1})}")
    if not 0 < shared_headroom <= 1:
        raise ValueError(f"shared_headroom must be in (0, 1], got {shared_headroom}")
    owners = [accounts[i % len(accounts)] for i in range(len(sizes))]
    split = {
        a: shard_share(limits.values(), owners.count(a), margin=margin, shared_headroom=shared_headroom)
        for a in set(owners)
    }
    budgets = split_budget(budget, list(weights) if weights is not None else [Decimal(s) for s in sizes])
    plans = []
    for i, size in enumerate(sizes):
        parallel, share = split[owners[i]]
        rates = {model: scaled(limit, share) for model, limit in sorted(limits.items())}
        plans.append(ShardPlan(i, size, owners[i], share, rates, budgets[i], parallel))
    return plans


# --- consolidation ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class MergedSummaries:
    """Several runs' summaries added up: totals, requests, 429s, and the stops of the parts that stopped."""

    totals: Totals
    requests_sent: int = 0
    throttled_429: int = 0
    stops: tuple[StoppedBy, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            **self.totals.to_json(),
            "requests_sent": self.requests_sent,
            "throttled_429": self.throttled_429,
            "stopped_by": [s.to_json() for s in self.stops],
        }


_SUMMED = (
    "jobs",
    "images_requested",
    "images_stored",
    "possibly_billed_jobs",
    "possibly_billed_images",
    "billed_not_stored_images",
    "qa_flagged_jobs",
    "qa_flagged_images",
    "qa_retries",
    "dedupe_saved_calls",
)


def merge_summaries(parts: Iterable[RunSummary | Totals]) -> MergedSummaries:
    """Totals of several run summaries (a shard's summary.json, or the ``Totals`` of rows rebuilt from
    the ledger): the sum of each count and of each cost, exactly; the stops of the parts that stopped."""
    counts = dict.fromkeys(STATUSES, 0)
    sums = dict.fromkeys(_SUMMED, 0)
    by_model: dict[tuple[str, str, str], Decimal] = {}
    by_currency: dict[str, Decimal] = {}
    possibly: dict[str, Decimal] = {}
    saved: dict[str, Decimal] = {}
    requests = throttled = 0
    stops: list[StoppedBy] = []
    for part in parts:
        totals = part.totals if isinstance(part, RunSummary) else part
        if isinstance(part, RunSummary):
            requests += part.requests_sent
            throttled += part.throttled_429
            if part.stopped_by is not None:
                stops.append(part.stopped_by)
        for status in STATUSES:
            counts[status] += totals.count(status)
        for name in sums:
            sums[name] += int(getattr(totals, name))
        for line in totals.cost_by_region_model:
            key = (line.region, line.model, line.currency)
            by_model[key] = by_model.get(key, Decimal(0)) + Decimal(line.cost)
        for currency, amount in totals.total_cost.items():
            by_currency[currency] = by_currency.get(currency, Decimal(0)) + Decimal(amount)
        for currency, amount in totals.possibly_billed_cost.items():
            possibly[currency] = possibly.get(currency, Decimal(0)) + Decimal(amount)
        for currency, amount in totals.dedupe_saved_cost.items():
            saved[currency] = saved.get(currency, Decimal(0)) + Decimal(amount)
    merged = Totals(
        by_status=counts,
        possibly_billed_cost={c: str(a) for c, a in sorted(possibly.items())},
        cost_by_region_model=tuple(CostLine(r, m, c, str(a)) for (r, m, c), a in sorted(by_model.items())),
        total_cost={c: str(a) for c, a in sorted(by_currency.items())},
        dedupe_saved_cost={c: str(a) for c, a in sorted(saved.items())},
        **sums,
    )
    return MergedSummaries(merged, requests, throttled, tuple(stops))


def order_frame(frame: pd.DataFrame, job_ids: Sequence[str]) -> pd.DataFrame:
    """Result rows in manifest order (``job_ids``); rows of unknown jobs last, in their given order.

    The frame's ``job_id`` cells are as results.csv holds them (formula-escaped), so the order keys are
    escaped the same way.
    """
    position = {escape_formula(j): i for i, j in enumerate(job_ids)}
    keys = frame["job_id"].map(lambda j: position.get(j, len(position)))
    ordered = frame.assign(_order=keys).sort_values("_order", kind="stable").drop(columns="_order")
    return ordered.reset_index(drop=True)


def missing_jobs(frame: pd.DataFrame, job_ids: Sequence[str]) -> list[str]:
    """Jobs of the manifest that have no row in ``frame``, in manifest order."""
    present = set(frame["job_id"]) if "job_id" in frame.columns else set()
    return [j for j in job_ids if escape_formula(j) not in present]


def order_failed_rows(rows: Iterable[dict[str, Any]], job_ids: Sequence[str]) -> list[dict[str, Any]]:
    """failed.jsonl rows (manifest form, with ``job_id``) in manifest order."""
    position = {j: i for i, j in enumerate(job_ids)}
    return sorted(rows, key=lambda r: position.get(str(r.get("job_id")), len(position)))


def recovered_results(
    jobs: Iterable[Job],
    run_id: str,
    done: Callable[[str], Done | None],
    charges: Callable[[str], list[Charge]],
    reason: str,
) -> list[JobResult]:
    """Results for the jobs of a shard run that ended without a report, read from the ledger.

    ``done``/``charges`` look a job's ledger records up. Only records of that run (``run_id``) count: a job
    it finished is reported succeeded with what it cost; one it paid for but did not store is failed and
    billed-not-stored (a rerun copies the outputs without calling again while the URLs live); the rest
    were not attempted. A rerun of the same manifest resumes from the ledger either way.
    """
    results: list[JobResult] = []
    for job in jobs:
        result = JobResult(
            row=job.row,
            job_id=job.job_id,
            status="not_attempted",
            model=job.model,
            region=job.region,
            images_requested=job.n,
            error_code=SHARD_CRASHED,
            error_message=f"{reason}; rerun to resume (done jobs are skipped)",
            extra=dict(job.extra),
        )
        record = done(job.job_id)
        if record is not None and record.run_id == run_id:
            result.status, result.error_code, result.error_message = "succeeded", "", ""
            result.request_id, result.image_count = record.request_id, record.image_count
            result.cost, result.currency, result.outputs = record.cost, record.currency, list(record.outputs)
            result.finished_at = record.finished_at
        else:
            paid = [c for c in charges(job.job_id) if c.run_id == run_id]
            if paid:
                result.status = "failed"
                result.request_id = paid[-1].request_id
                result.unit_price, result.currency = paid[-1].unit_price, paid[-1].currency
                result.image_count = sum(c.image_count for c in paid)
                result.cost = str(sum((c.cost_decimal for c in paid), Decimal(0)))
                result.billed_not_stored = result.image_count
                result.error_message = f"{reason}; paid for but not stored: a rerun copies the outputs"
        if result.status != "succeeded":
            result.manifest_row = job.to_manifest_row()
        results.append(result)
    return results
