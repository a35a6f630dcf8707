"""Chunks: consecutive pending rows run as one unit of orchestration, scheduled over per-model lanes.

``Chunks.launch`` starts a chunk through the ``ChunkRunner`` (the flow makes each chunk a Prefect task
run; by default the chunk runs directly) and returns as soon as every job of the chunk is *in* the run's
window, so the next chunk starts while this one's calls are still open: a chunk boundary never idles the
pacer. Inside a chunk each model is fed by its own coroutine into its own lane of the window, so a slow
model (Max, 2/min) never holds up the others. A chunk that fails in orchestration does not fail its
siblings: its rows that never ran are recorded ``failed`` (``OrchestrationError``); a stopped run starts
no chunk and records the rest ``not_attempted`` (``RunStopped``).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable

from qwenedit.catalog import normalize_model
from qwenedit.errors import JobCode
from qwenedit.jobs import Job
from qwenedit.pipeline import RunContext, failed_result, record, run_job
from qwenedit.report import JobResult
from qwenedit.run.planning import Pending
from qwenedit.window import Window

log = logging.getLogger("qwenedit.run")


class Chunk:
    """Consecutive pending rows, handed whole to the task that runs them (``await chunk.run()``).

    A plain class on purpose: Prefect walks a task's dataclass, list and dict parameters (looking for
    futures) and rebuilds a dataclass it changed; a chunk is a leaf to it, passed by reference, never
    copied or serialised (the flow's task uses ``cache_policy=NO_CACHE``; task parameters are not sent
    to the Prefect API, only the task run's name, ``rows A-B``).
    """

    def __init__(self, chunks: Chunks, index: int, items: list[Pending]) -> None:
        self.index = index
        self.items = items
        self.first_row = items[0].job.row
        self.last_row = items[-1].job.row
        self.entered = asyncio.Event()  # every job is in the window (or the chunk ended)
        self._chunks = chunks

    @property
    def name(self) -> str:
        return f"rows {self.first_row}-{self.last_row}"

    def __repr__(self) -> str:
        return f"Chunk({self.name}, {len(self.items)} jobs)"

    async def run(self) -> dict[str, int]:
        """Run the chunk's jobs through the run's window; returns its outcome counts by status."""
        return await self._chunks.run_chunk(self)


ChunkRunner = Callable[[Chunk], Awaitable[object]]


def run_directly(chunk: Chunk) -> Awaitable[object]:
    """The default ``ChunkRunner``: the chunk runs in the caller's task, no orchestrator."""
    return chunk.run()


def outcome_text(counts: dict[str, int]) -> str:
    return ", ".join(f"{n} {status}" for status, n in sorted(counts.items()) if n) or "no jobs"


class Chunks:
    """The chunks of one run over its window: started, run over per-model lanes, counted."""

    def __init__(self, ctx: RunContext, window: Window, runner: ChunkRunner | None = None) -> None:
        self.ctx = ctx
        self.window = window
        self.runner: ChunkRunner = runner or run_directly
        self.started = 0
        self.done = 0

    @property
    def stopping(self) -> bool:
        return self.ctx.state.stop_reason is not None

    def stopped_result(self, job: Job) -> JobResult:
        return failed_result(
            job,
            JobCode.RUN_STOPPED,
            f"not started: run stopped ({self.ctx.state.stop_reason}); the same command resumes",
            status="not_attempted",
        )

    async def launch(self, items: list[Pending], running: set[asyncio.Task[None]]) -> None:
        """Start a chunk and return once all its jobs are in the window (or it ended)."""
        if self.stopping:  # a stopped run starts no chunk: no task run, no call, no store request
            for item in items:
                record(self.ctx, item.job, self.stopped_result(item.job))
            return
        chunk = Chunk(self, self.started, items)
        self.started += 1
        for item in items:
            self.ctx.state.unrecorded.add(item.job.row)
        task = asyncio.create_task(self._guarded(chunk))
        running.add(task)
        task.add_done_callback(running.discard)
        entered = asyncio.create_task(chunk.entered.wait())
        await asyncio.wait({task, entered}, return_when=asyncio.FIRST_COMPLETED)
        entered.cancel()

    async def _guarded(self, chunk: Chunk) -> None:
        """Run a chunk; if orchestration fails, its rows that never ran are still reported."""
        try:
            await self.runner(chunk)
        except Exception as err:
            log.error("chunk %s failed in orchestration: %s", chunk.name, type(err).__name__)
        finally:
            chunk.entered.set()
            for item in chunk.items:
                if item.job.row in self.ctx.state.unrecorded:  # else the job recorded itself
                    result = failed_result(
                        item.job, JobCode.ORCHESTRATION_ERROR, "its chunk failed before it ran"
                    )
                    record(self.ctx, item.job, result)
            self.done += 1

    async def run_chunk(self, chunk: Chunk) -> dict[str, int]:
        """Run the jobs of one chunk through the window; returns its outcome counts.

        The chunk counts as *entered* (the next chunk may start) once every model's jobs are in the
        window or wait only for their own model's full lane.
        """
        ctx, window = self.ctx, self.window
        counts: dict[str, int] = {}
        queues: dict[str, deque[Pending]] = {}
        for item in chunk.items:
            queues.setdefault(normalize_model(item.job.model), deque()).append(item)

        async def one(model: str, item: Pending) -> None:
            try:
                result = await run_job(ctx, item.job, item.fingerprint, item.stale_markers)
                counts[result.status] = counts.get(result.status, 0) + 1
            finally:
                window.release(model)

        jobs: list[asyncio.Task[None]] = []

        async def feed(model: str, queue: deque[Pending]) -> None:
            while queue:
                await window.acquire(model)
                item = queue.popleft()
                if self.stopping:
                    window.release(model)
                    result = record(ctx, item.job, self.stopped_result(item.job))
                    counts[result.status] = counts.get(result.status, 0) + 1
                    continue
                jobs.append(asyncio.create_task(one(model, item)))

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
