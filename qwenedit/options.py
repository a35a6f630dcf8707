"""Every setting of a run, in one object: ``RunOptions``.

The CLI (``qwenedit run``), the flows (``flows/``), the deployments, the bench and the tests all build a
``RunOptions``; the run layer (``qwenedit.run``) reads nothing else. Adding an option means one field
here (plus its CLI flag). A sharded run derives each shard's options from the parent's with
``shard_options``.

Validation happens when the object is built: a bad value raises ``pydantic.ValidationError`` naming
the field, before anything is read or spent. Money is text with its currency (``"50"``, ``"50 USD"``,
``"350 CNY"``), parsed by ``pricing.parse_money`` — the same parser ``qwenedit validate --budget``
uses. The API key is never an option: ``api_key_env`` names the environment variable that holds it.
"""

from __future__ import annotations

import math
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from qwenedit.catalog import parse_money
from qwenedit.rates import normalize_rates
from qwenedit.rollups import parse_group_by
from qwenedit.templates import parse_template

if TYPE_CHECKING:
    from qwenedit.spend import Caps

# A chunk is Prefect's unit of work: big enough that a million-row manifest is a few hundred task
# runs, small enough that a chunk's task run shows progress every few minutes at 2 req/s.
MIN_CHUNK = 1000
MAX_CHUNKS = 500


