"""``--approve-above``: a run whose quote is above the amount asks before its first call — through the run
layer's approver, on the terminal (y/yes continues; no, anything else or end of input: exit 3 and no call;
``--yes`` approves) and in the Prefect UI (the canary's form; a timeout declines)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from prefect.client.orchestration import get_client
from prefect.flow_runs import aresume_flow_run

from flows.edit_manifest import edit_manifest
from qwenedit.canary import Question, QuoteApproval
from qwenedit.run import exit_code
from tests.gates.conftest import CliRun, CliRunner, run_cli
from tests.gates.helpers import billed_calls, results, run_here
from tests.gates.test_approval_ui import options_for, paused_flow_run
from tests.pipeline.conftest import images_dir, pipeline_env, simple_rows, write_manifest

__all__ = ["images_dir", "pipeline_env", "run_cli", "write_manifest"]  # fixtures used here

# simple_rows: qwen-image-edit-plus in singapore, n = 1: $0.03 per row at worst
FOUR_ROWS_QUOTE = "$0.12"


class Asked:
    """An approver that records the question and what had been billed when it was asked."""

    def __init__(self, emulator: Any, answer: bool) -> None:
        self.emulator, self.answer = emulator, answer
        self.questions: list[Question] = []
        self.billed_when_asked = -1

    async def __call__(self, question: Question) -> bool:
        self.questions.append(question)
        self.billed_when_asked = billed_calls(self.emulator)
        return self.answer


def declined_without_a_call(summary: dict[str, Any], emulator: Any, jobs: int) -> None:
    assert exit_code(summary) == 3 and summary["stopped_by"]["cause"] == "declined"
    assert "above --approve-above" in summary["stopped_by"]["reason"]
    assert billed_calls(emulator) == 0 and emulator.stats()["requests"] == 0
    table = results(summary)
    assert len(table) == jobs and set(table["status"]) == {"not_attempted"}
    assert set(table["error_code"]) == {"NotApproved"}


async def test_a_quote_above_the_amount_asks_before_the_first_call_and_a_no_calls_nothing(
    pipeline_env: Any, emulator: Any, write_manifest: Any, tmp_path: Path
) -> None:
    asked = Asked(emulator, answer=False)
    manifest = write_manifest(simple_rows(4))
    summary = await run_here(manifest, pipeline_env, emulator, tmp_path, approve=asked, approve_above="0.11")
    [question] = asked.questions
    assert isinstance(question, QuoteApproval) and asked.billed_when_asked == 0
    assert (question.jobs, question.projected, question.limit) == (4, FOUR_ROWS_QUOTE, "$0.11")
    declined_without_a_call(summary, emulator, jobs=4)


async def test_a_yes_runs_everything(
    pipeline_env: Any, emulator: Any, write_manifest: Any, tmp_path: Path
) -> None:
    asked = Asked(emulator, answer=True)
    summary = await run_here(
        write_manifest(simple_rows(4)), pipeline_env, emulator, tmp_path, approve=asked, approve_above="0.11"
    )
    assert len(asked.questions) == 1 and asked.billed_when_asked == 0
    assert summary["by_status"]["succeeded"] == 4 and exit_code(summary) == 0


async def test_a_quote_at_the_amount_asks_nothing(
    pipeline_env: Any, emulator: Any, write_manifest: Any, tmp_path: Path
) -> None:
    asked = Asked(emulator, answer=False)
    summary = await run_here(
        write_manifest(simple_rows(4)),
        pipeline_env,
        emulator,
        tmp_path,
        approve=asked,
        approve_above="0.12 USD",
    )
    assert asked.questions == [] and summary["by_status"]["succeeded"] == 4


async def test_rows_already_done_do_not_count_toward_the_quote(
    pipeline_env: Any, emulator: Any, write_manifest: Any, tmp_path: Path
) -> None:
    rows = simple_rows(4)
    await run_here(write_manifest(rows[:3]), pipeline_env, emulator, tmp_path)  # 3 rows done
    asked = Asked(emulator, answer=False)
    summary = await run_here(
        write_manifest(rows), pipeline_env, emulator, tmp_path, approve=asked, approve_above="0.05"
    )
    assert asked.questions == []  # the manifest's quote is $0.12, but only one row ($0.03) would be called
    assert summary["by_status"] == {"succeeded": 1, "failed": 0, "skipped": 3, "not_attempted": 0}


async def test_with_nobody_to_ask_a_run_above_the_amount_is_declined(
    pipeline_env: Any, emulator: Any, write_manifest: Any, tmp_path: Path
) -> None:
    summary = await run_here(
        write_manifest(simple_rows(3)), pipeline_env, emulator, tmp_path, approve_above="0.01"
    )
    declined_without_a_call(summary, emulator, jobs=3)


async def test_approval_comes_before_the_canary(
    pipeline_env: Any, emulator: Any, write_manifest: Any, tmp_path: Path
) -> None:
    asked = Asked(emulator, answer=False)
    summary = await run_here(
        write_manifest(simple_rows(4)),
        pipeline_env,
        emulator,
        tmp_path,
        approve=asked,
        approve_above="0.01",
        canary=2,
    )
    assert [q.key for q in asked.questions] == ["approve-above"]  # no canary was run, nor asked about
    declined_without_a_call(summary, emulator, jobs=4)


def test_an_amount_in_another_currency_than_the_prices_is_refused_before_anything(
    pipeline_env: Any, emulator: Any, write_manifest: Any, tmp_path: Path
) -> None:
    from tests.unattended.test_policy_cli import run_cli as run_here_cli

    code, output = run_here_cli(
        write_manifest(simple_rows(2)), pipeline_env, emulator, tmp_path, "--approve-above", "5 CNY"
    )
    assert code == 2 and "--approve-above is in CNY but jobs of this manifest are priced in USD" in output
    assert emulator.stats()["requests"] == 0


# --- the terminal (the real CLI in a subprocess) ----------------------------------------------------------


def check_cli_declined(done: CliRun, emulator: Any, jobs: int) -> None:
    assert done.code == 3, done.stdout + done.stderr
    assert "Approval needed before the first call" in done.stderr
    assert "Only 'yes' or 'y' continues" in done.stderr
    assert "not approved" in done.stdout
    table = done.results()
    assert len(table) == jobs and set(table["status"]) == {"not_attempted"}
    assert emulator.stats()["requests"] == 0


@pytest.mark.slow
@pytest.mark.parametrize(
    ("stdin", "flags"), [("no\n", ()), (None, ()), ("maybe\n", ())], ids=["no", "eof", "other"]
)
def test_on_the_terminal_anything_but_yes_exits_3_with_no_call(
    stdin: str | None, flags: tuple[str, ...], run_cli: CliRunner, emulator: Any, write_manifest: Any
) -> None:
    done = run_cli(write_manifest(simple_rows(3)), emulator, "--approve-above", "0.05", *flags, stdin=stdin)
    check_cli_declined(done, emulator, jobs=3)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("stdin", "flags"), [("y\n", ()), ("YES\n", ()), (None, ("--yes",))], ids=["y", "yes", "--yes"]
)
def test_on_the_terminal_yes_or_dash_dash_yes_runs_the_rest(
    stdin: str | None, flags: tuple[str, ...], run_cli: CliRunner, emulator: Any, write_manifest: Any
) -> None:
    done = run_cli(write_manifest(simple_rows(3)), emulator, "--approve-above", "0.05", *flags, stdin=stdin)
    assert done.code == 0, done.stdout + done.stderr
    assert "Approval needed before the first call: 3 jobs, projected spend at most $0.09" in done.stderr
    assert done.summary()["by_status"]["succeeded"] == 3 and len(emulator.ledger()) == 3


# --- the Prefect UI (a deployment's flow run: no terminal) -------------------------------------------------


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_server")
async def test_in_a_flow_run_it_pauses_before_any_call_and_runs_when_approved(
    pipeline_env: Any, emulator: Any, write_manifest: Any, tmp_path: Path
) -> None:
    options = options_for(
        write_manifest(simple_rows(4)), pipeline_env, emulator, tmp_path, approve_above="0.05"
    )
    flow = asyncio.create_task(edit_manifest(options))
    flow_run = await paused_flow_run(str(options.run_id), flow)
    assert flow_run.state.state_details.pause_key == "approve-above"
    assert billed_calls(emulator) == 0
    async with get_client() as client:
        inputs = await client.filter_flow_run_input(
            flow_run_id=flow_run.id, key_prefix="paused-approve-above", limit=10, exclude_keys=set()
        )
    assert "projected spend at most $0.12" in " ".join(i.value for i in inputs)
    await aresume_flow_run(UUID(str(flow_run.id)), run_input={"approve": True})
    summary = await asyncio.wait_for(flow, timeout=120)
    assert summary["by_status"]["succeeded"] == 4 and billed_calls(emulator) == 4


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_server")
async def test_in_a_flow_run_nobody_approving_in_time_declines_with_no_call(
    pipeline_env: Any, emulator: Any, write_manifest: Any, tmp_path: Path
) -> None:
    options = options_for(
        write_manifest(simple_rows(3)),
        pipeline_env,
        emulator,
        tmp_path,
        approve_above="0.05",
        approval_timeout_s=2,
    )
    summary = await asyncio.wait_for(edit_manifest(options), timeout=120)
    declined_without_a_call(summary, emulator, jobs=3)


# --- a sharded run: asked once by the parent, never by each shard ----------------------------------------


async def test_a_sharded_run_above_the_amount_asks_once_for_the_whole_manifest_and_a_no_starts_no_shard(
    write_manifest: Any, tmp_path: Path
) -> None:
    from flows.sharded import approved_above
    from qwenedit.errors import RunDeclined
    from qwenedit.options import RunOptions
    from qwenedit.run import prepare

    options = RunOptions(
        manifest=str(write_manifest(simple_rows(4))), dest=str(tmp_path / "out"), approve_above="0.1"
    )
    prepared = prepare(options)
    questions: list[Question] = []

    async def answer(question: Question, yes: bool) -> bool:
        questions.append(question)
        return yes

    with pytest.raises(RunDeclined, match="no shard was started"):
        await approved_above(options, prepared, lambda q: answer(q, False))
    await approved_above(options, prepared, lambda q: answer(q, True))
    assert [(q.jobs, q.projected) for q in questions] == [(4, FOUR_ROWS_QUOTE)] * 2  # the whole manifest
    await approved_above(options.with_changes(approve_above="0.12"), prepared, lambda q: answer(q, False))
    assert len(questions) == 2  # at the amount: not asked


async def test_a_manifest_swapped_after_validation_and_approval_is_not_what_runs(
    pipeline_env: Any, emulator: Any, images_dir: Path, tmp_path: Path
) -> None:
    """A dropper who replaces the manifest while the run waits for approval changes nothing: the run reads
    the one copy it validated against the policy, quoted and had approved."""
    client, bucket = pipeline_env.client, pipeline_env.bucket
    for image in images_dir.iterdir():
        client.put_object(Bucket=bucket, Key=f"drops/{image.name}", Body=image.read_bytes())
    lines = ["job_id,image_1,prompt"] + [
        f"{r['job_id']},{r['image_1']},{r['prompt']}" for r in simple_rows(3)
    ]
    client.put_object(Bucket=bucket, Key="drops/jobs.csv", Body="\n".join(lines).encode())
    swapped = ["job_id,image_1,prompt,model,n"] + [
        f"evil-{i},square.png,x,qwen-image-edit-max,6" for i in range(9)
    ]

    async def swap_then_approve(question: Question) -> bool:
        client.put_object(Bucket=bucket, Key="drops/jobs.csv", Body="\n".join(swapped).encode())
        return True

    summary = await run_here(
        pipeline_env.uri("drops/jobs.csv"),  # an s3:// manifest, as the watcher runs them
        pipeline_env,
        emulator,
        tmp_path,
        approve=swap_then_approve,
        approve_above="0.01",
        allow_model=("qwen-image-edit-plus",),
        max_n=1,
    )
    assert summary["by_status"]["succeeded"] == 3 and summary["jobs"] == 3
    assert [(e["model"], e["image_count"]) for e in emulator.ledger()] == [("qwen-image-edit-plus", 1)] * 3
