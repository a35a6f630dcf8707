"""One job, start to finish: skip-or-resume check → pacer → API call → charge record → copy → done.

This module is the engine the Prefect flow (``flows/edit_manifest.py``) runs once per job. It knows
nothing of Prefect: everything a job needs is in a ``RunContext`` shared by the jobs of one run.

The order of the steps is the contract of DESIGN.md §2:

1. fingerprint the job; a done record with the same fingerprint → ``skipped`` (no call);
2. a charge record with the same fingerprint and live output URLs → copy only (no call);
3. otherwise reserve the worst-case cost against the budget, take a pacer permit per attempt and
   call the API, retrying only what the error taxonomy calls retryable;
4. write the charge record *before* copying, so a crash after this point never pays again;
5. copy each output (retries here never re-call the API), then write the done record.
"""

from __future__ import annotations

import asyncio
import fnmatch
import logging
import random
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from functools import partial
from typing import Any, TypeVar
from urllib.parse import urlsplit

import httpx

from qwenedit import errors
from qwenedit.api import DashScopeClient, EditRequest, EditResult
from qwenedit.inputs import InputError
from qwenedit.jobs import Job, fingerprint
from qwenedit.ledger import Charge, Done, Ledger, url_expiry
from qwenedit.pacer import Pacer, PacerPool
from qwenedit.pricing import Price, PriceTable, cost
from qwenedit.report import JobResult, ResultSpool, RunTotals
from qwenedit.storage import CopyError, Destination, copy_url, scrub_urls

log = logging.getLogger("qwenedit.pipeline")

T = TypeVar("T")

# Result buckets the API serves outputs from (reference §3); the base URL's host is added per run.
DEFAULT_OUTPUT_HOSTS = ("dashscope-result-*.aliyuncs.com", "*.oss-*.aliyuncs.com")


def utcnow_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def backoff_delay(
    attempt: int, *, base: float = 1.0, cap: float = 30.0, rng: random.Random | None = None
) -> float:
    """Capped exponential backoff with full jitter: uniform in [0.5, 1] × min(cap, base·2^(attempt-1))."""
    ceiling = min(cap, base * 2 ** max(0, attempt - 1))
    return ceiling * (0.5 + 0.5 * (rng or random).random())


def host_allowed(url: str, patterns: Sequence[str]) -> bool:
    """True if the URL is http(s) and its host matches one of the allowed host patterns."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return False
    host = parts.hostname.lower()
    netloc = f"{host}:{parts.port}" if parts.port else host
    return any(fnmatch.fnmatchcase(host, p) or fnmatch.fnmatchcase(netloc, p) for p in patterns)


def output_key(job_id: str, k: int) -> str:
    return f"{job_id}/{k}.png"


class Breaker:
    """The run breaker: once an account-level error is seen, no new call starts."""

    def __init__(self) -> None:
        self.reason: errors.DashScopeError | None = None

    @property
    def tripped(self) -> bool:
        return self.reason is not None

    def trip(self, err: errors.DashScopeError) -> None:
        if self.reason is None:
            self.reason = err
            log.error("run breaker tripped by %s: no new calls will start", err.code)


class Budget:
    """Spend guard: charged + possibly charged + worst case of calls in flight never exceeds the limit."""

    def __init__(self, limit: Decimal | None) -> None:
        self.limit = limit
        self.charged = Decimal(0)
        self.possibly_charged = Decimal(0)
        self.reserved = Decimal(0)
        self.exhausted = False

    def try_reserve(self, amount: Decimal) -> bool:
        if (
            self.limit is not None
            and self.charged + self.possibly_charged + self.reserved + amount > self.limit
        ):
            self.exhausted = True
            return False
        self.reserved += amount
        return True

    def release(self, amount: Decimal) -> None:
        self.reserved -= amount


@dataclass
class RunStats:
    """Live counters for the progress display and the summary."""

    total_jobs: int = 0
    finished: int = 0
    requests_sent: int = 0
    throttled: int = 0
    first_send: float | None = None
    last_send: float | None = None
    started: float = field(default_factory=time.monotonic)
    totals: RunTotals = field(default_factory=RunTotals)

    def note_send(self) -> None:
        now = time.monotonic()
        self.requests_sent += 1
        if self.first_send is None:
            self.first_send = now
        self.last_send = now

    def request_rate(self) -> float:
        if self.first_send is None or self.last_send is None or self.requests_sent < 2:
            return 0.0
        span = self.last_send - self.first_send
        return (self.requests_sent - 1) / span if span > 0 else 0.0


@dataclass
class RunContext:
    """Everything the jobs of one run share."""

    run_id: str
    client: DashScopeClient
    endpoint: str
    api_key: str = field(repr=False)  # never in a repr, a log line or a traceback's locals
    dest: Destination
    ledger: Ledger
    prices: PriceTable
    pacers: PacerPool
    resolve_input: Callable[[str], str]
    input_identity: Callable[[str], str]
    locate_input: Callable[[str], str]  # a reference made absolute (for failed.jsonl)
    http: httpx.Client  # sync client for streaming copies (run in threads)
    io: ThreadPoolExecutor
    spool: ResultSpool
    allowed_output_hosts: tuple[str, ...]
    breaker: Breaker = field(default_factory=Breaker)
    budget: Budget = field(default_factory=lambda: Budget(None))
    stats: RunStats = field(default_factory=RunStats)
    max_attempts: int = 6
    copy_attempts: int = 8
    backoff_base: float = 1.0
    backoff_cap: float = 30.0
    throttle_penalty: float = 1.0
    recall_expired: bool = False
    rng: random.Random = field(default_factory=random.Random)
    unrecorded: set[int] = field(default_factory=set)  # rows handed to a task whose result is not yet spooled

    async def blocking(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.io, partial(fn, *args))

    async def pause(self, attempt: int) -> None:
        await asyncio.sleep(
            backoff_delay(attempt, base=self.backoff_base, cap=self.backoff_cap, rng=self.rng)
        )


class _JobFailed(Exception):
    """Internal: ends a job early with a code and a message."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def new_result(job: Job, status: str = "failed") -> JobResult:
    """A job's result row before anything happened to it."""
    return JobResult(
        row=job.row,
        job_id=job.job_id,
        status=status,
        model=job.model,
        region=job.region,
        images_requested=job.n,
        started_at=utcnow_iso(),
        extra=dict(job.extra),
    )


