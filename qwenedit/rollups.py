"""Roll-ups: jobs, images and cost per value of one or more group-by columns, built as results stream in.

A group-by spec names one column (``sku``) or several joined with ``+`` (``sku+region``: one group
per combination). A column is a field of the result (``model``, ``region``, ``status``) or a manifest
pass-through column, read from ``JobResult.extra``; a row without it groups under ``""``.

``Rollups(["sku", "region"]).add(result)`` for every ``JobResult`` (any order), then:

- ``to_dict()``: a JSON-able list for summary.json, one entry per spec, groups sorted by value;
- ``markdown()``: tables for the Prefect summary artifact; ``text()``: aligned tables for a terminal.

Per group: ``jobs`` (rows), ``succeeded``, ``failed``, ``images`` (stored by succeeded jobs, as in the
run totals) and ``cost`` (what this run spent, exact ``Decimal`` per currency, strings in JSON). The
sum of the groups' costs equals the run's total cost.

Memory is bounded: at most ``max_groups`` distinct values per spec are kept; rows of further values
are summed into one ``other`` entry (and ``to_dict`` says how many rows went there), so grouping a
million-row catalogue by a unique column cannot exhaust memory. Renderings list at most ``max_rows``
groups each, the largest by cost first. Pure; no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Protocol

from qwenedit.catalog import format_money

RESULT_FIELDS = ("model", "region", "status")


class ResultRow(Protocol):
    """What a roll-up reads of one job's result (``report.JobResult`` is one; rollups sits below report)."""

    @property
    def status(self) -> str: ...
    @property
    def model(self) -> str: ...
    @property
    def region(self) -> str: ...
    @property
    def image_count(self) -> int: ...
    @property
    def cost(self) -> str: ...
    @property
    def currency(self) -> str: ...
    @property
    def extra(self) -> Mapping[str, str]: ...


MAX_GROUPS = 10_000
EMPTY_LABEL = "(empty)"


def parse_group_by(spec: str) -> tuple[str, ...]:
    """``"sku+region"`` → ``("sku", "region")``; raises ValueError for an empty or repeated column."""
    columns = tuple(part.strip() for part in spec.split("+"))
    if not spec.strip() or any(not c for c in columns):
        raise ValueError(f"--group-by {spec!r}: name a column, or columns joined with '+' (sku+region)")
    if len(set(columns)) != len(columns):
        raise ValueError(f"--group-by {spec!r} names a column twice")
    return columns


def unknown_columns(specs: Iterable[str], columns: Iterable[str]) -> list[str]:
    """Group-by columns that are neither result fields nor among ``columns`` (a manifest's header):
    for the run layer to refuse a typo (``--group-by skuu``) before anything is spent."""
    known = set(RESULT_FIELDS) | set(columns)
    wanted = [c for spec in specs for c in parse_group_by(spec)]
    return list(dict.fromkeys(c for c in wanted if c not in known))


@dataclass
class GroupTotals:
    """The totals of one group."""

    jobs: int = 0
    succeeded: int = 0
    failed: int = 0
    images: int = 0
    cost: dict[str, Decimal] = field(default_factory=dict)  # currency → amount

    def add(self, r: ResultRow) -> None:
        self.jobs += 1
        if r.status == "succeeded":
            self.succeeded += 1
            self.images += r.image_count
        elif r.status == "failed":
            self.failed += 1
        amount = Decimal(r.cost or "0")
        if amount:
            self.cost[r.currency] = self.cost.get(r.currency, Decimal(0)) + amount

    def to_dict(self) -> dict[str, Any]:
        return {
            "jobs": self.jobs,
            "succeeded": self.succeeded,
            "failed": self.failed,
            "images": self.images,
            "cost": {c: str(a) for c, a in sorted(self.cost.items())},
        }

    def cost_text(self) -> str:
        return ", ".join(format_money(a, c) for c, a in sorted(self.cost.items())) or "0"

    def sort_cost(self) -> Decimal:
        return sum(self.cost.values(), Decimal(0))


class Rollup:
    """The groups of one group-by spec."""

    def __init__(self, spec: str, max_groups: int = MAX_GROUPS) -> None:
        self.spec = spec
        self.columns = parse_group_by(spec)
        self.max_groups = max_groups
        self.groups: dict[tuple[str, ...], GroupTotals] = {}
        self.other = GroupTotals()  # rows whose value came after max_groups others
        self.seen_columns: set[str] = set()  # columns some row actually had

    def add(self, r: ResultRow) -> None:
        key = tuple(self._value(r, c) for c in self.columns)
        group = self.groups.get(key)
        if group is None:
            if len(self.groups) >= self.max_groups:
                self.other.add(r)
                return
            group = self.groups[key] = GroupTotals()
        group.add(r)

    def _value(self, r: ResultRow, column: str) -> str:
        if column in RESULT_FIELDS:
            self.seen_columns.add(column)
            return str(getattr(r, column))
        value = r.extra.get(column)
        if value is None:
            return ""
        self.seen_columns.add(column)
        return str(value).strip()

    def to_dict(self) -> dict[str, Any]:
        return {
            "group_by": list(self.columns),
            "groups": [
                {"key": dict(zip(self.columns, key, strict=True)), **totals.to_dict()}
                for key, totals in sorted(self.groups.items())
            ],
            "other": self.other.to_dict() if self.other.jobs else None,
            "max_groups": self.max_groups,
            "missing_columns": [c for c in self.columns if c not in self.seen_columns],
        }


