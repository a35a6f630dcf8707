"""Duplicate edits: rows that would send the API exactly the same request.

Two rows ask for the same edit when their fingerprints match (``jobs.fingerprint``): the same input
identities (local file hash, S3 ETag, URL), the prompt after the template, the negative prompt, model,
region, n, size, seed, prompt_extend, watermark — every request parameter. Nothing else (job id,
pass-through columns) counts.

- ``find_duplicates`` (``qwenedit validate``): the groups, each led by its first row. Two passes: rows
  are first bucketed by everything but their inputs (cheap), and only rows sharing a bucket have their
  inputs identified, so validating a manifest without duplicates reads no image.
- ``Leaders`` (``qwenedit run --dedupe``): the first row of each fingerprint is the group's leader and is
  the only one called; every later row (a follower) waits for its leader's outcome and then gets the
  leader's *stored* outputs copied under its own job (``copy_from_leader``) with its own done record,
  cost 0 and ``deduplicated_from``. A leader done before this run (listed done) serves its followers at
  once. A follower that has a charge of its own at its fingerprint (paid in an earlier run, not stored)
  resumes that charge instead: paid images are stored, never replaced by a copy.

Without ``--dedupe`` nothing here runs: every row is its own call (several random draws of one edit).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal

from qwenedit.errors import InputError
from qwenedit.jobs import Job, fingerprint
from qwenedit.ledger import Done

DUPLICATE_OF_FAILED = "DuplicateNotRun"  # a follower whose leader did not succeed (JobResult.error_code)


@dataclass(frozen=True)
class DuplicateGroup:
    """Rows asking for one edit: the first row (the one ``--dedupe`` calls) and the rows repeating it."""

    row: int
    job_id: str
    duplicates: tuple[tuple[int, str], ...]  # (row, job_id) in manifest order

    def reason(self) -> str:
        rows = ", ".join(str(r) for r, _ in self.duplicates)
        ids = ", ".join(j for _, j in self.duplicates)
        word = "row" if len(self.duplicates) == 1 else "rows"
        verb = "asks" if len(self.duplicates) == 1 else "ask"
        return (
            f"{word} {rows} (job_id {ids}) {verb} for the same edit as row {self.row} "
            f"(job_id {self.job_id}): with --dedupe it is called once and its outputs copied"
        )

    def to_dict(self) -> dict[str, object]:
        return {
            "row": self.row,
            "job_id": self.job_id,
            "duplicates": [{"row": r, "job_id": j} for r, j in self.duplicates],
        }


def _shape(job: Job) -> bytes:
    """Everything a request carries except the input identities (a cheap first bucket)."""
    payload = [job.model, job.region, job.parameters(), job.prompt, len(job.images)]
    return hashlib.blake2b(json.dumps(payload, sort_keys=True).encode(), digest_size=16).digest()


def find_duplicates(
    jobs: Callable[[], Iterable[Job]], identity: Callable[[str], str]
) -> list[DuplicateGroup]:
    """The groups of rows asking for the same edit, in the order of their first rows.

    ``jobs`` is called twice (two passes over the manifest); ``identity`` is ``InputResolver.identity``.
    A row whose input cannot be identified is left out (``validate --check-images`` reports it)."""
    shapes = Counter(_shape(job) for job in jobs())
    first: dict[str, tuple[int, str]] = {}
    repeats: dict[str, list[tuple[int, str]]] = {}
    for job in jobs():
        if shapes[_shape(job)] < 2:
            continue
        try:
            fp = fingerprint(job, [identity(ref) for ref in job.images])
        except InputError:
            continue
        if fp in first:
            repeats.setdefault(fp, []).append((job.row, job.job_id))
        else:
            first[fp] = (job.row, job.job_id)
    return [DuplicateGroup(*first[fp], tuple(rows)) for fp, rows in repeats.items()]


@dataclass(frozen=True)
class LeaderOutcome:
    """What a follower needs of its leader: whether it has stored outputs, and which."""

    ok: bool
    request_id: str = ""
    image_count: int = 0
    width: int | None = None
    height: int | None = None
    qa: str = ""
    unit_price: str = ""
    currency: str = ""
    status: str = ""  # the leader's status when not ok (failed, not_attempted)


@dataclass
class Leader:
    row: int
    job_id: str
    outcome: LeaderOutcome | None = None  # known: done before this run, or finished in it
    waiters: asyncio.Event | None = None  # created when a follower waits for a running leader


@dataclass
class Leaders:
    """The leaders of one ``--dedupe`` run, by fingerprint (kept across the canary's two passes)."""

    _by_fp: dict[str, Leader] = field(default_factory=dict)
    _pending: dict[int, Leader] = field(default_factory=dict)  # leader rows still running, by row

    def note_done(self, job: Job, fp: str, request_id: str, image_count: int) -> None:
        """A row listed done at ``fp``: it leads its fingerprint if nothing earlier does (``image_count``
        0: the done marker does not say, the leader's stored outputs are counted when copied)."""
        if fp and fp not in self._by_fp:
            outcome = LeaderOutcome(ok=True, request_id=request_id, image_count=image_count)
            self._by_fp[fp] = Leader(job.row, job.job_id, outcome)

    def leader_of(self, job: Job, fp: str) -> Leader | None:
        """The leader ``job`` duplicates, or None: then ``job`` leads ``fp`` and is to be called."""
        leader = self._by_fp.get(fp)
        if leader is not None and leader.row != job.row:
            return leader
        if leader is None:
            leader = self._by_fp[fp] = Leader(job.row, job.job_id)
            self._pending[job.row] = leader
        return None

    def finished(self, job: Job, status: str, result: object) -> None:
        """A recorded result: if it is a running leader's, its followers may go on."""
        leader = self._pending.pop(job.row, None)
        if leader is None:
            return
        ok = status in ("succeeded", "skipped")
        leader.outcome = LeaderOutcome(
            ok=ok,
            request_id=getattr(result, "request_id", ""),
            image_count=getattr(result, "image_count", 0),
            width=getattr(result, "width", None),
            height=getattr(result, "height", None),
            qa=getattr(result, "qa", ""),
            unit_price=getattr(result, "unit_price", ""),
            currency=getattr(result, "currency", ""),
            status=status,
        )
        if leader.waiters is not None:
            leader.waiters.set()

    async def outcome(self, leader: Leader) -> LeaderOutcome:
        """The leader's outcome, waiting for it while the leader runs."""
        while leader.outcome is None:
            if leader.waiters is None:
                leader.waiters = asyncio.Event()
            await leader.waiters.wait()
        return leader.outcome


def saved_cost(unit_price: str, image_count: int) -> Decimal:
    """What a follower would have paid for its own call: the leader's images at the unit price."""
    return Decimal(unit_price or "0") * image_count


def follower_done(
    job: Job, fp: str, leader: Leader, outcome: LeaderOutcome, outputs: Sequence[str], run_id: str, now: str
) -> Done:
    """The follower's own done record: the leader's request, no cost, and where it was copied from."""
    extra: dict[str, object] = {"deduplicated_from": leader.job_id}
    if outcome.qa:
        extra["qa"] = outcome.qa
    return Done(
        job_id=job.job_id,
        fingerprint=fp,
        request_id=outcome.request_id,
        image_count=len(outputs),
        outputs=tuple(outputs),
        cost="0",
        currency=outcome.currency,
        finished_at=now,
        run_id=run_id,
        extra=extra,
    )