def record(ctx: RunContext, job: Job, result: JobResult) -> JobResult:
    """Put a finished job's result in the run's spool and totals (exactly once per job)."""
    result.finished_at = utcnow_iso()
    if result.status in ("failed", "not_attempted"):
        result.manifest_row = _rerunnable_row(ctx, job)
    ctx.spool.add(result)
    ctx.stats.totals.add(result)
    ctx.stats.finished += 1
    ctx.unrecorded.discard(job.row)
    return result


async def run_job(ctx: RunContext, job: Job) -> JobResult:
    """Run one job to its end state and record the result in the run's spool and totals."""
    result = new_result(job)
    try:
        await _run(ctx, job, result)
    except _JobFailed as failure:
        result.status = result.status if result.status == "not_attempted" else "failed"
        result.error_code, result.error_message = failure.code, failure.message
    except Exception as exc:  # a bug or an unforeseen fault must not take the whole run down
        log.exception("job %s: unexpected error", job.job_id)
        result.status = "failed"
        result.error_code, result.error_message = type(exc).__name__, _safe_text(exc)
    return record(ctx, job, result)


def _rerunnable_row(ctx: RunContext, job: Job) -> dict[str, Any]:
    """The job in manifest form with image paths anchored, so failed.jsonl reruns from anywhere."""
    row = job.to_manifest_row()
    images = []
    for ref in job.images:
        try:
            images.append(ctx.locate_input(ref))
        except Exception:
            images.append(ref)
    row["images"] = images
    return row


def _safe_text(exc: BaseException, limit: int = 300) -> str:
    return scrub_urls(str(exc))[:limit]  # presigned query strings are credentials


