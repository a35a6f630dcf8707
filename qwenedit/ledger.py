"""The run ledger under ``{dest}/_ledger/``: what was paid for, and what is finished.

Two records per job, both small JSON objects stored next to the outputs so that any machine that can
see the destination can resume the work:

- a **charge** (``_ledger/{job_id}/charges/{request_id}.json``, create-only), written right after a
  successful API call and *before* any output is copied: the request id, the usage, the output URLs
  and when they expire, the unit price and the cost. It is the proof of payment and the recipe for
  copying without calling again.
- a **done** record, written after every output is stored: the job's fingerprint and its outputs. It
  is the job's commit marker. Its key carries what a rerun needs to skip the job without reading it:
  ``_ledger/_done/{job_id}@{fingerprint hex}@{image_count}@{request_id}.json``. One listing of
  ``_ledger/_done/`` (one LIST per 1,000 jobs; on S3 several LISTs at a time, over disjoint key
  ranges) therefore tells which rows of a manifest are done (``DoneIndex``), with no request per row. A job has at most one done record: the marker of an
  earlier version of a changed row is removed before the new version is called.

Records never contain the API key or storage credentials. Output URLs are presigned by the API's
result bucket, so they are stored (the copier needs them) but never printed or put in reports.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, Protocol
from urllib.parse import parse_qs, urlsplit

LEDGER_PREFIX = "_ledger"
DONE_PREFIX = f"{LEDGER_PREFIX}/_done/"  # job ids start with a letter or digit: no job owns "_done"
_FP_HEX = re.compile(r"[0-9a-f]{64}")
_REQUEST_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
OUTPUT_URL_TTL = timedelta(hours=24)  # the API keeps results 24 h


class RecordStore(Protocol):
    """The part of a destination the ledger needs."""

    def put_bytes(self, key: str, data: bytes, content_type: str, overwrite: bool = True) -> object: ...

    def get_bytes(self, key: str) -> bytes | None: ...

    def list_keys(self, prefix: str) -> Any: ...

    def delete(self, key: str) -> None: ...


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


def fingerprint_hex(fingerprint: str) -> str:
    """``sha256:<hex>`` → ``<hex>`` (the form a done marker's key carries)."""
    return fingerprint.split(":", 1)[-1]


def done_key(done: Done) -> str:
    """The done record's key: job id, fingerprint, image count and request id, all readable from a listing."""
    parts = [done.job_id, fingerprint_hex(done.fingerprint), str(done.image_count)]
    if _REQUEST_ID.fullmatch(done.request_id):
        parts.append(done.request_id)
    return DONE_PREFIX + "@".join(parts) + ".json"


@dataclass(frozen=True, slots=True)
class DoneMarker:
    """What one done record's key says: the job, the fingerprint it finished, its images and request."""

    key: str
    job_id: str
    fingerprint: str  # "sha256:<hex>"
    image_count: int | None  # None: the key carries no count (a marker written by hand or a tool)
    request_id: str


def parse_done_key(key: str) -> DoneMarker | None:
    """A listed key under ``_ledger/_done/`` → ``DoneMarker``; None for anything that is not one."""
    if not key.startswith(DONE_PREFIX) or not key.endswith(".json"):
        return None
    parts = key[len(DONE_PREFIX) : -len(".json")].split("@")
    if len(parts) < 2 or not parts[0] or "/" in parts[0] or not _FP_HEX.fullmatch(parts[1]):
        return None
    count = int(parts[2]) if len(parts) > 2 and parts[2].isdigit() else None
    request_id = parts[3] if len(parts) > 3 else ""
    return DoneMarker(key, parts[0], "sha256:" + parts[1], count, request_id)


class DoneIndex:
    """Every done record of a destination, from one listing: job id → its markers (normally one).

    Held compactly (a million jobs fit in a few hundred MB): per job only the part of the key after
    the job id; ``DoneMarker`` objects are made on demand.
    """

    def __init__(self, keys: Iterable[str] = ()) -> None:
        self._by_job: dict[str, str | tuple[str, ...]] = {}
        for key in keys:
            self.add_key(key)

    def add_key(self, key: str) -> bool:
        """Add a listed key; False (and nothing added) if it is not a done marker."""
        marker = parse_done_key(key)
        if marker is None:
            return False
        rest = key[len(DONE_PREFIX) + len(marker.job_id) + 1 :]
        have = self._by_job.get(marker.job_id)
        if have is None:
            self._by_job[marker.job_id] = rest
        else:
            self._by_job[marker.job_id] = (*(have if isinstance(have, tuple) else (have,)), rest)
        return True

    def markers(self, job_id: str) -> tuple[DoneMarker, ...]:
        have = self._by_job.get(job_id)
        if have is None:
            return ()
        rests = have if isinstance(have, tuple) else (have,)
        return tuple(m for r in rests if (m := parse_done_key(f"{DONE_PREFIX}{job_id}@{r}")) is not None)

    def find(self, job_id: str, fingerprint: str) -> DoneMarker | None:
        """The marker that says ``job_id`` is done at exactly ``fingerprint``, if any."""
        return next((m for m in self.markers(job_id) if m.fingerprint == fingerprint), None)

    def __len__(self) -> int:
        return len(self._by_job)


class Ledger:
    """Reads and writes charge and done records in a destination."""

    def __init__(self, store: RecordStore) -> None:
        self.store = store

    def write_charge(self, charge: Charge) -> None:
        self.store.put_bytes(
            charge_key(charge.job_id, charge.request_id), _dump(charge), "application/json", overwrite=False
        )

    def write_done(self, done: Done) -> None:
        """Commit the job: write its done record (the marker a rerun's listing finds)."""
        self.store.put_bytes(done_key(done), _dump(done), "application/json", overwrite=True)

    def done_index(self) -> DoneIndex:
        """Every done marker, from one listing of ``_ledger/_done/`` (one LIST per 1,000 jobs; on a store
        that offers ``list_keys_unordered``, S3, several LISTs at a time over disjoint key ranges)."""
        lister = getattr(self.store, "list_keys_unordered", None) or self.store.list_keys
        return DoneIndex(lister(DONE_PREFIX))

    def charged_jobs(self, max_keys: int) -> set[str] | None:
        """The jobs with at least one charge record, from one listing of ``_ledger/`` (one LIST per
        1,000 records; on a new destination, one LIST in all); None if the listing passes ``max_keys``
        keys (then it is cheaper for each job to list its own charges)."""
        jobs: set[str] = set()
        start = len(LEDGER_PREFIX) + 1
        for n, key in enumerate(self.store.list_keys(f"{LEDGER_PREFIX}/"), start=1):
            if n > max_keys:
                return None
            job_id, _, rest = key[start:].partition("/")
            if rest.startswith("charges/") and not job_id.startswith("_"):
                jobs.add(job_id)
        return jobs

    def done_markers(self, job_id: str) -> list[DoneMarker]:
        """One job's done markers (a listing of its own prefix)."""
        found = (parse_done_key(k) for k in self.store.list_keys(f"{DONE_PREFIX}{job_id}@"))
        return [m for m in found if m is not None and m.job_id == job_id]

    def remove(self, keys: Iterable[str]) -> None:
        """Delete done markers of an earlier version of a row (before the new version is called)."""
        for key in keys:
            self.store.delete(key)

    def charges(self, job_id: str) -> list[Charge]:
        """Every charge recorded for a job, oldest first (one listing of its charges prefix)."""
        keys = self.store.list_keys(f"{LEDGER_PREFIX}/{job_id}/charges/")
        charges = [c for c in map(self._read_charge, keys) if c is not None]
        return sorted(charges, key=lambda c: c.charged_at)

    def done(self, job_id: str) -> Done | None:
        """The job's done record (its newest marker's), or None."""
        markers = self.done_markers(job_id)
        for marker in reversed(markers):
            done = self._read_done(marker.key)
            if done is not None:
                return done
        return None

    def _read_charge(self, key: str) -> Charge | None:
        raw = self._read(key, "output_urls")
        return None if raw is None else Charge(**raw)

    def _read_done(self, key: str) -> Done | None:
        raw = self._read(key, "outputs")
        return None if raw is None else Done(**raw)

    def _read(self, key: str, tuple_field: str) -> dict[str, Any] | None:
        """The record at ``key`` as keyword arguments (its list ``tuple_field`` as a tuple), or None."""
        data = self.store.get_bytes(key)
        if data is None:
            return None
        raw: dict[str, Any] = json.loads(data)
        raw[tuple_field] = tuple(raw[tuple_field])
        return raw
