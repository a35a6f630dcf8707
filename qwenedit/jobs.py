"""The job model: one validated manifest row, and its fingerprint.

A ``Job`` is what the rest of the pipeline sees; it is built only by ``manifest/`` after
validation, so every field here is already known to be well-formed.

The fingerprint is the identity of the *work*, not of the row: the model, region, request
parameters, prompt and the identities of the inputs (see ``inputs.identity``). A rerun skips a job
whose done record carries the same fingerprint and runs it again if anything in it changed.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

DEFAULT_MODEL = "qwen-image-edit-plus"
DEFAULT_REGION = "singapore"

# Columns the manifest understands; everything else is carried through to the report untouched.
CSV_COLUMNS = (
    "job_id",
    "image_1",
    "image_2",
    "image_3",
    "prompt",
    "negative_prompt",
    "n",
    "size",
    "seed",
    "prompt_extend",
    "watermark",
    "model",
    "region",
)


@dataclass(frozen=True)
class Job:
    """One image-edit job: 1–3 input images + an instruction → ``n`` edited images."""

    row: int  # 1-based data row in the manifest (the header is not a row)
    job_id: str
    images: tuple[str, ...]  # references exactly as written in the manifest (URL, s3://, path, data URI)
    prompt: str
    model: str = DEFAULT_MODEL
    region: str = DEFAULT_REGION
    n: int = 1
    negative_prompt: str | None = None
    size: str | None = None  # "W*H"
    seed: int | None = None
    prompt_extend: bool | None = None
    watermark: bool | None = None
    extra: Mapping[str, str] = field(default_factory=dict)  # pass-through columns (SKU, notes, ...)

    def parameters(self) -> dict[str, Any]:
        """The request's ``parameters`` object: only what the row sets, so API defaults apply."""
        params: dict[str, Any] = {"n": self.n}
        for name in ("negative_prompt", "size", "seed", "prompt_extend", "watermark"):
            value = getattr(self, name)
            if value is not None:
                params[name] = value
        return params

    def to_manifest_row(self) -> dict[str, Any]:
        """The job back in JSONL manifest form (used for failed.jsonl, ready to rerun)."""
        row: dict[str, Any] = {"job_id": self.job_id, "images": list(self.images), "prompt": self.prompt}
        row["model"] = self.model
        row["region"] = self.region
        row.update(self.parameters())
        row.update(self.extra)
        return row


def fingerprint(job: Job, input_identities: Sequence[str]) -> str:
    """A stable hash of everything that determines what the API would be asked to do."""
    payload = {
        "model": job.model,
        "region": job.region,
        "parameters": job.parameters(),
        "prompt": job.prompt,
        "inputs": list(input_identities),
    }
    canonical = json.dumps(payload, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(canonical.encode("utf-8")).hexdigest()
