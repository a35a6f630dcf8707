"""The two passes over a manifest: ``validate_manifest`` reads the whole file and returns every problem
(row, job_id, column, reason) and the quote; ``iter_jobs`` reads it again, after validation, and yields
``Job``s, parsed exactly the same way. Both stream: memory is one batch of rows plus the set of job_ids
seen (needed for uniqueness) plus at most ``max_problems`` stored problems per severity, however long
the file.
"""

from __future__ import annotations

import contextlib
import itertools
import os
from collections import OrderedDict
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Literal

from qwenedit.catalog import ModelTable, Price, builtin_models
from qwenedit.errors import InputError, ManifestError
from qwenedit.inputs import Check, InputResolver, S3Mode
from qwenedit.jobs import DEFAULT_MODEL, DEFAULT_REGION, Job
from qwenedit.manifest.problems import Problem, ProblemStore, Validation
from qwenedit.manifest.records import REQUIRED_CSV_COLUMNS, Header, Record, csv_records, jsonl_records
from qwenedit.manifest.rules import Rules, check_record
from qwenedit.manifest.source import ManifestLimits, ManifestSource
from qwenedit.templates import PromptTemplate, parse_template

if TYPE_CHECKING:
    from qwenedit.policy import Policy

BATCH_ROWS = 512
CHECK_CACHE = 10_000  # image check outcomes remembered across batches


def _records(src: ManifestSource, header_out: list[Header], rules: Rules) -> Iterator[Record]:
    if src.format == "csv":
        # With a prompt template the prompt column is optional: rows that leave it out get the template.
        required = REQUIRED_CSV_COLUMNS if rules.template is None else ("job_id", "image_1")
        records = csv_records(src, header_out, required)
    else:
        header_out.append(Header([]))
        records = jsonl_records(src)
    limit = src.limits.max_rows
    for count, rec in enumerate(records, start=1):
        if count > limit:
            raise ManifestError(
                f"manifest {src.name!r} has more than {limit:,} rows; split it, or raise --max-manifest-rows "
                "if it is meant to be this long"
            )
        yield rec


def _batched(items: Iterator[Record], size: int) -> Iterator[list[Record]]:
    while batch := list(itertools.islice(items, size)):
        yield batch


def _make_resolver(
    src: ManifestSource,
    input_root: str | os.PathLike[str] | None,
    s3_mode: S3Mode,
    allow_private_urls: bool = False,
) -> InputResolver:
    return InputResolver(
        input_root=input_root, manifest_dir=src.base, s3_mode=s3_mode, allow_private_urls=allow_private_urls
    )


def validate_manifest(
    source: str | os.PathLike[str] | ManifestSource,
    *,
    region: str | None = None,
    model: str | None = None,
    prices: ModelTable | None = None,
    input_root: str | os.PathLike[str] | None = None,
    check_images: bool = False,
    max_problems: int = 1000,
    s3_mode: S3Mode = "presign",
    resolver: InputResolver | None = None,
    check_workers: int = 16,
    progress: Callable[[int], None] | None = None,
    prompt_template: str | PromptTemplate | None = None,
    limits: ManifestLimits | None = None,
    allow_private_urls: bool = False,
    policy: Policy | None = None,
) -> Validation:
    """Read the whole manifest and report every problem in it, with the quote for its valid rows.

    ``region``/``model`` are the defaults for rows that leave those cells empty (None: the package
    defaults, singapore and qwen-image-edit-plus). ``prompt_template`` fills the prompt of rows that
    leave it empty (``templates.py``). Every breach of ``policy`` is a row error (and counted in
    ``breaches``), found before any image is looked at. Raises ``ManifestError`` only when the file
    cannot be read at all or is over one of its ``limits`` (``ManifestLimits``), ``TemplateError``
    (before reading) when the template is malformed. ``allow_private_urls`` lets ``check_images``
    fetch URLs on loopback and private addresses (refused by default, as the API cannot reach them).
    The ``check_workers`` threads wait on I/O; their image decodes share one memory budget
    (``qwenedit.decode``).
    """
    template = parse_template(prompt_template)
    with ManifestSource.open(source, limits) as src:
        own_resolver = resolver is None
        resolver = resolver or _make_resolver(src, input_root, s3_mode, allow_private_urls)
        try:
            return _validate(
                src,
                region or DEFAULT_REGION,
                model or DEFAULT_MODEL,
                prices or builtin_models(),
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
    prices: ModelTable,
    resolver: InputResolver,
    check_images: bool,
    max_problems: int,
    check_workers: int,
    progress: Callable[[int], None] | None,
    template: PromptTemplate | None = None,
    policy: Policy | None = None,
) -> Validation:
    result = Validation(source=src.name, format=src.format)
    store = ProblemStore(max_problems)
    rules = Rules(region, model, prices, resolver, template=template)
    headers: list[Header] = []
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
                job = check_record(rec, rules)
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
    header = headers[0] if headers else Header([])
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
    result.notices = prices.legacy_notices(line.model for line in result.quote.lines)
    return result


def _check_policy(policy: Policy, rec: Record, job: Job, resolver: InputResolver) -> int:
    """Add each breach of the policy to the row's problems; how many there were."""
    breaches = policy.check_job(job, [resolver.locate(ref).location for ref in job.images])
    for breach in breaches:
        rec.problem(breach.field, breach.reason)
    return len(breaches)


def _check_images(
    batch: list[Record],
    jobs: list[tuple[Record, Job | None]],
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
    prices: ModelTable | None = None,
    input_root: str | os.PathLike[str] | None = None,
    on_invalid: Literal["raise", "skip"] = "raise",
    prompt_template: str | PromptTemplate | None = None,
    limits: ManifestLimits | None = None,
    allow_private_urls: bool = False,
) -> Iterator[Job]:
    """The manifest's rows as ``Job``s, in order, parsed exactly as ``validate_manifest`` parses them.

    Meant for after a successful validation: an invalid row raises ``ManifestError`` naming its
    first error (or is skipped with ``on_invalid="skip"``). ``prompt_template`` as for validation.
    """
    template = parse_template(prompt_template)
    with (
        ManifestSource.open(source, limits) as src,
        _make_resolver(src, input_root, "presign", allow_private_urls) as resolver,
    ):
        rules = Rules(region or DEFAULT_REGION, model or DEFAULT_MODEL, prices or builtin_models(), resolver)
        rules.template = template
        headers: list[Header] = []
        for rec in _records(src, headers, rules):
            job = check_record(rec, rules)
            if job is not None:
                yield job
            elif on_invalid == "raise":
                first = next(p for p in rec.problems if p.severity == "error")
                raise ManifestError(f"manifest {src.name!r}: {first.message()}")
        if headers and headers[0].fatal:
            first = next(p for p in headers[0].problems if p.severity == "error")
            raise ManifestError(f"manifest {src.name!r}: {first.message()}")
