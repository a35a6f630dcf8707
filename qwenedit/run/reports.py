"""A run's reports: results.csv, summary.json, failed.jsonl and report.html, local and at the destination.

report.html's contact sheet shows inputs and outputs: inputs are read where the run reads them (a local
file, or an S3 object through a presigned URL; web URLs are not fetched), outputs from the destination.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from qwenedit.htmlreport import CONTACT_LIMIT, write_html_report
from qwenedit.inputs import InputResolver, data_uri_bytes
from qwenedit.pipeline import RunServices
from qwenedit.report import ResultSpool, save_reports, write_reports
from qwenedit.summary import RunSummary


@dataclass(frozen=True)
class RunReports:
    """Where one run's reports go and what they read."""

    out_dir: Path
    services: RunServices
    resolver: InputResolver
    spool: ResultSpool

    async def write(self, summary: RunSummary, canary: Sequence[str]) -> None:
        """Every report, written locally and uploaded to ``{dest}/_runs/{run_id}/``."""
        self.spool.close()
        paths = await asyncio.to_thread(write_reports, self.spool, summary.to_json(), self.out_dir)
        paths["report.html"] = await asyncio.to_thread(self.write_html, summary, canary, None)
        await asyncio.to_thread(save_reports, self.services.dest, self.services.run_id, paths)

    def write_html(self, summary: RunSummary, canary: Sequence[str], headline: str | None) -> Path:
        """report.html: totals, costs, roll-ups, QA flags, failures and a bounded contact sheet."""
        # Totals come from the summary; the page lists executed rows and the first rows of the manifest.
        self.spool.flush()
        results, _ = self.spool.in_manifest_order(skipped_after=CONTACT_LIMIT)
        return write_html_report(
            self.out_dir / "report.html",
            summary,
            results,
            read_output=self.read_output,
            read_input=self.read_input,
            canary=list(canary),
            headline=headline,
        )

    def read_output(self, uri: str) -> bytes | None:
        """An output image of this run's destination (other URIs are not read)."""
        base = self.services.dest.uri("")
        return self.services.dest.get_bytes(uri[len(base) :].lstrip("/")) if uri.startswith(base) else None

    def read_input(self, ref: str) -> bytes | None:
        """An input image for the contact sheet: local files and S3 objects (URLs are not fetched)."""
        located = self.resolver.locate(ref)
        if located.kind not in ("local", "s3"):
            return None
        resolved = self.resolver.resolve(ref)  # a data URI (local) or a presigned URL (S3)
        if resolved.startswith("data:"):
            return data_uri_bytes(resolved)
        answer = self.services.http.get(resolved)
        return answer.content if answer.status_code == 200 else None
