"""Run reports: ``results.csv``, ``summary.json`` and ``failed.jsonl`` (pandas).

Job results are appended to a spool file (one JSON line each) as jobs finish, in whatever order
they finish, so memory stays flat however long the manifest is. At the end the spool becomes:

- ``results.csv``: one row per manifest row, in manifest order, with the manifest's extra columns;
  cells and column names a spreadsheet would run as formulas are escaped with a leading apostrophe;
- ``summary.json``: counts by status, images, cost by region and model and in total, rates;
- ``failed.jsonl``: failed and not-attempted rows in manifest form, ready to rerun.

Costs are exact decimals (strings in JSON, plain numbers in CSV), never floats.
"""

from __future__ import annotations

import csv
import json
import logging
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, fields
from decimal import Decimal
from pathlib import Path
from typing import Any

import pandas as pd

from qwenedit.summary import STATUSES, CostLine, RunSummary, Totals

log = logging.getLogger("qwenedit.report")

REPORT_TYPES = {
    ".csv": "text/csv",
    ".json": "application/json",
    ".jsonl": "application/x-ndjson",
    ".html": "text/html; charset=utf-8",
}


RESULT_COLUMNS = [
    "job_id",
    "status",
    "model",
    "region",
    "images_requested",
    "image_count",
    "width",
    "height",
    "unit_price",
    "cost",
    "currency",
    "request_id",
    "attempts",
    "outputs",
    "qa",
    "qa_retries",
    "error_code",
    "error_message",
    "started_at",
    "finished_at",
    "possibly_billed",
    "possibly_billed_images",
    "billed_not_stored",
    "deduplicated_from",
]

_FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")


@dataclass
class JobResult:
    """How one manifest row ended in this run."""

    row: int
    job_id: str
    status: str
    model: str
    region: str
    images_requested: int
    image_count: int = 0
    width: int | None = None
    height: int | None = None
    unit_price: str = ""
    cost: str = "0"  # what THIS run spent on the job (a skipped job costs nothing now)
    currency: str = ""
    request_id: str = ""
    attempts: int = 0
    outputs: list[str] = field(default_factory=list)
    error_code: str = ""
    error_message: str = ""
    started_at: str = ""
    finished_at: str = ""
    possibly_billed: bool = False  # a timed-out or dropped call may have been charged
    possibly_billed_images: int = 0  # worst case of those calls: n images per call whose answer was lost
    billed_not_stored: int = 0  # images paid for (now or earlier) that are not at dest
    qa: str = ""  # output QA: empty when every check passed, else "1.png=blank; 2.png=size_mismatch"
    qa_retries: int = 0  # regenerations because QA flagged the outputs (each billed, in ``cost``)
    canary: bool = False  # run in the canary phase of the run
    prompt: str = ""  # the prompt sent (for the report's contact sheet; set on executed and early rows)
    inputs: list[str] = field(default_factory=list)  # the input references, anchored (same)
    extra: dict[str, str] = field(default_factory=dict)
    manifest_row: dict[str, Any] | None = None  # for failed.jsonl
    deduplicated_from: str = ""  # --dedupe: the job whose call (and cost) this row's outputs copy


_RESULT_FIELDS = tuple(f.name for f in fields(JobResult))


def escape_formula(value: object) -> object:
    """Neutralise a cell a spreadsheet would evaluate (CSV injection)."""
    if isinstance(value, str) and value.startswith(_FORMULA_PREFIXES):
        return "'" + value
    return value


