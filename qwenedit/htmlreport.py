"""``report.html``: one self-contained page a person opens to see how a run went.

It holds the totals, cost per model and region, the roll-ups, the QA flags, the failures with their
reasons, and a contact sheet: each job's inputs → outputs as small embedded JPEG thumbnails. The file
loads nothing from anywhere (images are ``data:`` URIs, the CSS is inline, there is no script, and a
Content-Security-Policy forbids anything else), so it reads the same from a bucket, an email or a disk.

Input: the run's ``RunSummary`` or its summary.json document (``rollups`` as ``Rollups.to_dict()``
makes it; keys the page does not show are listed under "Run details"), the job results
(one pass, any length), and two callables that return an image's bytes: ``read_output(uri)`` for a
stored output (the destination reader) and ``read_input(ref)`` for an input reference as the manifest
wrote it (the input resolver; ``data:`` URIs are decoded here). Either may be None (no thumbnails on
that side) and may raise or return None (a placeholder is shown).

Bounded: the contact sheet shows the canary jobs, then flagged jobs (at most ``flagged_limit``), then
the first ``contact_limit`` others; the QA and failure tables list at most ``table_limit`` rows each and
say how many more there are. Only those results are held in memory. Thumbnails are made by
``workers`` threads; an input used by many rows is read once.

Every piece of user data (job ids, prompts, columns, error messages, paths) is HTML-escaped; image
``src`` attributes only ever hold data URIs this module encoded itself.
"""

from __future__ import annotations

import base64
import binascii
import html
import json
import os
from collections import OrderedDict
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from qwenedit.catalog import format_money
from qwenedit.qa import thumbnail_data_uri
from qwenedit.ratechart import rate_chart_svg
from qwenedit.redact import redact_url
from qwenedit.report import JobResult
from qwenedit.summary import STATUSES, RunSummary

ImageReader = Callable[[str], bytes | None]

CONTACT_LIMIT = 300
FLAGGED_LIMIT = 500
TABLE_LIMIT = 1000
THUMB_SIDE = 160
MAX_IMAGE_BYTES = 50 * 1024 * 1024  # a fetched image larger than this is not thumbnailed
_DETAIL_CHARS = 2000  # a "Run details" value longer than this is cut (the full one is in summary.json)
_INPUT_CACHE = 512  # thumbnails of inputs remembered (an input shared by many rows is read once)

