"""Chaos test kit: a billing spy on the emulator, run records, and THE invariant check every chaos test ends with.

The invariant (ARCHITECTURE.md, invariants 2–5), checked against the emulator's billing ledger, the run ledger and
outputs at the destination, and every report the runs wrote:

- every image the emulator billed is stored at dest, or listed in a report as billed-but-not-stored,
  or its call's answer was lost and the job is marked ``possibly_billed`` (or the run was killed
  while the call was in flight: counted, since nothing can report it);
- no job whose call was answered and charged was called again (a done job is never called twice);
- the report totals equal the emulator's ledger for every answered call, to the exact decimal;
- nothing is stored that was not paid for (every output's ``request-id`` is a charged request).

The emulator's ledger says *what* was billed but not for *which job*. ``BillingSpy`` wraps the
emulator's model stage in the test process and records, for every call that reached the model, its
prompt (each chaos row has a unique prompt naming its job), when it started and ended, its fault, and
the request id it was billed under.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import re
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

import qwenedit.emulator.app as emulator_app
from qwenedit.catalog import builtin_models
from qwenedit.emulator import EmulatorServer
from qwenedit.ledger import parse_done_key
from qwenedit.testing.procs import wait_until
from qwenedit.testing.seaweed import SeaweedServer
from tests.fixtures.s3 import S3Bucket, new_bucket
from tests.pipeline.conftest import API_KEY, images_dir, pipeline_env, write_manifest

__all__ = [
    "API_KEY",
    "PRICE",
    "BillingSpy",
    "Findings",
    "RunRecord",
    "chaos_rows",
    "check_invariants",
    "images_dir",
    "pipeline_env",
    "read_results",
    "write_manifest",
]

PRICE = builtin_models().unit_price("singapore", "qwen-image-edit-plus").amount  # 0.03 USD an image
SHAPES = ("square.png", "wide.png", "tall.png")


def chaos_rows(count: int, *, prefix: str = "c", **overrides: Any) -> list[dict[str, Any]]:
    """Manifest rows whose prompts name their job, so the spy can tell which job each call was for."""
    rows = []
    for i in range(count):
        job_id = f"{prefix}{i:03d}"
        rows.append(
            {"job_id": job_id, "image_1": SHAPES[i % 3], "prompt": f"make {job_id} blue", **overrides}
        )
    return rows


# --- the billing spy ------------------------------------------------------------------------------------


@dataclass
class ModelCall:
    """One request that reached the emulator's model stage (so it could be billed)."""

    prompt: str
    started: float  # time.monotonic() of this process
    ended: float | None = None
    fault: str = ""
    request_id: str | None = None  # set when the emulator billed it
    billed: int = 0
    settled: bool = False  # billed, or known never to be (dropped, or answered with an error)


_CURRENT: contextvars.ContextVar[ModelCall | None] = contextvars.ContextVar("chaos_call", default=None)
_SPIES: dict[int, BillingSpy] = {}
_ORIGINAL_RUN_MODEL = emulator_app._run_model


async def _spied_run_model(state: Any, request: Any, valid: Any) -> Any:
    spy = _SPIES.get(id(state))
    if spy is None:
        return await _ORIGINAL_RUN_MODEL(state, request, valid)
    call = spy.begin(valid.prompt)
    _CURRENT.set(call)  # same task as the handler: its books.bill() call below sees it
    try:
        outcome = await _ORIGINAL_RUN_MODEL(state, request, valid)
        call.fault = outcome.fault
        # The handler answers these faults with an error and bills nothing; any other outcome is billed.
        call.settled = outcome.fault in emulator_app._FAULT_ERRORS
        return outcome
    except BaseException:
        call.fault = call.fault or "drop"
        call.settled = True  # dropped before billing
        raise
    finally:
        call.ended = time.monotonic()


class BillingSpy:
    """Which job each billed request belonged to (see the module docstring)."""

    def __init__(self, emulator: EmulatorServer) -> None:
        self.emulator = emulator
        self.calls: list[ModelCall] = []
        self._lock = threading.Lock()
        books = emulator.app.emulator.books
        original_bill = books.bill

        def bill(request_id: str, account: str, key: str, model: str, image_count: int) -> None:
            call = _CURRENT.get()
            if call is not None:
                call.request_id, call.billed = request_id, image_count
            original_bill(request_id, account, key, model, image_count)
            if call is not None:
                call.settled = True

        books.bill = bill  # type: ignore[method-assign]

    def begin(self, prompt: str) -> ModelCall:
        call = ModelCall(prompt=prompt, started=time.monotonic())
        with self._lock:
            self.calls.append(call)
        return call

    def in_flight(self) -> int:
        """Calls the emulator is not done with: still in the model, or answered but not yet billed."""
        with self._lock:
            return sum(1 for c in self.calls if not c.settled)

    def first_call(self) -> float | None:
        with self._lock:
            return min((c.started for c in self.calls), default=None)

    def settle(self, timeout: float = 15.0) -> None:
        """Wait until every call is billed or known never to be (hung calls end when their client hangs up)."""
        with contextlib.suppress(TimeoutError):
            wait_until(
                lambda: self.in_flight() == 0, what="emulator calls", timeout_s=timeout, interval_s=0.05
            )
        assert self.in_flight() == 0, f"{self.in_flight()} emulator call(s) still inside the model"

    def calls_for(self, prompt: str) -> list[ModelCall]:
        with self._lock:
            return sorted((c for c in self.calls if c.prompt == prompt), key=lambda c: c.started)


