"""The run layer: one manifest, start to finish, with no Prefect in it.

``Run(options)`` is an async context manager. Entering it does every check that must pass before
anything is spent, once: the options (price file, budget currency, API key present), the whole
manifest validated and quoted (``ManifestInvalid``), the destination listable and writable
(``DestinationUnusable``). ``execute()`` then:

1. lists the done markers under ``{dest}/_ledger/_done/`` once (one LIST per 1,000 jobs);
2. reads the manifest lazily and fingerprints each row; a row whose (job id, fingerprint) is in the
   listing is recorded ``skipped`` on the spot — no task, no call, no per-row store request;
3. groups the other rows into **chunks** of consecutive rows and hands each chunk to the
   ``ChunkRunner`` (the flow makes each a Prefect task run; by default it is run directly). Chunks
   share the run's pacers and in-flight window, and the next chunk starts as soon as the previous
   one has *entered* every job into the window, so a chunk boundary never idles the pacer. A chunk
   that fails in orchestration does not fail its siblings: its unrecorded rows are reported.

``finish()`` writes results.csv / summary.json / failed.jsonl (local and under ``{dest}/_runs/``)
and returns the summary. Live counters are in ``run.stats`` for whoever shows progress: the CLI
draws a line from the run it opened and handed to the flow (``hand_over`` / ``open_run``), the
flow publishes Prefect artifacts. Tasks find their run through ``current_run()`` (a ``ContextVar``
set by the flow), never through a module-level registry.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from qwenedit.api import api_key_from_env
from qwenedit.budget import Budget, check_currencies
from qwenedit.canary import CanaryOutcome, CanaryPlan, Question, QuoteApproval
from qwenedit.canary import choose as choose_canary
from qwenedit.catalog import ModelTable, cost, format_money, load_models, normalize_model, normalize_region
from qwenedit.errors import DestinationUnusable, InputError, JobCode, ManifestInvalid, MixedCurrencies
from qwenedit.htmlreport import CONTACT_LIMIT, write_html_report
from qwenedit.inputs import InputResolver, data_uri_bytes
from qwenedit.jobs import Job, fingerprint
from qwenedit.ledger import DoneIndex, Ledger
from qwenedit.manifest import ManifestSource, Validation, iter_jobs, manifest_base, validate_manifest
from qwenedit.options import RunOptions
from qwenedit.pacer import PacerPool
from qwenedit.pipeline import (
    DEFAULT_OUTPUT_HOSTS,
    RunContext,
    RunStats,
    Served,
    failed_result,
    record,
    run_job,
    skipped_result,
)
from qwenedit.policy import policy_for
from qwenedit.rates import model_limits
from qwenedit.redact import install_log_redaction
from qwenedit.regions import run_routes
from qwenedit.report import ResultSpool, save_reports, write_reports
from qwenedit.retry import RetryPolicy
from qwenedit.rollups import Rollups
from qwenedit.stopping import StoppableClient
from qwenedit.storage import Destination, make_s3_client, open_destination
from qwenedit.window import Window

log = logging.getLogger("qwenedit.run")

_CURRENT: ContextVar[Run | None] = ContextVar("qwenedit_current_run", default=None)
_HANDED: ContextVar[Run | None] = ContextVar("qwenedit_handed_run", default=None)

PLAN_BATCH = 512  # rows the planning thread hands over at a time
IDENTITY_CACHE = 100_000  # image references whose identity the planning pass remembers


def new_run_id() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ-") + uuid.uuid4().hex[:6]


def current_run() -> Run:
    """The run whose flow is executing this code (set by ``Run.activate``)."""
    run = _CURRENT.get()
    if run is None:
        raise RuntimeError("no qwenedit run is active in this context")
    return run


@contextlib.asynccontextmanager
async def open_run(options: RunOptions) -> AsyncIterator[Run]:
    """The run for ``options``: the one the caller already opened and handed over, else a new one.

    The CLI opens the run itself (so a bad manifest is reported before an orchestrator starts) and
    hands it to the flow; a deployment's flow run opens its own.
    """
    handed = _HANDED.get()
    if handed is not None and handed.options == options:
        yield handed
        return
    async with Run(options) as run:
        yield run


def exit_code(summary: dict[str, Any]) -> int:
    """0 every job succeeded or was skipped, 1 some failed, 3 stopped (breaker, budget or a signal)."""
    if summary.get("stopped_by"):
        return 3
    return 1 if summary["by_status"]["failed"] else 0


def check_destination(destination: Destination) -> None:
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


@dataclass(frozen=True)
class Prepared:
    """A manifest checked against a run's options: its validation and quote, the price table."""

    validation: Validation
    prices: ModelTable


