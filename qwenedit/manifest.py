"""Read a CSV or JSONL manifest, report every problem in it at once, and turn its rows into Jobs.

Two passes share one parser: ``validate_manifest`` reads the whole file and returns every problem
(row, job_id, column, reason) and the quote; ``iter_jobs`` reads it again, after validation, and
yields ``Job``s. Both stream: memory is one batch of rows plus the set of job_ids seen (needed for
uniqueness) plus at most ``max_problems`` stored problems per severity, however long the file.

Row numbers. ``row N`` is the Nth record after the CSV header (or the Nth line of a JSONL file);
blank rows are skipped but still counted. So without line breaks inside quoted cells, CSV row N is
on file line N + 1 (the spreadsheet's row number) and JSONL row N is on line N. Every problem also
carries ``line``, the file line its record starts on, which stays right when cells span lines.

Why the standard ``csv`` module and not ``pandas.read_csv(chunksize=...)``: it streams just as well,
but it tells us on which physical line each record starts, and a ragged row (an unquoted comma in a
prompt) becomes one located error instead of a ``ParserError`` that aborts the whole file.

Manifests come from a local path, ``s3://bucket/key`` (through ``storage.make_s3_client``) or an
``https://`` URL; remote ones are downloaded once to a temporary file. ``.gz`` is decompressed.
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import difflib
import gzip
import itertools
import json
import os
import re
import shutil
import tempfile
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit

from qwenedit.errors import QwenEditError
from qwenedit.inputs import Check, InputError, InputResolver, S3Mode, location_text, quote_text
from qwenedit.jobs import CSV_COLUMNS, DEFAULT_MODEL, DEFAULT_REGION, Job
from qwenedit.models import ModelSpec, SizeRule
from qwenedit.pricing import Price, PriceTable, Quote, default_prices, normalize_model, normalize_region
from qwenedit.templates import PromptTemplate, parse_template

if TYPE_CHECKING:
    from qwenedit.policy import Policy

Severity = Literal["error", "warning"]

ROW_NUMBERS = (
    "row N is the Nth record after the header (the Nth line of a JSONL file), blank rows counted; "
    "line is the file line the record starts on"
)

MAX_IMAGES = 3
PROMPT_LIMIT = 800  # characters the API reads; the rest is silently dropped (docs/dashscope-api.md §1)
NEGATIVE_PROMPT_LIMIT = 500
SIZE_MIN, SIZE_MAX = SizeRule().min_side, SizeRule().max_side  # the plus family (models.py)
SEED_MAX = 2_147_483_647
BATCH_ROWS = 512
CHECK_CACHE = 10_000  # image check outcomes remembered across batches
# Longest physical line read: three 10 MiB data URIs and the rest of a row fit. A longer line is refused
# before it is read whole (a few MB of gzip can decompress to one line of gigabytes).
MAX_LINE_BYTES = 48 * 1024 * 1024

IMAGE_COLUMNS = ("image_1", "image_2", "image_3")
REQUIRED_CSV_COLUMNS = ("job_id", "image_1", "prompt")
_KNOWN_KEYS = (*CSV_COLUMNS, "images")
JOB_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_INT = re.compile(r"\+?[0-9]+")  # fullmatch; ASCII digits only
_SIZE = re.compile(r"([0-9]+) *\* *([0-9]+)")
_SIZE_WRONG_SEPARATOR = re.compile(r"([0-9]+) *[xX×,:/ ] *([0-9]+)")
_FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")
_TRUE = {"true", "yes", "y", "1", "t", "on"}
_FALSE = {"false", "no", "n", "0", "f", "off"}
# What each model accepts (n, size, prompt_extend) and its rate limit come from the model table
# (qwenedit/models.py), which the price table passed in *is*.
_COLUMN_ORDER = {name: i for i, name in enumerate((*CSV_COLUMNS[:4], "images", *CSV_COLUMNS[4:]))}


class ManifestError(QwenEditError):
    """The manifest cannot be read at all (missing, not UTF-8, not CSV/JSONL); ``validate`` exits 2."""


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
        }


# --- opening a manifest -------------------------------------------------------------------------


@dataclass(frozen=True)
class ManifestSource:
    """A manifest ready to read: a local file, where relative image paths resolve, and its format."""

    name: str  # as the user wrote it
    path: Path  # a local file (a temporary copy for remote manifests)
    base: str  # folder for relative references: local path, or s3:// / https:// prefix
    format: Literal["csv", "jsonl"]
    remote: bool = False

    @classmethod
    @contextlib.contextmanager
    def open(cls, source: str | os.PathLike[str] | ManifestSource) -> Iterator[ManifestSource]:
        """Yield a readable ``ManifestSource``; remote manifests are fetched once and deleted after."""
        if isinstance(source, ManifestSource):
            yield source
            return
        name = os.fspath(source)
        scheme = urlsplit(name).scheme.lower() if "://" in name else ""
        if scheme in ("s3", "http", "https"):
            with tempfile.TemporaryDirectory(prefix="qwenedit-manifest-") as tmp:
                local = Path(tmp) / (Path(urlsplit(name).path).name or "manifest")
                _download(name, scheme, local)
                yield cls(name, local, manifest_base(name), _detect_format(name, local), remote=True)
            return
        if scheme == "file":
            name = urlsplit(name).path
        elif scheme:
            raise ManifestError(
                f"cannot read a manifest from {scheme}:// (use a local path, s3:// or https://)"
            )
        path = Path(name).expanduser()
        if not path.exists():
            raise ManifestError(f"manifest {name!r} does not exist")
        if path.is_dir():
            raise ManifestError(f"manifest {name!r} is a directory, not a file")
        if not os.access(path, os.R_OK):
            raise ManifestError(f"manifest {name!r} cannot be read (permission denied)")
        yield cls(name, path, manifest_base(name), _detect_format(name, path))


def manifest_base(source: str | os.PathLike[str]) -> str:
    """Where relative image references in ``source`` point: the manifest's local folder, or its
    ``s3://bucket/prefix/`` or ``https://host/path/`` "folder". ``InputResolver(manifest_dir=...)``
    takes it."""
    name = os.fspath(source)
    scheme = urlsplit(name).scheme.lower() if "://" in name else ""
    if scheme in ("s3", "http", "https"):
        return name.rsplit("/", 1)[0] + "/"
    if scheme == "file":
        name = urlsplit(name).path
    return str(Path(name).expanduser().resolve().parent)


def _download(url: str, scheme: str, dest: Path) -> None:
    try:
        if scheme == "s3":
            from qwenedit.storage import make_s3_client

            parts = urlsplit(url)
            body = make_s3_client().get_object(Bucket=parts.netloc, Key=parts.path.lstrip("/"))["Body"]
            with dest.open("wb") as out:
                shutil.copyfileobj(body, out, 1 << 20)
            return
        import httpx

        with httpx.stream("GET", url, timeout=30.0, follow_redirects=True) as resp:
            if resp.status_code >= 400:
                raise ManifestError(f"manifest {url!r} could not be fetched: HTTP {resp.status_code}")
            with dest.open("wb") as out:
                for chunk in resp.iter_bytes(1 << 20):
                    out.write(chunk)
    except ManifestError:
        raise
    except Exception as exc:
        from qwenedit.inputs import _s3_reason

        reason = _s3_reason(exc) if scheme == "s3" else f"{type(exc).__name__}: {exc}"
        raise ManifestError(f"manifest {url!r} could not be fetched: {reason}") from None


def _detect_format(name: str, path: Path) -> Literal["csv", "jsonl"]:
    lowered = name.lower().removesuffix(".gz")
    if lowered.endswith((".jsonl", ".ndjson", ".json")):
        return "jsonl"
    if lowered.endswith((".csv", ".tsv", ".txt")):
        return "csv"
    with _open_binary(path) as fh:
        head = fh.read(4096).lstrip(b"\xef\xbb\xbf \t\r\n")
    return "jsonl" if head.startswith(b"{") else "csv"


def _open_binary(path: Path) -> IO[bytes]:
    with path.open("rb") as probe:
        magic = probe.read(2)
    if magic == b"\x1f\x8b":
        return gzip.open(path, "rb")  # type: ignore[return-value]  # GzipFile is a binary IO
    return path.open("rb")


def _text_lines(fh: IO[bytes], name: str) -> Iterator[str]:
    """Decode lines as strict UTF-8 (BOM dropped), naming the line of the first bad byte."""
    decoder = codecs.getincrementaldecoder("utf-8")("strict")
    try:
        number = 0
        while raw := fh.readline(MAX_LINE_BYTES + 1):
            number += 1
            if len(raw) > MAX_LINE_BYTES:
                raise ManifestError(
                    f"manifest {name!r}, line {number} is longer than {MAX_LINE_BYTES >> 20} MiB: "
                    "a manifest line holds at most three 10 MiB images and a prompt"
                )
            try:
                text = decoder.decode(raw)
            except UnicodeDecodeError as exc:
                bad = raw[exc.start : exc.start + 1]
                raise ManifestError(
                    f"manifest {name!r} is not UTF-8: line {number} has byte 0x{bad.hex()} at position "
                    f"{exc.start + 1}. Save it as UTF-8 (in Excel: 'CSV UTF-8 (Comma delimited)')"
                ) from None
            if number == 1:
                text = text.removeprefix("\ufeff")
            yield text
    except (OSError, EOFError) as exc:  # e.g. a truncated or invalid .gz
        raise ManifestError(f"manifest {name!r} cannot be read: {exc}") from None


# --- records: one row of either format, before the field checks ---------------------------------


@dataclass
class _Record:
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
class _Header:
    problems: list[Problem]
    delimiter: str | None = None
    fatal: bool = False  # required columns missing: rows are not checked


def _canonical(name: str) -> str | None:
    key = name.strip().lower()
    return key if key in _KNOWN_KEYS else None


def _close_match(name: str, choices: Iterable[str]) -> str | None:
    found = difflib.get_close_matches(name.strip().lower(), list(choices), n=1, cutoff=0.75)
    return found[0] if found else None


def _detect_delimiter(first_line: str, name: str) -> str:
    if name.lower().removesuffix(".gz").endswith(".tsv"):
        return "\t"
    best, best_hits = ",", 0
    for delimiter in (",", ";", "\t", "|"):
        hits = sum(1 for cell in first_line.split(delimiter) if _canonical(cell.strip('"')) is not None)
        if hits > best_hits:
            best, best_hits = delimiter, hits
    return best


def _csv_records(
    src: ManifestSource, header_out: list[_Header], required: tuple[str, ...] = REQUIRED_CSV_COLUMNS
) -> Iterator[_Record]:
    csv.field_size_limit(16 * 1024 * 1024)  # data URIs up to 10 MiB live in cells
    with _open_binary(src.path) as fh:
        lines = _text_lines(fh, src.name)
        first = next(lines, None)
        blank_before = 0  # blank lines above the header: the reader does not see them
        while first is not None and not first.strip():
            first, blank_before = next(lines, None), blank_before + 1
        if first is None:
            raise ManifestError(
                f"manifest {src.name!r} is empty: expected a header line such as "
                "job_id,image_1,image_2,image_3,prompt"
            )
        delimiter = _detect_delimiter(first, src.name)
        reader = csv.reader(itertools.chain([first], lines), delimiter=delimiter)
        try:
            header_cells = next(reader)
            header = _check_header(
                header_cells, delimiter, src.name, blank_before + reader.line_num, required
            )
            header_out.append(header)
            if header.fatal:
                return
            names = [_canonical(c) or c.strip() for c in header_cells]
            row = 0
            start = blank_before + reader.line_num + 1
            for cells in reader:
                row += 1
                line, start = start, blank_before + reader.line_num + 1
                if not any(c.strip() for c in cells):
                    continue
                yield _csv_record(row, line, names, cells)
        except csv.Error as exc:
            raise ManifestError(
                f"manifest {src.name!r}, line {blank_before + reader.line_num}: cannot be read as CSV: {exc}"
            ) from None


def _check_header(
    cells: list[str], delimiter: str, name: str, line: int, required: tuple[str, ...] = REQUIRED_CSV_COLUMNS
) -> _Header:
    problems: list[Problem] = []

    def add(column: str | None, reason: str, severity: Severity = "error") -> None:
        problems.append(Problem(None, None, column, reason, severity, line))

    if delimiter != "," and not name.lower().removesuffix(".gz").endswith(".tsv"):
        shown = {"\t": "tab", ";": '";"', "|": '"|"'}[delimiter]
        add(None, f"the file uses {shown} as the column delimiter, not a comma; read it that way", "warning")
    seen: dict[str, int] = {}
    for i, raw in enumerate(cells, start=1):
        canonical = _canonical(raw)
        key = canonical or raw.strip()
        if not key:
            continue
        if key in seen:
            add(key, f"appears twice in the header (columns {seen[key]} and {i}); keep one")
        seen.setdefault(key, i)
        if canonical is None:
            hint = _close_match(key, _KNOWN_KEYS)
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
    return _Header(problems, delimiter, fatal)


def _csv_record(row: int, line: int, names: list[str], cells: list[str]) -> _Record:
    fields: dict[str, str] = {}
    extra: dict[str, str] = {}
    rec = _Record(row, line, fields, [], extra)
    for i, value in enumerate(cells):
        if i >= len(names):
            break
        name = names[i]
        if not name:
            if value.strip():
                rec.problem(None, f"has a value in column {i + 1}, which has no name in the header")
            continue
        if name in _KNOWN_KEYS:
            fields[name] = value.strip()
        else:
            extra[name] = value
    for name in names[len(cells) :]:
        if name in _KNOWN_KEYS:
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


def _jsonl_records(src: ManifestSource) -> Iterator[_Record]:
    with _open_binary(src.path) as fh:
        row = 0
        for number, text in enumerate(_text_lines(fh, src.name), start=1):
            row += 1
            stripped = text.strip()
            if not stripped:
                continue
            if number == 1 and stripped.startswith("["):
                raise ManifestError(
                    f"manifest {src.name!r} is a JSON array; a JSONL manifest has one JSON object per line"
                )
            rec = _Record(row, number, {}, [], {})
            try:
                value = json.loads(stripped)
            except json.JSONDecodeError as exc:
                rec.problem(None, f"is not valid JSON: {exc.msg} (line {number}, column {exc.colno})")
                rec.broken = True
                yield rec
                continue
            if not isinstance(value, dict):
                rec.problem(None, f"must be a JSON object {{...}}, got {_json_kind(value)}")
                rec.broken = True
                yield rec
                continue
            _fill_jsonl_record(rec, value)
            yield rec


def _json_kind(value: Any) -> str:
    if isinstance(value, bool):
        return "true/false"
    return {list: "a list", dict: "an object", str: "a string", int: "a number", float: "a number"}.get(
        type(value), "null"
    )


def _scalar_text(rec: _Record, key: str, value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, str):
        return value.strip()
    rec.problem(key, f"must be a string or a number, got {_json_kind(value)}")
    return ""


def _fill_jsonl_record(rec: _Record, obj: dict[str, Any]) -> None:
    found_images = False
    for key, value in obj.items():
        canonical = _canonical(key)
        if canonical is None:
            rec.extra[key] = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
        elif canonical == "images":
            found_images = True
        else:
            rec.fields[canonical] = _scalar_text(rec, canonical, value)
    per_column = [(c, rec.fields.pop(c, "")) for c in IMAGE_COLUMNS]
    if found_images:
        value = next(v for k, v in obj.items() if _canonical(k) == "images")
        if any(r for _, r in per_column):
            rec.problem("images", "use either images or image_1…image_3, not both")
        if isinstance(value, str):
            rec.problem("images", f'must be a list of 1–3 image references, got a string (write ["{value}"])')
        elif not isinstance(value, list):
            rec.problem("images", f"must be a list of 1–3 image references, got {_json_kind(value)}")
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


# --- the field checks ---------------------------------------------------------------------------


@dataclass
class _Rules:
    """What every row is checked against."""

    region: str
    model: str
    prices: PriceTable
    resolver: InputResolver
    regions: frozenset[str] = frozenset()
    models: frozenset[str] = frozenset()
    seen: dict[str, int] = field(default_factory=dict)  # job_id → first row
    template: PromptTemplate | None = None  # fills the prompt of rows that leave it empty

    def __post_init__(self) -> None:
        self.regions = frozenset(self.prices.regions())
        self.models = frozenset(self.prices.models())


def _job_id_reason(job_id: str) -> str | None:
    if not job_id:
        return "is empty: every row needs a job_id (it names the output folder)"
    if "/" in job_id or "\\" in job_id:
        return "must not contain / or \\ (the job_id becomes a folder name at the destination)"
    if ".." in job_id:
        return 'must not contain ".." (the job_id becomes a folder name at the destination)'
    if len(job_id) > 128:
        return f"is {len(job_id)} characters; at most 128"
    if not job_id[0].isascii() or not job_id[0].isalnum():
        return f"must start with an ASCII letter or digit, got {quote_text(job_id[0])}"
    if not JOB_ID_PATTERN.fullmatch(job_id):
        bad = next(c for c in job_id if not (c.isascii() and (c.isalnum() or c in "._-")))
        return f'may contain only ASCII letters, digits, ".", "_" and "-"; found {quote_text(bad)}'
    return None


def _formula_warning(value: str) -> str | None:
    if value.startswith(_FORMULA_PREFIXES):
        return (
            f"starts with {quote_text(value[0])}, so a spreadsheet would run it as a formula "
            "(the report escapes it)"
        )
    return None


def _parse_bool(value: str) -> bool | None:
    lowered = value.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    return None


def _check_record(rec: _Record, rules: _Rules) -> Job | None:
    """Run every field check on one record; the Job if it has no errors."""
    if rec.broken:
        return None
    f = rec.fields
    err = rec.problem

    def warn(column: str | None, reason: str) -> None:
        rec.problem(column, reason, "warning")

    job_id = f.get("job_id", "")
    reason = _job_id_reason(job_id)
    if reason:
        err("job_id", reason)
    elif job_id in rules.seen:
        err("job_id", f"is a duplicate: row {rules.seen[job_id]} has the same job_id")
    else:
        rules.seen[job_id] = rec.row

    images: list[str] = []
    if not rec.images and not any(p.column in ("images", *IMAGE_COLUMNS) for p in rec.problems):
        column = "images" if "images" in f or not any(c in f for c in IMAGE_COLUMNS) else "image_1"
        err(column, "is empty: every job needs 1–3 input images")
    for column, ref in rec.images:
        try:
            rules.resolver.locate(ref)
        except InputError as exc:
            err(column, exc.reason)
        images.append(ref)

    prompt = f.get("prompt", "")
    template = None if prompt else rules.template  # a row's own prompt wins over the template
    if template is not None:
        prompt, missing = template.fill({**rec.extra, **f})
        for column, reason in missing:
            err(column, reason)
    if not prompt:
        if template is None:
            err("prompt", "is empty: every job needs an instruction")
    elif len(prompt) > PROMPT_LIMIT:
        warn(
            "prompt",
            _truncated(len(prompt), PROMPT_LIMIT) + (" (filled from the template)" if template else ""),
        )
    negative = f.get("negative_prompt", "")
    if len(negative) > NEGATIVE_PROMPT_LIMIT:
        warn("negative_prompt", _truncated(len(negative), NEGATIVE_PROMPT_LIMIT))
    # A job_id cannot start with a formula character (its pattern already refuses it).
    for column, value in (("prompt", prompt), ("negative_prompt", negative), *rec.extra.items()):
        note = _formula_warning(value)
        if note:
            warn(column, note)

    region_text = f.get("region", "") or rules.region
    region = normalize_region(region_text)
    region_ok = region in rules.regions
    if not region_ok:
        err("region", f"unknown region {quote_text(region_text)}; known: {', '.join(sorted(rules.regions))}")
    model_text = f.get("model", "") or rules.model
    model = normalize_model(model_text)
    model_ok = model in rules.models
    if not model_ok:
        hint = _close_match(model, rules.models)
        err(
            "model",
            f"unknown model {quote_text(model_text)}"
            + (f" (did you mean {hint}?)" if hint else f"; known: {', '.join(sorted(rules.models))}"),
        )
    elif region_ok and not rules.prices.has(region, model):
        err(
            "model",
            f"has no known price in region {region}; refusing to guess: add it with a --prices file",
        )
    elif rules.prices.spec(model).rate_limit is None:
        err(
            "model",
            "has no known rate limit; refusing to guess: add a rate_limit (e.g. 2/s or 2/min) "
            "to its row in the --prices file",
        )
    spec = rules.prices.spec(model) if model_ok else ModelSpec(model)
    single = spec.single_image

    n = 1
    n_text = f.get("n", "")
    if n_text:
        if not _INT.fullmatch(n_text) or not 1 <= int(n_text) <= 6:
            err("n", f"must be an integer 1–6, got {quote_text(n_text)}")
        else:
            n = int(n_text)
            if single and n != 1:
                err("n", f"must be 1 for {model} (it makes one image per call), got {n}")
            elif n > spec.max_n:
                err("n", f"must be at most {spec.max_n} for {model}, got {n}")

    size: str | None = None
    size_text = f.get("size", "")
    if size_text:
        m = _SIZE.fullmatch(size_text)
        wrong = _SIZE_WRONG_SEPARATOR.fullmatch(size_text)
        if spec.size is None:
            err("size", f"is not supported by {model}; remove it or use qwen-image-edit-plus")
        elif m is None and wrong is not None:
            err(
                "size",
                f'must be "W*H" with "*", got {quote_text(size_text)} '
                f'(write "{wrong.group(1)}*{wrong.group(2)}")',
            )
        elif m is None:
            err("size", f'must be "W*H" in pixels, such as "1024*1536", got {quote_text(size_text)}')
        else:
            w, h = int(m.group(1)), int(m.group(2))
            lo, hi = spec.size.min_side, spec.size.max_side
            if not (lo <= w <= hi and lo <= h <= hi):
                err("size", f"each side must be {lo}–{hi} px, got {w}*{h}")
            elif n > 1 and spec.size.only_with_n1:
                err(
                    "size",
                    f"can only be set when n is 1 (the API rejects size with n = {n}); drop one of them",
                )
            else:
                size = f"{w}*{h}"
                rw, rh = _round16(w), _round16(h)
                if (rw, rh) != (w, h):
                    warn("size", f"the API rounds each side to a multiple of 16: {w}*{h} becomes {rw}*{rh}")

    seed: int | None = None
    seed_text = f.get("seed", "")
    if seed_text:
        if not _INT.fullmatch(seed_text) or int(seed_text) > SEED_MAX:
            err("seed", f"must be an integer 0–{SEED_MAX}, got {quote_text(seed_text)}")
        else:
            seed = int(seed_text)

    flags: dict[str, bool | None] = {}
    for column in ("prompt_extend", "watermark"):
        text = f.get(column, "")
        flags[column] = None
        if text:
            flag = _parse_bool(text)
            if flag is None:
                err(column, f"must be true or false (or yes/no, y/n, 1/0), got {quote_text(text)}")
            elif column == "prompt_extend" and not spec.prompt_extend:
                err(column, f"is not supported by {model}; remove it or use qwen-image-edit-plus")
            else:
                flags[column] = flag

    if any(p.severity == "error" for p in rec.problems):
        return None
    return Job(
        row=rec.row,
        job_id=job_id,
        images=tuple(images),
        prompt=prompt,
        model=model,
        region=region,
        n=n,
        negative_prompt=negative or None,
        size=size,
        seed=seed,
        prompt_extend=flags["prompt_extend"],
        watermark=flags["watermark"],
        extra=dict(rec.extra),
    )


def _truncated(length: int, limit: int) -> str:
    return f"is {length} characters; the API reads the first {limit} and silently drops the rest"


def _round16(side: int) -> int:
    # Half to even, like Python's round(): it is what reproduces the doc's 1033*1032 → 1040*1024.
    return round(side / 16) * 16


# --- the two passes ---------------------------------------------------------------------------


class _ProblemStore:
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
        return sorted(merged, key=lambda p: (p.row or 0, _COLUMN_ORDER.get(p.column or "", 99), p.severity))


def _records(src: ManifestSource, header_out: list[_Header], rules: _Rules) -> Iterator[_Record]:
    if src.format == "csv":
        # With a prompt template the prompt column is optional: rows that leave it out get the template.
        required = REQUIRED_CSV_COLUMNS if rules.template is None else ("job_id", "image_1")
        yield from _csv_records(src, header_out, required)
    else:
        header_out.append(_Header([]))
        yield from _jsonl_records(src)


def _batched(items: Iterator[_Record], size: int) -> Iterator[list[_Record]]:
    while batch := list(itertools.islice(items, size)):
        yield batch


def _make_resolver(
    src: ManifestSource, input_root: str | os.PathLike[str] | None, s3_mode: S3Mode
) -> InputResolver:
    return InputResolver(input_root=input_root, manifest_dir=src.base, s3_mode=s3_mode)


def validate_manifest(
    source: str | os.PathLike[str] | ManifestSource,
    *,
    region: str | None = None,
    model: str | None = None,
    prices: PriceTable | None = None,
    input_root: str | os.PathLike[str] | None = None,
    check_images: bool = False,
    max_problems: int = 1000,
    s3_mode: S3Mode = "presign",
    resolver: InputResolver | None = None,
    check_workers: int = 16,
    progress: Callable[[int], None] | None = None,
    prompt_template: str | PromptTemplate | None = None,
    policy: Policy | None = None,
) -> Validation:
    """Read the whole manifest and report every problem in it, with the quote for its valid rows.

    ``region``/``model`` are the defaults for rows that leave those cells empty (None: the package
    defaults, singapore and qwen-image-edit-plus). ``prompt_template`` fills the prompt of rows that
    leave it empty (``templates.py``). Every breach of ``policy`` is a row error (and counted in
    ``breaches``). Raises ``ManifestError`` only when the file cannot be read at all, ``TemplateError``
    (before reading) when the template is malformed.
    """
    template = parse_template(prompt_template)
    with ManifestSource.open(source) as src:
        own_resolver = resolver is None
        resolver = resolver or _make_resolver(src, input_root, s3_mode)
        try:
            return _validate(
                src,
                region or DEFAULT_REGION,
                model or DEFAULT_MODEL,
                prices or default_prices(),
                resolver,
                check_images,
                max_problems,
                check_workers,
                progress,
                template,
                policy,
            )
        finally:
            if own_resolver:
                resolver.close()


def _validate(
    src: ManifestSource,
    region: str,
    model: str,
    prices: PriceTable,
    resolver: InputResolver,
    check_images: bool,
    max_problems: int,
    check_workers: int,
    progress: Callable[[int], None] | None,
    template: PromptTemplate | None = None,
    policy: Policy | None = None,
) -> Validation:
    result = Validation(source=src.name, format=src.format)
    store = _ProblemStore(max_problems)
    rules = _Rules(region, model, prices, resolver, template=template)
    headers: list[_Header] = []
    records = _records(src, headers, rules)
    pool = ThreadPoolExecutor(max_workers=check_workers, thread_name_prefix="check") if check_images else None
    # The same image on many rows (a logo, a shared backdrop) is checked once; bounded, like the rest.
    checked: OrderedDict[str, Check] = OrderedDict()
    unit_prices: dict[tuple[str, str], Price] = {}
    try:
        for batch in _batched(records, BATCH_ROWS):
            found: list[Problem] = []
            jobs = []
            for rec in batch:
                job = _check_record(rec, rules)
                if policy is not None and job is not None:  # before any image is looked at
                    result.breaches += _check_policy(policy, rec, job, resolver)
                result.rows += 1
                jobs.append((rec, job))
            if pool is not None:
                _check_images(batch, jobs, resolver, pool, checked)
                while len(checked) > CHECK_CACHE:
                    checked.popitem(last=False)
            for rec, job in jobs:
                found.extend(rec.problems)
                if job is not None and not any(p.severity == "error" for p in rec.problems):
                    result.valid_rows += 1
                    key = (job.region, job.model)
                    price = unit_prices.get(key) or unit_prices.setdefault(key, prices.unit_price(*key))
                    result.quote.add(job.region, job.model, job.n, price)
            store.add(sorted(found, key=lambda p: p.row or 0))
            if progress is not None:
                progress(result.rows)
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
    header = headers[0] if headers else _Header([])
    result.delimiter = header.delimiter
    store.add(header.problems)
    if not header.fatal and result.rows == 0:
        store.add([Problem(None, None, None, "has no rows: nothing to run", "error")])
    too_many = policy.check_rows(result.rows) if policy is not None else None
    if too_many is not None:
        result.breaches += 1
        store.add([Problem(too_many.row, None, None, too_many.reason, "error")])
    result.problems = store.sorted()
    result.errors, result.warnings = store.counts["error"], store.counts["warning"]
    return result


def _check_policy(policy: Policy, rec: _Record, job: Job, resolver: InputResolver) -> int:
    """Add each breach of the policy to the row's problems; how many there were."""
    breaches = policy.check_job(job, [resolver.locate(ref).location for ref in job.images])
    for breach in breaches:
        rec.problem(breach.field, breach.reason)
    return len(breaches)


