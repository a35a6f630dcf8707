"""One job, start to finish: resume check → budget → pacer → API call → charge record → copy → done.

The run layer (``qwenedit.run``) decides in bulk which rows are already done and hands every other
job here with its fingerprint. A job is given a ``RunContext``: the run's fixed ``RunServices``
(clients, destination, pacers, prices, settings; frozen) and its mutable ``RunState`` (result spool,
totals, budget, breaker, stop reason); this module knows nothing of Prefect.

The order of the steps is the contract:

1. the job's charges are listed once (or known to be none: ``RunState.charged``, the run's one listing
   of the ledger): a charge with the same fingerprint and live output URLs → copy only (no call);
2. otherwise the done markers of an earlier version of the row are removed, the worst-case cost is
   reserved against the budget, and the API is called — one pacer permit per attempt, retrying only
   what the error taxonomy calls retryable (``qwenedit.retry``);
3. the charge record is written *before* copying, so a crash after this point never pays again;
4. each output is copied (retries here never re-call the API), then the done record is written: the
   job's commit marker, whose key a rerun's listing finds.

A transient storage failure is retried with the run's backoff and ends the job as
``StorageUnavailable`` if the outage outlasts it; any other exception is a bug: logged with its
traceback, the job fails at once (``run_job`` never raises).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from functools import partial
from typing import Any, TypeVar
from urllib.parse import urlsplit

import httpx

from qwenedit import errors, qa
from qwenedit.api import DashScopeClient, EditRequest, EditResult
from qwenedit.budget import Budget
from qwenedit.catalog import ModelTable, Price, cost
from qwenedit.errors import InputError, JobCode, JobFailed, is_transient_storage_error
from qwenedit.jobs import Job
from qwenedit.ledger import Charge, Done, DoneMarker, Ledger, url_expiry
from qwenedit.pacer import Pacer, PacerPool
from qwenedit.redact import scrub_urls
from qwenedit.report import JobResult, ResultSpool, RunTotals
from qwenedit.retry import RetryPolicy
from qwenedit.rollups import Rollups
from qwenedit.storage import CopyError, Destination, copy_url
from qwenedit.summary import STATUSES
from qwenedit.timeline import Timeline

log = logging.getLogger("qwenedit.pipeline")

T = TypeVar("T")

DESCRIBED_ROWS = 300  # skipped rows that still carry prompt and inputs (the report's first contact rows)

# The result buckets the API documents (docs/dashscope-api.md §3: ``dashscope-result-{region}`` on
# ``oss-{region}.aliyuncs.com``); the base URL's host is added per run, ``--allow-output-host`` adds more.
DEFAULT_OUTPUT_HOSTS = ("dashscope-result-*.oss-*.aliyuncs.com",)


def utcnow_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def host_allowed(url: str, patterns: Sequence[str]) -> bool:
    """True if the URL is http(s) and its host (or ``host:port``) matches one of the allowed host
    patterns. A ``*`` stands for part of one DNS label, never a dot (as in TLS certificates):
    ``dashscope-result-*.oss-*.aliyuncs.com`` does not match ``dashscope-result-x.evil.oss-y.aliyuncs.com``."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return False
    host = parts.hostname.lower()
    netloc = f"{host}:{parts.port}" if parts.port else host
    return any(_host_pattern(p).fullmatch(host) or _host_pattern(p).fullmatch(netloc) for p in patterns)


@functools.lru_cache(maxsize=256)
def _host_pattern(pattern: str) -> re.Pattern[str]:
    return re.compile("[^.]*".join(re.escape(part) for part in pattern.lower().split("*")))


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


