"""Records: one row of a CSV or JSONL manifest as canonical fields, image references and extra columns,
before any field check. Streaming; a ragged row or a bad JSON line becomes one located problem on its
record, never an exception that aborts the file.

Why the standard ``csv`` module and not ``pandas.read_csv(chunksize=...)``: it streams just as well,
but it tells us on which physical line each record starts, and a ragged row (an unquoted comma in a
prompt) becomes one located error instead of a ``ParserError`` that aborts the whole file.
"""

from __future__ import annotations

import csv
import difflib
import itertools
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from qwenedit.catalog.limits import MAX_IMAGES
from qwenedit.errors import ManifestError
from qwenedit.jobs import CSV_COLUMNS
from qwenedit.manifest.problems import Problem, Severity
from qwenedit.manifest.source import MAX_LINE_BYTES, ManifestSource, OversizedLine, open_binary, text_lines

IMAGE_COLUMNS = ("image_1", "image_2", "image_3")
REQUIRED_CSV_COLUMNS = ("job_id", "image_1", "prompt")
KNOWN_KEYS = (*CSV_COLUMNS, "images")


@dataclass
class Record:
    row: int
    line: int
    fields: dict[str, str]  # known columns, canonical names → stripped text
    images: list[tuple[str, str]]  # (column, reference), non-empty, in order
    extra: dict[str, str]
    problems: list[Problem] = field(default_factory=list)
    broken: bool = False  # unreadable record: no field checks

    @property
    def job_id(self) -> str | None:
        return self.fields.get("job_id") or None

    def problem(self, column: str | None, reason: str, severity: Severity = "error") -> None:
        self.problems.append(Problem(self.row, self.job_id, column, reason, severity, self.line))


@dataclass
class Header:
    problems: list[Problem]
    delimiter: str | None = None
    fatal: bool = False  # required columns missing: rows are not checked


def canonical_column(name: str) -> str | None:
    key = name.strip().lower()
    return key if key in KNOWN_KEYS else None


def close_match(name: str, choices: Iterable[str]) -> str | None:
    found = difflib.get_close_matches(name.strip().lower(), list(choices), n=1, cutoff=0.75)
    return found[0] if found else None


def detect_delimiter(first_line: str, name: str) -> str:
    if name.lower().removesuffix(".gz").endswith(".tsv"):
        return "\t"
    best, best_hits = ",", 0
    for delimiter in (",", ";", "\t", "|"):
        hits = sum(1 for cell in first_line.split(delimiter) if canonical_column(cell.strip('"')) is not None)
        if hits > best_hits:
            best, best_hits = delimiter, hits
    return best


def csv_records(
    src: ManifestSource, header_out: list[Header], required: tuple[str, ...] = REQUIRED_CSV_COLUMNS
) -> Iterator[Record]:
    csv.field_size_limit(16 * 1024 * 1024)  # data URIs up to 10 MiB live in cells
    with open_binary(src.path, src.limits.max_decompressed_bytes, src.name) as fh:
        lines = text_lines(fh, src.name)
        first = next(lines, None)
        blank_before = 0  # blank lines above the header: the reader does not see them
        while first is not None and not first.strip():
            first, blank_before = next(lines, None), blank_before + 1
        if first is None:
            raise ManifestError(
                f"manifest {src.name!r} is empty: expected a header line such as "
                "job_id,image_1,image_2,image_3,prompt"
            )
        delimiter = detect_delimiter(first, src.name)
        reader = csv.reader(itertools.chain([first], lines), delimiter=delimiter)
        try:
            header_cells = next(reader)
            header = check_header(header_cells, delimiter, src.name, blank_before + reader.line_num, required)
            header_out.append(header)
            if header.fatal:
                return
            names = [canonical_column(c) or c.strip() for c in header_cells]
            row = 0
            start = blank_before + reader.line_num + 1
            for cells in reader:
                row += 1
                line, start = start, blank_before + reader.line_num + 1
                if not any(c.strip() for c in cells):
                    continue
                yield csv_record(row, line, names, cells)
        except csv.Error as exc:
            raise ManifestError(
                f"manifest {src.name!r}, line {blank_before + reader.line_num}: cannot be read as CSV: {exc}"
            ) from None


def check_header(
    cells: list[str], delimiter: str, name: str, line: int, required: tuple[str, ...] = REQUIRED_CSV_COLUMNS
) -> Header:
    problems: list[Problem] = []

    def add(column: str | None, reason: str, severity: Severity = "error") -> None:
        problems.append(Problem(None, None, column, reason, severity, line))

    if delimiter != "," and not name.lower().removesuffix(".gz").endswith(".tsv"):
        shown = {"\t": "tab", ";": '";"', "|": '"|"'}[delimiter]
        add(None, f"the file uses {shown} as the column delimiter, not a comma; read it that way", "warning")
    seen: dict[str, int] = {}
    for i, raw in enumerate(cells, start=1):
        canonical = canonical_column(raw)
        key = canonical or raw.strip()
        if not key:
            continue
        if key in seen:
            add(key, f"appears twice in the header (columns {seen[key]} and {i}); keep one")
        seen.setdefault(key, i)
        if canonical is None:
            hint = close_match(key, KNOWN_KEYS)
            if key.lower() == "image":
                hint = "image_1"
            if hint:
                add(
                    key,
                    f"is not a manifest column (did you mean {hint}?); it is carried to the report as is",
                    "warning",
                )
        elif canonical == "images":
            add("images", "CSV manifests list images in columns image_1, image_2, image_3, not 'images'")
    present = set(seen)
    missing = [c for c in required if c not in present]
    for column in missing:
        have = ", ".join(c.strip() for c in cells if c.strip()) or "nothing"
        add(column, f"required column is missing (the header has: {have})")
    fatal = bool(missing) or any(p.severity == "error" for p in problems)
    return Header(problems, delimiter, fatal)