def prepare(options: RunOptions, source: ManifestSource | None = None) -> Prepared:
    """Every check on the options and the manifest that must pass before anything is spent (blocking).
    ``source``: the manifest already opened (the run's own copy), else ``options.manifest``.

    Raises ``PricingError`` (bad price file, budget or ``approve_above`` in another currency than the
    jobs' prices), ``ManifestError`` (unreadable file) or ``ManifestInvalid`` (rows with errors, breaches
    of the run's policy among them: ``qwenedit.policy``).
    """
    prices = load_models(options.prices)
    budget = options.budget_amount()
    policy = policy_for(options)  # a row that breaks it is a row error: refused before any call
    manifest = source or options.manifest
    validation = validate_manifest(manifest, **manifest_reading(options, prices), policy=policy)
    if not validation.ok:
        raise ManifestInvalid(validation)
    if budget is not None:
        check_currencies(budget[1], validation.quote.currencies)
    approve_above = options.approve_above_amount()
    others = sorted(set(validation.quote.currencies) - {approve_above[1]}) if approve_above else []
    if approve_above is not None and others:
        raise MixedCurrencies(
            f"--approve-above is in {approve_above[1]} but jobs of this manifest are priced in "
            f"{', '.join(others)}: give the amount in that currency"
        )
    return Prepared(validation, prices)


def manifest_reading(options: RunOptions, prices: ModelTable) -> dict[str, Any]:
    """How a run reads its manifest (the same for validating it and for iterating its jobs)."""
    return {
        "region": options.region,
        "model": options.model,
        "prices": prices,
        "input_root": options.input_root,
        "prompt_template": options.prompt_template,
    }


@dataclass(frozen=True)
class ChunkSpec:
    """What a chunk's task run is given: small, serialisable, named by its row range."""

    run_id: str
    index: int
    first_row: int
    last_row: int
    jobs: int

    @property
    def name(self) -> str:
        return f"rows {self.first_row}-{self.last_row}"


@dataclass
class Chunk:
    """Consecutive pending rows run as one unit of orchestration."""

    spec: ChunkSpec
    items: list[tuple[Job, str, tuple[str, ...]]]  # job, fingerprint, stale done markers
    entered: asyncio.Event = field(default_factory=asyncio.Event)  # every job is in the window


ChunkRunner = Callable[[ChunkSpec], Awaitable[object]]
Approver = Callable[[Question], Awaitable[bool]]  # a canary's outcome, or a quote above --approve-above


def outcome_text(counts: dict[str, int]) -> str:
    return ", ".join(f"{n} {status}" for status, n in sorted(counts.items()) if n) or "no jobs"


