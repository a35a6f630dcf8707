"""The gates through the real CLI (``python -m qwenedit run`` in a subprocess): the canary's terminal
approval and exit codes, prompt templates, roll-ups by a pass-through column, report.html."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import qwenedit.emulator.app as emulator_app
from tests.gates.conftest import CliRun, CliRunner
from tests.pipeline.conftest import simple_rows

pytestmark = pytest.mark.slow

RunCli = CliRunner


def check_declined(done: CliRun, canary: int, jobs: int) -> None:
    """Exit 3; the canary succeeded, every other job is not_attempted with code NotApproved."""
    assert done.code == 3, done.stdout + done.stderr
    table = done.results()
    assert (table["status"] == "succeeded").sum() == canary
    rest = table[table["status"] != "succeeded"]
    assert len(rest) == jobs - canary
    assert set(rest["status"]) == {"not_attempted"} and set(rest["error_code"]) == {"NotApproved"}
    assert "not approved" in done.stdout
    assert (done.run_dir / "report.html").is_file()


def test_answering_no_declines_with_exit_3_and_a_rerun_never_pays_for_the_canary_again(
    run_cli: RunCli, emulator_factory: Any, write_manifest: Any
) -> None:
    emulator = emulator_factory()
    manifest = write_manifest(simple_rows(8))
    done = run_cli(manifest, emulator, "--canary", "3", stdin="no\n")
    check_declined(done, canary=3, jobs=8)
    assert "Only 'yes' or 'y' continues" in done.stderr
    assert "Canary: 3 jobs" in done.stderr and "The rest: 5 jobs" in done.stderr
    assert len(emulator.ledger()) == 3  # nothing more was called

    again = run_cli(manifest, emulator, "--canary", "3", "--yes")
    assert again.code == 0, again.stdout + again.stderr
    assert "approved in advance (--yes)" in again.stderr
    assert again.summary()["by_status"] == {"succeeded": 5, "failed": 0, "skipped": 3, "not_attempted": 0}
    assert len(emulator.ledger()) == 8  # every row paid for exactly once


def test_end_of_input_declines(run_cli: RunCli, emulator_factory: Any, write_manifest: Any) -> None:
    emulator = emulator_factory()
    done = run_cli(write_manifest(simple_rows(5)), emulator, "--canary", "2", stdin=None)
    check_declined(done, canary=2, jobs=5)
    assert len(emulator.ledger()) == 2


def test_answering_y_runs_the_rest(run_cli: RunCli, emulator_factory: Any, write_manifest: Any) -> None:
    emulator = emulator_factory()
    done = run_cli(write_manifest(simple_rows(5)), emulator, "--canary", "2", stdin="y\n")
    assert done.code == 0, done.stdout + done.stderr
    summary = done.summary()
    assert summary["by_status"]["succeeded"] == 5 and summary["canary_jobs"] == 2
    assert len(emulator.ledger()) == 5


def test_ctrl_c_at_the_question_stops_at_once_and_the_rest_resumes_later(
    run_cli: RunCli, emulator_factory: Any, write_manifest: Any, tmp_path: Path
) -> None:
    emulator = emulator_factory()
    manifest = write_manifest(simple_rows(5))
    args, report_dir = run_cli.command(manifest, emulator, "--canary", "2")
    proc = subprocess.Popen(
        args,
        env=run_cli.env,
        cwd=tmp_path,
        stdin=subprocess.PIPE,  # open, and nobody answers
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    asked = threading.Event()
    errors: list[bytes] = []

    def watch_stderr() -> None:
        assert proc.stderr is not None
        while chunk := os.read(proc.stderr.fileno(), 4096):
            errors.append(chunk)
            if b"continues" in b"".join(errors):
                asked.set()

    watcher = threading.Thread(target=watch_stderr, daemon=True)
    watcher.start()
    try:
        assert asked.wait(timeout=180), b"".join(errors).decode(errors="replace")
        proc.send_signal(signal.SIGINT)
        stdout, _ = proc.communicate(timeout=60)  # before: it waited for a line that never came
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    watcher.join(timeout=10)
    assert proc.returncode == 3, b"".join(errors).decode(errors="replace")
    done = CliRun(proc.returncode, stdout.decode(), b"".join(errors).decode(), report_dir)
    table = done.results()
    rest = table[table["status"] != "succeeded"]
    assert len(rest) == 3
    assert set(rest["status"]) == {"not_attempted"} and set(rest["error_code"]) == {"RunStopped"}
    assert "run the same command again to resume" in done.stdout
    assert len(emulator.ledger()) == 2

    again = run_cli(manifest, emulator, "--yes", "--canary", "2")
    assert again.code == 0 and len(emulator.ledger()) == 5


def test_qa_retries_through_the_cli_regenerate_and_the_summary_prints_what_stayed_flagged(
    run_cli: RunCli, emulator_factory: Any, write_manifest: Any
) -> None:
    emulator = emulator_factory(next_faults=["blank_output", "blank_output"])
    done = run_cli(write_manifest(simple_rows(1)), emulator, "--qa-retries", "1")
    assert done.code == 0, done.stdout + done.stderr
    row = done.results().iloc[0]
    assert (row["qa"], row["qa_retries"]) == ("1.png=blank", "1")
    assert len(emulator.ledger()) == 2
    assert "QA flagged 1 image(s) of 1 job(s)" in done.stdout and "1 regeneration(s)" in done.stdout


@pytest.fixture
def received_prompts(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """The prompts the (in-process) emulator rendered: what the API received."""
    prompts: list[str] = []
    render = emulator_app.render_outputs

    def recording(*args: Any, caption: str, **kwargs: Any) -> Any:
        prompts.append(caption)
        return render(*args, caption=caption, **kwargs)

    monkeypatch.setattr(emulator_app, "render_outputs", recording)
    yield prompts


def test_a_template_with_missing_fields_names_every_row_and_calls_nothing(
    run_cli: RunCli, emulator_factory: Any, write_manifest: Any
) -> None:
    emulator = emulator_factory()
    rows = simple_rows(4, prompt="")
    rows[0]["product"] = "red mug"
    rows[1]["product"] = ""  # empty
    rows[3]["product"] = "  "  # blank
    # rows[2] has no product at all (the column exists, the cell is empty)
    done = run_cli(write_manifest(rows), emulator, "--prompt-template", "Put the {product} on white")
    assert done.code == 2, done.stdout + done.stderr
    named = done.stderr.replace("\n", " ")
    for job_id in ("job-0001", "job-0002", "job-0003"):
        assert job_id in named, named
    assert "job-0000" not in named
    assert "product" in named
    assert emulator.ledger() == [] and emulator.stats()["requests"] == 0


@pytest.mark.parametrize("template", ["Put the {} on white", "Put the {product.__class__} on white"])
def test_a_malformed_template_is_a_bad_option(
    template: str, run_cli: RunCli, emulator_factory: Any, write_manifest: Any
) -> None:
    emulator = emulator_factory()
    done = run_cli(write_manifest(simple_rows(2)), emulator, "--prompt-template", template)
    assert done.code == 2, done.stdout + done.stderr
    assert "--prompt-template" in done.stderr
    assert emulator.stats()["requests"] == 0
    assert not done.report_dir.exists()  # refused before the run was opened


def test_a_template_fills_prompts_and_a_roll_up_by_sku_is_in_the_summary_and_printed(
    run_cli: RunCli, emulator_factory: Any, write_manifest: Any, received_prompts: list[str]
) -> None:
    emulator = emulator_factory()
    rows = simple_rows(4, prompt="")
    for i, (product, sku) in enumerate([("red mug", "A"), ("blue vase", "A"), ("lamp", "B"), ("rug", "B")]):
        rows[i].update(product=product, sku=sku)
    rows[3]["prompt"] = "Its own prompt wins"
    rows[3]["n"] = 2
    done = run_cli(
        write_manifest(rows), emulator, "--prompt-template", "Put the {product} on white", "--group-by", "sku"
    )
    assert done.code == 0, done.stdout + done.stderr
    assert sorted(received_prompts) == sorted(
        [
            "Put the red mug on white",
            "Put the blue vase on white",
            "Put the lamp on white",
            "Its own prompt wins",
        ]
    )
    (rollup,) = done.summary()["rollups"]
    assert rollup["group_by"] == ["sku"]
    by_sku = {g["key"]["sku"]: g for g in rollup["groups"]}
    assert {k: (g["jobs"], g["images"], g["cost"]) for k, g in by_sku.items()} == {
        "A": (2, 2, {"USD": "0.06"}),
        "B": (2, 3, {"USD": "0.09"}),
    }
    assert "By sku" in done.stdout
    printed = [line.split() for line in done.stdout.splitlines()]
    assert ["A", "2", "2", "$0.06"] in printed and ["B", "2", "3", "$0.09"] in printed
    assert f"report.html: {done.run_dir}/report.html" in done.stdout.replace("\n", "")


def test_report_html_is_uploaded_next_to_the_other_reports(
    run_cli: RunCli, emulator_factory: Any, write_manifest: Any, pipeline_env: Any
) -> None:
    emulator = emulator_factory()
    done = run_cli(write_manifest(simple_rows(2)), emulator)
    assert done.code == 0, done.stdout + done.stderr
    run_id = json.loads((done.run_dir / "summary.json").read_text())["run_id"]
    keys = pipeline_env.keys()
    for name in ("results.csv", "summary.json", "report.html"):
        assert f"out/_runs/{run_id}/{name}" in keys
