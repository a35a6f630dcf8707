"""Pure helpers of the distributed flows: shard splitting, quota math, consolidation, scheduler markers.

No Prefect server, no network: local files and a LocalDestination only.
"""

from __future__ import annotations

import csv
import io
import json
import random
from decimal import Decimal
from pathlib import Path
from uuid import uuid4

import pandas as pd
import pytest
from PIL import Image
from prefect.client.schemas.objects import FlowRun
from prefect.states import Completed, Crashed

from flows.sharded import _as_text_frame, consolidate, write_shards
from qwenedit.catalog import RateLimit, load_models, parse_money
from qwenedit.errors import ShardsFailed as ShardsFailedError
from qwenedit.inputs import InputResolver
from qwenedit.jobs import Job
from qwenedit.ledger import Charge, Done, Ledger
from qwenedit.options import RunOptions
from qwenedit.pacer import DEFAULT_MARGIN
from qwenedit.report import JobResult, ResultSpool, RunTotals, write_reports
from qwenedit.shards import (
    chunk_sizes,
    merge_summaries,
    missing_jobs,
    order_failed_rows,
    order_frame,
    plan_shards,
    recovered_results,
    safe_parallelism,
    shard_index_of,
    shard_manifest_key,
    shard_row,
    shard_run_id,
    shard_share,
    split_budget,
    window_bound,
)
from qwenedit.storage import LocalDestination
from qwenedit.summary import RunSummary
from qwenedit.testing.rates import max_in_window

# --- splitting -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("n", "k"), [(60, 2), (7, 3), (5, 8), (1, 1), (1000, 7)])
def test_chunks_are_balanced_contiguous_and_never_empty(n: int, k: int) -> None:
    sizes = chunk_sizes(n, k)
    assert sum(sizes) == n
    assert len(sizes) == min(n, k)
    assert max(sizes) - min(sizes) <= 1 and min(sizes) >= 1
    owners = [shard_index_of(i, sizes) for i in range(n)]
    assert owners == sorted(owners)  # contiguous: manifest order is kept across shards
    assert [owners.count(i) for i in range(len(sizes))] == sizes


def test_an_empty_manifest_has_no_shards_and_zero_shards_is_refused() -> None:
    assert chunk_sizes(0, 3) == []
    with pytest.raises(ValueError):
        chunk_sizes(5, 0)
    with pytest.raises(IndexError):
        shard_index_of(5, [2, 3])


def test_shard_rows_make_relative_references_absolute(tmp_path: Path) -> None:
    local = InputResolver(manifest_dir=str(tmp_path))
    job = Job(
        row=4, job_id="a1", images=("img/x.png", "https://h.example/y.png"), prompt="p", extra={"sku": "7"}
    )
    row = shard_row(job, lambda ref: local.locate(ref).location)
    assert row["images"] == [str(tmp_path / "img" / "x.png"), "https://h.example/y.png"]
    assert row["sku"] == "7" and row["job_id"] == "a1" and row["region"] == "singapore"

    remote = InputResolver(manifest_dir="https://cdn.example/drops/2026-01-05/")
    row = shard_row(
        Job(row=1, job_id="b", images=("img/x.png",), prompt="p"), lambda r: remote.locate(r).location
    )
    assert row["images"] == ["https://cdn.example/drops/2026-01-05/img/x.png"]


def test_shard_names_are_derived_from_the_parent_run() -> None:
    assert shard_run_id("20260105T020000Z-abc123", 3) == "20260105T020000Z-abc123-s03"
    assert shard_manifest_key("R", 0) == "_runs/R/shards/shard-00.jsonl"


# --- quota -----------------------------------------------------------------------------------------


PLUS, MAX = "qwen-image-edit-plus", "qwen-image-edit-max"
PER_SECOND = {PLUS: RateLimit(2, 1)}
BOTH = {PLUS: RateLimit(2, 1), MAX: RateLimit(2, 60)}