@pytest.fixture
def spy_on(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[EmulatorServer], BillingSpy]]:
    """``spy_on(emulator)`` attaches a BillingSpy to an emulator running in this process."""
    monkeypatch.setattr(emulator_app, "_run_model", _spied_run_model)
    attached: list[int] = []

    def attach(emulator: EmulatorServer) -> BillingSpy:
        spy = BillingSpy(emulator)
        _SPIES[id(emulator.app.emulator)] = spy
        attached.append(id(emulator.app.emulator))
        return spy

    yield attach
    for key in attached:
        _SPIES.pop(key, None)


# --- a private S3 server (tests that stop it must not take the session's server down) -----------------


@pytest.fixture(scope="session")
def private_seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedServer]:
    """A SeaweedFS server of the chaos suite's own, safe to stop and restart."""
    with SeaweedServer(tmp_path_factory.mktemp("chaos-seaweed")) as server:
        yield server


@pytest.fixture
def outage_bucket(private_seaweed: SeaweedServer, monkeypatch: pytest.MonkeyPatch, request: Any) -> S3Bucket:
    """A fresh bucket on the private server, its env in ``os.environ``, the API key set."""
    if not private_seaweed.running:
        private_seaweed.start()
    stem = re.sub(r"[^a-z0-9]+", "-", request.node.name[:20].lower()).strip("-")
    name = f"chaos-{stem}-{int(time.time() * 1000) % 100000}"
    bucket = new_bucket(private_seaweed, name)
    monkeypatch.setenv("DASHSCOPE_API_KEY", API_KEY)
    for key, value in bucket.env.items():
        monkeypatch.setenv(key, value)
    return bucket


# --- runs and their reports ----------------------------------------------------------------------------


@dataclass
class RunRecord:
    """One run of the pipeline: its time span (monotonic, this process) and its summary (None if killed)."""

    started: float
    ended: float
    summary: dict[str, Any] | None
    killed: bool = False
    whole_manifest: bool = True  # False for a rerun of failed.jsonl

    @property
    def run_id(self) -> str | None:
        return None if self.summary is None else str(self.summary["run_id"])


def read_results(summary: dict[str, Any]) -> pd.DataFrame:
    return pd.read_csv(Path(summary["report_dir"]) / "results.csv", dtype=str, keep_default_na=False)


def _truthy(value: object) -> bool:
    return str(value).strip().lower() in ("true", "1", "yes")


def _listing(bucket: S3Bucket, prefix: str) -> list[str]:
    pages = bucket.client.get_paginator("list_objects_v2").paginate(Bucket=bucket.bucket, Prefix=prefix)
    return [o["Key"] for page in pages for o in page.get("Contents", [])]


def _read_json(bucket: S3Bucket, key: str) -> dict[str, Any]:
    body = bucket.client.get_object(Bucket=bucket.bucket, Key=key)["Body"].read()
    data: dict[str, Any] = json.loads(body)
    return data


@dataclass
class Findings:
    """What the invariant check counted (printed, so a run with -s shows it)."""

    billed_requests: int = 0
    billed_images: int = 0
    charged_images: int = 0
    stored_images: int = 0
    billed_not_stored_images: int = 0  # listed in a report
    lost_possibly_billed: int = 0  # billed calls whose answer was lost; job marked possibly_billed
    lost_in_flight_at_kill: int = 0  # billed calls of a killed run with no charge record
    jobs_billed_twice: int = 0
    violations: list[str] = field(default_factory=list)

    def line(self) -> str:
        return (
            f"billed {self.billed_requests} req / {self.billed_images} img · charged {self.charged_images} · "
            f"stored {self.stored_images} · billed-not-stored {self.billed_not_stored_images} · "
            f"lost→possibly_billed {self.lost_possibly_billed} · lost in flight at kill "
            f"{self.lost_in_flight_at_kill} · jobs billed twice {self.jobs_billed_twice}"
        )


