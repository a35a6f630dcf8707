"""The run ledger under ``{dest}/_ledger/``: what was paid for, and what is finished.

Two records per job, both small JSON objects stored next to the outputs so that any machine that can
see the destination can resume the work:

- a **charge** (``_ledger/{job_id}/charges/{request_id}.json``, create-only), written right after a
  successful API call and *before* any output is copied: the request id, the usage, the output URLs
  and when they expire, the unit price and the cost. It is the proof of payment and the recipe for
  copying without calling again.
- a **done** record (``_ledger/{job_id}/done.json``), written after every output is stored: the
  job's fingerprint and its outputs. It is the job's commit marker; a rerun skips a job whose done
  record carries the same fingerprint.

Records never contain the API key or storage credentials. Output URLs are presigned by the API's
result bucket, so they are stored (the copier needs them) but never printed or put in reports.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, Protocol
from urllib.parse import parse_qs, urlsplit

LEDGER_PREFIX = "_ledger"
OUTPUT_URL_TTL = timedelta(hours=24)  # the API keeps results 24 h


class RecordStore(Protocol):
    """The part of a destination the ledger needs."""

    def put_bytes(self, key: str, data: bytes, content_type: str, overwrite: bool = True) -> object: ...

    def get_bytes(self, key: str) -> bytes | None: ...

    def list_keys(self, prefix: str) -> Any: ...


def utcnow() -> datetime:
    return datetime.now(UTC)


def url_expiry(url: str, issued_at: datetime) -> datetime:
    """When an output URL stops working: its signed ``Expires`` if present, else issue time + 24 h."""
    query = parse_qs(urlsplit(url).query)
    for name in ("Expires", "x-oss-expires"):
        values = query.get(name)
        if values and values[0].isdigit():
            return datetime.fromtimestamp(int(values[0]), UTC)
    return issued_at + OUTPUT_URL_TTL


@dataclass(frozen=True)
class Charge:
    """One paid API call: enough to copy its outputs later without calling again."""

    job_id: str
    fingerprint: str
    request_id: str
    model: str
    region: str
    image_count: int
    width: int
    height: int
    output_urls: tuple[str, ...]
    expires_at: str  # ISO 8601, the earliest expiry among output_urls
    unit_price: str  # Decimal as text: exact
    currency: str
    cost: str
    charged_at: str
    run_id: str

    @property
    def cost_decimal(self) -> Decimal:
        return Decimal(self.cost)

    def expired(self, now: datetime, margin: timedelta = timedelta(minutes=5)) -> bool:
        """True if the outputs can no longer be fetched (with a margin for the copy itself)."""
        return datetime.fromisoformat(self.expires_at) <= now + margin


@dataclass(frozen=True)
class Done:
    """A finished job: its fingerprint and where its outputs are."""

    job_id: str
    fingerprint: str
    request_id: str
    image_count: int
    outputs: tuple[str, ...]
    cost: str
    currency: str
    finished_at: str
    run_id: str
    extra: dict[str, Any] = field(default_factory=dict)


def _dump(record: Charge | Done) -> bytes:
    return json.dumps(asdict(record), ensure_ascii=False, sort_keys=True, indent=1).encode("utf-8")


def charge_key(job_id: str, request_id: str) -> str:
    return f"{LEDGER_PREFIX}/{job_id}/charges/{request_id}.json"


def done_key(job_id: str) -> str:
    return f"{LEDGER_PREFIX}/{job_id}/done.json"


class Ledger:
    """Reads and writes charge and done records in a destination."""

    def __init__(self, store: RecordStore) -> None:
        self.store = store

    def write_charge(self, charge: Charge) -> None:
        self.store.put_bytes(
            charge_key(charge.job_id, charge.request_id), _dump(charge), "application/json", overwrite=False
        )

    def charges(self, job_id: str) -> list[Charge]:
        """Every charge recorded for a job, oldest first."""
        found: list[Charge] = []
        for key in self.store.list_keys(f"{LEDGER_PREFIX}/{job_id}/charges/"):
            data = self.store.get_bytes(key)
            if data is None:
                continue
            raw = json.loads(data)
            raw["output_urls"] = tuple(raw["output_urls"])
            found.append(Charge(**raw))
        return sorted(found, key=lambda c: c.charged_at)

    def write_done(self, done: Done) -> None:
        self.store.put_bytes(done_key(done.job_id), _dump(done), "application/json", overwrite=True)

    def done(self, job_id: str) -> Done | None:
        data = self.store.get_bytes(done_key(job_id))
        if data is None:
            return None
        raw = json.loads(data)
        raw["outputs"] = tuple(raw["outputs"])
        return Done(**raw)