async def _run(ctx: RunContext, job: Job, result: JobResult) -> None:
    price = ctx.prices.unit_price(job.region, job.model)
    result.unit_price, result.currency = str(price.amount), price.currency
    identities = await _for_inputs(ctx, job, ctx.input_identity)
    fp = fingerprint(job, identities)

    done = await _with_store_retries(ctx, ctx.ledger.done, job.job_id)
    if done is not None and done.fingerprint == fp:
        result.status = "skipped"
        result.request_id, result.image_count = done.request_id, done.image_count
        result.outputs = list(done.outputs)
        return

    charges = await _with_store_retries(ctx, ctx.ledger.charges, job.job_id)
    pending = [c for c in charges if c.fingerprint == fp]
    # Outputs of an earlier, different version of this row may sit at the same keys.
    stale = {c.request_id for c in charges if c.fingerprint != fp}
    if pending:
        charge = pending[-1]
        if not charge.expired(datetime.now(UTC)):
            await _store_outputs(ctx, job, fp, charge, result, stale, fresh=False)  # paid earlier: copy only
            return
        if not ctx.recall_expired:
            result.request_id, result.image_count = charge.request_id, charge.image_count
            result.billed_not_stored = charge.image_count
            raise _JobFailed(
                "OutputsExpired",
                f"outputs expired before they were stored (request {charge.request_id}, billed "
                f"{charge.cost} {charge.currency} in run {charge.run_id}); rerun with --recall-expired to pay again",
            )

    _stop_if_tripped(ctx, result)
    worst_case = cost(job.n, price)
    if not ctx.budget.try_reserve(worst_case):
        result.status = "not_attempted"
        raise _JobFailed(
            "BudgetExceeded", f"not started: it could take the spend over the budget {ctx.budget.limit}"
        )
    try:
        images = await _for_inputs(ctx, job, ctx.resolve_input)
        answer = await _call(ctx, job, EditRequest.from_job(job, tuple(images)), result, worst_case)
    finally:
        ctx.budget.release(worst_case)
    charge = _charge_for(ctx, job, fp, answer, price)
    ctx.budget.charged += charge.cost_decimal
    result.cost = charge.cost
    # Until the charge record is written this paid call is known only to this row: if the write fails,
    # the row must say its images are billed and not stored.
    result.request_id, result.image_count = charge.request_id, charge.image_count
    result.billed_not_stored = charge.image_count
    await _with_store_retries(ctx, ctx.ledger.write_charge, charge)
    result.billed_not_stored = 0
    await _store_outputs(ctx, job, fp, charge, result, stale, fresh=True)


async def _call(
    ctx: RunContext, job: Job, request: EditRequest, result: JobResult, worst_case: Decimal
) -> EditResult:
    pacer = ctx.pacers.get(ctx.endpoint, ctx.api_key, job.model)
    attempt = 0
    while True:
        _stop_if_tripped(ctx, result)
        await pacer.acquire()
        _stop_if_tripped(ctx, result)  # the breaker may have tripped while this job waited for its permit
        attempt += 1
        result.attempts = attempt
        try:
            return await ctx.client.edit(request, on_send=partial(_sent, ctx.stats, pacer))
        except errors.DashScopeError as err:
            if err.possibly_billed:
                result.possibly_billed = True
                result.possibly_billed_images += job.n  # worst case: this lost answer was billed n images
                ctx.budget.possibly_charged += worst_case
            if isinstance(err, errors.Throttled):
                ctx.stats.throttled += 1
                pacer.penalize(ctx.throttle_penalty)
            if err.fatal_for_run:
                ctx.breaker.trip(err)
            if not err.retryable or attempt >= ctx.max_attempts:
                result.request_id = err.request_id
                raise _JobFailed(err.code, err.message[:300]) from None
            log.info("job %s attempt %d: %s, retrying", job.job_id, attempt, err.code)
            await ctx.pause(attempt)


async def _for_inputs(ctx: RunContext, job: Job, fn: Callable[[str], str]) -> list[str]:
    """``fn`` of each image reference; a bad input fails this job with a located message."""
    images = []
    for i, ref in enumerate(job.images, start=1):
        try:
            images.append(await ctx.blocking(fn, ref))
        except InputError as err:
            located = err.located(job.row, job.job_id, f"image_{i}")
            raise _JobFailed("BadInput", str(located)[:300]) from None
    return images


def _sent(stats: RunStats, pacer: Pacer) -> None:
    stats.note_send()
    pacer.mark_sent()


def _stop_if_tripped(ctx: RunContext, result: JobResult) -> None:
    reason = ctx.breaker.reason
    if reason is not None:
        result.status = "not_attempted" if result.attempts == 0 else "failed"
        raise _JobFailed("RunStopped", f"run stopped by account error {reason.code}: {reason.message[:200]}")


def _charge_for(ctx: RunContext, job: Job, fp: str, answer: EditResult, price: Price) -> Charge:
    now = datetime.now(UTC)
    expiries = [url_expiry(u, now) for u in answer.image_urls] or [now]
    return Charge(
        job_id=job.job_id,
        fingerprint=fp,
        request_id=answer.request_id,
        model=job.model,
        region=job.region,
        image_count=answer.image_count,
        width=answer.width or 0,
        height=answer.height or 0,
        output_urls=tuple(answer.image_urls),
        expires_at=min(expiries).isoformat(),
        unit_price=str(price.amount),
        currency=price.currency,
        cost=str(cost(answer.image_count, price)),
        charged_at=now.isoformat(timespec="microseconds"),
        run_id=ctx.run_id,
    )


