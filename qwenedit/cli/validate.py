"""`qwenedit validate`: every problem in a manifest at once, the quote, and whether it fits the budget.

Exit codes: 0 valid (warnings allowed) and within budget; 1 invalid rows or over budget; 2 the
manifest cannot be read, an option is wrong, or rows break the policy given by the policy flags
(``--allow-model``, ``--max-n``, ``--max-rows``, ``--allow-input-prefix``; and a row of a region
without an endpoint: ``--region-endpoint``), as ``qwenedit run`` with the same flags would refuse them. Every failure ends in a message, never a traceback.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any

import typer
from PIL import Image
from rich.console import Console
from rich.table import Table
from rich.text import Text

from qwenedit.catalog import (
    ModelTable,
    format_money,
    load_models,
    normalize_model,
    normalize_region,
    parse_money,
)
from qwenedit.cli._app import app
from qwenedit.cli._text import plain, safe_json
from qwenedit.cli.options import option_flags
from qwenedit.dedupe import DuplicateGroup, find_duplicates
from qwenedit.errors import ManifestError, MixedCurrencies, PriceFileError, TemplateError
from qwenedit.inputs import InputResolver
from qwenedit.jobs import DEFAULT_MODEL
from qwenedit.manifest import (
    ROW_NUMBERS,
    ManifestLimits,
    Problem,
    Validation,
    iter_jobs,
    manifest_base,
    validate_manifest,
)
from qwenedit.policy import Policy, make_policy
from qwenedit.rates import with_stated_limits
from qwenedit.storage import make_s3_client
from qwenedit.templates import parse_template

EXIT_OK, EXIT_INVALID, EXIT_UNREADABLE = 0, 1, 2
EXIT_POLICY = 2  # what `qwenedit run` exits with for the same breaches


class _Fail(Exception):
    """A message for the user and the exit code that goes with it."""

    def __init__(self, message: str, code: int = EXIT_UNREADABLE) -> None:
        super().__init__(message)
        self.code = code


POLICY = ("allow_model", "max_n", "max_rows", "allow_input_prefix", "region_endpoint")  # qwenedit.policy
SHARED_WITH_RUN = (
    "manifest",
    "region",
    "model",
    "budget",
    "prices",
    "input_root",
    "prompt_template",
    "rates",
    "allow_private_urls",
    "max_manifest_mib",
    "max_manifest_decompressed_mib",
    "max_manifest_rows",
    *POLICY,
)


def manifest_limits(fields: dict[str, Any]) -> ManifestLimits:
    """The manifest limits the ``--max-manifest-*`` flags set (the same fields as ``RunOptions``)."""
    mib = 1024 * 1024
    return ManifestLimits(
        max_bytes=fields["max_manifest_mib"] * mib,
        max_decompressed_bytes=fields["max_manifest_decompressed_mib"] * mib,
        max_rows=fields["max_manifest_rows"],
    )


@app.command()
@option_flags(*SHARED_WITH_RUN)
def validate(
    fields: dict[str, Any],
    check_images: Annotated[
        bool,
        typer.Option(
            "--check-images",
            help="Also open every local and S3 image (format, size, pixels) and HEAD every URL (public addresses only).",
        ),
    ] = False,
    json_output: Annotated[
        bool, typer.Option("--json", help="Print one JSON object instead of tables.")
    ] = False,
    max_problems: Annotated[
        int,
        typer.Option(min=1, help="List at most this many errors and this many warnings (all are counted)."),
    ] = 1000,
) -> None:
    """Check a manifest before a cent is spent: every problem (row, job_id, column, reason) and the cost.

    The options shared with `run` mean the same here; with --budget, exit 1 if the worst case exceeds it."""
    out = Console(soft_wrap=False, highlight=False)
    err = Console(stderr=True, highlight=False)
    # Pillow warns about huge images while --check-images opens them; we report those ourselves.
    warnings.simplefilter("ignore", Image.DecompressionBombWarning)
    try:
        code = _run(
            out,
            err,
            fields["manifest"],
            fields["region"],
            fields["model"] or DEFAULT_MODEL,
            fields["budget"],
            check_images,
            json_output,
            None if fields["prices"] is None else Path(fields["prices"]),
            None if fields["input_root"] is None else Path(fields["input_root"]),
            max_problems,
            fields["prompt_template"],
            fields["allow_private_urls"],
            manifest_limits(fields),
            _policy(fields),
            tuple(fields["rates"] or ()),
        )
    except _Fail as fail:
        _print_failure(out, err, fail, json_output)
        code = fail.code
    except KeyboardInterrupt:
        err.print("interrupted")
        code = 130
    except Exception as exc:  # a bug, but the user still gets a sentence, not a traceback
        _print_failure(
            out, err, _Fail(f"unexpected error ({type(exc).__name__}: {exc}); please report it"), json_output
        )
        code = EXIT_UNREADABLE
    raise typer.Exit(code)


def _policy(fields: dict[str, Any]) -> Policy:
    """The policy the run's flags set (the same as ``qwenedit run`` builds from its options)."""
    try:
        return make_policy(
            region=fields["region"],
            allow_model=fields["allow_model"] or (),
            max_n=fields["max_n"],
            max_rows=fields["max_rows"],
            allow_input_prefix=fields["allow_input_prefix"] or (),
            region_endpoint=fields["region_endpoint"] or (),
        )
    except ValueError as exc:
        raise _Fail(f"policy: {exc}") from None


