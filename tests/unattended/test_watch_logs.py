"""What a person sees of a run in Prefect: the ``qwenedit`` log lines on the flow run's page (start,
quote, stop and reason, summary), the terminal unchanged, and the events the alerts are built on."""

from __future__ import annotations

import csv
import logging
import threading
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from PIL import Image
from prefect import flow

from flows import runlog
from qwenedit.options import RunOptions

API_KEY = "sk-watch-logs-test-0123456789"


async def flow_run_logs(flow_run_id: UUID) -> list[str]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.logging.handlers import APILogHandler

    await APILogHandler.aflush()
    async with get_client() as client:
        logs = await client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))
    return [entry.message for entry in logs]


class Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.mark.usefixtures("prefect_server")
async def test_qwenedit_lines_reach_the_flow_runs_page_and_the_terminal_sees_no_new_ones() -> None:
    terminal = Collect()
    root = logging.getLogger()
    root.addHandler(terminal)

    @flow(name="forwarding-probe")
    async def probe() -> None:
        with runlog.forward_run_logs():
            logging.getLogger("qwenedit.run").info("an info line from the run layer")
            logging.getLogger("qwenedit.run").warning("a warning from the run layer")
            # A worker thread of the run has no Prefect context: still this flow run's line.
            thread = threading.Thread(target=lambda: logging.getLogger("qwenedit.io").info("from a thread"))
            thread.start()
            thread.join()

    try:
        state = await probe(return_state=True)  # type: ignore[call-overload]
    finally:
        root.removeHandler(terminal)
    assert state.state_details.flow_run_id is not None
    messages = await flow_run_logs(state.state_details.flow_run_id)
    assert {"an info line from the run layer", "a warning from the run layer", "from a thread"} <= set(
        messages
    )
    ours = [r for r in terminal.records if r.name.startswith("qwenedit")]
    assert [r.getMessage() for r in ours] == ["a warning from the run layer"]  # as before: WARNING and up
    assert logging.getLogger("qwenedit").level == logging.NOTSET and logging.getLogger("qwenedit").propagate


def write_manifest(folder: Path, count: int, n: int = 1) -> Path:
    Image.new("RGB", (512, 512), (40, 90, 160)).save(folder / "square.png")
    path = folder / "drop.csv"
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["job_id", "image_1", "prompt", "n"])
        for i in range(count):
            writer.writerow([f"job-{i}", "square.png", f"make it blue #{i}", n])
    return path


@pytest.mark.usefixtures("prefect_server")
async def test_an_edit_run_tells_its_start_quote_stop_and_summary_on_its_page_and_emits_the_cap_alert(
    tmp_path: Path, emulator: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flows.edit_manifest import edit_manifest

    monkeypatch.setenv("DASHSCOPE_API_KEY", API_KEY)
    events: list[tuple[str, dict[str, Any]]] = []
    monkeypatch.setattr(runlog, "emit", lambda event, subject, **kw: events.append((event, kw)))
    manifest = write_manifest(tmp_path, 6)
    options = RunOptions(
        manifest=str(manifest),
        dest=str(tmp_path / "out"),
        base_url=emulator.base_url,
        report_dir=str(tmp_path / "reports"),
        rates=("50",),
        max_in_flight=1,
        budget="0.05 USD",  # less than the six jobs cost: the run stops at its budget
        run_id="R-logs",
    )
    state = await edit_manifest(options, return_state=True)  # type: ignore[call-overload]
    summary = await state.aresult()
    assert summary["stopped_by"]["cause"] == "budget"
    assert state.state_details.flow_run_id is not None
    messages = "\n".join(await flow_run_logs(state.state_details.flow_run_id))
    assert f"run R-logs started: manifest {manifest}" in messages
    assert "run R-logs quote: 6 jobs, 6 images, at most" in messages
    assert "run R-logs stopped (budget" in messages and "cap reached" in messages
    assert "run R-logs summary:" in messages
    names = [event for event, _ in events]
    assert runlog.CAP_REACHED in names and runlog.FINISHED in names
    cap = dict(events)[runlog.CAP_REACHED]
    assert cap["run_id"] == "R-logs" and cap["cause"] == "budget"


def test_a_run_that_ends_with_flags_or_a_stop_emits_the_matching_alert_events(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    events: list[tuple[str, dict[str, Any]]] = []
    monkeypatch.setattr(runlog, "emit", lambda event, subject, **kw: events.append((event, kw)))
    base = {"run_id": "R", "manifest": "s3://b/in/a.csv", "by_status": {"succeeded": 2}, "total_cost": {}}
    runlog.ended({**base, "qa_flagged_jobs": 1})
    runlog.ended({**base, "possibly_billed_jobs": 1, "stopped_by": {"cause": "breaker", "message": "x"}})
    runlog.ended({**base, "stopped_by": {"cause": "daily_budget", "limit": "0.75 USD"}})
    runlog.ended(base)
    names = [event for event, _ in events]
    assert names == [
        runlog.FLAGGED,
        runlog.FINISHED,
        runlog.STOPPED,
        runlog.FLAGGED,
        runlog.FINISHED,
        runlog.CAP_REACHED,
        runlog.FINISHED,
        runlog.FINISHED,
    ]
