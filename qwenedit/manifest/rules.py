"""The field checks: every rule one manifest row must meet, each failure a located problem.

What each model accepts (n, size, prompt_extend) and its rate limit come from the model table
(``catalog/models.py``); the API's per-request limits from ``catalog/limits.py``. A row's own non-empty
``prompt`` wins over the prompt template.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from qwenedit.catalog import ModelSpec, ModelTable, normalize_model, normalize_region
from qwenedit.catalog.limits import MAX_N, NEGATIVE_PROMPT_LIMIT, SEED_MAX
from qwenedit.errors import InputError, quote_text
from qwenedit.inputs import InputResolver
from qwenedit.jobs import Job
from qwenedit.manifest.records import IMAGE_COLUMNS, Record, close_match
from qwenedit.templates import PromptTemplate

JOB_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_INT = re.compile(r"\+?[0-9]+")  # fullmatch; ASCII digits only
_SIZE = re.compile(r"([0-9]+) *\* *([0-9]+)")
_SIZE_WRONG_SEPARATOR = re.compile(r"([0-9]+) *[xX×,:/ ] *([0-9]+)")
_FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")
_TRUE = {"true", "yes", "y", "1", "t", "on"}
_FALSE = {"false", "no", "n", "0", "f", "off"}


@dataclass
class Rules:
    """What every row is checked against."""

    region: str
    model: str
    prices: ModelTable
    resolver: InputResolver
    regions: frozenset[str] = frozenset()
    models: frozenset[str] = frozenset()
    seen: dict[str, int] = field(default_factory=dict)  # job_id → first row
    template: PromptTemplate | None = None  # fills the prompt of rows that leave it empty

    def __post_init__(self) -> None:
        self.regions = frozenset(self.prices.regions())
        self.models = frozenset(self.prices.models())


def job_id_reason(job_id: str) -> str | None:
    """Why ``job_id`` cannot name an output folder, or None."""
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


def formula_warning(value: str) -> str | None:
    """A warning for a cell a spreadsheet would run as a formula, or None."""
    if value.startswith(_FORMULA_PREFIXES):
        return (
            f"starts with {quote_text(value[0])}, so a spreadsheet would run it as a formula "
            "(the report escapes it)"
        )
    return None


def parse_bool(value: str) -> bool | None:
    """true/false, yes/no, y/n, 1/0, t/f, on/off (any case); None for anything else."""
    lowered = value.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    return None


def check_record(rec: Record, rules: Rules) -> Job | None:
    """Run every field check on one record; the Job if it has no errors."""
    if rec.broken:
        return None
    f = rec.fields
    err = rec.problem

    def warn(column: str | None, reason: str) -> None:
        rec.problem(column, reason, "warning")

    job_id = f.get("job_id", "")
    reason = job_id_reason(job_id)
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
    if not prompt and template is None:
        err("prompt", "is empty: every job needs an instruction")

    negative = f.get("negative_prompt", "")
    if len(negative) > NEGATIVE_PROMPT_LIMIT:
        warn("negative_prompt", _truncated(len(negative), NEGATIVE_PROMPT_LIMIT))
    # A job_id cannot start with a formula character (its pattern already refuses it).
    for column, value in (("prompt", prompt), ("negative_prompt", negative), *rec.extra.items()):
        note = formula_warning(value)
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
        hint = close_match(model, rules.models)
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
    if len(prompt) > spec.prompt_limit:
        warn(
            "prompt",
            _truncated(len(prompt), spec.prompt_limit) + (" (filled from the template)" if template else ""),
        )

    n = 1
    n_text = f.get("n", "")
    if n_text:
        if not _INT.fullmatch(n_text) or not 1 <= int(n_text) <= MAX_N:
            err("n", f"must be an integer 1–{MAX_N}, got {quote_text(n_text)}")
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
            refusal = spec.size.refusal(w, h)
            if refusal:
                err("size", refusal)
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
            flag = parse_bool(text)
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