@dataclass
class RunStats:
    """Live counters for whoever shows progress (terminal, Prefect artifacts) and for the summary."""

    total_jobs: int = 0
    finished: int = 0
    requests_sent: int = 0
    throttled: int = 0
    in_flight: int = 0  # calls sent whose answer has not arrived
    first_send: float | None = None
    last_send: float | None = None
    started: float = field(default_factory=time.monotonic)
    totals: RunTotals = field(default_factory=RunTotals)

    by_model: dict[str, list[float]] = field(default_factory=dict)  # model → [sent, 429s, first, last]
    timeline: Timeline = field(default_factory=Timeline)  # the same sends and 429s, and spend, over time

    def note_send(self, model: str | None = None) -> None:
        now = time.monotonic()
        self.requests_sent += 1
        if self.first_send is None:
            self.first_send = now
        self.last_send = now
        if model is not None:
            row = self.by_model.setdefault(model, [0, 0, now, now])
            row[0] += 1
            row[3] = now
            self.timeline.note_send(model, now)

    def note_throttled(self, model: str) -> None:
        self.throttled += 1
        now = time.monotonic()
        self.by_model.setdefault(model, [0, 0, now, now])[1] += 1
        self.timeline.note_throttled(model, now)

    def outcomes(self) -> dict[str, int]:
        """Jobs recorded so far by status, as the summary counts them (``by_status``)."""
        return {status: self.totals.counts.get(status, 0) for status in STATUSES}

    def sent_by_model(self, model: str) -> int:
        """Requests of ``model`` that left (counted at the send, as ``requests_sent``)."""
        row = self.by_model.get(model)
        return int(row[0]) if row is not None else 0

    def model_rates(self) -> dict[str, tuple[float, int]]:
        """Per model: requests per second achieved (between its first and last send) and its 429s."""
        out = {}
        for model, (sent, throttled, first, last) in sorted(self.by_model.items()):
            rate = (sent - 1) / (last - first) if sent >= 2 and last > first else 0.0
            out[model] = (rate, int(throttled))
        return out

    def request_rate(self) -> float:
        if self.first_send is None or self.last_send is None or self.requests_sent < 2:
            return 0.0
        span = self.last_send - self.first_send
        return (self.requests_sent - 1) / span if span > 0 else 0.0


@dataclass(frozen=True)
class Served:
    """One region's endpoint in a run: its calls go to ``endpoint`` with ``api_key`` and are priced in
    ``region`` (DESIGN.md §3, invariant 10: one price per call, the serving region's)."""

    region: str
    client: DashScopeClient
    endpoint: str
    api_key: str = field(repr=False)


@dataclass(frozen=True)
class RunServices:
    """What the jobs of one run use and never change: clients, destination, pacers, prices, settings."""

    run_id: str
    client: DashScopeClient
    endpoint: str
    api_key: str = field(repr=False)  # never in a repr, a log line or a traceback's locals
    served: Mapping[str, Served] = field(repr=False)  # region → its endpoint (the run's own among them)
    dest: Destination
    ledger: Ledger
    prices: ModelTable
    pacers: PacerPool
    resolve_input: Callable[[str], str]
    locate_input: Callable[[str], str]  # a reference made absolute (for failed.jsonl)
    http: httpx.Client  # sync client for streaming copies (run in threads)
    io: ThreadPoolExecutor
    allowed_output_hosts: tuple[str, ...]
    api_retry: RetryPolicy
    store_retry: RetryPolicy
    throttle_penalty: float | None = None  # None: one interval of the model's spacing
    recall_expired: bool = False
    qa: bool = True  # inspect every stored output (qwenedit.qa)
    qa_retries: int = 0  # regenerations allowed for a job whose outputs QA flagged
    on_latency: Callable[[str, float], None] | None = None  # (model, seconds a call took): sizes the window

    def served_at(self, job: Job) -> Served:
        """Where ``job`` is sent and priced: its own region's endpoint. Validation refuses rows of a
        region the run does not serve; should one get here, it fails before any call."""
        served = self.served.get(job.region)
        if served is None:
            raise JobFailed(
                JobCode.BAD_INPUT, f"region {job.region} is not served by this run (--region-endpoint)"
            )
        return served

    async def blocking(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.io, partial(fn, *args))

    async def store(self, fn: Callable[..., T], *args: Any) -> T:
        """A storage operation in a thread, retried through an outage; a bug is not retried."""
        name = getattr(fn, "__name__", "storage operation")
        try:
            async for attempt in self.store_retry.retrying(is_transient_storage_error, describe=lambda: name):
                with attempt:
                    return await self.blocking(fn, *args)
        except Exception as err:
            if is_transient_storage_error(err):
                raise JobFailed(
                    JobCode.STORAGE_UNAVAILABLE, f"destination unreachable: {error_text(err)}"
                ) from None
            raise
        raise AssertionError("unreachable: tenacity re-raises the last error")  # pragma: no cover


