"""Located problems: one thing wrong with a manifest, named by row, job_id, column and reason, and the
collection of them a validation reports (every problem counted, the first ``max_problems`` of each
severity kept, sorted by row and column).

Row numbers. ``row N`` is the Nth record after the CSV header (or the Nth line of a JSONL file);
blank rows are skipped but still counted. So without line breaks inside quoted cells, CSV row N is
on file line N + 1 (the spreadsheet's row number) and JSONL row N is on line N. Every problem also
carries ``line``, the file line its record starts on, which stays right when cells span lines.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from qwenedit.catalog import Quote
from qwenedit.errors import location_text
from qwenedit.jobs import CSV_COLUMNS

Severity = Literal["error", "warning"]

ROW_NUMBERS = (
    "row N is the Nth record after the header (the Nth line of a JSONL file), blank rows counted; "
    "line is the file line the record starts on"
)
COLUMN_ORDER = {name: i for i, name in enumerate((*CSV_COLUMNS[:4], "images", *CSV_COLUMNS[4:]))}


@dataclass(frozen=True)
class Problem:
    """One thing wrong (``error``: the row cannot run) or worth knowing (``warning``) in a manifest.

    ``row`` is None for problems with the file or its header."""

    row: int | None
    job_id: str | None
    column: str | None
    reason: str
    severity: Severity = "error"
    line: int | None = None

    @property
    def where(self) -> str:
        """``row 4 (job_id "shirt-red"), column n``; ``header, column prompt``; ``header``; ``manifest``."""
        if self.row is not None:
            return location_text(self.row, self.job_id, self.column)
        if self.column:
            return f"header, column {self.column}"
        return "header" if self.line is not None else "manifest"

    def message(self) -> str:
        """The problem as one line: ``row 4 (job_id "shirt-red"), column n: must be ...``."""
        return f"{self.where}: {self.reason}"

    def __str__(self) -> str:
        return self.message()

    def to_dict(self) -> dict[str, Any]:
        return {
            "row": self.row,
            "line": self.line,
            "job_id": self.job_id,
            "column": self.column,
            "severity": self.severity,
            "reason": self.reason,
            "message": self.message(),
        }


@dataclass
class Validation:
    """The outcome of validating a whole manifest."""

    source: str
    format: str
    rows: int = 0  # records read (blank ones excluded)
    valid_rows: int = 0
    errors: int = 0
    warnings: int = 0
    problems: list[Problem] = field(default_factory=list)  # sorted; at most max_problems per severity
    quote: Quote = field(default_factory=Quote)
    delimiter: str | None = None
    breaches: int = 0  # errors that are breaches of the run's policy (qwenedit.policy)
    notices: list[str] = field(default_factory=list)  # e.g. a legacy model and the one that replaces it

    @property
    def ok(self) -> bool:
        """No errors (warnings do not fail validation)."""
        return self.errors == 0

    @property
    def job_count(self) -> int:
        """Rows that would run (all of them once the manifest is valid)."""
        return self.valid_rows

    @property
    def problems_omitted(self) -> int:
        return self.errors + self.warnings - len(self.problems)

    def to_dict(self) -> dict[str, Any]:
        return {
            "manifest": self.source,
            "format": self.format,
            "valid": self.ok,
            "rows": self.rows,
            "valid_rows": self.valid_rows,
            "errors": self.errors,
            "warnings": self.warnings,
            "row_numbers": ROW_NUMBERS,
            "problems": [p.to_dict() for p in self.problems],
            "problems_omitted": self.problems_omitted,
            "policy_breaches": self.breaches,
            "quote": self.quote.to_dict(),
            "notices": list(self.notices),
        }


class ProblemStore:
    """Counts every problem; keeps the first ``limit`` of each severity."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.kept: dict[str, list[Problem]] = {"error": [], "warning": []}
        self.counts = {"error": 0, "warning": 0}

    def add(self, problems: Iterable[Problem]) -> None:
        for p in problems:
            self.counts[p.severity] += 1
            kept = self.kept[p.severity]
            if len(kept) < self.limit:
                kept.append(p)

    def sorted(self) -> list[Problem]:
        merged = self.kept["error"] + self.kept["warning"]
        return sorted(merged, key=lambda p: (p.row or 0, COLUMN_ORDER.get(p.column or "", 99), p.severity))
