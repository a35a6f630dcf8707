"""`qwenedit run`: run a manifest through the Prefect flow with a live progress bar.

Exit codes: 0 every job succeeded or was skipped · 1 some jobs failed · 2 bad options or manifest ·
3 stopped by the run breaker (account error), the budget, a daily/monthly spend cap or a signal
(Ctrl-C, SIGTERM: the calls in flight finish first; see ``qwenedit.stopping``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
import threading
import time
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.live import Live
from rich.table import Table
from rich.text import Text

from qwenedit.cli._app import app
from qwenedit.cli._text import plain
from qwenedit.cli.options import BadOptions, option_flags, to_options
from qwenedit.summary import RunSummary, StopCause

console = Console(stderr=True)


def _quiet_prefect() -> None:
    """Per-task INFO lines would drown the progress bar; the UI and the reports have them."""
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # The ephemeral API server (used when PREFECT_API_URL is unset) runs migrations on first start;
    # Prefect's 20 s default is too short on a busy 2-core machine.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    for name in ("prefect", "prefect.flow_runs", "prefect.task_runs", "httpx"):
        logging.getLogger(name).setLevel(logging.WARNING)


def progress_line(run: Any) -> Text:
    """One line: bar, done/total, outcomes (as the summary counts them), images, spend, per-model
    requests sent, rates and 429s, ETA."""
    stats = run.stats
    totals = stats.totals
    outcomes = stats.outcomes()
    done, total = stats.finished, max(1, stats.total_jobs)
    width = 20
    filled = int(width * done / total)
    eta = "--"
    if done:
        eta_s = (total - done) * (time.monotonic() - stats.started) / done
        eta = f"{int(eta_s // 60)}m{int(eta_s % 60):02d}s"
    spend = " ".join(f"{a} {c}" for c, a in totals.total_cost().items()) or "0"
    line = Text()
    line.append("█" * filled + "░" * (width - filled), style="bold")
    line.append(f" {done}/{stats.total_jobs} ")
    line.append(f"ok {outcomes['succeeded']} ", style="green")
    line.append(f"skip {outcomes['skipped']} ")
    line.append(f"fail {outcomes['failed']} ", style="red")
    if outcomes["not_attempted"]:
        line.append(f"not run {outcomes['not_attempted']} ", style="yellow")
    line.append(f"| img {totals.images} | {spend} | {per_model(stats)} | ETA {eta}")
    if getattr(run, "stopping", False):
        line.append(f" | stopping: {stats.in_flight} calls in flight", style="bold yellow")
    return line


def per_model(stats: Any) -> str:
    """Requests sent, rate and 429s per model (``plus 52 req 1.96/s 0×429 · max 1 req 0.00/s 0×429``),
    or the overall figures."""
    rates = stats.model_rates()
    if not rates:
        return f"{stats.requests_sent} req {stats.request_rate():.2f} req/s | 429 {stats.throttled}"
    short = {m: m.removeprefix("qwen-image-edit-") if m != "qwen-image-edit" else "edit" for m in rates}
    return " · ".join(
        f"{short[m]} {stats.sent_by_model(m)} req {rate:.2f}/s {n}×429" for m, (rate, n) in rates.items()
    )


def print_summary(summary: RunSummary, out: Console) -> None:
    totals = summary.totals
    t = Table(title=f"run {summary.run_id}", show_header=True)
    t.add_column("status")
    t.add_column("jobs", justify="right")
    for status, n in totals.by_status.items():
        t.add_row(status, str(n))
    out.print(t)
    for c in totals.cost_by_region_model:
        out.print(f"  {c.region:<10} {c.model:<34} {c.cost:>12} {c.currency}")
    total = ", ".join(f"{a} {c}" for c, a in totals.total_cost.items()) or "0"
    out.print(
        f"[bold]total cost: {total}[/]   images stored: {totals.images_stored}/{totals.images_requested}"
    )
    out.print(
        f"wall {summary.wall_time_s:.1f} s · {summary.requests_sent} requests · "
        f"{summary.request_rate:.3f} req/s overall · {summary.throttled_429} × 429"
    )
    for model, m in (summary.models or {}).items():
        out.print(
            f"  {model:<34} limit {m.limit:<7} {m.requests_sent:>6} requests  "
            f"{m.request_rate:.3f} req/s  {m.throttled_429} × 429"
        )
    if totals.possibly_billed_jobs:
        out.print(f"[yellow]{totals.possibly_billed_jobs} job(s) possibly billed (timed out or dropped)[/]")
    if totals.billed_not_stored_images:
        out.print(f"[yellow]{totals.billed_not_stored_images} billed image(s) not stored: see results.csv[/]")
    if totals.qa_flagged_images:
        out.print(
            f"[yellow]QA flagged {totals.qa_flagged_images} image(s) of {totals.qa_flagged_jobs} job(s) "
            f"(kept; see the qa column of results.csv); {totals.qa_retries} regeneration(s)[/]"
        )
    if summary.rollups:
        from qwenedit.cli._text import safe_rollups
        from qwenedit.rollups import text_rollups

        out.print(text_rollups(safe_rollups(summary.rollups)), markup=False, highlight=False)
    if summary.stopped_by is not None:
        out.print(f"[red]{stop_message(summary)}[/]", highlight=False)
    out.print(f"reports: {summary.report_dir}/  (results.csv, summary.json, failed.jsonl, report.html)")
    out.print(f"report.html: {summary.report_dir}/report.html")


def stop_message(summary: RunSummary) -> str:
    """The one line a stopped run ends with: why, what is left, and how to resume."""
    stop = summary.stopped_by
    assert stop is not None
    if stop.cause is StopCause.BREAKER:
        return f"stopped: account error {stop.code}: {stop.message}"
    if stop.cause is StopCause.DECLINED:
        left = summary.totals.count("not_attempted")
        return f"stopped: {stop.reason}; {left} job(s) not run, nothing more spent"
    if stop.cause is StopCause.SPEND_CAP:
        return f"stopped: {stop.message}; {summary.totals.count('not_attempted')} job(s) not started"
    if stop.cause is StopCause.BUDGET:
        return f"stopped: budget {stop.limit} reached; remaining jobs not attempted"
    if stop.cause is StopCause.STOP:
        return (
            f"stopped ({stop.reason}): {summary.jobs_left} of {summary.totals.jobs} jobs left; "
            "run the same command again to resume"
        )
    return f"stopped: shard runs {list(stop.shards)} did not complete; rerun to resume"


@app.command()
@option_flags()
def run(
    fields: dict[str, Any],
    yes: Annotated[
        bool, typer.Option("--yes", help="approve the canary and --approve-above in advance")
    ] = False,
    progress: Annotated[bool, typer.Option(help="live progress bar")] = True,
) -> None:
    """Run MANIFEST: edit every row's images and store the outputs and a cost report at --dest."""
    _quiet_prefect()
    from qwenedit.redact import install_log_redaction

    install_log_redaction()  # before anything can log a signed request (validate reads s3:// manifests)
    from qwenedit.run import new_run_id

    try:
        options = to_options(fields, run_id=fields.get("run_id") or new_run_id())
    except BadOptions as err:
        for line in err.lines:
            console.print(Text.assemble(("error:", "red"), " ", line), highlight=False)
        raise typer.Exit(2) from None
    summary = asyncio.run(_run(options, progress, yes))
    print_summary(summary, Console())
    raise typer.Exit(summary.exit_code)