@dataclass
class RunState:
    """What the jobs of one run change as they go: results, totals, spend, the breaker, the stop."""

    spool: ResultSpool
    budget: Budget
    stats: RunStats = field(default_factory=RunStats)
    rollups: Rollups | None = None  # per-group totals (--group-by), added to like ``stats.totals``
    described: int = 0  # results given their prompt and inputs (all executed ones, the first few others)
    breaker: Breaker = field(default_factory=Breaker)
    stop_reason: str | None = None  # set by a graceful stop: no new call starts, calls in flight finish
    unrecorded: set[int] = field(default_factory=set)  # rows handed to a chunk whose result is not spooled
    on_record: Callable[[Job, JobResult], None] | None = None  # told of every recorded result (--dedupe)
    # Jobs with a charge record, from one listing of the ledger at the start (and every charge this run
    # writes); None: not listed, each job lists its own charges. A job not in it has none to resume.
    charged: set[str] | None = None


@dataclass(frozen=True)
class RunContext:
    """What a job is given: the run's fixed services and its mutable state."""

    services: RunServices
    state: RunState


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


def skipped_result(services: RunServices, job: Job, marker: DoneMarker) -> JobResult:
    """The result of a row the listing found done at its fingerprint (no call, no request)."""
    result = new_result(job, "skipped")
    result.request_id = marker.request_id
    result.image_count = marker.image_count or 0
    result.outputs = [services.dest.uri(output_key(job.job_id, k)) for k in range(1, result.image_count + 1)]
    return result


def failed_result(job: Job, code: str, message: str, status: str = "failed") -> JobResult:
    result = new_result(job, status)
    result.error_code, result.error_message = code, message
    return result


def record(ctx: RunContext, job: Job, result: JobResult) -> JobResult:
    """Put a finished job's result in the run's spool and totals (exactly once per job)."""
    result.finished_at = result.finished_at or utcnow_iso()
    if result.status in ("failed", "not_attempted"):
        result.manifest_row = _rerunnable_row(ctx, job)
    if result.status != "skipped" or ctx.state.described < DESCRIBED_ROWS:  # what report.html shows of a job
        ctx.state.described += 1
        result.prompt = job.prompt
        result.inputs = list(result.manifest_row["images"]) if result.manifest_row else _anchored(ctx, job)
    ctx.state.spool.add(result)
    ctx.state.stats.totals.add(result)
    if ctx.state.rollups is not None:
        ctx.state.rollups.add(result)
    ctx.state.stats.finished += 1
    ctx.state.unrecorded.discard(job.row)
    if ctx.state.on_record is not None:
        ctx.state.on_record(job, result)
    return result


async def run_job(ctx: RunContext, job: Job, fp: str, stale_markers: Sequence[str] = ()) -> JobResult:
    """Run one job to its end state and record the result in the run's spool and totals.

    ``fp`` is the job's fingerprint; ``stale_markers`` are done markers of earlier versions of the
    row (from the run's listing), removed before the new version is called.
    """
    result = new_result(job)
    try:
        await _run(ctx, job, fp, stale_markers, result)
    except JobFailed as failure:
        result.status = result.status if result.status == "not_attempted" else "failed"
        result.error_code, result.error_message = failure.code, failure.message
    except Exception as exc:  # a bug or an unforeseen fault must not take the whole run down
        log.exception("job %s: unexpected error", job.job_id)
        result.status = "failed"
        result.error_code, result.error_message = type(exc).__name__, error_text(exc)
    return record(ctx, job, result)


def _rerunnable_row(ctx: RunContext, job: Job) -> dict[str, Any]:
    """The job in manifest form with image paths anchored, so failed.jsonl reruns from anywhere."""
    row = job.to_manifest_row()
    row["images"] = _anchored(ctx, job)
    return row


def _anchored(ctx: RunContext, job: Job) -> list[str]:
    images = []
    for ref in job.images:
        try:
            images.append(ctx.services.locate_input(ref))
        except Exception:
            images.append(ref)
    return images


def error_text(exc: BaseException, limit: int = 300) -> str:
    """An exception's text for a result row: URLs scrubbed, at most ``limit`` characters."""
    return scrub_urls(str(exc))[:limit]  # presigned query strings are credentials


