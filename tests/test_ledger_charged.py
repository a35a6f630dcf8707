"""Ledger.charged_jobs: the run's one listing of the ledger that spares a first run's jobs their own
listing of charges (a job it does not name has no charge to resume)."""

from __future__ import annotations

from pathlib import Path

from qwenedit.ledger import Charge, Done, Ledger
from qwenedit.storage import LocalDestination


def _charge(job_id: str, request_id: str) -> Charge:
    return Charge(
        job_id=job_id,
        fingerprint="sha256:" + "ab" * 32,
        request_id=request_id,
        model="qwen-image-edit",
        region="intl",
        image_count=1,
        width=1024,
        height=1024,
        output_urls=("https://example.invalid/1.png",),
        expires_at="2026-12-07T00:00:00+00:00",
        unit_price="0.03",
        currency="USD",
        cost="0.03",
        charged_at="2026-12-06T00:00:00+00:00",
        run_id="run-1",
    )


def _done(job_id: str) -> Done:
    return Done(
        job_id=job_id,
        fingerprint="sha256:" + "ab" * 32,
        request_id=f"req-{job_id}",
        image_count=1,
        outputs=(f"{job_id}/1.png",),
        cost="0.03",
        currency="USD",
        finished_at="2026-12-06T00:00:00+00:00",
        run_id="run-1",
    )


def test_charged_jobs_names_every_job_with_a_charge_and_nothing_else(tmp_path: Path) -> None:
    dest = LocalDestination(tmp_path)
    ledger = Ledger(dest)
    ledger.write_charge(_charge("a", "req-1"))
    ledger.write_charge(_charge("B.2", "req-2"))
    ledger.write_charge(_charge("B.2", "req-3"))
    ledger.write_charge(_charge("done-job", "req-4"))
    ledger.write_done(_done("done-job"))
    ledger.write_done(_done("done-without-charge"))  # written by hand or a tool: not a charge
    dest.put_bytes("_ledger/_spend/2026-12/000000000001.json", b"{}", "application/json")
    dest.put_bytes("not-ledger/charges/x.json", b"{}", "application/json")

    assert ledger.charged_jobs(max_keys=100) == {"a", "B.2", "done-job"}


def test_charged_jobs_of_a_new_destination_is_empty(tmp_path: Path) -> None:
    assert Ledger(LocalDestination(tmp_path)).charged_jobs(max_keys=1) == set()


def test_charged_jobs_gives_up_past_its_key_budget(tmp_path: Path) -> None:
    ledger = Ledger(LocalDestination(tmp_path))
    for i in range(3):
        ledger.write_charge(_charge(f"job-{i}", f"req-{i}"))

    assert ledger.charged_jobs(max_keys=2) is None  # unknown: each job lists its own charges
    assert ledger.charged_jobs(max_keys=3) == {"job-0", "job-1", "job-2"}