def terminal_approver(yes: bool, live: list[Live]) -> Any:
    """Ask on the terminal whether to go on after the canary (or to start a run above ``--approve-above``),
    as ``terraform apply`` does: only ``y`` or ``yes`` continues; anything else, or end of input, stops.
    ``--yes`` approves in advance."""
    from qwenedit.canary import Question, answer_means_yes

    async def approve(outcome: Question) -> bool:
        for display in live:
            display.stop()
        if live and not console.is_terminal:  # a log file: the stopped bar's last line has no newline
            console.print()
        try:
            console.print(outcome.markdown().replace("**", ""))
            if yes:
                console.print("[green]approved in advance (--yes)[/]")
                return True
            console.print(f"{outcome.question()} Only 'yes' or 'y' continues: ", end="")
            answer = await _read_line()
            approved = answer_means_yes(answer if answer else None)
            console.print("[green]approved[/]" if approved else "[red]not approved: stopping[/]")
            return approved
        finally:
            for display in live:
                display.start()

    return approve


def _read_line() -> asyncio.Future[str]:
    """The next line of standard input ("" at its end), read in a daemon thread: a run stopped at the
    question (Ctrl-C) stops waiting for it, and the process can exit while the read still blocks."""
    loop = asyncio.get_running_loop()
    line: asyncio.Future[str] = loop.create_future()

    def deliver(text: str) -> None:
        if not line.done():
            line.set_result(text)

    def read() -> None:
        try:
            text = sys.stdin.readline()
        except (OSError, ValueError):  # no usable stdin: as at its end
            text = ""
        with contextlib.suppress(RuntimeError):  # the loop is gone: nobody waits any more
            loop.call_soon_threadsafe(deliver, text)

    threading.Thread(target=read, name="qwenedit-approval", daemon=True).start()
    return line


async def _run(options: Any, progress: bool, yes: bool = False) -> RunSummary:
    """Open the run here (every check before Prefect starts), then run it as a flow run."""
    from qwenedit.cli._flows import run_in_flow, start_prefect_server
    from qwenedit.cli.validate import print_problems
    from qwenedit.errors import ManifestInvalid
    from qwenedit.run import Run

    async with contextlib.AsyncExitStack() as stack:
        try:
            run = await stack.enter_async_context(Run(options))
        except ManifestInvalid as err:
            print_problems(err.validation.problems, console)
            breaches = err.validation.breaches
            if breaches:
                console.print(f"[red]{breaches} breach(es) of the run's policy: nothing was run[/]")
            else:
                console.print("[red]manifest is invalid: nothing was run[/]")
            raise typer.Exit(2) from None
        except Exception as err:  # missing key, bad price file or budget, unusable destination: one line
            console.print(Text.assemble(("error:", "red"), " ", str(err)), highlight=False)  # not markup
            raise typer.Exit(2) from None
        for note in run.validation.notices:
            console.print(Text(f"note: {note}", style="yellow"))
        try:
            start_prefect_server()  # a Ctrl-C must not stop it while the run drains
        except Exception as err:
            console.print(
                Text.assemble(
                    ("run failed: ", "red"), plain(f"Prefect API server: {type(err).__name__}: {err}")
                )
            )
            raise typer.Exit(2) from None
        shown: list[Live] = []
        flow_run = asyncio.ensure_future(run_in_flow(run, terminal_approver(yes, shown)))
        if progress:
            with Live(console=console, refresh_per_second=4, transient=False) as live:
                shown.append(live)
                while not flow_run.done():
                    live.update(progress_line(run))
                    await asyncio.wait({flow_run}, timeout=0.25)
                live.update(progress_line(run))
        try:
            result = await flow_run
        except Exception as err:
            console.print(f"[red]run failed:[/] {type(err).__name__}: {err}")
            raise typer.Exit(2) from None
        return result
    raise AssertionError("unreachable")  # pragma: no cover