def test_two_shards_of_one_account_each_get_half_the_rate_and_two_accounts_each_the_full_rate() -> None:
    one = plan_shards([30, 30], ["KEY_A"], PER_SECOND, shared_headroom=1.0)
    assert [(p.account, p.rates, p.parallel) for p in one] == [
        ("KEY_A", {PLUS: RateLimit(1, 1)}, 2),
        ("KEY_A", {PLUS: RateLimit(1, 1)}, 2),
    ]
    two = plan_shards([30, 30], ["KEY_A", "KEY_B"], PER_SECOND)
    assert [(p.account, p.share, p.parallel) for p in two] == [("KEY_A", 1.0, 1), ("KEY_B", 1.0, 1)]
    four = plan_shards([10, 10, 10, 10], ["KEY_A", "KEY_B"], PER_SECOND, shared_headroom=1.0)
    assert [(p.account, p.share) for p in four] == [
        ("KEY_A", 0.5),
        ("KEY_B", 0.5),
        ("KEY_A", 0.5),
        ("KEY_B", 0.5),
    ]


def test_shards_sharing_an_account_keep_a_headroom_and_a_shard_alone_does_not() -> None:
    shared = plan_shards([30, 30], ["KEY_A"], PER_SECOND)
    assert [p.rates[PLUS].rate for p in shared] == [pytest.approx(0.9), pytest.approx(0.9)]
    assert [p.rates for p in plan_shards([30], ["KEY_A"], PER_SECOND)] == [PER_SECOND]
    with pytest.raises(ValueError):
        plan_shards([1, 1], ["KEY_A"], PER_SECOND, shared_headroom=1.5)


def test_each_shard_paces_every_model_at_its_share_of_that_models_own_limit() -> None:
    plans = plan_shards([10, 10], ["KEY_A"], BOTH)
    assert [p.share for p in plans] == [pytest.approx(0.45)] * 2
    for plan in plans:
        assert plan.rates[PLUS].period_s == 1 and plan.rates[PLUS].count == pytest.approx(0.9)
        assert plan.rates[MAX].period_s == 60 and plan.rates[MAX].count == pytest.approx(0.9)  # not 0.9/s


def test_the_shards_of_one_account_run_only_as_many_at_once_as_every_model_allows() -> None:
    # 5/s alone would let 5 shards run at once, 2/min only 2: the pair must be safe for both.
    fast = {PLUS: RateLimit(5, 1)}
    assert shard_share(fast.values(), 5) == (5, pytest.approx(0.9 / 5))
    assert shard_share([*fast.values(), RateLimit(2, 60)], 5) == (2, pytest.approx(0.45))
    assert shard_share([RateLimit(5, 1)], 4) == (1, 1.0)  # 4 at 5/4 each could put 6 in a second
    with pytest.raises(ValueError, match="no rate limits"):
        shard_share([], 2)


def test_a_higher_limit_lets_more_shards_of_one_account_run_at_once() -> None:
    plans = plan_shards([5, 5, 5, 5, 5], ["KEY_A"], {PLUS: RateLimit(5, 1)}, shared_headroom=1.0)
    assert {(p.parallel, p.rates[PLUS]) for p in plans} == {(5, RateLimit(1, 1))}


def test_more_shards_than_the_window_allows_run_at_most_two_at_a_time_on_one_account() -> None:
    # Three shards at 2/3 req/s each could all land in the same second: 3 > 2.
    assert window_bound(2.0, 3) == 3
    plans = plan_shards([10, 10, 10], ["KEY_A"], PER_SECOND, shared_headroom=1.0)
    assert {(p.parallel, p.rates[PLUS]) for p in plans} == {(2, RateLimit(1, 1))}
    assert safe_parallelism(1.0, 4) == 1
    assert safe_parallelism(5.0, 4) == 1  # 2 × ⌈2.45⌉ = 6 > 5: only one at a time, at 5 req/s
    assert safe_parallelism(5.0, 5) == 5


def test_accounts_must_be_distinct_and_present() -> None:
    with pytest.raises(ValueError, match="twice"):
        plan_shards([1, 1], ["KEY_A", "KEY_A"], PER_SECOND)
    with pytest.raises(ValueError):
        plan_shards([1], [], PER_SECOND)


def _pacer_times(rate: float, phase: float, count: int, jitter: float, rng: random.Random) -> list[float]:
    interval = 1.0 / (rate * DEFAULT_MARGIN)
    return [phase + k * interval + rng.uniform(0, jitter) for k in range(count)]