def _echo_json(payload: dict[str, Any]) -> None:
    # Plain text, never through rich: a terminal-width wrap would break the JSON for machines.
    typer.echo(safe_json(json.dumps(payload, ensure_ascii=False, indent=2)))


def _print_failure(out: Console, err: Console, fail: _Fail, json_output: bool) -> None:
    if json_output:
        _echo_json({"valid": False, "error": str(fail), "exit_code": fail.code})
    else:
        err.print(plain(f"qwenedit validate: {fail}", style="bold red"))


def _run(
    out: Console,
    err: Console,
    manifest: str,
    region: str,
    model: str,
    budget_text: str | None,
    check_images: bool,
    json_output: bool,
    prices_path: Path | None,
    input_root: Path | None,
    max_problems: int,
    prompt_template: str | None = None,
    allow_private_urls: bool = False,
    limits: ManifestLimits | None = None,
    policy: Policy | None = None,
    rates: tuple[str, ...] = (),
) -> int:
    try:
        prices = with_stated_limits(load_models(prices_path), rates)  # --rps MODEL=RATE states a limit
    except PriceFileError as exc:
        raise _Fail(str(exc)) from None
    except ValueError as exc:
        raise _Fail(f"--rps {exc}") from None
    region, model = _check_defaults(prices, region, model)
    budget: tuple[Decimal, str] | None = None
    if budget_text is not None:
        try:
            budget = parse_money(budget_text)
        except ValueError as exc:
            raise _Fail(f"--budget {exc}") from None
    if input_root is not None and not input_root.is_dir():
        raise _Fail(f"--input-root {str(input_root)!r} is not a folder")
    try:
        template = parse_template(prompt_template)
    except TemplateError as exc:
        raise _Fail(f"--prompt-template: {exc}") from None

    status = None
    groups: list[DuplicateGroup] = []
    if not json_output and err.is_terminal:
        status = err.status(f"Reading {manifest} …")
        status.start()
    try:
        result = validate_manifest(
            manifest,
            region=region,
            model=model,
            prices=prices,
            input_root=input_root,
            check_images=check_images,
            max_problems=max_problems,
            progress=(lambda n: status.update(f"Reading {manifest} … {n:,} rows")) if status else None,
            prompt_template=template,
            allow_private_urls=allow_private_urls,
            limits=limits,
            policy=policy,
        )
        groups = _duplicates(result, manifest, region, model, prices, input_root, template, limits)
    except ManifestError as exc:
        raise _Fail(str(exc)) from None
    finally:
        if status is not None:
            status.stop()

    fits: bool | None = None
    budget_note = ""
    if budget is not None:
        amount, currency = budget
        try:
            fits = result.quote.fits(amount, currency)
        except MixedCurrencies as exc:
            raise _Fail(f"cannot check a {currency} budget: {exc}; use a budget in that currency") from None
        worst = format_money(result.quote.total(currency), currency)
        if fits:
            budget_note = f"budget {format_money(amount, currency)}: fits (worst case {worst})"
        else:
            over = format_money(result.quote.total(currency) - amount, currency)
            budget_note = f"budget {format_money(amount, currency)}: OVER by {over} (worst case {worst})"
    code = EXIT_OK if result.ok and fits is not False else EXIT_INVALID
    if result.breaches:
        code = EXIT_POLICY
    if json_output:
        payload: dict[str, Any] = result.to_dict()
        payload["duplicates"] = [g.to_dict() for g in groups]
        payload["duplicate_rows"] = sum(len(g.duplicates) for g in groups)
        payload["budget"] = (
            None
            if budget is None
            else {"amount": str(budget[0]), "currency": budget[1], "fits": fits, "message": budget_note}
        )
        payload["exit_code"] = code
        _echo_json(payload)
    else:
        _print_human(out, result, budget_note, fits, code)
    return code