async def _run(ctx: RunContext, job: Job, fp: str, stale_markers: Sequence[str], result: JobResult) -> None:
    price = ctx.services.prices.unit_price(
        ctx.services.served_at(job).region, job.model
    )  # where it is served
    result.unit_price, result.currency = str(price.amount), price.currency
    charges = await _charges(ctx, job)
    pending = [c for c in charges if c.fingerprint == fp]
    # Outputs of an earlier, different version of this row may sit at the same keys.
    stale = {c.request_id for c in charges if c.fingerprint != fp}
    if stale_markers:  # this row is no longer done at its old version: never skip it at that one again
        await ctx.services.store(ctx.services.ledger.remove, list(stale_markers))
    charge: Charge | None = None
    fresh = True
    if pending:
        charge, fresh = pending[-1], False
        if charge.expired(datetime.now(UTC)):
            if not ctx.services.recall_expired:
                result.request_id, result.image_count = charge.request_id, charge.image_count
                result.billed_not_stored = charge.image_count
                raise JobFailed(
                    JobCode.OUTPUTS_EXPIRED,
                    f"outputs expired before they were stored (request {charge.request_id}, billed "
                    f"{charge.cost} {charge.currency} in run {charge.run_id}); rerun with --recall-expired to pay again",
                )
            charge, fresh = None, True
    while True:
        if charge is None:
            charge = await _paid_call(ctx, job, fp, price, result)
        await _store_outputs(ctx, job, charge, result, stale, fresh=fresh)  # copy only when paid earlier
        if not result.qa or result.qa_retries >= ctx.services.qa_retries:
            break
        # QA flagged the outputs: regenerate (a new, billed call). The flagged images stay where they are
        # until the new call has answered; then they are moved aside (paid for: kept, never replaced).
        flagged = charge
        try:
            charge = await _paid_call(ctx, job, fp, price, result)
        except JobFailed as failure:  # no regeneration (budget, API, stop): the flagged outputs stand
            result.error_message = f"QA regeneration not done: {failure.code}: {failure.message}"[:300]
            charge = flagged
            break
        result.qa_retries += 1
        stale, fresh = {flagged.request_id}, True
    await _commit(ctx, job, fp, charge, result)


async def _charges(ctx: RunContext, job: Job) -> list[Charge]:
    """The job's charge records: none if the run's listing of the ledger found none (no request),
    else one listing of its own charges."""
    charged = ctx.state.charged
    if charged is not None and job.job_id not in charged:
        return []
    return await ctx.services.store(ctx.services.ledger.charges, job.job_id)


async def _paid_call(ctx: RunContext, job: Job, fp: str, price: Price, result: JobResult) -> Charge:
    """Reserve the budget, call (paced, retried), and write the charge record before anything else."""
    _stop_if_tripped(ctx, result)
    worst_case = cost(job.n, price)
    if not await ctx.state.budget.reserve(worst_case, price.currency):  # the run's budget and the shared caps
        if result.attempts == 0:
            result.status = "not_attempted"
        raise JobFailed(JobCode.BUDGET_EXCEEDED, ctx.state.budget.refusal())
    try:
        images = await _resolve_inputs(ctx, job)
        answer = await _call(ctx, job, EditRequest.from_job(job, tuple(images)), result, worst_case, price)
    finally:
        ctx.state.budget.release(worst_case)
    charge = _charge_for(ctx, job, fp, answer, price)
    ctx.state.budget.charge(charge.cost_decimal, charge.currency, job.model)
    ctx.state.stats.timeline.note_cost(charge.cost_decimal, charge.currency)
    result.cost = str(Decimal(result.cost or "0") + charge.cost_decimal)
    # Until the charge record is written this paid call is known only to this row: if the write fails,
    # the row must say its images are billed and not stored.
    result.request_id, result.image_count = charge.request_id, charge.image_count
    result.billed_not_stored = charge.image_count
    if ctx.state.charged is not None:
        ctx.state.charged.add(job.job_id)  # should this job run again in this run, it lists its charges
    await ctx.services.store(ctx.services.ledger.write_charge, charge)
    result.billed_not_stored = 0
    return charge