async def _store_outputs(
    ctx: RunContext, job: Job, fp: str, charge: Charge, result: JobResult, stale: set[str], fresh: bool
) -> None:
    result.request_id, result.image_count = charge.request_id, charge.image_count
    result.width, result.height = charge.width, charge.height
    stored: list[str] = []
    if stale:
        await _with_store_retries(ctx, _supersede, ctx.dest, job.job_id, charge.request_id)
    try:
        for k, url in enumerate(charge.output_urls, start=1):
            key = output_key(job.job_id, k)
            if not host_allowed(url, ctx.allowed_output_hosts):
                raise _JobFailed(
                    "OutputHostRefused",
                    f"output {k} is on host {urlsplit(url).hostname!r}, which is not an allowed result host; not fetched",
                )
            await _copy_with_retries(ctx, job, charge, url, key, k, fresh)
            stored.append(ctx.dest.uri(key))
    except _JobFailed:
        result.outputs = stored
        result.billed_not_stored = charge.image_count - len(stored)
        raise
    result.outputs = stored
    done = Done(
        job_id=job.job_id,
        fingerprint=fp,
        request_id=charge.request_id,
        image_count=charge.image_count,
        outputs=tuple(stored),
        cost=charge.cost,
        currency=charge.currency,
        finished_at=utcnow_iso(),
        run_id=ctx.run_id,
    )
    await _with_store_retries(ctx, ctx.ledger.write_done, done)
    result.status = "succeeded"


def _supersede(dest: Destination, job_id: str, request_id: str) -> None:
    """Move outputs of an earlier version of a changed row aside (they were paid for: keep them)."""
    for k in range(1, 7):  # n is at most 6
        key = output_key(job_id, k)
        info = dest.head(key)
        if info is None:
            continue
        old_request = info.get("metadata", {}).get("request-id", "unknown")
        if old_request == request_id:
            continue
        data = dest.get_bytes(key)
        if data is not None:
            dest.put_bytes(f"{job_id}/superseded/{old_request}/{k}.png", data, "image/png", overwrite=False)
        dest.delete(key)


async def _copy_with_retries(
    ctx: RunContext, job: Job, charge: Charge, url: str, key: str, k: int, fresh: bool
) -> None:
    # A fresh call's outputs cannot be stored yet (stale ones were moved aside): skip the HEAD per image on
    # the hot path. The create-only write still answers "exists" if a retry finds its own earlier upload.
    metadata = {
        "job-id": job.job_id,
        "request-id": charge.request_id,
        "model": job.model,
        "region": job.region,
        "seed": "" if job.seed is None else str(job.seed),
        "output-index": str(k),
    }
    attempt = 0
    while True:
        attempt += 1
        try:
            await ctx.blocking(
                partial(
                    copy_url,
                    ctx.http,
                    url,
                    ctx.dest,
                    key,
                    content_type="image/png",
                    metadata=metadata,
                    check_existing=not fresh,
                )
            )
            return
        except CopyError as err:
            if err.expired:
                raise _JobFailed(
                    "OutputsExpired", f"outputs expired before they were stored ({err})"
                ) from None
            if not err.retryable or attempt >= ctx.copy_attempts:
                raise _JobFailed(
                    "CopyFailed", f"output {k} not stored after {attempt} tries: {err}"
                ) from None
        except Exception as err:  # storage outage (boto3/botocore errors): retry on our own, never re-call
            if attempt >= ctx.copy_attempts:
                raise _JobFailed(
                    "CopyFailed", f"output {k} not stored after {attempt} tries: {_safe_text(err)}"
                ) from None
        log.info("job %s: copy of output %d failed (try %d), retrying", job.job_id, k, attempt)
        await ctx.pause(attempt)


async def _with_store_retries(ctx: RunContext, fn: Callable[..., T], *args: Any) -> T:
    """Ledger reads and writes survive a destination outage of a minute or two."""
    attempt = 0
    while True:
        attempt += 1
        try:
            return await ctx.blocking(fn, *args)
        except Exception as err:
            if attempt >= ctx.copy_attempts:
                raise _JobFailed(
                    "StorageUnavailable", f"destination unreachable: {_safe_text(err)}"
                ) from None
            log.info("ledger %s failed (try %d): %s", getattr(fn, "__name__", "op"), attempt, _safe_text(err))
            await ctx.pause(attempt)
