"""``--dedupe`` followers: a row asking for the same edit as an earlier row gets that row's stored outputs.

A follower runs outside the window and the pacer (it makes no call): it waits for its leader's outcome
(``dedupe.Leaders``), copies the leader's outputs *from the destination* (never a second download of the
API's URLs) to its own keys, and writes its own done record (cost 0, ``deduplicated_from``), so a rerun
skips it in bulk. The leader's charge record stays with the leader, which paid.

- A leader done before this run (listed done; e.g. a crash after its done record, before the copies)
  serves its followers from its stored outputs: nothing is paid twice.
- A leader that did not succeed leaves its followers ``not_attempted`` (``DuplicateNotRun``); the same
  command retries the group.
- A follower with a charge of its own at its fingerprint (paid in an earlier run without ``--dedupe``)
  runs as a normal job, which resumes that charge copy-only: a paid image is stored, never replaced.
"""

from __future__ import annotations

import logging

from qwenedit.dedupe import DUPLICATE_OF_FAILED, Leader, LeaderOutcome, Leaders, follower_done
from qwenedit.errors import JobCode, JobFailed
from qwenedit.pipeline import (
    RunContext,
    error_text,
    failed_result,
    new_result,
    output_key,
    record,
    run_job,
    supersede,
    utcnow_iso,
)
from qwenedit.report import JobResult
from qwenedit.run.planning import Pending
from qwenedit.storage import Destination

log = logging.getLogger("qwenedit.run")

MAX_OUTPUTS = 6  # n is at most 6


async def run_follower(ctx: RunContext, leaders: Leaders, item: Pending, leader: Leader) -> JobResult:
    """Store the leader's outputs under ``item``'s job and record it (never raises)."""
    job, fp = item.job, item.fingerprint
    result = new_result(job)
    price = ctx.services.prices.unit_price(job.region, job.model)
    result.unit_price, result.currency = str(price.amount), price.currency
    try:
        charges = await ctx.services.store(ctx.services.ledger.charges, job.job_id)
        own = [c for c in charges if c.fingerprint == fp]
        if own:
            return await run_job(ctx, job, fp, item.stale_markers)  # its own paid call: resumed, not copied
        outcome = await leaders.outcome(leader)
        if not outcome.ok:
            message = (
                f"not run: it asks for the same edit as row {leader.row} (job_id {leader.job_id}), "
                f"which ended {outcome.status or 'unfinished'}; the same command retries"
            )
            return record(ctx, job, failed_result(job, DUPLICATE_OF_FAILED, message, status="not_attempted"))
        if item.stale_markers:
            await ctx.services.store(ctx.services.ledger.remove, list(item.stale_markers))
        stale = bool(item.stale_markers) or any(c.fingerprint != fp for c in charges)
        dest = ctx.services.dest
        outputs = await ctx.services.store(_copy_outputs, dest, leader.job_id, job.job_id, outcome, stale)
        result.request_id, result.image_count = outcome.request_id, len(outputs)
        result.width, result.height, result.qa = outcome.width, outcome.height, outcome.qa
        result.outputs, result.deduplicated_from = outputs, leader.job_id
        done = follower_done(job, fp, leader, outcome, outputs, ctx.services.run_id, utcnow_iso())
        await ctx.services.store(ctx.services.ledger.write_done, done)
        result.status = "succeeded"
    except JobFailed as failure:
        result.status, result.error_code, result.error_message = "failed", failure.code, failure.message
    except Exception as exc:  # a bug must not take the run down
        log.exception("job %s: unexpected error copying a duplicate", job.job_id)
        result.status, result.error_code, result.error_message = "failed", type(exc).__name__, error_text(exc)
    return record(ctx, job, result)


def _copy_outputs(
    dest: Destination, leader_id: str, job_id: str, outcome: LeaderOutcome, stale: bool
) -> list[str]:
    """Copy the leader's stored outputs to the follower's keys (an earlier version's moved aside)."""
    if stale:
        supersede(dest, job_id, outcome.request_id)
    count = outcome.image_count or MAX_OUTPUTS  # 0: the done marker did not say; copy what is there
    stored: list[str] = []
    for k in range(1, count + 1):
        data = dest.get_bytes(output_key(leader_id, k))
        if data is None:
            if outcome.image_count or not stored:
                raise JobFailed(
                    JobCode.COPY_FAILED,
                    f"output {k} of job {leader_id}, which this row duplicates, is not at the destination",
                )
            break
        key = output_key(job_id, k)
        dest.put_bytes(key, data, "image/png", overwrite=True)
        stored.append(dest.uri(key))
    return stored
