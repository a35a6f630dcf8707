"""The run: one manifest, start to finish, with no Prefect in it.

``Run(options)`` is an async context manager. Entering it does every check that must pass before
anything is spent, once (``run.wiring``): the options (price file, budget currency, API key present),
the whole manifest validated and quoted (``ManifestInvalid``), the destination listable and writable
(``DestinationUnusable``). ``execute(runner, approve)`` then:

1. lists the done markers under ``{dest}/_ledger/_done/`` once (one LIST per 1,000 jobs);
2. plans the rows in a background thread (``run.planning``): a row whose (job id, fingerprint) is in
   the listing is recorded ``skipped`` on the spot — no task, no call, no per-row store request;
3. groups the pending rows into chunks of consecutive rows and hands each ``Chunk`` to ``runner``
   (``run.chunks``; the flow makes each a Prefect task run, by default it runs directly);
4. with ``options.approve_above``, asks ``approve`` before the first call when the quote of the rows it
   would call is above the amount (declined: nothing is called);
5. with ``options.canary``, runs the canary rows first and asks ``approve`` before the rest.

``request_stop`` / ``stop_now`` are the two stop levels (``qwenedit.stopping`` calls them on signals).
``finish()`` writes the reports (``run.reports``) and returns the summary. Live counters are in
``run.stats`` for whoever shows progress.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from decimal import Decimal
from pathlib import Path
from typing import Any

from qwenedit.canary import CanaryOutcome, CanaryPlan, Question, QuoteApproval
from qwenedit.catalog import cost, format_money, normalize_model
from qwenedit.dedupe import Leaders
from qwenedit.errors import JobCode
from qwenedit.jobs import Job
from qwenedit.ledger import DoneIndex
from qwenedit.manifest import Validation
from qwenedit.options import RunOptions
from qwenedit.pipeline import RunContext, RunServices, RunState, RunStats, failed_result, record
from qwenedit.report import JobResult
from qwenedit.run.chunks import ChunkRunner, Chunks
from qwenedit.run.followers import run_follower
from qwenedit.run.planning import Pending, Planner, Skip
from qwenedit.run.reports import RunReports
from qwenedit.run.wiring import Wired, new_run_id, wire
from qwenedit.summary import ModelLine, RunSummary, StopCause, StoppedBy
from qwenedit.window import Window

log = logging.getLogger("qwenedit.run")

Approver = Callable[[Question], Awaitable[bool]]  # a canary's outcome, or a quote above --approve-above


def exit_code(summary: RunSummary | Mapping[str, Any]) -> int:
    """0 every job succeeded or was skipped, 1 some failed, 3 stopped (breaker, budget or a signal);
    of a summary or its summary.json form (what a flow run returns)."""
    typed = summary if isinstance(summary, RunSummary) else RunSummary.from_json(summary)
    return typed.exit_code


class Run:
    """One run of one manifest (see the module docstring)."""

    def __init__(self, options: RunOptions) -> None:
        self.options = options
        self.run_id = options.run_id or new_run_id()
        self.out_dir = Path(options.report_dir) / self.run_id
        self.stats = RunStats()
        self.canary_rows: set[int] = set()
        self.canary_ids: list[str] = []  # their job ids (report.html tags them and shows them first)
        self.declined: str | None = None  # why the rest of the run was not approved
        self._stack = contextlib.AsyncExitStack()
        self._wired: Wired | None = None
        self._chunks: Chunks | None = None
        self._abandon = asyncio.Event()  # set by stop_now: open calls end, reported possibly billed
        self._stop_asked = asyncio.Event()  # set by request_stop and stop_now: ends a pending approval
        self.leaders = Leaders() if options.dedupe else None  # --dedupe: the first row of each edit

    # -- opening: every check, once ------------------------------------------------------------

    async def __aenter__(self) -> Run:
        try:
            self._wired = await wire(
                self.options,
                self.run_id,
                self.out_dir,
                self._stack,
                stats=self.stats,
                abandon=self._abandon,
                stopping=lambda: self.stopping,
            )
        except BaseException:
            await self._stack.aclose()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._stack.aclose()

    @property
    def wired(self) -> Wired:
        if self._wired is None:
            raise RuntimeError("the run is not open: use `async with Run(options) as run`")
        return self._wired

    @property
    def ctx(self) -> RunContext:
        return self.wired.ctx

    @property
    def services(self) -> RunServices:
        return self.wired.ctx.services

    @property
    def state(self) -> RunState:
        return self.wired.ctx.state

    @property
    def validation(self) -> Validation:
        return self.wired.validation

    @property
    def window(self) -> Window:
        return self.wired.window

    @property
    def chunks_started(self) -> int:
        return self._chunks.started if self._chunks is not None else 0

    @property
    def chunks_done(self) -> int:
        return self._chunks.done if self._chunks is not None else 0

    def _planner(self) -> Planner:
        return Planner(
            self.options, self.services.prices, self.wired.resolver, self.services, self.wired.source
        )

    def _reports(self) -> RunReports:
        return RunReports(self.out_dir, self.services, self.wired.resolver, self.state.spool)

    # -- executing: skip in bulk, chunks through one window ------------------------------------------

    async def execute(self, runner: ChunkRunner | None = None, approve: Approver | None = None) -> None:
        """Run every pending row of the manifest; ``runner`` wraps each chunk (default: run it here).

        With ``options.canary``, the canary jobs run first; ``approve`` then sees their outcome and the
        projected spend, and the rest runs only if it returns True (no approver: the rest is declined).
        """
        self._chunks = Chunks(self.ctx, self.window, runner)
        if self.leaders is not None:
            leaders = self.leaders
            self.state.on_record = lambda job, result: leaders.finished(job, result.status, result)
        index = await self.services.store(self.services.ledger.done_index)
        log.info("run %s: %d done markers listed at the destination", self.run_id, len(index))
        self.state.charged = await self._charged_jobs(index)
        if self.options.approve_above is not None:
            await self._approve_quote(index, approve)
        if self.options.canary <= 0 or self.declined is not None:
            await self._pass(index, None)
            return
        plan, self.canary_ids = await asyncio.to_thread(
            self._planner().plan_canary, index, self.options.canary
        )
        self.canary_rows = plan.rows
        if plan.rows:
            await self._pass(index, plan.rows.__contains__)
        if plan.rows and plan.remaining_jobs:  # a canary that is the whole run leaves nothing to approve
            outcome = await self._canary_outcome(plan)
            approved = await self._ask(approve, outcome) if approve is not None else False
            if not approved and not self.stopping:  # a stop at the question: the rest is RunStopped
                self.declined = "the canary was not approved"
                log.warning(
                    "run %s: %s; the remaining %d jobs are not run",
                    self.run_id,
                    self.declined,
                    plan.remaining_jobs,
                )
        await self._pass(index, lambda row: row not in plan.rows)

    async def _charged_jobs(self, index: DoneIndex) -> set[str] | None:
        """The jobs with a charge record, from one listing of the ledger, when that listing is cheaper than
        the per-job listings of charges it saves: each row without a done record would list its own, so
        the listing is given up past 100 keys per such row (≤ 1 LIST per 10 rows). A first run of a new
        catalogue lists once, and its jobs go straight to their call. None: each job lists its own."""
        unfinished = self.stats.total_jobs - len(index)
        if unfinished <= 0:  # every row may be done: nothing to save
            return None
        charged = await self.services.store(self.services.ledger.charged_jobs, 100 * unfinished)
        if charged is not None:
            log.info("run %s: %d jobs with charges listed at the destination", self.run_id, len(charged))
        return charged

    async def _pass(self, index: DoneIndex, select: Callable[[int], bool] | None) -> None:
        """One pass over the manifest: rows ``select`` accepts (all if None) are recorded or run in chunks."""
        ctx, chunks = self.ctx, self._chunks
        assert chunks is not None
        size = self.options.chunk_size_for(self.stats.total_jobs)
        running: set[asyncio.Task[Any]] = set()
        pending: list[Pending] = []
        async for batch in self._planner().batches(index):
            for item in batch:
                if select is not None and not select(item.job.row):
                    continue
                if not isinstance(item, Pending):
                    if isinstance(item, Skip) and self.leaders is not None:
                        self.leaders.note_done(
                            item.job, item.fingerprint, item.result.request_id, item.result.image_count
                        )
                    record(ctx, item.job, item.result)
                elif self.declined is not None:
                    record(ctx, item.job, self._declined_result(item.job))
                elif (
                    self.leaders is not None
                    and (leader := self.leaders.leader_of(item.job, item.fingerprint)) is not None
                ):  # the same edit as an earlier row: its outputs are copied, no call
                    ctx.state.unrecorded.add(item.job.row)
                    follower = asyncio.create_task(run_follower(ctx, self.leaders, item, leader))
                    running.add(follower)
                    follower.add_done_callback(running.discard)
                else:
                    pending.append(item)
                    if len(pending) >= size:
                        await chunks.launch(pending, running)
                        pending = []
        if pending:
            await chunks.launch(pending, running)
        if running:
            await asyncio.wait(running)

    async def _approve_quote(self, index: DoneIndex, decide: Approver | None) -> None:
        """``approve_above``: before the first call, a run that could spend more than the amount asks
        (nobody to ask, a "no", a stop or a timeout: it is declined and nothing is called)."""
        limit = self.options.approve_above_amount()
        assert limit is not None
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
        for item in self._planner().classify(index):
            if isinstance(item, Pending):
                jobs += 1
                total += cost(item.job.n, self.services.prices.unit_price(item.job.region, item.job.model))
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
        await asyncio.to_thread(self._reports().write_html, summary, self.canary_ids, headline)
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

    def _declined_result(self, job: Job) -> JobResult:
        return failed_result(
            job, JobCode.NOT_APPROVED, f"not started: {self.declined}", status="not_attempted"
        )

    # -- stopping -------------------------------------------------------------------------------------

    def request_stop(self, reason: str) -> None:
        """A graceful stop: no new call starts; calls in flight finish, are recorded and copied.

        Rows not yet started are reported ``not_attempted`` (code ``RunStopped``) without a request to
        the store; the same command resumes them.
        """
        self._stop_asked.set()
        if self.state.stop_reason is None:
            self.state.stop_reason = reason
            log.warning(
                "run %s stopping (%s): no new calls; %d in flight", self.run_id, reason, self.stats.in_flight
            )

    def stop_now(self, reason: str) -> None:
        """A hard stop: as ``request_stop``, and the calls still open end at once, reported
        ``possibly_billed`` (their answer is not awaited; the same command calls them again)."""
        if self._abandon.is_set():
            return
        first = self.state.stop_reason
        self.state.stop_reason = reason if first is None else f"{first}; then at once: {reason}"
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
        return self._wired is not None and self.state.stop_reason is not None

    @property
    def stopped_now(self) -> bool:
        return self._abandon.is_set()

    # -- finishing: summary and reports -----------------------------------------------------------

    def summary(self) -> RunSummary:
        """The run's summary now (the canary's, or the final one after ``execute``)."""
        services, state, stats = self.services, self.state, self.stats
        rates = stats.model_rates()
        return RunSummary(
            run_id=self.run_id,
            manifest=self.options.manifest,
            dest=self.options.dest,
            endpoint=services.endpoint,
            totals=stats.totals.totals(),
            report_dir=str(self.out_dir),
            stopped_by=self.stopped_by(),
            budget=state.budget.describe(),
            wall_time_s=round(time.monotonic() - stats.started, 3),
            requests_sent=stats.requests_sent,
            request_rate=round(stats.request_rate(), 4),
            rates=list(self.options.rates),
            throttled_429=stats.throttled,
            models={
                model: ModelLine(
                    limit=str(pacing.get("limit", "")),
                    requests_sent=stats.sent_by_model(model),
                    request_rate=round(rates.get(model, (0.0, 0))[0], 4),
                    throttled_429=rates.get(model, (0.0, 0))[1],
                    pacing={k: v for k, v in pacing.items() if k != "limit"},
                )
                for model, pacing in services.pacers.stats().items()
            },
            window=self.window.snapshot(),
            chunks=self.chunks_started,
            canary_jobs=len(self.canary_rows),
            rollups=state.rollups.to_dict() if state.rollups is not None else None,
            timeline=stats.timeline.to_json(self._limits()),
        )

    def _limits(self) -> dict[str, float]:
        """Requests per second each model of the run may send (the chart's limit lines)."""
        limits = {}
        for model in self.stats.by_model:
            with contextlib.suppress(Exception):  # a model without a limit is drawn without its line
                limits.update({model: self.services.pacers.rates([model])[normalize_model(model)]})
        return limits

    def stopped_by(self) -> StoppedBy | None:
        """Why the run ended before every job ran (the first cause that applies), or None."""
        state = self.state
        if state.breaker.reason is not None:
            reason = state.breaker.reason
            return StoppedBy(StopCause.BREAKER, code=reason.code, message=reason.message)
        spend_cap = state.budget.spend_cap_stop()  # a daily / monthly cap of the spend ledger
        if spend_cap is not None:
            return StoppedBy.from_json(spend_cap)
        if state.budget.exhausted:
            return StoppedBy(StopCause.BUDGET, limit=str(state.budget.describe()))
        if self.declined is not None:
            return StoppedBy(StopCause.DECLINED, reason=self.declined)
        if state.stop_reason is not None:
            return StoppedBy(StopCause.STOP, reason=state.stop_reason)
        return None

    async def finish(self) -> RunSummary:
        """Write the reports (local and at the destination) and return the summary."""
        self.state.spool.close()
        summary = self.summary()
        await self._reports().write(summary, self.canary_ids)
        return summary


async def run_manifest(
    options: RunOptions, runner: ChunkRunner | None = None, approve: Approver | None = None
) -> RunSummary:
    """Open, execute and finish a run without any orchestrator (the library entry point)."""
    async with Run(options) as run:
        await run.execute(runner, approve=approve)
        return await run.finish()
