"""The typed run summary: summary.json round-trips through it unchanged, for every stop cause."""

from __future__ import annotations

from typing import Any

import pytest

from qwenedit.summary import RunSummary, StopCause

TOTALS: dict[str, Any] = {
    "jobs": 4,
    "by_status": {"succeeded": 2, "failed": 1, "skipped": 0, "not_attempted": 1},
    "images_requested": 4,
    "images_stored": 2,
    "possibly_billed_jobs": 0,
    "possibly_billed_images": 0,
    "possibly_billed_cost": {},
    "billed_not_stored_images": 0,
    "qa_flagged_jobs": 0,
    "qa_flagged_images": 0,
    "qa_retries": 0,
    "dedupe_saved_calls": 0,
    "dedupe_saved_cost": {},
    "cost_by_region_model": [{"region": "singapore", "model": "m", "currency": "USD", "cost": "0.06"}],
    "total_cost": {"USD": "0.06"},
}
STOPS: list[dict[str, Any]] = [
    {"cause": "breaker", "code": "InvalidApiKey", "message": "bad key"},
    {"cause": "budget", "limit": "5 USD"},
    {"cause": "declined", "reason": "the canary was not approved"},
    {"cause": "stop", "reason": "SIGINT"},
    {
        "cause": "spend_cap",
        "reason": "spend ledger could not be used: x",
        "message": "spend ledger could not be used: x",
    },
    {
        "cause": "spend_cap",
        "reason": "daily spend cap 0.75 USD reached",
        "cap": "daily",
        "limit": "0.75 USD",
        "used": "0.75 USD",
        "period": "2026-12-06",
        "ledger": "s3://b/l",
        "message": "daily spend cap 0.75 USD reached",
    },
    {"cause": "shard_failed", "shards": [1], "shard_stops": [{"cause": "stop", "reason": "SIGTERM"}]},
]


@pytest.mark.parametrize("stopped_by", [None, *STOPS], ids=lambda s: s["cause"] if s else "none")
def test_summary_json_reads_back_and_writes_out_unchanged(stopped_by: dict[str, Any] | None) -> None:
    document = {
        "run_id": "R",
        "manifest": "m.csv",
        "dest": "s3://b/out",
        "endpoint": "http://127.0.0.1:1",
        **TOTALS,
        "stopped_by": stopped_by,
        "budget": None,
        "wall_time_s": 1.5,
        "requests_sent": 3,
        "request_rate": 2.0,
        "rates": ["2"],
        "models": {
            "m": {"granted": 5, "limit": "2/s", "requests_sent": 3, "request_rate": 2.0, "throttled_429": 0}
        },
        "window": {"size": 4},
        "throttled_429": 0,
        "chunks": 1,
        "canary_jobs": 0,
        "report_dir": "runs/R",
    }
    summary = RunSummary.from_json(document)
    assert summary.to_json() == document
    assert summary.exit_code == (3 if stopped_by else 1)
    assert summary.models is not None and summary.models["m"].requests_sent == 3
    if stopped_by is not None:
        assert summary.stopped_by is not None and summary.stopped_by.cause is StopCause(stopped_by["cause"])
