"""`qwenedit run`: run a manifest through the Prefect flow with a live progress bar.

Exit codes: 0 every job succeeded or was skipped · 1 some jobs failed · 2 bad options or manifest ·
3 stopped by the run breaker (account error), the budget or a signal (Ctrl-C, SIGTERM: the calls in
flight finish first; see ``qwenedit.stopping``).
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
from qwenedit.cli.options import BadOptions, option_flags, to_options

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
    """One line: bar, done/total, outcomes, images, spend, request rate, 429s, ETA."""
    stats = run.stats
    totals = stats.totals
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
    line.append(f"ok {totals.counts.get('succeeded', 0)} ", style="green")
    line.append(f"skip {totals.counts.get('skipped', 0)} ")
    line.append(
        f"fail {totals.counts.get('failed', 0) + totals.counts.get('not_attempted', 0)} ", style="red"
    )
    line.append(f"| img {totals.images} | {spend} | {per_model(stats)} | ETA {eta}")
    if getattr(run, "stopping", False):
        line.append(f" | stopping: {stats.in_flight} calls in flight", style="bold yellow")
    return line


def per_model(stats: Any) -> str:
    """Rate and 429s per model (``plus 1.96/s 0×429 · max 0.03/s 0×429``), or the overall figures."""
    rates = stats.model_rates()
    if not rates:
        return f"{stats.request_rate():.2f} req/s | 429 {stats.throttled}"
    short = {m: m.removeprefix("qwen-image-edit-") if m != "qwen-image-edit" else "edit" for m in rates}
    return " · ".join(f"{short[m]} {rate:.2f}/s {n}×429" for m, (rate, n) in rates.items())


def print_summary(summary: dict[str, Any], out: Console) -> None:
    t = Table(title=f"run {summary['run_id']}", show_header=True)
    t.add_column("status")
    t.add_column("jobs", justify="right")
    for status, n in summary["by_status"].items():
        t.add_row(status, str(n))
    out.print(t)
    for c in summary["cost_by_region_model"]:
        out.print(f"  {c['region']:<10} {c['model']:<34} {c['cost']:>12} {c['currency']}")
    total = ", ".join(f"{a} {c}" for c, a in summary["total_cost"].items()) or "0"
    out.print(
        f"[bold]total cost: {total}[/]   images stored: {summary['images_stored']}/{summary['images_requested']}"
    )
    out.print(
        f"wall {summary['wall_time_s']:.1f} s · {summary['requests_sent']} requests · "
        f"{summary['request_rate']:.3f} req/s overall · {summary['throttled_429']} × 429"
    )
    for model, m in (summary.get("models") or {}).items():
        out.print(
            f"  {model:<34} limit {m['limit']:<7} {m['granted']:>6} requests  "
            f"{m['request_rate']:.3f} req/s  {m['throttled_429']} × 429"
        )
    if summary.get("possibly_billed_jobs"):
        out.print(
            f"[yellow]{summary['possibly_billed_jobs']} job(s) possibly billed (timed out or dropped)[/]"
        )
    if summary.get("billed_not_stored_images"):
        out.print(
            f"[yellow]{summary['billed_not_stored_images']} billed image(s) not stored: see results.csv[/]"
        )
    if summary.get("qa_flagged_images"):
        out.print(
            f"[yellow]QA flagged {summary['qa_flagged_images']} image(s) of {summary['qa_flagged_jobs']} job(s) "
            f"(kept; see the qa column of results.csv); {summary.get('qa_retries', 0)} regeneration(s)[/]"
        )
    if summary.get("rollups"):
        from qwenedit.rollups import text_rollups

        out.print(text_rollups(summary["rollups"]), markup=False, highlight=False)
    stopped = summary.get("stopped_by")
    if stopped:
        if stopped["cause"] == "breaker":
            out.print(f"[red]stopped: account error {stopped['code']}: {stopped['message']}[/]")
        elif stopped["cause"] == "declined":
            left = summary["by_status"].get("not_attempted", 0)
            out.print(f"[red]stopped: {stopped['reason']}; {left} job(s) not run, nothing more spent[/]")
        elif stopped["cause"] == "stop":
            out.print(f"[red]{stop_message(summary)}[/]")
        else:
            out.print(f"[red]stopped: budget {stopped['limit']} reached; remaining jobs not attempted[/]")
    out.print(f"reports: {summary['report_dir']}/  (results.csv, summary.json, failed.jsonl, report.html)")
    out.print(f"report.html: {summary['report_dir']}/report.html")


def stop_message(summary: dict[str, Any]) -> str:
    """The one line a stopped run ends with: how many jobs are left and how to resume."""
    by_status = summary["by_status"]
    left = summary["jobs"] - by_status.get("succeeded", 0) - by_status.get("skipped", 0)
    return (
        f"stopped ({summary['stopped_by']['reason']}): {left} of {summary['jobs']} jobs left; "
        "run the same command again to resume"
    )


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
    raise typer.Exit(exit_code(summary))


def exit_code(summary: dict[str, Any]) -> int:
    from qwenedit.run import exit_code as code

    return code(summary)


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


async def _run(options: Any, progress: bool, yes: bool = False) -> dict[str, Any]:
    """Open the run here (every check before Prefect starts), then hand it to the flow."""
    from flows.edit_manifest import edit_manifest
    from flows.ephemeral_server import start_detached
    from qwenedit.cli.validate import print_problems
    from qwenedit.errors import ManifestInvalid
    from qwenedit.run import Run

    try:
        opened = Run(options)
        run = await opened.__aenter__()
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
    try:
        try:
            start_detached()  # a Ctrl-C must not stop Prefect's temporary API server while the run drains
        except Exception as err:
            console.print(f"[red]run failed:[/] Prefect API server: {type(err).__name__}: {err}")
            raise typer.Exit(2) from None
        shown: list[Live] = []
        run.approver = terminal_approver(yes, shown)
        with run.hand_over():
            flow_run = asyncio.ensure_future(edit_manifest(options))
            if progress:
                with Live(console=console, refresh_per_second=4, transient=False) as live:
                    shown.append(live)
                    while not flow_run.done():
                        live.update(progress_line(run))
                        await asyncio.wait({flow_run}, timeout=0.25)
                    live.update(progress_line(run))
            try:
                result: dict[str, Any] = await flow_run
            except Exception as err:
                console.print(f"[red]run failed:[/] {type(err).__name__}: {err}")
                raise typer.Exit(2) from None
            return result
    finally:
        await opened.__aexit__(None, None, None)