class Rollups:
    """Every roll-up of a run: one per group-by spec."""

    def __init__(self, specs: Sequence[str], max_groups: int = MAX_GROUPS) -> None:
        self.rollups = [Rollup(spec, max_groups) for spec in dict.fromkeys(specs)]

    def __bool__(self) -> bool:
        return bool(self.rollups)

    def add(self, r: ResultRow) -> None:
        for rollup in self.rollups:
            rollup.add(r)

    def add_all(self, results: Iterable[ResultRow]) -> Rollups:
        for r in results:
            self.add(r)
        return self

    def to_dict(self) -> list[dict[str, Any]]:
        """For ``summary["rollups"]``."""
        return [r.to_dict() for r in self.rollups]

    def markdown(self, max_rows: int = 100) -> str:
        return markdown_rollups(self.to_dict(), max_rows)

    def text(self, max_rows: int = 30) -> str:
        return text_rollups(self.to_dict(), max_rows)


def _rows(rollup: dict[str, Any], max_rows: int) -> tuple[list[list[str]], int]:
    """Display rows (values…, jobs, images, cost) of a roll-up dict, largest cost first, and how many
    groups were left out."""
    columns = rollup["group_by"]

    def cost_sum(g: dict[str, Any]) -> Decimal:
        return sum((Decimal(a) for a in g["cost"].values()), Decimal(0))

    groups = sorted(
        rollup["groups"],
        key=lambda g: (-cost_sum(g), -g["jobs"], [g["key"][c] for c in columns]),
    )
    shown = groups[:max_rows]
    rows = [
        [*(g["key"][c] or EMPTY_LABEL for c in columns), str(g["jobs"]), str(g["images"]), _money(g["cost"])]
        for g in shown
    ]
    omitted = len(groups) - len(shown)
    if rollup.get("other"):
        other = rollup["other"]
        rows.append(
            [f"(other values, past {rollup['max_groups']:,})"]
            + [""] * (len(columns) - 1)
            + [str(other["jobs"]), str(other["images"]), _money(other["cost"])]
        )
    return rows, omitted


def _money(cost: dict[str, str]) -> str:
    return ", ".join(format_money(Decimal(a), c) for c, a in sorted(cost.items())) or "0"


def _title(rollup: dict[str, Any]) -> str:
    title = "By " + " × ".join(rollup["group_by"])
    if rollup.get("missing_columns"):
        title += f" (no row has {', '.join(rollup['missing_columns'])})"
    return title


def markdown_rollups(rollups: Sequence[dict[str, Any]], max_rows: int = 100) -> str:
    """Markdown tables of ``Rollups.to_dict()`` output (cells escaped for markdown tables)."""
    out: list[str] = []
    for rollup in rollups:
        columns = rollup["group_by"]
        rows, omitted = _rows(rollup, max_rows)
        out += [f"### {_md(_title(rollup))}", ""]
        out.append("| " + " | ".join([*map(_md, columns), "jobs", "images", "cost"]) + " |")
        out.append("|" + "---|" * len(columns) + "---:|---:|---:|")
        out += ["| " + " | ".join(_md(cell) for cell in row) + " |" for row in rows]
        if omitted:
            out.append(f"\n… and {omitted:,} more groups in summary.json.")
        out.append("")
    return "\n".join(out)


def text_rollups(rollups: Sequence[dict[str, Any]], max_rows: int = 30) -> str:
    """Plain aligned tables of ``Rollups.to_dict()`` output, for a terminal."""
    out: list[str] = []
    for rollup in rollups:
        columns = rollup["group_by"]
        rows, omitted = _rows(rollup, max_rows)
        header = [*columns, "jobs", "images", "cost"]
        table = [header, *rows]
        widths = [max(len(row[i]) for row in table) for i in range(len(header))]
        numeric = {len(columns), len(columns) + 1, len(columns) + 2}
        out.append(_title(rollup))
        for row in table:
            cells = [
                cell.rjust(widths[i]) if i in numeric else cell.ljust(widths[i]) for i, cell in enumerate(row)
            ]
            out.append("  ".join(cells).rstrip())
        if omitted:
            out.append(f"… and {omitted:,} more groups in summary.json")
        out.append("")
    return "\n".join(out)


def _md(text: str) -> str:
    """A table cell that cannot break the table or smuggle markup: pipes, newlines, HTML, links."""
    text = " ".join(str(text).split())
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    for ch in ("\\", "|", "`", "*", "_", "[", "]", "#"):
        text = text.replace(ch, "\\" + ch)
    return text
