"""The run summary, typed: what a run (or a sharded run) did, and why it stopped early if it did.

``RunSummary`` is built once, by the run (``qwenedit.run``) or the sharded flow, and read as attributes
by the CLI, the flows, the shard merge and the reports. ``to_json()`` is ``summary.json`` (a file format
users read: its keys and shapes do not change); ``from_json()`` reads one back (a shard's report).

``StoppedBy`` says why a run ended before every job ran, by ``StopCause``:

- ``breaker``: an account-level API error (``code``, ``message``): no new call started;
- ``budget``: the spend limit (``limit``) would have been exceeded;
- ``declined``: the canary was not approved (``reason``);
- ``stop``: a signal or a stop request (``reason``);
- ``spend_cap``: a daily or monthly cap shared by every run of a spend ledger (``reason``, ``cap``,
  ``limit``, ``used``, ``period``, ``ledger``, ``message``; only ``reason`` and ``message`` when the
  ledger could not be used);
- ``shard_failed``: a shard run of a sharded run did not complete (``shards``).

A sharded run's stop also lists its shards' own stops (``shard_stops``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from enum import StrEnum
from typing import Any

STATUSES = ("succeeded", "failed", "skipped", "not_attempted")


class StopCause(StrEnum):
    BREAKER = "breaker"
    BUDGET = "budget"
    DECLINED = "declined"
    STOP = "stop"
    SPEND_CAP = "spend_cap"
    SHARD_FAILED = "shard_failed"


@dataclass(frozen=True)
class StoppedBy:
    """Why a run stopped early; its JSON form carries only the fields of its cause."""

    cause: StopCause
    reason: str = ""  # stop, declined, spend_cap (its message: what the run log and the watcher show)
    code: str = ""  # breaker
    message: str = ""  # breaker, spend_cap
    limit: str = ""  # budget, spend_cap
    cap: str = ""  # spend_cap: which cap ("daily", "monthly")
    used: str = ""  # spend_cap: what the ledger's runs had spent
    period: str = ""  # spend_cap: the day or month
    ledger: str = ""  # spend_cap: where the spend log is
    shards: tuple[int, ...] = ()  # shard_failed: the shard indexes that did not complete
    shard_stops: tuple[StoppedBy, ...] | None = None  # sharded runs: the shards' own stops

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"cause": self.cause.value}
        for key in _CAUSE_KEYS[self.cause]:
            value = getattr(self, key)
            if self.cause is StopCause.SPEND_CAP and value == "":
                continue  # a ledger that could not be used has only a message
            out[key] = list(value) if isinstance(value, tuple) else value
        if self.shard_stops is not None:
            out["shard_stops"] = [s.to_json() for s in self.shard_stops]
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> StoppedBy:
        stops = data.get("shard_stops")
        return cls(
            cause=StopCause(data["cause"]),
            reason=str(data.get("reason", "")),
            code=str(data.get("code", "")),
            message=str(data.get("message", "")),
            limit=str(data.get("limit", "")),
            cap=str(data.get("cap", "")),
            used=str(data.get("used", "")),
            period=str(data.get("period", "")),
            ledger=str(data.get("ledger", "")),
            shards=tuple(int(i) for i in data.get("shards", ())),
            shard_stops=None if stops is None else tuple(cls.from_json(s) for s in stops),
        )


_CAUSE_KEYS = {
    StopCause.BREAKER: ("code", "message"),
    StopCause.BUDGET: ("limit",),
    StopCause.DECLINED: ("reason",),
    StopCause.STOP: ("reason",),
    StopCause.SPEND_CAP: ("cap", "limit", "used", "period", "ledger", "message", "reason"),
    StopCause.SHARD_FAILED: ("shards",),
}


@dataclass(frozen=True)
class CostLine:
    region: str
    model: str
    currency: str
    cost: str  # an exact decimal


@dataclass(frozen=True)
class Totals:
    """Counts, images and costs of a set of job results (``report.RunTotals`` adds them up)."""

    jobs: int = 0
    by_status: Mapping[str, int] = field(default_factory=lambda: dict.fromkeys(STATUSES, 0))
    images_requested: int = 0
    images_stored: int = 0
    possibly_billed_jobs: int = 0
    possibly_billed_images: int = 0
    possibly_billed_cost: Mapping[str, str] = field(default_factory=dict)  # worst case, by currency
    billed_not_stored_images: int = 0
    qa_flagged_jobs: int = 0
    qa_flagged_images: int = 0
    qa_retries: int = 0
    dedupe_saved_calls: int = 0  # --dedupe: calls not made (rows copied from an identical row)
    dedupe_saved_cost: Mapping[str, str] = field(default_factory=dict)  # what they would have cost
    cost_by_region_model: tuple[CostLine, ...] = ()
    total_cost: Mapping[str, str] = field(default_factory=dict)  # by currency

    def count(self, status: str) -> int:
        return int(self.by_status.get(status, 0))

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "cost_by_region_model":
                value = [
                    {"region": c.region, "model": c.model, "currency": c.currency, "cost": c.cost}
                    for c in value
                ]
            elif isinstance(value, Mapping):
                value = dict(value)
            out[f.name] = value
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Totals:
        by_status = data.get("by_status") or {}
        return cls(
            jobs=int(data.get("jobs", 0)),
            by_status={s: int(by_status.get(s, 0)) for s in STATUSES},
            images_requested=int(data.get("images_requested", 0)),
            images_stored=int(data.get("images_stored", 0)),
            possibly_billed_jobs=int(data.get("possibly_billed_jobs", 0) or 0),
            possibly_billed_images=int(data.get("possibly_billed_images", 0) or 0),
            possibly_billed_cost=dict(data.get("possibly_billed_cost") or {}),
            billed_not_stored_images=int(data.get("billed_not_stored_images", 0) or 0),
            qa_flagged_jobs=int(data.get("qa_flagged_jobs", 0) or 0),
            qa_flagged_images=int(data.get("qa_flagged_images", 0) or 0),
            qa_retries=int(data.get("qa_retries", 0) or 0),
            dedupe_saved_calls=int(data.get("dedupe_saved_calls", 0) or 0),
            dedupe_saved_cost=dict(data.get("dedupe_saved_cost") or {}),
            cost_by_region_model=tuple(
                CostLine(c["region"], c["model"], c["currency"], str(c["cost"]))
                for c in data.get("cost_by_region_model") or ()
            ),
            total_cost=dict(data.get("total_cost") or {}),
        )


@dataclass(frozen=True)
class ModelLine:
    """One model's figures in a run: its limit, the requests actually sent, rate and 429s, pacing."""

    limit: str
    requests_sent: int  # counted as each request's first byte left, not pacer permits
    request_rate: float
    throttled_429: int
    pacing: Mapping[str, Any] = field(default_factory=dict)  # the pacer's counters (granted, backoffs...)

    def to_json(self) -> dict[str, Any]:
        return {
            **self.pacing,
            "limit": self.limit,
            "requests_sent": self.requests_sent,
            "request_rate": self.request_rate,
            "throttled_429": self.throttled_429,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ModelLine:
        known = {"limit", "requests_sent", "request_rate", "throttled_429"}
        return cls(
            limit=str(data.get("limit", "")),
            requests_sent=int(data.get("requests_sent", 0)),
            request_rate=float(data.get("request_rate", 0.0)),
            throttled_429=int(data.get("throttled_429", 0)),
            pacing={k: v for k, v in data.items() if k not in known},
        )


# Keys of summary.json in the order they are written; ``totals`` stands for the Totals' keys.
_ORDER = (
    "run_id",
    "manifest",
    "dest",
    "endpoint",
    "totals",
    "stopped_by",
    "budget",
    "wall_time_s",
    "requests_sent",
    "request_rate",
    "rates",
    "models",
    "window",
    "throttled_429",
    "chunks",
    "canary_jobs",
    "accounts",
    "shards",
    "report_dir",
    "rollups",
    "timeline",
)
_OPTIONAL = ("models", "window", "chunks", "canary_jobs", "accounts", "shards", "rollups", "timeline")


@dataclass(frozen=True)
class RunSummary:
    """A run's summary (see the module docstring). Optional parts are None when they do not apply:
    ``models``/``window``/``chunks``/``canary_jobs`` for a sharded run, ``accounts``/``shards`` for a
    single one, ``rollups`` without ``--group-by``."""

    run_id: str
    manifest: str
    dest: str
    endpoint: str
    totals: Totals
    report_dir: str
    stopped_by: StoppedBy | None = None
    budget: str | None = None
    wall_time_s: float = 0.0
    requests_sent: int = 0  # requests that left, all models (the sum of the models' requests_sent)
    request_rate: float = 0.0
    rates: Sequence[str] = ()  # the options' rate limits ("2", "max=2/min"); empty: the model table's
    throttled_429: int = 0
    models: Mapping[str, ModelLine] | None = None
    window: Mapping[str, Any] | None = None
    chunks: int | None = None
    canary_jobs: int | None = None
    accounts: Sequence[str] | None = None
    shards: Sequence[Mapping[str, Any]] | None = None
    rollups: Sequence[dict[str, Any]] | None = None
    timeline: Mapping[str, Any] | None = None  # sends, 429s and spend over time (qwenedit.timeline)

    @property
    def stopped(self) -> bool:
        return self.stopped_by is not None

    @property
    def exit_code(self) -> int:
        """0 every job succeeded or was skipped, 1 some failed, 3 stopped (breaker, budget, a signal,
        a declined canary, a failed shard)."""
        if self.stopped_by is not None:
            return 3
        return 1 if self.totals.count("failed") else 0

    @property
    def jobs_left(self) -> int:
        """Jobs a rerun of the same command would still run (neither succeeded nor skipped)."""
        return self.totals.jobs - self.totals.count("succeeded") - self.totals.count("skipped")

    def with_changes(self, **changes: Any) -> RunSummary:
        return replace(self, **changes)

    def to_json(self) -> dict[str, Any]:
        """The summary.json document."""
        out: dict[str, Any] = {}
        for key in _ORDER:
            value = getattr(self, key)
            if key == "totals":
                out.update(self.totals.to_json())
                continue
            if key in _OPTIONAL and value is None:
                continue
            if key == "stopped_by":
                value = None if value is None else value.to_json()
            elif key == "models":
                value = {m: line.to_json() for m, line in value.items()}
            elif key in ("window", "timeline"):
                value = dict(value)
            elif key in ("rates", "accounts", "shards", "rollups"):
                value = list(value)
            out[key] = value
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RunSummary:
        """A summary.json document read back (keys it lacks take their defaults)."""
        stopped = data.get("stopped_by")
        models = data.get("models")
        return cls(
            run_id=str(data.get("run_id", "")),
            manifest=str(data.get("manifest", "")),
            dest=str(data.get("dest", "")),
            endpoint=str(data.get("endpoint", "")),
            totals=Totals.from_json(data),
            report_dir=str(data.get("report_dir", "")),
            stopped_by=StoppedBy.from_json(stopped) if stopped else None,
            budget=data.get("budget"),
            wall_time_s=float(data.get("wall_time_s", 0.0)),
            requests_sent=int(data.get("requests_sent", 0) or 0),
            request_rate=float(data.get("request_rate", 0.0) or 0.0),
            rates=tuple(data.get("rates") or ()),
            throttled_429=int(data.get("throttled_429", 0) or 0),
            models=None if models is None else {m: ModelLine.from_json(v) for m, v in models.items()},
            window=data.get("window"),
            chunks=data.get("chunks"),
            canary_jobs=data.get("canary_jobs"),
            accounts=data.get("accounts"),
            shards=data.get("shards"),
            rollups=data.get("rollups"),
            timeline=data.get("timeline"),
        )