def test_the_safe_parallel_shards_never_exceed_the_window_whatever_their_phases() -> None:
    rng = random.Random(7)
    for _ in range(500):
        rps = rng.choice([1.0, 2.0, 4.0])
        m = safe_parallelism(rps, rng.randint(1, 6))
        # Arrival jitter below the margin's slack (~20 ms at these rates) must not break the bound.
        times = [t for _ in range(m) for t in _pacer_times(rps / m, rng.uniform(0, 3), 40, 0.009, rng)]
        assert max_in_window(times) <= window_bound(rps, 1)


def test_naive_rate_over_k_can_put_three_in_a_second() -> None:
    rng = random.Random(1)
    worst = max(
        max_in_window([t for _ in range(3) for t in _pacer_times(2.0 / 3, rng.uniform(0, 2), 30, 0.0, rng)])
        for _ in range(200)
    )
    assert worst == 3


def test_budget_is_split_in_proportion_and_never_sums_above_the_whole() -> None:
    parts = split_budget(Decimal("10"), [Decimal("1"), Decimal("2"), Decimal("0")])
    assert parts == [Decimal("3.333333"), Decimal("6.666666"), Decimal("0")]
    assert sum(p for p in parts if p is not None) <= Decimal("10")
    assert split_budget(Decimal("1"), [Decimal(0), Decimal(0)]) == [Decimal("0.5"), Decimal("0.5")]
    assert split_budget(None, [Decimal(1)]) == [None]
    plans = plan_shards([3, 1], ["K"], PER_SECOND, budget=Decimal("4"))
    assert [p.budget for p in plans] == [Decimal("3"), Decimal("1")]


# --- consolidation ---------------------------------------------------------------------------------


def _summary(succeeded: int, cost: str, region: str = "singapore") -> dict[str, object]:
    return {
        "jobs": succeeded,
        "by_status": {"succeeded": succeeded, "failed": 0, "skipped": 0, "not_attempted": 0},
        "images_requested": succeeded,
        "images_stored": succeeded,
        "possibly_billed_jobs": 0,
        "billed_not_stored_images": 0,
        "cost_by_region_model": [
            {"region": region, "model": "qwen-image-edit-plus", "currency": "USD", "cost": cost}
        ],
        "total_cost": {"USD": cost},
        "requests_sent": succeeded,
        "throttled_429": 0,
        "stopped_by": None,
    }


def test_merged_totals_are_the_exact_sums_of_the_shards() -> None:
    parts = [_summary(1, "0.1"), _summary(2, "0.2"), _summary(3, "0.3", "beijing")]
    merged = merge_summaries([RunSummary.from_json(p) for p in parts]).to_json()
    assert merged["jobs"] == 6 and merged["by_status"]["succeeded"] == 6
    assert merged["total_cost"] == {"USD": "0.6"}  # exact: 0.1 + 0.2 + 0.3, never 0.6000000000000001
    by_region = {c["region"]: c["cost"] for c in merged["cost_by_region_model"]}
    assert by_region == {"singapore": "0.3", "beijing": "0.3"}
    assert merged["requests_sent"] == 6 and merged["stopped_by"] == []


def test_rows_are_put_back_in_manifest_order() -> None:
    frame = pd.DataFrame({"job_id": ["c", "a", "zz", "b"], "status": ["s1", "s2", "s3", "s4"]})
    ordered = order_frame(frame, ["a", "b", "c"])
    assert list(ordered["job_id"]) == ["a", "b", "c", "zz"]
    assert missing_jobs(frame, ["a", "b", "d"]) == ["d"]
    rows = order_failed_rows([{"job_id": "c"}, {"job_id": "a"}], ["a", "b", "c"])
    assert [r["job_id"] for r in rows] == ["a", "c"]


def _charge(job_id: str, run_id: str, images: int = 1) -> Charge:
    cost = str(Decimal("0.03") * images)
    return Charge(
        job_id=job_id, fingerprint="sha256:" + "0" * 64, request_id=f"req-{job_id}", model="qwen-image-edit-plus",
        region="singapore", image_count=images, width=512, height=512, output_urls=("https://x/1.png",),
        expires_at="2099-01-01T00:00:00+00:00", unit_price="0.03", currency="USD", cost=cost,
        charged_at="2026-01-05T02:00:00+00:00", run_id=run_id,
    )  # fmt: skip