class Run:
    """One run of one manifest (see the module docstring)."""

    def __init__(self, options: RunOptions) -> None:
        self.options = options
        self.run_id = options.run_id or new_run_id()
        self.out_dir = Path(options.report_dir) / self.run_id
        self.stats = RunStats()
        self.validation: Validation | None = None
        self.chunks_done = 0
        self.chunks_started = 0
        self._chunks: dict[int, Chunk] = {}
        self.canary_rows: set[int] = set()
        self.canary_ids: list[str] = []  # their job ids (report.html tags them and shows them first)
        self.declined: str | None = None  # why the rest of the run was not approved
        self.approver: Approver | None = None  # who approves a canary (the CLI sets one; flows ask the UI)
        self._stack = contextlib.AsyncExitStack()
        self._ctx: RunContext | None = None
        self._abandon = asyncio.Event()  # set by stop_now: open calls end, reported possibly billed
        self._stop_asked = asyncio.Event()  # set by request_stop and stop_now: ends a pending approval

    # -- opening: every check, once ------------------------------------------------------------

    async def __aenter__(self) -> Run:
        try:
            await self._open()
        except BaseException:
            await self._stack.aclose()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._stack.aclose()

    def hand_over(self) -> contextlib.AbstractContextManager[Run]:
        """Let ``open_run`` inside the block (the flow) use this already-open run."""
        return _set(_HANDED, self)

    def activate(self) -> contextlib.AbstractContextManager[Run]:
        """Make this the ``current_run()`` of the code (tasks) started inside the block."""
        return _set(_CURRENT, self)

    async def _open(self) -> None:
        o = self.options
        routes = run_routes(o)
        keys = {region: api_key_from_env(route.key_env or o.api_key_env) for region, route in routes.items()}
        install_log_redaction(*keys.values())  # no credential in any log line, whoever logs it
        own = normalize_region(o.region)
        api_key = keys[own]
        # One copy of the manifest for the whole run (a remote one is downloaded once): what runs is what
        # was validated against the policy, quoted and approved; a dropper cannot swap it in between.
        self.source = await asyncio.to_thread(self._stack.enter_context, ManifestSource.open(o.manifest))
        prepared = await asyncio.to_thread(prepare, o, self.source)
        budget = o.budget_amount()
        prices = prepared.prices
        self.validation = prepared.validation
        self.stats.total_jobs = prepared.validation.job_count
        destination = open_destination(o.dest)
        await asyncio.to_thread(check_destination, destination)  # before anything is paid for
        endpoint = str(routes[own].endpoint)
        self.endpoint = endpoint
        self.endpoints = {region: str(route.endpoint) for region, route in routes.items()}
        self.destination = destination
        self.prices = prices
        self.resolver = InputResolver(
            input_root=o.input_root, manifest_dir=manifest_base(o.manifest), s3_client_factory=make_s3_client
        )
        self._stack.callback(self.resolver.close)
        io = ThreadPoolExecutor(max_workers=16, thread_name_prefix="qwenedit-io")
        self._stack.callback(io.shutdown, wait=True)
        pacers = pacer_pool(o, prices)
        models = sorted({normalize_model(line.model) for line in prepared.validation.quote.lines})
        self.window = Window(cap=o.max_in_flight, rates=pacers.rates(models))  # UnknownLimit: refused here
        served: dict[str, Served] = {}
        for region, url in self.endpoints.items():  # one client per region: a row is sent to its own
            region_client = await self._stack.enter_async_context(
                StoppableClient(
                    keys[region],
                    url,
                    timeout=o.timeout_s,
                    max_connections=self.window.bound + 8,
                    abandon=self._abandon,
                    stopping=lambda: self.stopping,
                )
            )
            served[region] = Served(region, region_client, url, keys[region])
        client = served[own].client
        limits = httpx.Limits(max_connections=32, max_keepalive_connections=32)
        http = self._stack.enter_context(
            httpx.Client(timeout=httpx.Timeout(60.0, connect=10.0), limits=limits)
        )
        spool = ResultSpool(self.out_dir / "results.jsonl")
        self._stack.callback(spool.close)
        hosts = (
            o.allowed_output_hosts
            + DEFAULT_OUTPUT_HOSTS
            + tuple(_host_pattern(u) for u in self.endpoints.values())
        )
        self._ctx = RunContext(
            run_id=self.run_id,
            client=client,
            endpoint=endpoint,
            api_key=api_key,
            served=served,
            dest=destination,
            ledger=Ledger(destination),
            prices=prices,
            pacers=pacers,
            resolve_input=self.resolver.resolve,
            locate_input=lambda ref: self.resolver.locate(ref).location,
            http=http,
            io=io,
            spool=spool,
            allowed_output_hosts=hosts,
            api_retry=RetryPolicy(o.max_attempts, o.backoff_base, o.backoff_cap),
            store_retry=RetryPolicy(o.store_attempts, o.backoff_base, o.backoff_cap),
            budget=Budget(*budget) if budget is not None else Budget(None),
            throttle_penalty=o.throttle_penalty,
            recall_expired=o.recall_expired,
            qa=o.qa,
            qa_retries=o.qa_retries,
            rollups=Rollups(o.group_by) if o.group_by else None,
            on_latency=self.window.observe_latency,
            stats=self.stats,
        )

    @property
    def ctx(self) -> RunContext:
        if self._ctx is None:
            raise RuntimeError("the run is not open: use `async with Run(options) as run`")
        return self._ctx

    # -- executing: skip in bulk, chunks through one window ------------------------------------------

    async def execute(self, runner: ChunkRunner | None = None, approve: Approver | None = None) -> None:
        """Run every pending row of the manifest; ``runner`` wraps each chunk (default: run it here).

        With ``options.canary``, the canary jobs run first; ``approve`` (or ``self.approver``) then sees
        their outcome and the projected spend, and the rest runs only if it returns True.
        """
        ctx = self.ctx
        run_chunk: ChunkRunner = runner or self.run_chunk
        index = await ctx.store(ctx.ledger.done_index)
        log.info("run %s: %d done markers listed at the destination", self.run_id, len(index))
        self._window = self.window
        decide = approve or self.approver
        if self.options.approve_above is not None:
            await self._approve_quote(index, decide)
        if self.options.canary <= 0 or self.declined is not None:
            await self._pass(index, run_chunk, None)
            return
        plan = await asyncio.to_thread(self._plan_canary, index)
        self.canary_rows = plan.rows
        if plan.rows:
            await self._pass(index, run_chunk, plan.rows.__contains__)
        if plan.rows and plan.remaining_jobs:  # a canary that is the whole run leaves nothing to approve
            outcome = await self._canary_outcome(plan)
            approved = await self._ask(decide, outcome) if decide is not None else False
            if not approved and not self.stopping:  # a stop at the question: the rest is RunStopped
                self.declined = "the canary was not approved"
                log.warning(
                    "run %s: %s; the remaining %d jobs are not run",
                    self.run_id,
                    self.declined,
                    plan.remaining_jobs,
                )
        await self._pass(index, run_chunk, lambda row: row not in plan.rows)

    async def _pass(
        self, index: DoneIndex, run_chunk: ChunkRunner, select: Callable[[int], bool] | None
    ) -> None:
        """One pass over the manifest: rows ``select`` accepts (all if None) are recorded or run in chunks."""
        ctx = self.ctx
        size = self.options.chunk_size_for(self.stats.total_jobs)
        running: set[asyncio.Task[None]] = set()
        pending: list[tuple[Job, str, tuple[str, ...]]] = []
        async for batch in self._plan(index):
            for kind, job, payload in batch:
                if select is not None and not select(job.row):
                    continue
                if kind == "skip" or kind == "fail":
                    record(ctx, job, payload)
                elif self.declined is not None:
                    record(ctx, job, self._declined_result(job))
                else:
                    pending.append((job, *payload))
                    if len(pending) >= size:
                        await self._launch(pending, run_chunk, running)
                        pending = []
        if pending:
            await self._launch(pending, run_chunk, running)
        if running:
            await asyncio.wait(running)

    def _plan_canary(self, index: DoneIndex) -> CanaryPlan:
        """Read the manifest once: the pending rows by (model, region), the canary, the rest's worst case."""
        groups: dict[tuple[str, str], list[int]] = {}
        worst: dict[int, tuple[str, Decimal]] = {}
        job_ids: dict[int, str] = {}
        for kind, job, _ in self._classify(index):
            if kind == "run":
                groups.setdefault((job.model, job.region), []).append(job.row)
                job_ids[job.row] = job.job_id
                price = self.prices.unit_price(job.region, job.model)
                worst[job.row] = (price.currency, cost(job.n, price))
        plan = CanaryPlan(rows=choose_canary(groups, self.options.canary))
        self.canary_ids = [job_ids[row] for row in sorted(plan.rows)]
        for row, (currency, amount) in worst.items():
            if row not in plan.rows:
                plan.remaining_jobs += 1
                plan.projected[currency] = plan.projected.get(currency, Decimal(0)) + amount
        return plan

    async def _approve_quote(self, index: DoneIndex, decide: Approver | None) -> None:
        """``approve_above``: before the first call, a run that could spend more than the amount asks
        (nobody to ask, a "no", a stop or a timeout: it is declined and nothing is called)."""
        limit = self.options.approve_above_amount()
        assert limit is not None and self.validation is not None
        amount, currency = limit
        if self.validation.quote.fits(amount, currency):  # the whole manifest's worst case: no read needed
            return
        jobs, projected = await asyncio.to_thread(self._pending_quote, index)  # done rows cost nothing
        if projected <= amount:
            return
        question = QuoteApproval(
            jobs=jobs, projected=format_money(projected, currency), limit=format_money(amount, currency)
        )
        log.warning("run %s: %s; asking for approval", self.run_id, question.headline())
        approved = await self._ask(decide, question) if decide is not None else False
        if not approved and not self.stopping:
            self.declined = f"{question.headline()}, and it was not approved"
            log.warning("run %s: %s; no job is run", self.run_id, self.declined)

    def _pending_quote(self, index: DoneIndex) -> tuple[int, Decimal]:
        """The jobs this run would call (not done at their fingerprint) and their worst-case cost."""
        jobs, total = 0, Decimal(0)
        for kind, job, _ in self._classify(index):
            if kind == "run":
                jobs += 1
                total += cost(job.n, self.prices.unit_price(job.region, job.model))
        return jobs, total

    async def _canary_outcome(self, plan: CanaryPlan) -> CanaryOutcome:
        """The canary's summary, and report.html written for it with the projected spend of the rest."""
        summary = self.summary()
        outcome = CanaryOutcome(
            jobs=len(plan.rows),
            summary=summary,
            remaining_jobs=plan.remaining_jobs,
            projected=plan.projected_text(),
            report=str(self.out_dir / "report.html"),
        )
        headline = (
            f"Canary of {outcome.jobs} jobs. The rest: {outcome.remaining_jobs} jobs, "
            f"projected spend at most {outcome.projected}."
        )
        self.ctx.spool.flush()
        await asyncio.to_thread(self._write_html, summary, headline)
        return outcome

    async def _ask(self, decide: Approver, outcome: Question) -> bool:
        """The approver's answer; a stop (Ctrl-C at the question) ends the wait: not approved."""
        asking = asyncio.ensure_future(decide(outcome))
        stopped = asyncio.ensure_future(self._stop_asked.wait())
        try:
            await asyncio.wait({asking, stopped}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopped.cancel()
            if not asking.done():
                asking.cancel()
                await asyncio.wait({asking})
        return False if asking.cancelled() else bool(asking.result())

    def _declined_result(self, job: Job) -> Any:
        return failed_result(
            job, JobCode.NOT_APPROVED, f"not started: {self.declined}", status="not_attempted"
        )

    async def _launch(
        self,
        items: list[tuple[Job, str, tuple[str, ...]]],
        run_chunk: ChunkRunner,
        running: set[asyncio.Task[None]],
    ) -> None:
        """Start a chunk and return once all its jobs are in the window (or it ended)."""
        if self.stopping:  # a stopped run starts no chunk: no task run, no call, no store request
            for job, _, _ in items:
                record(self.ctx, job, self._stopped_result(job))
            return
        spec = ChunkSpec(self.run_id, self.chunks_started, items[0][0].row, items[-1][0].row, len(items))
        chunk = self._chunks[spec.index] = Chunk(spec, items)
        self.chunks_started += 1
        for job, _, _ in items:
            self.ctx.unrecorded.add(job.row)
        task = asyncio.create_task(self._guarded(chunk, run_chunk))
        running.add(task)
        task.add_done_callback(running.discard)
        entered = asyncio.create_task(chunk.entered.wait())
        await asyncio.wait({task, entered}, return_when=asyncio.FIRST_COMPLETED)
        entered.cancel()

    async def _guarded(self, chunk: Chunk, run_chunk: ChunkRunner) -> None:
        """Run a chunk; if orchestration fails, its rows that never ran are still reported."""
        try:
            await run_chunk(chunk.spec)
        except Exception as err:
            log.error("chunk %s failed in orchestration: %s", chunk.spec.name, type(err).__name__)
        finally:
            chunk.entered.set()
            for job, _, _ in chunk.items:
                if job.row in self.ctx.unrecorded:  # else the job recorded itself
                    result = failed_result(job, JobCode.ORCHESTRATION_ERROR, "its chunk failed before it ran")
                    record(self.ctx, job, result)
            self._chunks.pop(chunk.spec.index, None)
            self.chunks_done += 1

    async def run_chunk(self, spec: ChunkSpec) -> dict[str, int]:
        """Run the jobs of one chunk through the run's window; returns its outcome counts.

        Each model of the chunk is fed by its own coroutine into its own lane of the window, so a slow
        model (Max, 2/min) never holds up the others. The chunk counts as *entered* (the next chunk may
        start) once every model's jobs are in the window or wait only for their own model's full lane.
        """
        chunk = self._chunks[spec.index]
        ctx, window = self.ctx, self._window
        counts: dict[str, int] = {}
        queues: dict[str, deque[tuple[Job, str, tuple[str, ...]]]] = {}
        for item in chunk.items:
            queues.setdefault(normalize_model(item[0].model), deque()).append(item)

        async def one(model: str, job: Job, fp: str, stale: tuple[str, ...]) -> None:
            try:
                result = await run_job(ctx, job, fp, stale)
                counts[result.status] = counts.get(result.status, 0) + 1
            finally:
                window.release(model)

        jobs: list[asyncio.Task[None]] = []

        async def feed(model: str, queue: deque[tuple[Job, str, tuple[str, ...]]]) -> None:
            while queue:
                await window.acquire(model)
                job, fp, stale = queue.popleft()
                if ctx.stop_reason is not None:
                    window.release(model)
                    result = record(ctx, job, self._stopped_result(job))
                    counts[result.status] = counts.get(result.status, 0) + 1
                    continue
                jobs.append(asyncio.create_task(one(model, job, fp, stale)))

        feeders = {model: asyncio.create_task(feed(model, queue)) for model, queue in queues.items()}

        def entered() -> bool:
            return all(
                task.done() or (not window.has_room(model) and window.in_flight < window.size)
                for model, task in feeders.items()
            )

        try:
            while not all(task.done() for task in feeders.values()):
                if entered():
                    chunk.entered.set()
                await asyncio.wait(feeders.values(), timeout=0.05, return_when=asyncio.FIRST_COMPLETED)
            for task in feeders.values():
                task.result()  # a feeder's error is the chunk's
            chunk.entered.set()
            if jobs:
                await asyncio.gather(*jobs)
        finally:
            chunk.entered.set()
            for task in feeders.values():
                task.cancel()
        return counts

    def request_stop(self, reason: str) -> None:
        """A graceful stop: no new call starts; calls in flight finish, are recorded and copied.

        Rows not yet started are reported ``not_attempted`` (code ``RunStopped``) without a request to
        the store; the same command resumes them.
        """
        self._stop_asked.set()
        if self.ctx.stop_reason is None:
            self.ctx.stop_reason = reason
            log.warning(
                "run %s stopping (%s): no new calls; %d in flight", self.run_id, reason, self.stats.in_flight
            )

    def stop_now(self, reason: str) -> None:
        """A hard stop: as ``request_stop``, and the calls still open end at once, reported
        ``possibly_billed`` (their answer is not awaited; the same command calls them again)."""
        if self._abandon.is_set():
            return
        first = self.ctx.stop_reason
        self.ctx.stop_reason = reason if first is None else f"{first}; then at once: {reason}"
        self._abandon.set()
        self._stop_asked.set()
        log.warning(
            "run %s stopping at once (%s): %d open call(s) abandoned",
            self.run_id,
            reason,
            self.stats.in_flight,
        )

    @property
    def stopping(self) -> bool:
        return self._ctx is not None and self._ctx.stop_reason is not None

    @property
    def stopped_now(self) -> bool:
        return self._abandon.is_set()

    def _stopped_result(self, job: Job) -> Any:
        return failed_result(
            job,
            JobCode.RUN_STOPPED,
            f"not started: run stopped ({self.ctx.stop_reason}); the same command resumes",
            status="not_attempted",
        )

    async def _plan(self, index: DoneIndex) -> AsyncIterator[list[Any]]:
        """Batches of (kind, job, payload) from a planning thread that reads and fingerprints rows."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[list[Any] | BaseException | None] = asyncio.Queue(maxsize=8)
        stop = threading.Event()

        def put(item: list[Any] | BaseException | None) -> None:
            asyncio.run_coroutine_threadsafe(queue.put(item), loop).result()

        def produce() -> None:
            try:
                batch: list[Any] = []
                for item in self._classify(index):
                    if stop.is_set():
                        return
                    batch.append(item)
                    if len(batch) >= PLAN_BATCH:
                        put(batch)
                        batch = []
                put(batch)
                put(None)
            except BaseException as err:  # a manifest that changed under us, an I/O error: fail the run
                put(err)

        worker = threading.Thread(target=produce, name="qwenedit-plan", daemon=True)
        worker.start()
        try:
            while True:
                item = await queue.get()
                if item is None:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            stop.set()
            while worker.is_alive():  # unblock a producer waiting on a full queue
                with contextlib.suppress(asyncio.QueueEmpty):
                    queue.get_nowait()
                await asyncio.sleep(0.01)

    def _classify(self, index: DoneIndex) -> Iterator[tuple[str, Job, Any]]:
        """Each manifest row: done at its fingerprint (skip), bad input (fail) or pending."""
        o, ctx = self.options, self.ctx
        jobs = iter_jobs(self.source, **manifest_reading(o, self.prices))
        known: dict[str, str] = {}  # the same image on many rows is identified once per run (bounded)
        for job in jobs:
            try:
                identities = [known.get(ref) or self._identity(known, ref) for ref in job.images]
            except InputError as err:
                column = _image_column(job, err)
                located = err.located(job.row, job.job_id, column)
                yield "fail", job, failed_result(job, JobCode.BAD_INPUT, str(located)[:300])
                continue
            fp = fingerprint(job, identities)
            marker = index.find(job.job_id, fp)
            if marker is not None:
                yield "skip", job, skipped_result(ctx, job, marker)
            else:
                stale = tuple(m.key for m in index.markers(job.job_id))
                yield "run", job, (fp, stale)

    def _identity(self, known: dict[str, str], ref: str) -> str:
        identity = self.resolver.identity(ref)
        if len(known) >= IDENTITY_CACHE:
            known.clear()
        known[ref] = identity
        return identity

    # -- finishing: summary and reports -----------------------------------------------------------

    def summary(self) -> dict[str, Any]:
        ctx, stats, o = self.ctx, self.stats, self.options
        summary: dict[str, Any] = {
            "run_id": self.run_id,
            "manifest": o.manifest,
            "dest": o.dest,
            "endpoint": self.endpoint,
        }
        if len(self.endpoints) > 1:
            summary["region_endpoints"] = dict(self.endpoints)
        summary.update(stats.totals.to_dict())
        stopped_by: dict[str, Any] | None = None
        if ctx.breaker.reason is not None:
            stopped_by = {
                "cause": "breaker",
                "code": ctx.breaker.reason.code,
                "message": ctx.breaker.reason.message,
            }
        elif ctx.budget.exhausted:
            stopped_by = {"cause": "budget", "limit": ctx.budget.describe()}
        elif self.declined is not None:
            stopped_by = {"cause": "declined", "reason": self.declined}
        elif ctx.stop_reason is not None:
            stopped_by = {"cause": "stop", "reason": ctx.stop_reason}
        rates = stats.model_rates()
        summary.update(
            {
                "stopped_by": stopped_by,
                "budget": ctx.budget.describe(),
                "wall_time_s": round(time.monotonic() - stats.started, 3),
                "requests_sent": stats.requests_sent,
                "request_rate": round(stats.request_rate(), 4),
                "rates": list(o.rates),
                "models": {
                    model: {
                        **pacing,
                        "request_rate": round(rates.get(model, (0.0, 0))[0], 4),
                        "throttled_429": rates.get(model, (0.0, 0))[1],
                    }
                    for model, pacing in ctx.pacers.stats().items()
                },
                "window": self.window.snapshot(),
                "throttled_429": stats.throttled,
                "chunks": self.chunks_started,
                "canary_jobs": len(self.canary_rows),
                "report_dir": str(self.out_dir),
            }
        )
        if ctx.rollups is not None:
            summary["rollups"] = ctx.rollups.to_dict()
        return summary

    async def finish(self) -> dict[str, Any]:
        """Write the reports (local and at the destination) and return the summary."""
        self.ctx.spool.close()
        summary = self.summary()
        paths = await asyncio.to_thread(write_reports, self.ctx.spool, summary, self.out_dir)
        paths["report.html"] = await asyncio.to_thread(self._write_html, summary, None)
        await asyncio.to_thread(save_reports, self.destination, self.run_id, paths)
        return summary

    def _read_input(self, ref: str) -> bytes | None:
        """An input image for the contact sheet: local files and S3 objects (URLs are not fetched)."""
        located = self.resolver.locate(ref)
        if located.kind not in ("local", "s3"):
            return None
        resolved = self.resolver.resolve(ref)  # a data URI (local) or a presigned URL (S3)
        if resolved.startswith("data:"):
            return data_uri_bytes(resolved)
        answer = self.ctx.http.get(resolved)
        return answer.content if answer.status_code == 200 else None

    def _write_html(self, summary: dict[str, Any], headline: str | None) -> Path:
        """report.html: totals, costs, roll-ups, QA flags, failures and a bounded contact sheet."""
        # Totals come from the summary; the page lists executed rows and the first rows of the manifest.
        results, _ = self.ctx.spool.in_manifest_order(skipped_after=CONTACT_LIMIT)
        base = self.destination.uri("")

        def read_output(uri: str) -> bytes | None:
            return self.destination.get_bytes(uri[len(base) :].lstrip("/")) if uri.startswith(base) else None

        return write_html_report(
            self.out_dir / "report.html",
            summary,
            results,
            read_output=read_output,
            read_input=self._read_input,
            canary=self.canary_ids,
            headline=headline,
        )


def pacer_pool(options: RunOptions, table: ModelTable) -> PacerPool:
    """Pacers at each model's limit: the options' ``rates``, else the table's, times ``rate_share``."""
    return PacerPool(model_limits(options.rates, table, options.rate_share))


@contextlib.contextmanager
def _set(var: ContextVar[Run | None], run: Run) -> Iterator[Run]:
    token = var.set(run)
    try:
        yield run
    finally:
        var.reset(token)


def _image_column(job: Job, err: InputError) -> str:
    ref = getattr(err, "ref", None)
    for i, image in enumerate(job.images, start=1):
        if image == ref:
            return f"image_{i}"
    return "image_1"


def _host_pattern(endpoint: str) -> str:
    parts = urlsplit(endpoint)
    return f"{parts.hostname}:{parts.port}" if parts.port else str(parts.hostname)


async def run_manifest(
    options: RunOptions, runner: ChunkRunner | None = None, approve: Approver | None = None
) -> dict[str, Any]:
    """Open, execute and finish a run without any orchestrator (the library entry point)."""
    async with Run(options) as run:
        with run.activate():
            await run.execute(runner, approve=approve)
        return await run.finish()


__all__ = [
    "ChunkSpec",
    "Run",
    "RunOptions",
    "check_destination",
    "current_run",
    "exit_code",
    "new_run_id",
    "open_run",
    "outcome_text",
    "run_manifest",
]
