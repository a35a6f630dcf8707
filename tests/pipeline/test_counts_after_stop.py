"""After a stop mid-run, every count a person sees agrees: the progress line, the summary, the per-model
lines, and the requests the API received."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console

from qwenedit.cli.run import print_summary, progress_line
from qwenedit.options import RunOptions
from qwenedit.report import JobResult
from qwenedit.run import Run
from tests.pipeline.conftest import simple_rows

JOBS = 40
STOP_AT = 10  # the stop is asked when this many results are recorded


async def test_after_a_stop_the_progress_line_summary_and_per_model_lines_agree_with_the_api(
    pipeline_env: Any, emulator_factory: Any, write_manifest: Any, tmp_path: Path
) -> None:
    emulator = emulator_factory(latency_median_s=0.05)
    rows = simple_rows(JOBS)
    for i, row in enumerate(rows):
        row["model"] = "qwen-image-edit" if i % 2 else "qwen-image-edit-plus"
    options = RunOptions(
        manifest=str(write_manifest(rows)),
        dest=pipeline_env.uri("out"),
        base_url=emulator.base_url,
        report_dir=str(tmp_path / "reports"),
        rates=("5",),
        chunk_size=8,
    )
    async with Run(options) as run:
        spool = run.state.spool
        add = spool.add

        def add_then_stop(result: JobResult) -> None:  # deterministic: the stop comes at the N-th result
            add(result)
            if run.stats.finished + 1 == STOP_AT:
                run.request_stop("test stop")

        spool.add = add_then_stop  # type: ignore[method-assign]
        await run.execute()
        summary = await run.finish()
        line = progress_line(run).plain

    totals = summary.totals
    by_status = dict(totals.by_status)
    assert by_status["not_attempted"] > 0 and by_status["succeeded"] > 0  # really stopped mid-way
    assert totals.jobs == JOBS
    # The progress line counts what the summary counts, status by status.
    assert by_status == run.stats.outcomes()
    assert f" {JOBS}/{JOBS} " in line
    assert f"ok {by_status['succeeded']} " in line and f"skip {by_status['skipped']} " in line
    assert f"fail {by_status['failed']} " in line and f"not run {by_status['not_attempted']} " in line
    # "requests" means requests sent: overall, per model, and as the API received them.
    received = emulator.stats()["requests"]
    assert summary.models is not None and set(summary.models) == {"qwen-image-edit", "qwen-image-edit-plus"}
    per_model = {model: m.requests_sent for model, m in summary.models.items()}
    assert sum(per_model.values()) == summary.requests_sent == received
    for model, sent in per_model.items():
        short = model.removeprefix("qwen-image-edit-") if model != "qwen-image-edit" else "edit"
        assert f"{short} {sent} req " in line
    printed = Console(record=True, width=200)
    print_summary(summary, printed)
    text = printed.export_text()
    assert f"{summary.requests_sent} requests" in text
    for model, sent in per_model.items():
        assert any(model in out and f"{sent:>6} requests" in out for out in text.splitlines())
    assert summary.to_json()["by_status"] == by_status  # summary.json says the same