def _done(job_id: str, run_id: str) -> Done:
    return Done(
        job_id=job_id, fingerprint="sha256:" + "0" * 64, request_id=f"req-{job_id}", image_count=1, outputs=(f"s3://b/{job_id}/1.png",),
        cost="0.03", currency="USD", finished_at="2026-01-05T02:00:01+00:00", run_id=run_id,
    )  # fmt: skip


def test_a_crashed_shard_is_reported_from_the_ledger() -> None:
    jobs = [
        Job(row=i, job_id=f"j{i}", images=("/x.png",), prompt="p", n=2 if i == 2 else 1) for i in (1, 2, 3, 4)
    ]
    done = {"j1": _done("j1", "R-s01"), "j4": _done("j4", "an-earlier-run")}
    charges = {"j2": [_charge("j2", "R-s01", images=2)]}
    results = recovered_results(
        jobs, "R-s01", done.get, lambda j: charges.get(j, []), "shard run ended CRASHED"
    )
    by_id = {r.job_id: r for r in results}
    assert (
        by_id["j1"].status == "succeeded" and by_id["j1"].cost == "0.03" and by_id["j1"].manifest_row is None
    )
    assert (
        by_id["j2"].status == "failed" and by_id["j2"].billed_not_stored == 2 and by_id["j2"].cost == "0.06"
    )
    assert by_id["j3"].status == "not_attempted" and by_id["j3"].cost == "0"
    assert by_id["j4"].status == "not_attempted"  # done by another run: not this run's to claim
    assert all(r.manifest_row is not None for r in results if r.status != "succeeded")
    totals = RunTotals()
    for r in results:
        totals.add(r)
    assert totals.to_dict()["total_cost"] == {"USD": "0.09"}
    assert totals.billed_not_stored == 2


def _result(job_id: str, extra: dict[str, str]) -> JobResult:
    return JobResult(
        row=1, job_id=job_id, status="succeeded", model="m", region="r", images_requested=1, extra=extra
    )


def _write_manifest(folder: Path, count: int) -> Path:
    (folder / "img").mkdir(parents=True)
    Image.new("RGB", (512, 512), (9, 9, 9)).save(folder / "img" / "a.png")
    path = folder / "jobs.csv"
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["job_id", "image_1", "prompt", "sku"])
        for i in range(count):
            writer.writerow([f"job-{i:03d}", "img/a.png", f"edit {i}", f"=S{i}"])
    return path


def _shard_report(dest: LocalDestination, run_id: str, jobs: list[Job], tmp: Path) -> None:
    spool = ResultSpool(tmp / run_id / "results.jsonl")
    totals = RunTotals()
    for job in reversed(jobs):  # shards finish in any order
        result = JobResult(
            row=job.row, job_id=job.job_id, status="succeeded", model=job.model, region=job.region,
            images_requested=1, image_count=1, cost="0.03", currency="USD", extra=dict(job.extra),
        )  # fmt: skip
        spool.add(result)
        totals.add(result)
    spool.close()
    summary = {**totals.to_dict(), "requests_sent": len(jobs), "throttled_429": 0, "stopped_by": None}
    for name, path in write_reports(spool, summary, tmp / run_id).items():
        dest.put_bytes(f"_runs/{run_id}/{name}", path.read_bytes())