async def _call(
    ctx: RunContext, job: Job, request: EditRequest, result: JobResult, worst_case: Decimal, price: Price
) -> EditResult:
    served = ctx.services.served_at(job)
    pacer = ctx.services.pacers.get(served.endpoint, served.api_key, job.model)

    def retry_on(exc: BaseException) -> bool:
        return isinstance(exc, errors.DashScopeError) and exc.retryable and not ctx.state.breaker.tripped

    # An attempt whose answer was lost counts as spent (possibly billed) while the job's reservation
    # still holds the retry: a retry is sent only if that spend still fits the budget and the caps.
    lost = False
    try:
        async for attempt in ctx.services.api_retry.retrying(
            retry_on, describe=lambda: f"job {job.job_id} call"
        ):
            with attempt:
                _stop_if_tripped(ctx, result)
                if lost and not await ctx.state.budget.still_fits():
                    refusal = ctx.state.budget.refusal().removeprefix("not started: ")
                    raise JobFailed(
                        JobCode.BUDGET_EXCEEDED, f"not retried after a lost answer: {refusal}"[:300]
                    )
                lost = False
                await pacer.acquire()
                _stop_if_tripped(ctx, result)  # the breaker may have tripped while this job waited
                result.attempts += 1
                try:
                    return await _send(ctx, served.client, request, pacer)
                except errors.DashScopeError as err:
                    _account_for(ctx, job, err, result, worst_case, price, pacer)
                    lost = err.possibly_billed
                    raise
    except errors.DashScopeError as err:
        result.request_id = err.request_id
        raise JobFailed(err.code, err.message[:300]) from None
    raise AssertionError("unreachable: tenacity re-raises the last error")  # pragma: no cover


async def _send(ctx: RunContext, client: DashScopeClient, request: EditRequest, pacer: Pacer) -> EditResult:
    ctx.state.stats.in_flight += 1
    started = time.monotonic()
    try:
        # The pacer is also the send gate: the first byte leaves only once the previous request is out.
        answer = await client.edit(
            request, on_send=partial(_sent, ctx.state.stats, pacer, request.model), gate=pacer
        )
    finally:
        ctx.state.stats.in_flight -= 1
    if ctx.services.on_latency is not None:  # answered calls only
        # The server's time (first byte out → answer) when the transport reports it: the waits before
        # the send (pool, connect, send gate) are this run's own queueing, and counting them would
        # let a run short of CPU grow its window, and so its queueing, without end.
        took = answer.answered_in_s
        ctx.services.on_latency(request.model, time.monotonic() - started if took is None else took)
    return answer


def _account_for(
    ctx: RunContext,
    job: Job,
    err: errors.DashScopeError,
    result: JobResult,
    worst_case: Decimal,
    price: Price,
    pacer: Pacer,
) -> None:
    """What a failed attempt means for the run: possible spend, throttling, the breaker."""
    if err.possibly_billed:
        result.possibly_billed = True
        result.possibly_billed_images += job.n  # worst case: this lost answer was billed n images
        ctx.state.budget.possibly_charge(worst_case, price.currency, job.model)
    if isinstance(err, errors.Throttled):
        ctx.state.stats.note_throttled(job.model)
        pacer.penalize(ctx.services.throttle_penalty)
    if err.fatal_for_run:
        ctx.state.breaker.trip(err)


async def _resolve_inputs(ctx: RunContext, job: Job) -> list[str]:
    """Each image reference as the request carries it; a bad input fails this job with a located message."""
    images = []
    for i, ref in enumerate(job.images, start=1):
        try:
            images.append(await ctx.services.blocking(ctx.services.resolve_input, ref))
        except InputError as err:
            located = err.located(job.row, job.job_id, f"image_{i}")
            raise JobFailed(JobCode.BAD_INPUT, str(located)[:300]) from None
    return images


def _sent(stats: RunStats, pacer: Pacer, model: str) -> None:
    stats.note_send(model)
    pacer.mark_sent()


def _stop_if_tripped(ctx: RunContext, result: JobResult) -> None:
    if ctx.state.stop_reason is not None:
        result.status = "not_attempted" if result.attempts == 0 else "failed"
        raise JobFailed(
            JobCode.RUN_STOPPED, f"run stopped ({ctx.state.stop_reason}); the same command resumes"
        )
    reason = ctx.state.breaker.reason
    if reason is not None:
        result.status = "not_attempted" if result.attempts == 0 else "failed"
        raise JobFailed(
            JobCode.RUN_STOPPED, f"run stopped by account error {reason.code}: {reason.message[:200]}"
        )


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
        run_id=ctx.services.run_id,
    )


