"""`qwenedit spend LEDGER`: what the runs of a spend ledger spent, per UTC day, month, model and run.

Read from the ledger's log (``{ledger}/_spend/``, see ``qwenedit.spend``). ``spent`` is what was charged,
``possibly`` what calls whose answer was lost may have cost (worst case), ``held`` what runs reserved and
have not settled (a run in progress, or one that died: it counts against the caps in full), ``counted``
the sum the caps weigh. Exit codes: 0 shown · 2 the ledger cannot be read.
"""

from __future__ import annotations

import json
import re
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from qwenedit.cli._app import app

COLUMNS = ("spent", "possibly", "held", "counted")


def spend_tables(report: dict[str, Any]) -> list[Table]:
    """One table per grouping (day, month, model, run)."""
    tables = []
    for kind, title in (
        ("day", "per UTC day"),
        ("month", "per UTC month"),
        ("model", "per model"),
        ("run", "per run"),
    ):
        rows = report[kind + "s"]
        table = Table(title=f"spend {title}", title_justify="left")
        table.add_column(kind)
        for column in COLUMNS:
            table.add_column(column, justify="right")
        table.add_column("currency")
        if kind == "run":
            table.add_column("settled")
        for row in rows:
            cells = [row[kind], *(row[c] for c in COLUMNS), row["currency"]]
            if kind == "run":
                cells.append("yes" if row["settled"] else "no (held)")
            table.add_row(*cells)
        tables.append(table)
    return tables


@app.command()
def spend(
    ledger: Annotated[str, typer.Argument(help="the spend ledger: s3://bucket/prefix or a folder")],
    as_json: Annotated[bool, typer.Option("--json", help="print JSON for machines")] = False,
    month: Annotated[
        list[str] | None, typer.Option("--month", help="only this UTC month, YYYY-MM (repeatable)")
    ] = None,
    daily_budget: Annotated[
        str | None, typer.Option("--daily-budget", help="also show this daily cap: counted and left today")
    ] = None,
    monthly_budget: Annotated[
        str | None,
        typer.Option("--monthly-budget", help="also show this monthly cap: counted and left this month"),
    ] = None,
) -> None:
    """Print the spend of every run of LEDGER per UTC day, month, model and run (and, given caps, what
    is left of them now)."""
    from qwenedit.redact import install_log_redaction

    install_log_redaction()
    from qwenedit.spend import Caps, SpendLedger, caps_status, spend_report
    from qwenedit.storage import open_destination

    err = Console(stderr=True)
    for text in month or ():
        if not re.fullmatch(r"\d{4}-\d{2}", text):
            err.print(f"[red]error:[/] --month: expected YYYY-MM, got {text!r}", highlight=False)
            raise typer.Exit(2)
    try:
        caps = Caps.parse(daily_budget, monthly_budget)
    except ValueError as error:
        err.print(f"[red]error:[/] {error}", highlight=False)
        raise typer.Exit(2) from None
    try:
        opened = SpendLedger(open_destination(ledger))
        report = spend_report(opened, month or None)
        if caps.active:
            report["caps"] = caps_status(opened, caps)
    except Exception as error:  # unreachable store, unreadable record: one line, no traceback
        err.print(f"[red]error:[/] spend ledger {ledger}: {type(error).__name__}: {error}", highlight=False)
        raise typer.Exit(2) from None
    if as_json:
        typer.echo(json.dumps(report, indent=2))
        return
    out = Console()
    out.print(f"spend ledger {report['ledger']}", highlight=False)
    for cap in report.get("caps", ()):
        state = "[red]reached[/]" if cap["reached"] else "not reached"
        out.print(
            f"{cap['cap']} cap {cap['limit']} for {cap['period']}: {cap['counted']} counted, "
            f"{cap['left']} left ({state})",
            highlight=False,
        )
    if not report["runs"]:
        out.print("no spend recorded")
        return
    for table in spend_tables(report):
        out.print(table)