_SHOWN_KEYS = {
    "run_id",
    "manifest",
    "dest",
    "jobs",
    "by_status",
    "images_requested",
    "images_stored",
    "possibly_billed_jobs",
    "possibly_billed_images",
    "possibly_billed_cost",
    "billed_not_stored_images",
    "dedupe_saved_calls",
    "dedupe_saved_cost",
    "cost_by_region_model",
    "total_cost",
    "rollups",
    "timeline",
}

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#1d2330;background:#f6f7f9}
main{max-width:1280px;margin:0 auto;padding:24px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #d8dce3;padding-bottom:4px}
h3{font-size:15px;margin:16px 0 6px}
.sub{color:#5b6475;word-break:break-all}
.banner{background:#fff6d6;border:1px solid #e8c95a;border-radius:6px;padding:10px 14px;margin:16px 0;font-weight:600}
.cards{display:flex;flex-wrap:wrap;gap:10px;margin:12px 0}
.card{background:#fff;border:1px solid #d8dce3;border-radius:6px;padding:8px 14px;min-width:120px}
.card b{display:block;font-size:20px}.card span{color:#5b6475;font-size:12px}
.card.warn{border-color:#e0a100;background:#fffaf0}.card.bad{border-color:#d33;background:#fff5f5}
table{border-collapse:collapse;background:#fff;margin:6px 0 10px}
th,td{border:1px solid #d8dce3;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#eef0f4}td.n{text-align:right;font-variant-numeric:tabular-nums}
td.msg{max-width:640px;word-break:break-word}
.more{color:#5b6475;font-style:italic}
.sheet{display:flex;flex-direction:column;gap:10px}
.job{background:#fff;border:1px solid #d8dce3;border-radius:6px;padding:8px 10px}
.job.flagged{border-color:#e0a100;box-shadow:0 0 0 2px #ffe7a3}.job.failed{border-color:#d33}
.job header{display:flex;flex-wrap:wrap;gap:8px;align-items:baseline}
.jid{font-weight:600;word-break:break-all}
.tag{font-size:11px;border-radius:10px;padding:1px 8px;background:#eef0f4}
.tag.canary{background:#dff3ff}.tag.qa{background:#ffe7a3}.tag.failed{background:#ffd9d9}.tag.succeeded{background:#dcf5e3}
.prompt{color:#384152;margin:4px 0;word-break:break-word}
.strip{display:flex;flex-wrap:wrap;align-items:center;gap:6px}
.arrow{font-size:22px;color:#8a93a5;padding:0 6px}
figure{margin:0;text-align:center}
figure img{display:block;max-width:160px;max-height:160px;border:1px solid #d8dce3;background:#fff}
figcaption{font-size:11px;color:#5b6475;max-width:160px;word-break:break-all}
figcaption.qa{color:#a05a00;font-weight:600}
.ph{width:120px;height:90px;display:flex;align-items:center;justify-content:center;border:1px dashed #b8bfcc;color:#8a93a5;font-size:11px;padding:4px;box-sizing:border-box}
.err{color:#b00020;word-break:break-word}
"""

_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'"


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def parse_qa(cell: str) -> dict[int, list[str]]:
    """A results.csv ``qa`` cell (``qa.qa_cell``) back to {output number (1-based): [failed checks]}."""
    flags: dict[int, list[str]] = {}
    for part in (cell or "").split(";"):
        name, sep, checks = part.strip().partition("=")
        index = name.removesuffix(".png")
        if sep and index.isdigit():
            flags[int(index)] = [c for c in checks.split("+") if c]
    return flags


def default_inputs(result: JobResult) -> Sequence[str]:
    """A result's input references: its ``inputs`` if it has them, else its manifest row's images."""
    inputs = getattr(result, "inputs", None)
    if inputs:
        return list(inputs)
    row = result.manifest_row or {}
    images = row.get("images")
    return [str(i) for i in images] if isinstance(images, list) else []


def default_prompt(result: JobResult) -> str:
    prompt = getattr(result, "prompt", None)
    if prompt:
        return str(prompt)
    return str((result.manifest_row or {}).get("prompt", ""))


@dataclass
class _Collected:
    """What one pass over the results keeps: counts, and a bounded selection of results."""

    results: int = 0
    flagged_jobs: int = 0
    flagged_images: int = 0
    check_counts: dict[str, int] = field(default_factory=dict)
    failures: int = 0
    failed: list[JobResult] = field(default_factory=list)
    flagged: list[JobResult] = field(default_factory=list)  # for the QA table
    canary: list[JobResult] = field(default_factory=list)
    sheet_flagged: list[JobResult] = field(default_factory=list)
    first: list[JobResult] = field(default_factory=list)


def _collect(
    results: Iterable[JobResult],
    canary: Collection[str],
    contact_limit: int,
    flagged_limit: int,
    table_limit: int,
) -> _Collected:
    c = _Collected()
    for r in results:
        c.results += 1
        flags = parse_qa(getattr(r, "qa", "") or "")
        if flags:
            c.flagged_jobs += 1
            c.flagged_images += len(flags)
            for checks in flags.values():
                for check in checks:
                    c.check_counts[check] = c.check_counts.get(check, 0) + 1
            if len(c.flagged) < table_limit:
                c.flagged.append(r)
        if (
            r.status == "failed"
        ):  # not_attempted rows (a declined canary, a breaker) are counted in the totals
            c.failures += 1
            if len(c.failed) < table_limit:
                c.failed.append(r)
        if r.job_id in canary:
            c.canary.append(r)
        elif flags and len(c.sheet_flagged) < flagged_limit:
            c.sheet_flagged.append(r)
        elif not flags and len(c.first) < contact_limit:
            c.first.append(r)
    return c


class _Thumbs:
    """Thumbnails of the contact sheet's images, made in parallel, inputs cached by reference."""

    def __init__(
        self, read_output: ImageReader | None, read_input: ImageReader | None, side: int, workers: int
    ) -> None:
        self.read_output, self.read_input, self.side = read_output, read_input, side
        self.workers = max(1, workers)
        self.inputs: OrderedDict[str, str | None] = OrderedDict()

    def make(
        self, jobs: Sequence[tuple[Sequence[str], Sequence[str]]]
    ) -> list[tuple[list[str | None], list[str | None]]]:
        """For each job's (inputs, outputs): the thumbnails (None where unavailable), in order."""
        wanted_inputs = list(dict.fromkeys(ref for ins, _ in jobs for ref in ins if ref not in self.inputs))
        with ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="thumb") as pool:
            in_futures = {ref: pool.submit(self._input, ref) for ref in wanted_inputs}
            out_futures = [[pool.submit(self._output, uri) for uri in outs] for _, outs in jobs]
            for ref, fut in in_futures.items():
                self.inputs[ref] = fut.result()
                while len(self.inputs) > _INPUT_CACHE:
                    self.inputs.popitem(last=False)
            local = {ref: fut.result() for ref, fut in in_futures.items()}
            made = []
            for (ins, _), outs in zip(jobs, out_futures, strict=True):
                made.append(
                    ([local.get(ref, self.inputs.get(ref)) for ref in ins], [f.result() for f in outs])
                )
        return made

    def _input(self, ref: str) -> str | None:
        if ref[:5].lower() == "data:":
            try:
                return self._thumb(base64.b64decode(ref.split(",", 1)[1], validate=False))
            except (IndexError, binascii.Error, ValueError):
                return None
        return self._read(self.read_input, ref)

    def _output(self, uri: str) -> str | None:
        return self._read(self.read_output, uri)

    def _read(self, reader: ImageReader | None, ref: str) -> str | None:
        if reader is None:
            return None
        try:
            data = reader(ref)
        except Exception:  # a missing or unreadable image is a placeholder, never a failed report
            return None
        return self._thumb(data) if data else None

    def _thumb(self, data: bytes) -> str | None:
        if len(data) > MAX_IMAGE_BYTES:
            return None
        return thumbnail_data_uri(data, self.side)


def render_html_report(
    summary: RunSummary | Mapping[str, Any], results: Iterable[JobResult], **options: Any
) -> str:
    """The whole page as one string (``write_html_report`` streams it to a file instead); ``options``
    as for ``_page``: ``read_output``, ``read_input``, ``canary``, ``headline``, ``inputs_of``,
    ``prompt_of``, ``contact_limit``, ``flagged_limit``, ``table_limit``, ``thumb_side``, ``workers``."""
    return "".join(_page(_document(summary), results, **options))


def _document(summary: RunSummary | Mapping[str, Any]) -> Mapping[str, Any]:
    """The page renders the summary.json document (every key of it: unknown ones under "Run details")."""
    return summary.to_json() if isinstance(summary, RunSummary) else summary


def write_html_report(
    path: str | os.PathLike[str],
    summary: RunSummary | Mapping[str, Any],
    results: Iterable[JobResult],
    **options: Any,
) -> Path:
    """Write ``report.html`` to ``path`` (atomically: a reader never sees half a page); options as
    for ``render_html_report``."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        for chunk in _page(_document(summary), results, **options):
            fh.write(chunk)
    os.replace(tmp, target)
    return target


def _page(
    summary: Mapping[str, Any],
    results: Iterable[JobResult],
    *,
    read_output: ImageReader | None = None,
    read_input: ImageReader | None = None,
    canary: Collection[str] = (),
    headline: str | None = None,
    inputs_of: Callable[[JobResult], Sequence[str]] = default_inputs,
    prompt_of: Callable[[JobResult], str] = default_prompt,
    contact_limit: int = CONTACT_LIMIT,
    flagged_limit: int = FLAGGED_LIMIT,
    table_limit: int = TABLE_LIMIT,
    thumb_side: int = THUMB_SIDE,
    workers: int = 2,
) -> Iterator[str]:
    canary_ids = frozenset(canary)
    got = _collect(results, canary_ids, contact_limit, flagged_limit, table_limit)
    run_id = summary.get("run_id", "")
    yield (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<meta name="referrer" content="no-referrer">'
        f"<title>qwenedit run {_e(run_id)}</title><style>{_CSS}</style></head><body><main>\n"
    )
    yield f"<h1>qwenedit run <code>{_e(run_id)}</code></h1>\n"
    for key, label in (("manifest", "Manifest"), ("dest", "Destination")):
        if summary.get(key):
            yield f'<div class="sub">{label}: {_e(summary[key])}</div>\n'
    if headline:
        yield f'<div class="banner" id="headline">{_e(headline)}</div>\n'
    yield from _totals(summary, got)
    yield from _costs(summary)
    yield from _rate(summary)
    yield from _rollups(summary.get("rollups") or [])
    yield from _qa(got)
    yield from _failures(got)
    yield from _sheet(got, canary_ids, read_output, read_input, inputs_of, prompt_of, thumb_side, workers)
    yield from _details(summary)
    yield "</main></body></html>\n"


def _card(value: object, label: str, css: str = "") -> str:
    return f'<div class="card {css}"><b>{_e(value)}</b><span>{_e(label)}</span></div>'


def _money_text(costs: Mapping[str, Any]) -> str:
    return ", ".join(format_money(Decimal(str(a)), c) for c, a in sorted(costs.items())) or "0"


def _totals(summary: Mapping[str, Any], got: _Collected) -> Iterator[str]:
    status = summary.get("by_status") or {}
    yield '<h2 id="totals">Totals</h2><div class="cards">'
    yield _card(summary.get("jobs", got.results), "jobs")
    for s in STATUSES:
        if status.get(s) or s in ("succeeded", "failed"):
            yield _card(status.get(s, 0), s, "bad" if s == "failed" and status.get(s) else "")
    if "images_stored" in summary:
        yield _card(
            f"{summary['images_stored']} / {summary.get('images_requested', 0)}", "images stored / requested"
        )
    yield _card(_money_text(summary.get("total_cost") or {}), "total cost")
    flagged_css = "warn" if got.flagged_images else ""
    jobs_word = "job" if got.flagged_jobs == 1 else "jobs"
    yield _card(got.flagged_images, f"QA-flagged images, in {got.flagged_jobs} {jobs_word}", flagged_css)
    for key, label in (
        ("possibly_billed_jobs", "jobs possibly billed (answer lost)"),
        ("billed_not_stored_images", "images billed but not stored"),
    ):
        if summary.get(key):
            yield _card(summary[key], label, "bad")
    saved = int(summary.get("dedupe_saved_calls") or 0)
    if saved:  # --dedupe: rows stored from an identical row's call
        calls = "call" if saved == 1 else "calls"
        yield _card(_money_text(summary.get("dedupe_saved_cost") or {}), f"{saved} {calls} saved by --dedupe")
    yield "</div>\n"


def _table(
    headers: Sequence[str], rows: Iterable[Sequence[tuple[object, str]]], table_id: str = ""
) -> Iterator[str]:
    """A table; each cell is (value, css class). Values are escaped here."""
    ident = f' id="{table_id}"' if table_id else ""
    yield (
        f"<table{ident}><thead><tr>" + "".join(f"<th>{_e(h)}</th>" for h in headers) + "</tr></thead><tbody>"
    )
    for row in rows:
        yield (
            "<tr>"
            + "".join(f'<td class="{css}">{_e(v)}</td>' if css else f"<td>{_e(v)}</td>" for v, css in row)
            + "</tr>"
        )
    yield "</tbody></table>\n"


def _costs(summary: Mapping[str, Any]) -> Iterator[str]:
    lines = summary.get("cost_by_region_model") or []
    yield '<h2 id="cost">Cost per model and region</h2>'
    if not lines:
        yield "<p>Nothing was spent in this run.</p>\n"
        return
    rows = [
        [
            (c.get("region", ""), ""),
            (c.get("model", ""), ""),
            (format_money(Decimal(c["cost"]), c.get("currency", "")), "n"),
        ]
        for c in lines
    ]
    for currency, amount in sorted((summary.get("total_cost") or {}).items()):
        rows.append([("total", ""), ("", ""), (format_money(Decimal(amount), currency), "n")])
    yield from _table(["region", "model", "cost"], rows, "cost-table")


def _rate(summary: Mapping[str, Any]) -> Iterator[str]:
    """The run over time (``qwenedit.ratechart``): requests per second per model, 429s, spend."""
    svg = rate_chart_svg(summary.get("timeline"))
    if svg is None:
        return
    yield f'<h2 id="rate">Requests and spend over time</h2><figure id="rate-section">{svg}</figure>\n'


def _rollups(rollups: Sequence[Mapping[str, Any]]) -> Iterator[str]:
    if not rollups:
        return
    yield '<h2 id="rollups">Roll-ups</h2>'
    for rollup in rollups:
        columns = list(rollup.get("group_by", []))
        title = "By " + " × ".join(columns)
        if rollup.get("missing_columns"):
            title += f" (no row has {', '.join(rollup['missing_columns'])})"
        yield f"<h3>{_e(title)}</h3>"
        groups = list(rollup.get("groups", []))
        rows = [
            [
                *((g["key"].get(c) or "(empty)", "") for c in columns),
                (g.get("jobs", 0), "n"),
                (g.get("succeeded", 0), "n"),
                (g.get("failed", 0), "n"),
                (g.get("images", 0), "n"),
                (_money_text(g.get("cost") or {}), "n"),
            ]
            for g in groups[:TABLE_LIMIT]
        ]
        other = rollup.get("other")
        if other:
            rows.append(
                [
                    (f"(other values, past {rollup.get('max_groups', '')})", ""),
                    *(("", "") for _ in columns[1:]),
                    (other.get("jobs", 0), "n"),
                    (other.get("succeeded", 0), "n"),
                    (other.get("failed", 0), "n"),
                    (other.get("images", 0), "n"),
                    (_money_text(other.get("cost") or {}), "n"),
                ]
            )
        yield from _table([*columns, "jobs", "succeeded", "failed", "images", "cost"], rows)
        if len(groups) > TABLE_LIMIT:
            yield f'<p class="more">… and {len(groups) - TABLE_LIMIT:,} more groups in summary.json.</p>'


def _qa(got: _Collected) -> Iterator[str]:
    yield '<h2 id="qa">Output QA</h2>'
    if not got.flagged_jobs:
        yield "<p>Every checked output passed QA.</p>\n"
        return
    counts = ", ".join(f"{check}: {n}" for check, n in sorted(got.check_counts.items()))
    yield f"<p>{got.flagged_images} image(s) in {got.flagged_jobs} job(s) failed a check ({_e(counts)}). Flagged outputs are kept: they were paid for.</p>"
    rows = []
    for r in got.flagged:
        flags = parse_qa(getattr(r, "qa", "") or "")
        text = "; ".join(f"output {k}: {', '.join(v)}" for k, v in sorted(flags.items()))
        rows.append([(r.job_id, ""), (r.status, ""), (text, "msg")])
    yield from _table(["job_id", "status", "failed checks"], rows, "qa-table")
    if got.flagged_jobs > len(got.flagged):
        yield f'<p class="more">… and {got.flagged_jobs - len(got.flagged):,} more flagged jobs in results.csv (column qa).</p>'


def _failures(got: _Collected) -> Iterator[str]:
    yield '<h2 id="failures">Failures</h2>'
    if not got.failures:
        yield "<p>No job failed.</p>\n"
        return
    rows = [
        [(r.row, "n"), (r.job_id, ""), (r.status, ""), (r.error_code, ""), (r.error_message, "msg")]
        for r in got.failed
    ]
    yield from _table(["row", "job_id", "status", "code", "reason"], rows, "failures-table")
    if got.failures > len(got.failed):
        yield f'<p class="more">… and {got.failures - len(got.failed):,} more in failed.jsonl and results.csv.</p>'


def _figure(thumb: str | None, caption: str, qa: Sequence[str] = (), unavailable: str = "no preview") -> str:
    img = f'<img src="{thumb}" alt="{_e(caption)}">' if thumb else f'<div class="ph">{_e(unavailable)}</div>'
    cap = f"<figcaption>{_e(caption)}</figcaption>"
    if qa:
        cap += f'<figcaption class="qa">QA: {_e(", ".join(qa))}</figcaption>'
    return f"<figure>{img}{cap}</figure>"


def _sheet(
    got: _Collected,
    canary: frozenset[str],
    read_output: ImageReader | None,
    read_input: ImageReader | None,
    inputs_of: Callable[[JobResult], Sequence[str]],
    prompt_of: Callable[[JobResult], str],
    side: int,
    workers: int,
) -> Iterator[str]:
    jobs = [*got.canary, *got.sheet_flagged, *got.first]
    yield '<h2 id="contact-sheet">Contact sheet: inputs → outputs</h2>'
    if not jobs:
        yield "<p>No jobs.</p>\n"
        return
    parts = []
    if got.canary:
        parts.append(f"{len(got.canary)} canary job(s)")
    if got.sheet_flagged:
        parts.append(f"{len(got.sheet_flagged)} flagged job(s)")
    if got.first:
        parts.append(f"the first {len(got.first)} other job(s)")
    yield f'<p class="sub">{_e(", then ".join(parts))} of {got.results:,}.</p><div class="sheet">'
    thumbs = _Thumbs(read_output, read_input, side, workers)
    batch = 32  # thumbnails of a few jobs at a time: memory stays one batch of images
    for start in range(0, len(jobs), batch):
        chunk = jobs[start : start + batch]
        refs = [(list(inputs_of(r)), list(r.outputs)) for r in chunk]
        for r, (ins, outs), (in_thumbs, out_thumbs) in zip(chunk, refs, thumbs.make(refs), strict=True):
            yield _job_card(r, ins, outs, in_thumbs, out_thumbs, r.job_id in canary, prompt_of(r))
    yield "</div>\n"


def _job_card(
    r: JobResult,
    ins: Sequence[str],
    outs: Sequence[str],
    in_thumbs: Sequence[str | None],
    out_thumbs: Sequence[str | None],
    is_canary: bool,
    prompt: str,
) -> str:
    flags = parse_qa(getattr(r, "qa", "") or "")
    css = "job" + (" flagged" if flags else "") + (" failed" if r.status == "failed" else "")
    tags = [f'<span class="tag {_e(r.status)}">{_e(r.status)}</span>']
    if is_canary:
        tags.append('<span class="tag canary">canary</span>')
    if flags:
        tags.append('<span class="tag qa">QA flagged</span>')
    cost = format_money(Decimal(r.cost or "0"), r.currency) if r.currency else ""
    meta = " · ".join(x for x in (r.model, r.region, cost) if x)
    out = [
        f'<article class="{css}" data-job-id="{_e(r.job_id)}"><header><span class="jid">{_e(r.job_id)}</span>',
        *tags,
        f'<span class="sub">{_e(meta)}</span></header>',
    ]
    if prompt:
        out.append(f'<div class="prompt">{_e(prompt)}</div>')
    out.append('<div class="strip">')
    for k, (ref, thumb) in enumerate(zip(ins, in_thumbs, strict=True), start=1):
        label = f"input {k}" + ("" if ref[:5].lower() == "data:" else f": {_short(ref)}")
        out.append(_figure(thumb, label))
    out.append('<span class="arrow">→</span>')
    for k, (uri, thumb) in enumerate(zip(outs, out_thumbs, strict=True), start=1):
        out.append(_figure(thumb, f"output {k}: {_short(uri)}", flags.get(k, ()), "not readable"))
    if not outs:
        reason = f"{r.error_code}: {r.error_message}" if r.error_code or r.error_message else "no outputs"
        out.append(f'<div class="err">{_e(reason)}</div>')
    out.append("</div></article>")
    return "".join(out)


def _short(ref: str, keep: int = 48) -> str:
    """A reference to show: a URL without userinfo, query string or fragment (a presigned query *is* a
    credential, ``user:pass@`` is one), cut to its last ``keep`` characters."""
    ref = redact_url(ref) if "://" in ref else ref.split("?", 1)[0]
    return ref if len(ref) <= keep else "…" + ref[-(keep - 1) :]


def _details(summary: Mapping[str, Any]) -> Iterator[str]:
    rest = {k: v for k, v in summary.items() if k not in _SHOWN_KEYS}
    if not rest:
        return
    yield '<h2 id="details">Run details</h2>'
    rows = []
    for key, value in rest.items():
        text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
        if len(text) > _DETAIL_CHARS:
            text = text[: _DETAIL_CHARS - 1] + "…"
        rows.append([(key, ""), (text, "msg")])
    yield from _table(["", ""], rows, "details-table")