def test_consolidated_report_merges_a_finished_shard_and_a_crashed_one_in_manifest_order(
    tmp_path: Path,
) -> None:
    from qwenedit.manifest import iter_jobs

    manifest = _write_manifest(tmp_path / "m", 5)
    dest = LocalDestination(tmp_path / "dest")
    sizes = chunk_sizes(5, 2)
    out = tmp_path / "shards"
    out.mkdir()
    options = RunOptions(manifest=str(manifest), dest=str(tmp_path / "dest"))
    job_ids, per_shard, _ = write_shards(options, sizes, prices=load_models(None), out_dir=out)
    for i in range(2):
        dest.put_bytes(shard_manifest_key("R", i), (out / f"shard-{i:02d}.jsonl").read_bytes())
    root = str(manifest.parent)
    shard0 = list(iter_jobs(dest.uri(shard_manifest_key("R", 0)), input_root=root))
    _shard_report(dest, "R-s00", shard0, tmp_path / "reports")
    ledger = Ledger(dest)
    ledger.write_done(_done("job-003", "R-s01"))
    plans = plan_shards(sizes, ["K"], PER_SECOND)
    outcomes = [
        FlowRun(flow_id=uuid4(), state=Completed()),
        FlowRun(flow_id=uuid4(), state=Crashed(message="worker killed")),
    ]
    consolidated, frame, failed = consolidate(dest, "R", plans, outcomes, job_ids, per_shard, None, root)
    summary = consolidated.to_json()

    assert list(frame["job_id"]) == job_ids == [f"job-{i:03d}" for i in range(5)]
    assert list(frame["status"]) == ["succeeded"] * 4 + ["not_attempted"]
    # Cells are exactly as the shards' own report writer formats them (escaped once, never twice).
    expected = [str(_as_text_frame([_result(f"job-{i:03d}", {"sku": f"=S{i}"})])["sku"][0]) for i in range(5)]
    assert list(frame["sku"]) == expected
    assert summary["by_status"] == {"succeeded": 4, "failed": 0, "skipped": 0, "not_attempted": 1}
    assert summary["total_cost"] == {"USD": "0.12"}
    assert summary["stopped_by"]["cause"] == "shard_failed" and summary["stopped_by"]["shards"] == [1]
    assert [s["report"] for s in summary["shards"]] == ["shard", "ledger"]
    assert [r["job_id"] for r in failed] == ["job-004"]
    assert failed[0]["images"] == [str(manifest.parent / "img" / "a.png")]  # rerunnable from anywhere
    text = frame.to_csv(index=False)
    assert pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False).shape == frame.shape


# --- the parent flow's logic, with run_deployment replaced by a fake shard runner --------------------


class FakeShards:
    """Stands in for ``arun_deployment``: 'runs' a shard by writing its report the way a shard would."""

    def __init__(self, crash: set[int]) -> None:
        self.crash = crash
        self.calls: list[dict[str, object]] = []

    async def __call__(self, name: str, *, parameters: dict[str, object], **kwargs: object) -> FlowRun:
        from qwenedit.manifest import iter_jobs

        options = parameters["options"]
        assert isinstance(options, dict)
        self.calls.append({"name": name, **options, **kwargs})
        index = int(str(options["run_id"]).rsplit("-s", 1)[1])
        dest = LocalDestination(str(options["dest"]))
        jobs = list(iter_jobs(str(options["manifest"]), input_root=str(options["input_root"])))
        run_id = str(options["run_id"])
        if index in self.crash:
            Ledger(dest).write_done(_done(jobs[0].job_id, run_id))  # one job got done before the crash
            return FlowRun(flow_id=uuid4(), state=Crashed(message="worker killed"))
        _shard_report(dest, run_id, jobs, Path(str(options["report_dir"])))
        return FlowRun(flow_id=uuid4(), state=Completed())


@pytest.fixture
def no_artifacts(monkeypatch: pytest.MonkeyPatch) -> None:
    async def skip(*args: object) -> None:
        return None

    monkeypatch.setattr("flows.sharded._publish_artifacts", skip)