def csv_record(row: int, line: int, names: list[str], cells: list[str]) -> Record:
    fields: dict[str, str] = {}
    extra: dict[str, str] = {}
    rec = Record(row, line, fields, [], extra)
    for i, value in enumerate(cells):
        if i >= len(names):
            break
        name = names[i]
        if not name:
            if value.strip():
                rec.problem(None, f"has a value in column {i + 1}, which has no name in the header")
            continue
        if name in KNOWN_KEYS:
            fields[name] = value.strip()
        else:
            extra[name] = value
    for name in names[len(cells) :]:
        if name in KNOWN_KEYS:
            fields.setdefault(name, "")
        elif name:
            extra.setdefault(name, "")
    if len(cells) > len(names):
        rec.problem(
            None,
            f"has {len(cells)} cells but the header has {len(names)} columns "
            "(an unquoted comma in a prompt? put the cell in double quotes)",
        )
        rec.broken = True
    elif len(cells) < len(names):
        rec.problem(
            None,
            f"has {len(cells)} cells but the header has {len(names)} columns; the missing cells are empty",
            "warning",
        )
    refs = [(c, fields.get(c, "")) for c in IMAGE_COLUMNS]
    for k, (column, ref) in enumerate(refs):
        if not ref:
            later = [c for c, r in refs[k + 1 :] if r]
            if later and any(r for _, r in refs):
                rec.problem(
                    column, f"is empty but {later[0]} is set; fill the image columns in order from image_1"
                )
                break
    rec.images = [(c, r) for c, r in refs if r]
    return rec


def jsonl_records(src: ManifestSource) -> Iterator[Record]:
    with open_binary(src.path, src.limits.max_decompressed_bytes, src.name) as fh:
        row = 0
        for number, text in enumerate(text_lines(fh, src.name, oversized="mark"), start=1):
            row += 1
            if isinstance(text, OversizedLine):
                rec = Record(row, number, {}, [], {}, broken=True)
                rec.problem(
                    None,
                    f"is a line of {text.size / (1 << 20):,.1f} MiB, over the {MAX_LINE_BYTES >> 20} MiB a row "
                    "can need (three 10 MiB images and a prompt); not read",
                )
                yield rec
                continue
            stripped = text.strip()
            if not stripped:
                continue
            if number == 1 and stripped.startswith("["):
                raise ManifestError(
                    f"manifest {src.name!r} is a JSON array; a JSONL manifest has one JSON object per line"
                )
            rec = Record(row, number, {}, [], {})
            try:
                value = json.loads(stripped)
            except json.JSONDecodeError as exc:
                rec.problem(None, f"is not valid JSON: {exc.msg} (line {number}, column {exc.colno})")
                rec.broken = True
                yield rec
                continue
            except RecursionError:
                rec.problem(None, f"is JSON nested too deeply to read (line {number})")
                rec.broken = True
                yield rec
                continue
            if not isinstance(value, dict):
                rec.problem(None, f"must be a JSON object {{...}}, got {json_kind(value)}")
                rec.broken = True
                yield rec
                continue
            fill_jsonl_record(rec, value)
            yield rec


def json_kind(value: Any) -> str:
    if isinstance(value, bool):
        return "true/false"
    return {list: "a list", dict: "an object", str: "a string", int: "a number", float: "a number"}.get(
        type(value), "null"
    )


def scalar_text(rec: Record, key: str, value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, str):
        return value.strip()
    rec.problem(key, f"must be a string or a number, got {json_kind(value)}")
    return ""


def fill_jsonl_record(rec: Record, obj: dict[str, Any]) -> None:
    found_images = False
    for key, value in obj.items():
        canonical = canonical_column(key)
        if canonical is None:
            try:
                rec.extra[key] = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
            except RecursionError:
                rec.problem(key, "is JSON nested too deeply to keep")
        elif canonical == "images":
            found_images = True
        else:
            rec.fields[canonical] = scalar_text(rec, canonical, value)
    per_column = [(c, rec.fields.pop(c, "")) for c in IMAGE_COLUMNS]
    if found_images:
        value = next(v for k, v in obj.items() if canonical_column(k) == "images")
        if any(r for _, r in per_column):
            rec.problem("images", "use either images or image_1…image_3, not both")
        if isinstance(value, str):
            rec.problem("images", f'must be a list of 1–3 image references, got a string (write ["{value}"])')
        elif not isinstance(value, list):
            rec.problem("images", f"must be a list of 1–3 image references, got {json_kind(value)}")
        else:
            for i, item in enumerate(value, start=1):
                if not isinstance(item, str) or not item.strip():
                    rec.problem("images", f"item {i} must be a non-empty string, got {json.dumps(item)}")
                else:
                    rec.images.append(("images", item.strip()))
            if len(value) > MAX_IMAGES:
                rec.problem("images", f"has {len(value)} images; the API takes at most {MAX_IMAGES}")
                rec.images = rec.images[:MAX_IMAGES]
    else:
        for k, (column, ref) in enumerate(per_column):
            if not ref and any(r for _, r in per_column[k + 1 :]):
                rec.problem(column, "is empty but a later image is set; fill image_1 first")
                break
        rec.images = [(c, r) for c, r in per_column if r]