def _check_images(
    batch: list[_Record],
    jobs: list[tuple[_Record, Job | None]],
    resolver: InputResolver,
    pool: ThreadPoolExecutor,
    checked: OrderedDict[str, Check],
) -> None:
    wanted: dict[str, str] = {}  # located reference → the reference as written
    for rec, _ in jobs:
        if rec.broken:
            continue
        for column, ref in rec.images:
            if any(p.column == column and p.severity == "error" for p in rec.problems):
                continue  # already wrong by its syntax
            with contextlib.suppress(InputError):
                wanted.setdefault(resolver.locate(ref).location, ref)
    futures = {loc: pool.submit(resolver.check, ref) for loc, ref in wanted.items() if loc not in checked}
    for loc, fut in futures.items():
        checked[loc] = fut.result()
    for loc in wanted:
        checked.move_to_end(loc)
    for rec, _ in jobs:
        if rec.broken:
            continue
        for column, ref in rec.images:
            try:
                loc = resolver.locate(ref).location
            except InputError:
                continue
            outcome = checked.get(loc)
            if outcome is None:
                continue
            for reason in outcome.errors:
                rec.problem(column, reason)
            for reason in outcome.warnings:
                rec.problem(column, reason, "warning")


def iter_jobs(
    source: str | os.PathLike[str] | ManifestSource,
    *,
    region: str | None = None,
    model: str | None = None,
    prices: PriceTable | None = None,
    input_root: str | os.PathLike[str] | None = None,
    on_invalid: Literal["raise", "skip"] = "raise",
    prompt_template: str | PromptTemplate | None = None,
) -> Iterator[Job]:
    """The manifest's rows as ``Job``s, in order, parsed exactly as ``validate_manifest`` parses them.

    Meant for after a successful validation: an invalid row raises ``ManifestError`` naming its
    first error (or is skipped with ``on_invalid="skip"``). ``prompt_template`` as for validation.
    """
    template = parse_template(prompt_template)
    with ManifestSource.open(source) as src, _make_resolver(src, input_root, "presign") as resolver:
        rules = _Rules(region or DEFAULT_REGION, model or DEFAULT_MODEL, prices or default_prices(), resolver)
        rules.template = template
        headers: list[_Header] = []
        for rec in _records(src, headers, rules):
            job = _check_record(rec, rules)
            if job is not None:
                yield job
            elif on_invalid == "raise":
                first = next(p for p in rec.problems if p.severity == "error")
                raise ManifestError(f"manifest {src.name!r}: {first.message()}")
        if headers and headers[0].fatal:
            first = next(p for p in headers[0].problems if p.severity == "error")
            raise ManifestError(f"manifest {src.name!r}: {first.message()}")