class RunOptions(BaseModel):
    """How to run one manifest: where from, where to, how fast, how hard to retry, what it may cost."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    manifest: str = Field(description="CSV or JSONL manifest: local path, s3:// or https://")
    dest: str = Field(description="s3://bucket/prefix or a local folder")
    region: str = Field("singapore", description="default region of rows without one (prices, endpoint)")
    base_url: str | None = Field(None, description="API root (e.g. the emulator); default: the region's")
    model: str | None = Field(
        None, description="default model of rows without one (default: qwen-image-edit-plus)"
    )
    prices: str | None = Field(None, description="price file overriding the built-in table")
    input_root: str | None = Field(
        None, description="local input images may only come from here (default: the manifest's folder)"
    )
    allow_private_urls: bool = Field(
        False,
        description="let --check-images fetch URLs on loopback/private addresses (the API cannot reach them)",
    )
    max_manifest_mib: int = Field(
        1024, ge=1, description="refuse a manifest file (or download) larger than this, in MiB"
    )
    max_manifest_decompressed_mib: int = Field(
        4096, ge=1, description="refuse a gzipped manifest that decompresses to more than this, in MiB"
    )
    max_manifest_rows: int = Field(2_000_000, ge=1, description="refuse a manifest with more rows than this")
    budget: str | None = Field(
        None, description='spending limit, e.g. "50" or "350 CNY": a run stops before spend could exceed it'
    )
    spend_ledger: str | None = Field(
        None,
        description="s3://bucket/prefix or a folder whose spend log every run naming it shares "
        "(default: the destination)",
    )
    daily_budget: str | None = Field(
        None,
        description='cap on the spend of every run of the spend ledger per UTC day, e.g. "20" or "150 CNY"',
    )
    monthly_budget: str | None = Field(
        None,
        description="cap on the spend of every run of the spend ledger per UTC month",
    )
    rates: tuple[str, ...] = Field(
        (),
        description="rate limits overriding the model table's: RATE for every model or MODEL=RATE "
        "(RATE like 2, 2/s, 2/min; MODEL like qwen-image-edit-max or max); default: each model's own",
    )
    rate_share: float = Field(
        1.0,
        gt=0,
        le=1,
        description="fraction of each limit this run may use (shards of one account split it)",
    )
    max_in_flight: int | None = Field(
        None, ge=1, description="hard cap on calls open at once (default: sized by Little's law)"
    )
    chunk_size: int | None = Field(
        None, ge=1, description="jobs per Prefect task run (default: chosen by the run)"
    )
    max_attempts: int = Field(
        6, ge=1, description="tries per API call (one edit request of a job) for retryable errors"
    )
    store_attempts: int = Field(8, ge=1, description="tries per storage operation during an outage")
    backoff_base: float = Field(1.0, ge=0, description="first retry waits about this many seconds")
    backoff_cap: float = Field(30.0, ge=0, description="no retry waits longer than this")
    throttle_penalty: float | None = Field(
        None,
        ge=0,
        description="seconds a model's pacer holds its next permit after a 429 (default: one interval of its "
        "widened spacing: 0.5 s at 2/s, 30 s at 2/min)",
    )
    timeout_s: float = Field(120.0, gt=0, description="seconds to wait for one API answer")
    stop_grace_s: float | None = Field(
        None,
        gt=0,
        description="after SIGINT/SIGTERM, seconds the calls in flight get before the run stops at once "
        "(default: timeout_s + 15)",
    )
    recall_expired: bool = Field(False, description="pay again for jobs whose outputs expired unstored")
    allowed_output_hosts: tuple[str, ...] = Field((), description="extra hosts allowed to serve outputs")
    prompt_template: str | None = Field(
        None, description='fill each row\'s prompt from its columns, e.g. "Put the {product} on white"'
    )
    group_by: tuple[str, ...] = Field(
        (), description="roll up jobs, images and cost per value of these columns"
    )
    qa: bool = Field(True, description="check every stored output: decodes, size as reported, not blank")
    qa_retries: int = Field(
        0, ge=0, description="regenerate a job whose outputs QA flagged, up to this many times"
    )
    dedupe: bool = Field(
        False,
        description="rows asking for the identical edit (same inputs, prompt and parameters) are called "
        "once; the others get copies of its stored outputs, at no cost",
    )
    canary: int = Field(0, ge=0, description="run this many jobs first, report them, and ask before the rest")
    approval_timeout_s: float = Field(
        3600.0, gt=0, description="how long a deployment run waits for approval"
    )
    # The policy (qwenedit.policy): limits a manifest cannot change; a row that breaks one is refused
    # before any call. The watcher takes them from its deployment's parameters.
    allow_model: tuple[str, ...] = Field((), description="policy: a model rows may use (default: any model)")
    max_n: int | None = Field(
        None, ge=1, description="policy: most images one row may ask for (default: no limit)"
    )
    max_rows: int | None = Field(
        None, ge=1, description="policy: most data rows a manifest may have (default: no limit)"
    )
    allow_input_prefix: tuple[str, ...] = Field(
        (),
        description="policy: s3:// and https:// inputs only from under this folder (default: any)",
    )
    approve_above: str | None = Field(
        None, description='ask before the first call when the quote is above this, e.g. "20" or "150 CNY"'
    )
    region_endpoint: tuple[str, ...] = Field(
        (),
        description="serve rows of another region at its own endpoint and key: "
        '"REGION=URL,KEY_ENV" (e.g. "beijing=https://dashscope.aliyuncs.com,KEY_BJ")',
    )
    report_dir: str = Field("runs", description="local folder for run reports")
    run_id: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$",  # a folder and key part: no "/", never ".."
        description="the run's id: letters, digits, . _ - (default: time + random suffix)",
    )
    api_key_env: str = Field("DASHSCOPE_API_KEY", description="environment variable holding the API key")

    @field_validator("budget", "daily_budget", "monthly_budget")
    @classmethod
    def _budget_is_money(cls, value: str | None) -> str | None:
        if value is None or not str(value).strip():
            return None
        parse_money(str(value))  # raises ValueError with a readable reason
        return str(value).strip()

    @field_validator("approve_above")
    @classmethod
    def _approve_above_is_money(cls, value: str | None) -> str | None:
        if value is None or not str(value).strip():
            return None
        parse_money(str(value))
        return str(value).strip()

    @field_validator("allow_model", "allow_input_prefix", "region_endpoint", mode="before")
    @classmethod
    def _repeatable(cls, value: Any) -> Any:
        return () if value is None else ((value,) if isinstance(value, str) else tuple(value))

    @field_validator("allow_input_prefix")
    @classmethod
    def _prefixes_parse(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        from qwenedit.policy import parse_prefix

        for text in value:
            parse_prefix(text)  # ValueError naming what is wrong
        return tuple(text.strip() for text in value)

    @field_validator("region_endpoint")
    @classmethod
    def _routes_parse(cls, value: tuple[str, ...], info: ValidationInfo) -> tuple[str, ...]:
        from qwenedit.regions import parse_routes

        parse_routes(value, info.data.get("region", "singapore"))  # ValueError naming the bad entry
        return value

    @field_validator("prompt_template")
    @classmethod
    def _template_parses(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        parse_template(value)  # TemplateError (a ValueError) names what is wrong with it
        return value

    @field_validator("group_by", mode="before")
    @classmethod
    def _group_by_specs(cls, value: Any) -> Any:
        specs = () if value is None else ((value,) if isinstance(value, str) else tuple(value))
        for spec in specs:
            parse_group_by(spec)
        return specs

    @field_validator("rates", mode="before")
    @classmethod
    def _rate_specs(cls, value: Any) -> Any:
        return normalize_rates(value)  # ValueError naming the bad spec (qwenedit.rates)

    @field_validator("allowed_output_hosts", mode="before")
    @classmethod
    def _hosts_tuple(cls, value: Any) -> Any:
        return () if value is None else tuple(value)

    @field_validator("monthly_budget")
    @classmethod
    def _caps_in_one_currency(cls, value: str | None, info: ValidationInfo) -> str | None:
        from qwenedit.spend import Caps

        Caps.parse(info.data.get("daily_budget"), value)  # ValueError if the two differ in currency
        return value

    def spend_caps(self) -> Caps:
        """The daily and monthly caps shared by every run of the spend ledger (``Caps.active``: any set)."""
        from qwenedit.spend import Caps

        return Caps.parse(self.daily_budget, self.monthly_budget)

    def spend_ledger_uri(self) -> str:
        """Where the shared spend log is kept: the option, else the destination."""
        return self.spend_ledger or self.dest

    def budget_amount(self) -> tuple[Decimal, str] | None:
        """The budget as (amount, currency), or None for no budget."""
        return None if self.budget is None else parse_money(self.budget)

    def approve_above_amount(self) -> tuple[Decimal, str] | None:
        """The approval threshold as (amount, currency), or None when no run needs approving."""
        return None if self.approve_above is None else parse_money(self.approve_above)

    def chunk_size_for(self, jobs: int) -> int:
        """Jobs per chunk: the option if set, else enough that a run has at most ``MAX_CHUNKS`` chunks."""
        if self.chunk_size is not None:
            return self.chunk_size
        return max(MIN_CHUNK, math.ceil(jobs / MAX_CHUNKS))

    def with_changes(self, **changes: Any) -> RunOptions:
        """A copy with ``changes`` applied and validated (e.g. a shard's manifest, rate and budget)."""
        return type(self).model_validate({**self.model_dump(), **changes})