def _duplicates(
    result: Validation,
    manifest: str,
    region: str,
    model: str,
    prices: ModelTable,
    input_root: Path | None,
    template: Any,
    limits: ManifestLimits | None = None,
) -> list[DuplicateGroup]:
    """Rows asking for the same edit as an earlier row, each group added to ``result`` as one warning
    (located at the group's first row)."""
    if result.valid_rows < 2:
        return []
    reading: dict[str, Any] = {
        "region": region,
        "model": model,
        "prices": prices,
        "input_root": input_root,
        "prompt_template": template,
        "on_invalid": "skip",
        "limits": limits,
    }
    resolver = InputResolver(
        input_root=input_root, manifest_dir=manifest_base(manifest), s3_client_factory=make_s3_client
    )
    try:
        groups = find_duplicates(lambda: iter_jobs(manifest, **reading), resolver.identity)
    finally:
        resolver.close()
    found = [Problem(g.row, g.job_id, None, g.reason(), severity="warning") for g in groups]
    result.problems = sorted([*result.problems, *found], key=lambda p: p.row or 0)  # stable
    result.warnings += len(found)
    return groups


def _check_defaults(prices: ModelTable, region: str, model: str) -> tuple[str, str]:
    r, m = normalize_region(region), normalize_model(model)
    if r not in prices.regions():
        raise _Fail(f"--region {region!r} is not a known region; known: {', '.join(prices.regions())}")
    if m not in prices.models():
        raise _Fail(f"--model {model!r} is not a known model; known: {', '.join(prices.models())}")
    if not prices.has(r, m):
        raise _Fail(f"--model {m} has no known price in {r}; add one with --prices")
    return r, m


def print_problems(problems: Sequence[Problem], console: Console, *, title: str = "Problems") -> None:
    """The problems as a table: row, line, job_id, column, severity, reason (shared with `qwenedit run`);
    the manifest's text in it is shown inert (``qwenedit.cli._text``)."""
    table = Table(title=title, title_justify="left", caption=ROW_NUMBERS, caption_justify="left")
    for name in ("row", "line"):
        table.add_column(name, justify="right")
    for name in ("job_id", "column"):
        table.add_column(name, overflow="fold")
    table.add_column("", no_wrap=True)
    table.add_column("problem", overflow="fold")
    for p in problems:
        table.add_row(
            "" if p.row is None else str(p.row),
            "" if p.line is None else str(p.line),
            plain(p.job_id or ""),
            plain(p.column or ""),
            Text(p.severity, style="red" if p.severity == "error" else "yellow"),
            plain(p.reason),
        )
    console.print(table)


def _print_human(out: Console, result: Validation, budget_note: str, fits: bool | None, code: int) -> None:
    kind = "CSV" if result.format == "csv" else "JSONL"
    out.print(
        Text.assemble(
            ("Manifest ", "bold"), plain(result.source, "bold cyan"), f"  {kind}, {result.rows:,} rows"
        )
    )
    if result.problems:
        print_problems(
            result.problems,
            out,
            title=f"Problems: {_count(result.errors, 'error')}, {_count(result.warnings, 'warning')}",
        )
        if result.problems_omitted:
            out.print(
                f"… and {result.problems_omitted:,} more not listed (raise --max-problems to see them)",
                style="dim",
            )

    lines = result.quote.lines
    if lines:
        table = Table(
            title=f"Quote: {result.valid_rows:,} valid rows, if every requested image is generated",
            title_justify="left",
        )
        for name in ("region", "model", "jobs", "images", "unit price", "cost"):
            table.add_column(name, justify="right" if name not in ("region", "model") else "left")
        for ln in lines:
            table.add_row(
                ln.region,
                ln.model,
                f"{ln.jobs:,}",
                f"{ln.images:,}",
                format_money(ln.price.amount, ln.price.currency),
                format_money(ln.cost, ln.price.currency),
            )
        for currency, total in result.quote.totals.items():
            table.add_row(
                Text("total", style="bold"), "", "", "", "", Text(format_money(total, currency), style="bold")
            )
        out.print(table)
    if budget_note:
        out.print(Text(budget_note[0].upper() + budget_note[1:], style="green" if fits else "bold red"))
    for note in result.notices:
        out.print(Text(f"note: {note}", style="yellow"))

    totals = ", ".join(format_money(a, c) for c, a in result.quote.totals.items()) or "$0.00"
    if code == EXIT_OK:
        warn = f" ({_count(result.warnings, 'warning')})" if result.warnings else ""
        out.print(
            Text(
                f"✓ Valid{warn}: {result.quote.jobs:,} jobs, {result.quote.images:,} images, "
                f"at most {totals}.",
                style="bold green",
            )
        )
    elif not result.ok:
        out.print(
            Text(
                f"✗ Invalid: {_count(result.errors, 'error')}, {_count(result.warnings, 'warning')} in "
                f"{result.rows:,} rows. Fix the errors and validate again.",
                style="bold red",
            )
        )
    else:
        out.print(Text("✗ Over budget.", style="bold red"))
    if result.breaches:
        out.print(
            Text(
                f"✗ {result.breaches:,} breach{'' if result.breaches == 1 else 'es'} of the policy: "
                "`qwenedit run` with the same flags refuses this manifest before any call.",
                style="bold red",
            )
        )


def _count(n: int, word: str) -> str:
    return f"{n:,} {word}" + ("" if n == 1 else "s")