async def test_the_parent_gives_each_shard_its_share_and_reports_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_artifacts: None
) -> None:
    from flows.sharded import edit_manifest_sharded

    fake = FakeShards(crash=set())
    monkeypatch.setattr("flows.sharded.arun_deployment", fake)
    manifest = _write_manifest(tmp_path / "m", 7)
    options = RunOptions(
        manifest=str(manifest), dest=str(tmp_path / "dest"), budget="0.21", report_dir=str(tmp_path / "reports"),
        run_id="R",
    )  # fmt: skip
    summary = await edit_manifest_sharded.fn(options, shards=3, accounts=["KEY_A", "KEY_B"])
    calls = sorted(fake.calls, key=lambda c: str(c["run_id"]))
    assert [(c["run_id"], c["api_key_env"], c["rate_share"]) for c in calls] == [
        ("R-s00", "KEY_A", pytest.approx(0.45)),  # two shards share KEY_A: half its rate each, less headroom
        ("R-s01", "KEY_B", 1.0),  # KEY_B's only shard: the full rate
        ("R-s02", "KEY_A", pytest.approx(0.45)),
    ]
    assert summary["shards"][0]["rates"] == {PLUS: "0.9/s"}  # the manifest's model, limited to 2/s
    # 3/7, 2/7, 2/7 of the budget: each shard's share of the worst-case cost
    assert [parse_money(str(c["budget"])) for c in calls] == [
        (Decimal("0.09"), "USD"),
        (Decimal("0.06"), "USD"),
        (Decimal("0.06"), "USD"),
    ]
    assert {c["input_root"] for c in calls} == {str(manifest.parent)}
    assert all(c["idempotency_key"] == f"qwenedit-shard:{c['run_id']}" for c in calls)
    assert summary["by_status"]["succeeded"] == 7 and summary["total_cost"] == {"USD": "0.21"}
    assert summary["stopped_by"] is None
    for where in (tmp_path / "reports" / "R", tmp_path / "dest" / "_runs" / "R"):
        frame = pd.read_csv(where / "results.csv", dtype=str, keep_default_na=False)
        assert list(frame["job_id"]) == [f"job-{i:03d}" for i in range(7)]
        assert json.loads((where / "summary.json").read_text())["jobs"] == 7


async def test_a_crashed_shard_fails_the_parent_after_the_report_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_artifacts: None
) -> None:
    from flows.sharded import ShardsFailed, edit_manifest_sharded

    monkeypatch.setattr("flows.sharded.arun_deployment", FakeShards(crash={1}))
    manifest = _write_manifest(tmp_path / "m", 6)
    with pytest.raises(ShardsFailed, match="R-s01"):
        options = RunOptions(
            manifest=str(manifest), dest=str(tmp_path / "dest"), report_dir=str(tmp_path / "r"), run_id="R"
        )
        await edit_manifest_sharded.fn(options, shards=2)
    summary = json.loads((tmp_path / "dest" / "_runs" / "R" / "summary.json").read_text())
    assert summary["by_status"] == {"succeeded": 4, "failed": 0, "skipped": 0, "not_attempted": 2}
    assert summary["stopped_by"]["cause"] == "shard_failed"
    failed = (tmp_path / "r" / "R" / "failed.jsonl").read_text().splitlines()
    assert [json.loads(line)["job_id"] for line in failed] == ["job-004", "job-005"]


async def test_a_model_priced_only_by_the_price_file_runs_sharded_and_is_recovered_at_its_price(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_artifacts: None
) -> None:
    # The bug: the sharded parent read the manifest without the run's prices, so a model known only
    # through --prices passed validation and then failed inside the run.
    from flows.sharded import edit_manifest_sharded

    prices = tmp_path / "prices.csv"
    prices.write_text(
        "region,model,unit_price,currency,rate_limit\nsingapore,qwen-image-edit-plus-2099-01-01,0.05,USD,2/s\n"
    )
    manifest = _write_manifest(tmp_path / "m", 4)
    text = manifest.read_text().replace("sku\n", "sku,model\n")
    text = "\n".join(
        line + ",qwen-image-edit-plus-2099-01-01" if i else line for i, line in enumerate(text.splitlines())
    )
    manifest.write_text(text + "\n")
    monkeypatch.setattr("flows.sharded.arun_deployment", FakeShards(crash={1}))
    options = RunOptions(
        manifest=str(manifest),
        dest=str(tmp_path / "dest"),
        prices=str(prices),
        report_dir=str(tmp_path / "r"),
        run_id="R",
    )
    with pytest.raises(ShardsFailedError, match="R-s01"):
        await edit_manifest_sharded.fn(options, shards=2)
    summary = json.loads((tmp_path / "dest" / "_runs" / "R" / "summary.json").read_text())
    # shard 1 crashed: its rows were rebuilt from the ledger, reading its manifest with the run's prices
    assert summary["jobs"] == 4 and summary["shards"][1]["report"] == "ledger"
