"""Planning a run: each manifest row classified against the done listing, read in a background thread.

``classify`` reads the manifest lazily, identifies each row's images (a prefix listing per S3 folder,
content hashes for local files, remembered per run) and fingerprints the row, then says what the row is:

- ``Skip``: its (job id, fingerprint) is in the done listing — recorded ``skipped`` at once, no call,
  no per-row store request;
- ``Fail``: an image reference cannot be used — recorded ``failed`` (``BadInput``) with a located message;
- ``Pending``: to be run, with its fingerprint and the done markers of earlier versions of the row.

``planned_batches`` runs ``classify`` in a thread and yields its output in batches to the event loop
(bounded: the thread waits while the loop is behind). ``plan_canary`` reads the pending rows once to
choose a canary and project the spend of the rest.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from decimal import Decimal

from qwenedit.canary import CanaryPlan
from qwenedit.canary import choose as choose_canary
from qwenedit.catalog import ModelTable, cost
from qwenedit.errors import InputError, JobCode
from qwenedit.inputs import InputResolver
from qwenedit.jobs import Job, fingerprint
from qwenedit.ledger import DoneIndex
from qwenedit.manifest import ManifestSource, iter_jobs
from qwenedit.options import RunOptions
from qwenedit.pipeline import RunServices, failed_result, skipped_result
from qwenedit.report import JobResult
from qwenedit.run.wiring import manifest_reading

PLAN_BATCH = 512  # rows the planning thread hands over at a time
IDENTITY_CACHE = 100_000  # image references whose identity the planning pass remembers


@dataclass(frozen=True)
class Pending:
    """A row to run: the job, its fingerprint, and done markers of earlier versions of the row."""

    job: Job
    fingerprint: str
    stale_markers: tuple[str, ...]


@dataclass(frozen=True)
class Skip:
    """A row done at its fingerprint: its ``skipped`` result, recorded without a call."""

    job: Job
    result: JobResult
    fingerprint: str = ""


@dataclass(frozen=True)
class Fail:
    """A row whose input cannot be used: its ``failed`` result, recorded without a call."""

    job: Job
    result: JobResult


Planned = Skip | Fail | Pending


@dataclass(frozen=True)
class Planner:
    """What planning reads: the options (manifest and how to read it), prices, inputs, destination."""

    options: RunOptions
    prices: ModelTable
    resolver: InputResolver
    services: RunServices
    source: ManifestSource | None = None  # the run's own copy of the manifest (else options.manifest)

    def classify(self, index: DoneIndex) -> Iterator[Planned]:
        """Each manifest row, in order: done at its fingerprint (Skip), bad input (Fail) or Pending."""
        manifest = self.source or self.options.manifest
        jobs = iter_jobs(manifest, **manifest_reading(self.options, self.prices))
        known: dict[str, str] = {}  # the same image on many rows is identified once per run (bounded)
        for job in jobs:
            try:
                identities = [known.get(ref) or self._identity(known, ref) for ref in job.images]
            except InputError as err:
                located = err.located(job.row, job.job_id, _image_column(job, err))
                yield Fail(job, failed_result(job, JobCode.BAD_INPUT, str(located)[:300]))
                continue
            fp = fingerprint(job, identities)
            marker = index.find(job.job_id, fp)
            if marker is not None:
                yield Skip(job, skipped_result(self.services, job, marker), fp)
            else:
                yield Pending(job, fp, tuple(m.key for m in index.markers(job.job_id)))

    def _identity(self, known: dict[str, str], ref: str) -> str:
        identity = self.resolver.identity(ref)
        if len(known) >= IDENTITY_CACHE:
            known.clear()
        known[ref] = identity
        return identity

    async def batches(self, index: DoneIndex) -> AsyncIterator[list[Planned]]:
        """``classify``'s output in batches, from a planning thread that reads and fingerprints rows."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[list[Planned] | BaseException | None] = asyncio.Queue(maxsize=8)
        stop = threading.Event()

        def put(item: list[Planned] | BaseException | None) -> None:
            asyncio.run_coroutine_threadsafe(queue.put(item), loop).result()

        def produce() -> None:
            try:
                batch: list[Planned] = []
                for item in self.classify(index):
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

    def plan_canary(self, index: DoneIndex, size: int) -> tuple[CanaryPlan, list[str]]:
        """Read the manifest once: the canary rows spread over (model, region), the rest's worst case,
        and the canary's job ids in row order (report.html tags them)."""
        groups: dict[tuple[str, str], list[int]] = {}
        worst: dict[int, tuple[str, Decimal]] = {}
        job_ids: dict[int, str] = {}
        seen: set[str] = set()  # --dedupe: a repeated edit is neither a canary row nor a cost of the rest
        for item in self.classify(index):
            if self.options.dedupe and isinstance(item, Skip | Pending):
                fp = item.fingerprint
                if fp in seen:
                    continue
                seen.add(fp)
            if isinstance(item, Pending):
                job = item.job
                groups.setdefault((job.model, job.region), []).append(job.row)
                job_ids[job.row] = job.job_id
                price = self.prices.unit_price(job.region, job.model)
                worst[job.row] = (price.currency, cost(job.n, price))
        plan = CanaryPlan(rows=choose_canary(groups, size))
        for row, (currency, amount) in worst.items():
            if row not in plan.rows:
                plan.remaining_jobs += 1
                plan.projected[currency] = plan.projected.get(currency, Decimal(0)) + amount
        return plan, [job_ids[row] for row in sorted(plan.rows)]


def _image_column(job: Job, err: InputError) -> str:
    ref = getattr(err, "ref", None)
    for i, image in enumerate(job.images, start=1):
        if image == ref:
            return f"image_{i}"
    return "image_1"