class ResultSpool:
    """Append-only JSON-lines file of ``JobResult`` records.

    It remembers, as results are added, the pass-through column names and whether the rows arrived in
    manifest order (an unchanged rerun records them in order), so the report needs no extra pass over
    a million-line spool in the common case.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = path.open("a", encoding="utf-8")
        self._known = path.stat().st_size == 0  # else lines from before this object: read them to know
        self._extra_keys: dict[str, None] = {}
        self._last_row = 0
        self._in_order = True

    def add(self, result: JobResult) -> None:
        # Not flushed per line: the ledger, not the spool, is what a crash must not lose. Fields are read
        # directly (``asdict`` deep-copies every value: 150 µs a row, most of an unchanged rerun's time).
        record = {name: getattr(result, name) for name in _RESULT_FIELDS}
        self._fh.write(json.dumps(record, ensure_ascii=False) + "\n")
        if result.extra:
            self._extra_keys.update(dict.fromkeys(result.extra))
        if result.row < self._last_row:
            self._in_order = False
        self._last_row = result.row

    def flush(self) -> None:
        if not self._fh.closed:
            self._fh.flush()

    def close(self) -> None:
        if not self._fh.closed:
            self._fh.close()

    def __iter__(self) -> Iterator[JobResult]:
        """Results in the order they finished."""
        for record in self._records():
            yield JobResult(**record)

    def _records(self, keep: Callable[[bytes], bool] | None = None) -> Iterator[dict[str, Any]]:
        with self.path.open("rb") as fh:
            for line in fh:
                if line.strip() and (keep is None or keep(line)):
                    yield json.loads(line)

    def records_in_manifest_order(
        self, skipped_after: int | None = None
    ) -> tuple[Iterator[dict[str, Any]], list[str]]:
        """Result records (dicts) sorted by manifest row, read back one at a time, and the pass-through
        column names. At most (row, file offset) pairs are held in memory: bounded for any length.

        ``skipped_after``: leave out ``skipped`` rows after the first that many lines (a report that
        shows what happened need not decode a million unchanged rows)."""
        self.flush()
        keep = None if skipped_after is None else _skipped_filter(skipped_after)
        if self._known and self._in_order:
            return self._records(keep), list(self._extra_keys)
        index: list[tuple[int, int]] = []
        extra_keys: dict[str, None] = {}
        with self.path.open("rb") as fh:
            while line := fh.readline():
                if line.strip():
                    record = json.loads(line)
                    index.append((record["row"], fh.tell() - len(line)))
                    extra_keys.update(dict.fromkeys(record["extra"]))
        index.sort()

        def read() -> Iterator[dict[str, Any]]:
            with self.path.open("rb") as fh:
                for _, offset in index:
                    fh.seek(offset)
                    line = fh.readline()
                    if keep is None or keep(line):
                        yield json.loads(line)

        return read(), list(extra_keys)

    def in_manifest_order(self, skipped_after: int | None = None) -> tuple[Iterator[JobResult], list[str]]:
        """``records_in_manifest_order`` as ``JobResult`` objects."""
        records, extra_keys = self.records_in_manifest_order(skipped_after)
        return (JobResult(**r) for r in records), extra_keys


def _skipped_filter(first: int) -> Callable[[bytes], bool]:
    """Keep every line until ``first`` lines were seen, then only lines that are not ``skipped``."""
    seen = [0]
    marker = b'"status": "skipped"'

    def keep(line: bytes) -> bool:
        seen[0] += 1
        return seen[0] <= first or marker not in line

    return keep


def csv_header(extra_keys: Sequence[str]) -> list[str]:
    """results.csv's columns: the result columns, then the manifest's pass-through columns (a
    pass-through column named like a result column keeps an ``extra:`` prefix). Names come from the
    manifest, so they are escaped like cells."""
    return [
        *RESULT_COLUMNS,
        *(f"extra:{k}" if k in RESULT_COLUMNS else str(escape_formula(k)) for k in extra_keys),
    ]


def csv_row(record: dict[str, Any], extra_keys: Sequence[str]) -> list[Any]:
    """One result record as a results.csv row: outputs space-separated, formulas escaped."""
    cells: list[Any] = []
    for col in RESULT_COLUMNS:
        value = record.get(col)
        if col == "outputs":
            value = " ".join(value or ())
        cells.append(escape_formula(value))
    extra = record.get("extra") or {}
    cells.extend(escape_formula(extra.get(k, "")) for k in extra_keys)
    return cells


def results_frame(results: Iterable[JobResult], extra_keys: Sequence[str] | None = None) -> pd.DataFrame:
    """The results table in manifest order, formulas escaped.

    ``extra_keys`` fixes the pass-through columns (so chunks of one report line up); by default they
    are the ones the results carry.
    """
    records = []
    seen: dict[str, None] = dict.fromkeys(extra_keys or ())
    for r in results:
        rec: dict[str, Any] = {col: getattr(r, col) for col in RESULT_COLUMNS}
        rec["outputs"] = " ".join(r.outputs)
        rec["_row"] = r.row
        for k, v in r.extra.items():
            if extra_keys is None:
                seen.setdefault(k, None)
            rec[f"extra:{k}"] = v
        records.append(rec)
    columns = ["_row", *RESULT_COLUMNS, *(f"extra:{k}" for k in seen)]
    frame = pd.DataFrame.from_records(records, columns=columns)
    frame = frame.sort_values("_row", kind="stable").drop(columns="_row")
    frame = frame.rename(
        columns={f"extra:{k}": str(escape_formula(k)) for k in seen if k not in RESULT_COLUMNS}
    )
    for col in frame.columns:
        frame[col] = frame[col].map(escape_formula)
    return frame.reset_index(drop=True)


@dataclass
class RunTotals:
    """Aggregates of a run, built incrementally so the summary never needs the whole table."""

    counts: Counter[str] = field(default_factory=Counter)
    images: int = 0
    images_requested: int = 0
    cost: dict[tuple[str, str, str], Decimal] = field(default_factory=dict)  # (region, model, currency)
    possibly_billed: int = 0
    possibly_billed_images: int = 0
    possibly_billed_cost: dict[str, Decimal] = field(default_factory=dict)  # by currency, worst case
    billed_not_stored: int = 0
    qa_flagged_jobs: int = 0
    qa_flagged_images: int = 0
    qa_retries: int = 0
    dedupe_saved_calls: int = 0  # --dedupe: rows stored from an identical row's call instead of their own
    dedupe_saved_cost: dict[str, Decimal] = field(default_factory=dict)  # by currency

    def add(self, r: JobResult) -> None:
        self.counts[r.status] += 1
        self.images_requested += r.images_requested
        if r.status == "succeeded":
            self.images += r.image_count
        cost = Decimal(r.cost or "0")
        if cost:
            key = (r.region, r.model, r.currency)
            self.cost[key] = self.cost.get(key, Decimal(0)) + cost
        self.possibly_billed += int(r.possibly_billed)
        self.possibly_billed_images += r.possibly_billed_images
        if r.possibly_billed_images and r.unit_price:
            worst = Decimal(r.unit_price) * r.possibly_billed_images
            cost_so_far = self.possibly_billed_cost.get(r.currency, Decimal(0))
            self.possibly_billed_cost[r.currency] = cost_so_far + worst
        self.billed_not_stored += r.billed_not_stored
        if r.qa:
            self.qa_flagged_jobs += 1
            self.qa_flagged_images += r.qa.count("=")
        self.qa_retries += r.qa_retries
        if r.deduplicated_from and r.status == "succeeded":
            self.dedupe_saved_calls += 1
            saved = Decimal(r.unit_price or "0") * r.image_count
            self.dedupe_saved_cost[r.currency] = self.dedupe_saved_cost.get(r.currency, Decimal(0)) + saved

    def total_cost(self) -> dict[str, str]:
        by_currency: dict[str, Decimal] = {}
        for (_, _, currency), amount in self.cost.items():
            by_currency[currency] = by_currency.get(currency, Decimal(0)) + amount
        return {c: str(a) for c, a in sorted(by_currency.items())}

    def totals(self) -> Totals:
        """What was added so far, as the summary carries it."""
        return Totals(
            jobs=sum(self.counts.values()),
            by_status={s: self.counts.get(s, 0) for s in STATUSES},
            images_requested=self.images_requested,
            images_stored=self.images,
            possibly_billed_jobs=self.possibly_billed,
            possibly_billed_images=self.possibly_billed_images,
            possibly_billed_cost={c: str(a) for c, a in sorted(self.possibly_billed_cost.items())},
            billed_not_stored_images=self.billed_not_stored,
            qa_flagged_jobs=self.qa_flagged_jobs,
            qa_flagged_images=self.qa_flagged_images,
            qa_retries=self.qa_retries,
            dedupe_saved_calls=self.dedupe_saved_calls,
            dedupe_saved_cost={c: str(a) for c, a in sorted(self.dedupe_saved_cost.items())},
            cost_by_region_model=tuple(
                CostLine(region, model, currency, str(amount))
                for (region, model, currency), amount in sorted(self.cost.items())
            ),
            total_cost=self.total_cost(),
        )

    def to_dict(self) -> dict[str, Any]:
        """``totals()`` in its summary.json form."""
        return self.totals().to_json()


def write_reports(spool: ResultSpool, summary: dict[str, Any], out_dir: Path) -> dict[str, Path]:
    """Write results.csv, summary.json and failed.jsonl into ``out_dir``, streaming in manifest order."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        "results.csv": out_dir / "results.csv",
        "summary.json": out_dir / "summary.json",
        "failed.jsonl": out_dir / "failed.jsonl",
    }
    records, extra_keys = spool.records_in_manifest_order()
    with (
        paths["results.csv"].open("w", encoding="utf-8", newline="") as csv_fh,
        paths["failed.jsonl"].open("w", encoding="utf-8") as failed_fh,
    ):
        writer = csv.writer(csv_fh, lineterminator="\n")
        writer.writerow(csv_header(extra_keys))
        for record in records:
            writer.writerow(csv_row(record, extra_keys))
            if record["status"] in ("failed", "not_attempted") and record.get("manifest_row") is not None:
                failed_fh.write(json.dumps(record["manifest_row"], ensure_ascii=False) + "\n")
    paths["summary.json"].write_text(
        json.dumps(summary, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    return paths


def save_reports(destination: Any, run_id: str, paths: dict[str, Path]) -> None:
    """Upload a run's report files to ``{dest}/_runs/{run_id}/`` (single and sharded runs alike).

    The local copies exist: a storage hiccup here is a warning, never the loss of a finished run's outcome.
    """
    for name, path in paths.items():
        try:
            destination.put_bytes(f"_runs/{run_id}/{name}", path.read_bytes(), REPORT_TYPES[path.suffix])
        except Exception as err:
            log.warning("could not upload %s to the destination: %s", name, type(err).__name__)


def markdown_summary(summary: RunSummary) -> str:
    """The run summary as markdown, for the Prefect artifact and the README."""
    totals = summary.totals
    lines = [
        f"# qwenedit run `{summary.run_id}`",
        "",
        "| status | jobs |",
        "|---|---|",
        *(f"| {s} | {totals.count(s)} |" for s in STATUSES),
        "",
        f"Images stored: **{totals.images_stored}** of {totals.images_requested} requested.",
        "",
        "| region | model | cost |",
        "|---|---|---|",
        *(f"| {c.region} | {c.model} | {c.cost} {c.currency} |" for c in totals.cost_by_region_model),
        "",
        "Total: " + (", ".join(f"**{a} {c}**" for c, a in totals.total_cost.items()) or "**0**"),
    ]
    for count, label in (
        (totals.possibly_billed_jobs, "jobs possibly billed (timed out or dropped)"),
        (totals.billed_not_stored_images, "images billed but not stored"),
        (totals.qa_flagged_images, "output images flagged by QA (kept: see the qa column)"),
    ):
        if count:
            lines.append(f"\n⚠ {count} {label}.")
    if summary.rollups:
        from qwenedit.rollups import markdown_rollups

        lines.append("\n" + markdown_rollups(list(summary.rollups)))
    lines.append(
        f"\nWall time {summary.wall_time_s:.1f} s · {summary.requests_sent} requests · "
        f"{summary.request_rate:.3f} req/s · {summary.throttled_429} × 429"
    )
    return "\n".join(lines) + "\n"