async def _store_outputs(
    ctx: RunContext, job: Job, charge: Charge, result: JobResult, stale: set[str], fresh: bool
) -> None:
    """Copy a paid call's outputs to their keys (moving an earlier version's aside), then QA them."""
    result.request_id, result.image_count = charge.request_id, charge.image_count
    result.width, result.height = charge.width, charge.height
    stored: list[str] = []
    keys: list[str] = []
    bodies: dict[str, bytes] = {}  # key → the bytes this job's copy stored (QA checks them, no read-back)
    if stale:
        await ctx.services.store(supersede, ctx.services.dest, job.job_id, charge.request_id)
    try:
        for k, url in enumerate(charge.output_urls, start=1):
            key = output_key(job.job_id, k)
            if not host_allowed(url, ctx.services.allowed_output_hosts):
                raise JobFailed(
                    JobCode.OUTPUT_HOST_REFUSED,
                    f"output {k} is on host {urlsplit(url).hostname!r}, which is not an allowed result host; not fetched",
                )
            await _copy(ctx, job, charge, url, key, k, fresh, bodies if ctx.services.qa else None)
            stored.append(ctx.services.dest.uri(key))
            keys.append(key)
    except JobFailed:
        result.outputs = stored
        result.billed_not_stored = charge.image_count - len(stored)
        raise
    result.outputs = stored
    result.qa = await _inspect(ctx, job, charge, keys, bodies) if ctx.services.qa else ""


async def _inspect(
    ctx: RunContext, job: Job, charge: Charge, keys: Sequence[str], bodies: Mapping[str, bytes]
) -> str:
    """QA of the stored outputs: the ``qa`` cell of results.csv. Each is checked on the bytes its copy
    stored; one this job did not write itself (found already stored, or streamed because it was too
    large to hold) is read back from the destination."""
    expected = (charge.width, charge.height) if charge.width and charge.height else None
    flags = []
    for key in keys:
        data = bodies.get(key)
        if data is None:
            data = await ctx.services.store(ctx.services.dest.get_bytes, key)
        check = partial(qa.check_output, data or b"", expected=expected, requested=job.size)
        flags.append(await ctx.services.blocking(check))
    return qa.qa_cell(flags)


async def _commit(ctx: RunContext, job: Job, fp: str, charge: Charge, result: JobResult) -> None:
    """Write the done record: the job's commit marker (a rerun's listing finds it and skips the row)."""
    done = Done(
        job_id=job.job_id,
        fingerprint=fp,
        request_id=charge.request_id,
        image_count=charge.image_count,
        outputs=tuple(result.outputs),
        cost=charge.cost,
        currency=charge.currency,
        finished_at=utcnow_iso(),
        run_id=ctx.services.run_id,
        extra={"qa": result.qa} if result.qa else {},
    )
    await ctx.services.store(ctx.services.ledger.write_done, done)
    result.status = "succeeded"


def supersede(dest: Destination, job_id: str, request_id: str) -> None:
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


async def _copy(
    ctx: RunContext,
    job: Job,
    charge: Charge,
    url: str,
    key: str,
    k: int,
    fresh: bool,
    bodies: dict[str, bytes] | None = None,
) -> None:
    """Copy one output to its key; retried through outages, never by calling the API again. With
    ``bodies``, the bytes stored (when the copy held them whole) are kept there under ``key``."""
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
    copy: Callable[[], Awaitable[object]] = partial(
        ctx.services.blocking,
        partial(
            copy_url,
            ctx.services.http,
            url,
            ctx.services.dest,
            key,
            content_type="image/png",
            metadata=metadata,
            check_existing=not fresh,
            on_body=None if bodies is None else partial(bodies.__setitem__, key),
        ),
    )
    tries = 0
    try:
        async for attempt in ctx.services.store_retry.retrying(
            is_transient_storage_error, describe=lambda: f"job {job.job_id}: copy of output {k}"
        ):
            with attempt:
                tries += 1
                await copy()
                return
    except CopyError as err:
        if err.expired:
            raise JobFailed(
                JobCode.OUTPUTS_EXPIRED, f"outputs expired before they were stored ({err})"
            ) from None
        raise JobFailed(JobCode.COPY_FAILED, f"output {k} not stored after {tries} tries: {err}") from None
    except Exception as err:
        if is_transient_storage_error(err):
            raise JobFailed(
                JobCode.COPY_FAILED, f"output {k} not stored after {tries} tries: {error_text(err)}"
            ) from None
        raise