def check_invariants(
    *,
    spy: BillingSpy,
    bucket: S3Bucket,
    prefix: str,
    rows: list[dict[str, Any]],
    runs: list[RunRecord],
    price: Decimal = PRICE,
    recalled: frozenset[str] = frozenset(),
) -> Findings:
    """Check the chaos invariant (module docstring); raise AssertionError listing every violation."""
    spy.settle()
    found = Findings()
    bad = found.violations
    prompt_job = {r["prompt"]: r["job_id"] for r in rows}
    n_of = {r["job_id"]: int(r.get("n") or 1) for r in rows}
    ledger = spy.emulator.ledger()
    billed = {e["request_id"]: int(e["image_count"]) for e in ledger}
    found.billed_requests, found.billed_images = len(billed), sum(billed.values())
    call_of = {c.request_id: c for c in spy.calls if c.request_id}
    for rid in billed:
        if rid not in call_of:
            bad.append(f"billed request {rid} was not seen by the spy")

    # The destination: charge and done records, stored outputs.
    base = prefix.strip("/") + "/"
    keys = _listing(bucket, base)
    charges: dict[str, dict[str, Any]] = {}
    dones: dict[str, dict[str, Any]] = {}
    outputs: dict[str, dict[str, str]] = {}  # key (relative) -> metadata
    for full in keys:
        rel = full[len(base) :]
        parts = rel.split("/")
        if parts[0] == "_ledger" and len(parts) == 4 and parts[2] == "charges":
            charges[parts[3].removesuffix(".json")] = _read_json(bucket, full)
        elif parts[0] == "_ledger" and len(parts) == 3 and parts[1] == "_done":
            marker = parse_done_key(rel)
            assert marker is not None, f"unreadable done marker {rel}"
            assert marker.job_id not in dones, f"job {marker.job_id} has two done records"
            dones[marker.job_id] = _read_json(bucket, full)
        elif parts[0] not in ("_ledger", "_runs") and rel.endswith(".png"):
            outputs[rel] = bucket.client.head_object(Bucket=bucket.bucket, Key=full)["Metadata"]

    # The reports of the runs that finished.
    reports: list[tuple[RunRecord, pd.DataFrame]] = []
    all_jobs = set(prompt_job.values())
    for run in runs:
        if run.summary is None:
            continue
        table = read_results(run.summary)
        reports.append((run, table))
        ids = list(table["job_id"])
        if len(ids) != len(set(ids)) or not set(ids) <= all_jobs:
            bad.append(f"run {run.run_id}: the report has a job twice or a job not in the manifest")
        if run.whole_manifest and set(ids) != all_jobs:
            bad.append(f"run {run.run_id}: the report does not have one row per manifest row")
        for _, row in table[table["status"] == "failed"].iterrows():
            if not row["error_code"] or not row["error_message"]:
                bad.append(f"run {run.run_id}: failed job {row['job_id']} has no error code or message")
        # Report ↔ emulator: every cost in the report is exactly what the emulator billed that request.
        for _, row in table.iterrows():
            spent = Decimal(row["cost"] or "0")
            if spent and (row["request_id"] not in billed or spent != billed[row["request_id"]] * price):
                bad.append(f"run {run.run_id}: {row['job_id']} reports {spent} for {row['request_id']!r}")
        # Ledger → report: every charge this run made is reported as this run's cost.
        by_job = {row["job_id"]: row for _, row in table.iterrows()}
        for rid, ch in charges.items():
            if ch["run_id"] != run.run_id:
                continue
            reported = by_job.get(ch["job_id"])
            if (
                reported is None
                or reported["request_id"] != rid
                or Decimal(reported["cost"] or "0") != Decimal(ch["cost"])
            ):
                bad.append(f"run {run.run_id}: charge {rid} of {ch['job_id']} is not reported as its cost")
        row_total = sum((Decimal(c or "0") for c in table["cost"]), Decimal(0))
        summary_total = Decimal(run.summary["total_cost"].get("USD", "0"))
        if summary_total != row_total:
            bad.append(f"run {run.run_id}: summary total {summary_total} != rows {row_total}")

    # Every charge record is an emulator charge, priced exactly.
    charges_per_job: dict[str, int] = defaultdict(int)
    for rid, ch in charges.items():
        charges_per_job[ch["job_id"]] += 1
        if rid not in billed:
            bad.append(f"charge record {rid} ({ch['job_id']}) is not in the emulator's ledger")
            continue
        if int(ch["image_count"]) != billed[rid]:
            bad.append(f"charge {rid}: {ch['image_count']} images recorded, {billed[rid]} billed")
        if Decimal(ch["cost"]) != billed[rid] * price:
            bad.append(f"charge {rid}: cost {ch['cost']} != {billed[rid]} × {price}")
        call = call_of.get(rid)
        if call is not None and prompt_job.get(call.prompt) != ch["job_id"]:
            bad.append(f"charge {rid} recorded for {ch['job_id']} but the call was for {call.prompt!r}")
        found.charged_images += billed[rid]
    for job, count in charges_per_job.items():
        if count > 1 and job not in recalled:
            bad.append(f"job {job} has {count} charge records")

    # Every billed image: stored, or reported as billed-but-not-stored, or its answer was lost.
    report_rows = [(run, row) for run, table in reports for _, row in table.iterrows()]
    listed_rids = {row["request_id"] for _, row in report_rows if int(row["billed_not_stored"] or 0)}
    for rid, count in billed.items():
        call = call_of.get(rid)
        job = prompt_job.get(call.prompt, "?") if call else "?"
        if rid in charges:
            stored = [
                k for k in range(1, count + 1) if outputs.get(f"{job}/{k}.png", {}).get("request-id") == rid
            ]
            found.stored_images += len(stored)
            if len(stored) == count:
                continue
            listed = [
                int(row["billed_not_stored"] or 0) for _, row in report_rows if row["request_id"] == rid
            ]
            if any(n >= count - len(stored) for n in listed):
                found.billed_not_stored_images += count - len(stored)
            else:
                bad.append(
                    f"{job}: request {rid} billed {count}, stored {len(stored)}, "
                    f"and no report lists the rest as billed-but-not-stored"
                )
            continue
        # No charge record: the pipeline never got (or never recorded) this call's answer.
        known = [row for _, row in report_rows if row["request_id"] == rid]
        if known:  # an answer arrived (a report names the request) but no charge record was written
            if any(int(row["billed_not_stored"] or 0) >= count for row in known):
                found.billed_not_stored_images += count
            elif any(_truthy(row["possibly_billed"]) for row in known):  # e.g. a 200 that was not JSON
                found.lost_possibly_billed += 1
            else:
                bad.append(
                    f"{job}: request {rid} was billed {count} and is in a report, but has no charge record, "
                    "no stored output and is not listed as billed-but-not-stored"
                )
            continue
        started = call.started if call else 0.0
        during = next((r for r in runs if r.started <= started <= r.ended), None)
        if during is not None and during.killed:
            found.lost_in_flight_at_kill += 1
            continue
        rows_of_run = [row for r, row in report_rows if r is during and row["job_id"] == job]
        if rows_of_run and _truthy(rows_of_run[0]["possibly_billed"]):
            found.lost_possibly_billed += 1
        else:
            bad.append(
                f"{job}: request {rid} was billed, its answer lost, and the job is not possibly_billed"
            )

    # The spend a report may not know exactly is still covered by the worst case it states: with a
    # ``possibly_billed_images`` column (n per call whose answer was lost), that; without one, each
    # possibly-billed job × its n — which understates a job whose answer was lost twice.
    for run, table in reports:
        lost = [
            billed[c.request_id]
            for c in spy.calls
            if c.request_id
            and c.request_id not in charges
            and c.request_id not in listed_rids
            and run.started <= c.started <= run.ended
        ]
        if "possibly_billed_images" in table.columns:
            worst = sum(int(v or 0) for v in table["possibly_billed_images"])
        else:
            worst = sum(n_of[row["job_id"]] for _, row in table.iterrows() if _truthy(row["possibly_billed"]))
        if sum(lost) > worst:
            bad.append(
                f"run {run.run_id}: {sum(lost)} billed images were never reported, but the possibly-billed "
                f"jobs' worst case is only {worst} images"
            )

    # No job is called again once a call of it was answered and charged.
    for prompt, job in prompt_job.items():
        calls = spy.calls_for(prompt)
        paid = [c for c in calls if c.request_id in charges]
        if len({c.request_id for c in calls if c.request_id}) > 1:
            found.jobs_billed_twice += 1
        if paid and job not in recalled:
            first_paid = paid[0]
            later = [c for c in calls if c.started > (first_paid.ended or first_paid.started)]
            if later:
                bad.append(f"{job}: called {len(later)} more time(s) after its call was answered and charged")

    # Nothing stored that was not paid for; every done record's outputs are there.
    for key, meta in outputs.items():
        if meta.get("request-id") not in charges:
            bad.append(f"{key} is stored but its request id {meta.get('request-id')} was never charged")
    for job, done in dones.items():
        for k in range(1, int(done["image_count"]) + 1):
            if outputs.get(f"{job}/{k}.png", {}).get("request-id") != done["request_id"]:
                bad.append(
                    f"{job}: done record says {done['image_count']} outputs but {job}/{k}.png is missing"
                )

    print(f"\n[invariants] {found.line()}")
    assert not bad, "invariant violations:\n  " + "\n  ".join(bad)
    return found


async def timed_run(coro: Any) -> RunRecord:
    """Await a run (the flow) and record its time span."""
    started = time.monotonic()
    summary = await coro
    return RunRecord(started=started, ended=time.monotonic(), summary=summary)
