"""Spend caps shared by runs: a log of reservations kept in the store, capped per UTC day and UTC month.

Every run that names the same spend ledger (``--spend-ledger URI``, default: the run's destination)
counts against the same caps (``--daily-budget``, ``--monthly-budget``). The contract:

- **what counts** against the cap of a UTC day (and of its month) is every *block* reserved that day:
  a block still held counts in full (calls in flight, calls about to start, calls whose answer was
  lost); a settled block counts what was charged plus what was possibly charged with it. So, as for
  the per-run ``--budget``, charged + possibly charged + reserved worst case ≤ cap, summed over runs.
- **two runs never both spend the last dollar**: a block is reserved by appending a record to the log
  with a create-only write on the next sequence number; of two runs racing for the same number one
  wins, the other re-reads the log (now with the winner's block) and checks the caps again.
- **a run that reaches a cap** starts no new call (its jobs end ``not_attempted``, code
  ``BudgetExceeded``, with a message naming the cap), the calls in flight finish, and the run stops
  with ``stopped_by = {"cause": "spend_cap", ...}`` (exit code 3).

The log
-------
``{ledger}/_spend/{YYYY-MM}/{seq:012d}.json``, one folder per UTC month, sequence numbers from 1.
Records are small JSON objects, never changed once written:

- ``reserve``: a block of ``amount`` taken by run ``run_id`` on UTC ``day`` (the block's key is its
  ``YYYY-MM/seq``);
- ``settle``: the final spend of a run's blocks of that month, per block and model (``spent``: charged;
  ``possibly``: calls whose answer was lost, counted at their worst case). The rest of each block is
  given back. A settlement of a block is written in the block's month, so a month's caps are one
  folder's fold.

To reserve, a run reads the month's log — listed once (one LIST per 1,000 records, the records
fetched 16 at a time and cached: they never change), then followed by reading the next sequence
numbers until one is missing (the log has no gaps) — folds it into the day's and the month's use,
checks the caps and writes the next sequence number create-only (S3 ``If-None-Match: *``; a local folder: ``link``). A store that
does not honour conditional writes is refused when the ledger is opened: without them two runs could
both take the last dollar.

Blocks, not calls
-----------------
A run does not write a record per call: when the blocks it holds no longer cover its charged +
possibly charged + reserved worst case, it takes a block of ``BLOCK_CALLS`` times the call about to
start, no more than the run's own worst case still uncovered (its quote) and no more than the room
left under the caps, but never less than what the call needs. At its end (also after a graceful
stop) it writes one settlement per month. A run holding a block that another run could use is why a
cap can refuse a run before every dollar is spent: the held worst case counts until it is settled.

A run that dies holding blocks (SIGKILL, a lost machine) never settles them: **its blocks count in
full against their day and month for good**. No lease expires them, because nobody can know what the
dead run's calls cost; the cap is never exceeded, and the price is at most the unspent part of one
block per dead run (``qwenedit spend`` lists such runs as ``held``).

Spend counts on the UTC day its block was reserved: a run crossing midnight may spend the rest of a
block taken before midnight; its next block counts on the new day.

No Prefect in here; the run layer (``qwenedit.run``) opens a :class:`SpendGuard` and hands it to the
run's :class:`~qwenedit.budget.Budget`; ``cap_reached`` answers a watcher that asks before it starts
a run; :func:`spend_report` is what ``qwenedit spend`` prints.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any, Literal

import botocore.exceptions

from qwenedit.catalog import parse_money
from qwenedit.errors import (
    ConditionalWritesUnsupported,
    SpendLedgerError,
    is_transient_storage_error,
    s3_error_code,
)
from qwenedit.storage import Destination, open_destination

log = logging.getLogger("qwenedit.spend")

SPEND_PREFIX = "_spend"
FORMAT = 1
BLOCK_CALLS = 8  # a block covers this many calls like the one about to start
RECORD_LIMIT = 64 * 1024  # a record is a few hundred bytes; anything bigger is not one of ours
READERS = 16  # records fetched side by side on a run's first look at a month
MAX_RACES = 200  # appends lost in a row before giving up (each loss means another run wrote)
STORE_TRIES = 5  # tries of one reservation through a store outage
_SEQ_NAME = re.compile(r"(\d{12})\.json")
_MONTH = re.compile(r"\d{4}-\d{2}")

Clock = Callable[[], datetime]
Cap = Literal["daily", "monthly"]


def utcnow() -> datetime:
    return datetime.now(UTC)


def day_of(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d")


def month_of(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m")


# --- caps ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Caps:
    """The caps a run or a watcher checks: per UTC day, per UTC month (either may be None), one currency."""

    daily: Decimal | None = None
    monthly: Decimal | None = None
    currency: str = "USD"

    @classmethod
    def parse(cls, daily: str | None, monthly: str | None) -> Caps:
        """Money text as ``--budget`` takes it (``"0.75"``, ``"20 USD"``); raises ValueError naming the cap."""
        found: dict[str, tuple[Decimal, str]] = {}
        for name, text in (("daily", daily), ("monthly", monthly)):
            if text is not None and str(text).strip():
                try:
                    found[name] = parse_money(str(text))
                except ValueError as err:
                    raise ValueError(f"{name} budget: {err}") from None
        currencies = sorted({c for _, c in found.values()})
        if len(currencies) > 1:
            raise ValueError(
                f"the daily and monthly budgets must be in one currency, got {' and '.join(currencies)}"
            )
        return cls(
            daily=found["daily"][0] if "daily" in found else None,
            monthly=found["monthly"][0] if "monthly" in found else None,
            currency=currencies[0] if currencies else "USD",
        )

    @property
    def active(self) -> bool:
        return self.daily is not None or self.monthly is not None

    def room(self, used_day: Decimal, used_month: Decimal) -> Decimal | None:
        """What may still be reserved (None: no cap)."""
        rooms = [
            cap - used
            for cap, used in ((self.daily, used_day), (self.monthly, used_month))
            if cap is not None
        ]
        return min(rooms) if rooms else None

    def first_reached(
        self, used_day: Decimal, used_month: Decimal, need: Decimal, day: str, month: str, ledger: str
    ) -> CapReached | None:
        """The cap that leaves less than ``need`` (with ``need`` 0: no room at all), daily first."""
        for cap, limit, used, period in (
            ("daily", self.daily, used_day, day),
            ("monthly", self.monthly, used_month, month),
        ):
            if limit is None:
                continue
            if used + need > limit or (need <= 0 and used >= limit):
                return CapReached(cap, limit, self.currency, used, period, ledger)  # type: ignore[arg-type]
        return None

    def describe(self) -> str:
        parts = [
            f"{name} {cap} {self.currency}"
            for name, cap in (("daily", self.daily), ("monthly", self.monthly))
            if cap is not None
        ]
        return ", ".join(parts) or "none"


@dataclass(frozen=True)
class CapReached:
    """A cap that refused a reservation: which one, its limit, what is spent or held against it."""

    cap: Cap
    limit: Decimal
    currency: str
    used: Decimal  # charged + possibly charged + held, over every run of the ledger
    period: str  # the UTC day (YYYY-MM-DD) or month (YYYY-MM)
    ledger: str

    def message(self) -> str:
        return (
            f"{self.cap} spend cap {self.limit} {self.currency} reached for {self.period} "
            f"({self.used} {self.currency} spent or held by runs of spend ledger {self.ledger})"
        )

    def to_dict(self) -> dict[str, str]:
        return {
            "cap": self.cap,
            "limit": f"{self.limit} {self.currency}",
            "used": f"{self.used} {self.currency}",
            "period": self.period,
            "ledger": self.ledger,
            "message": self.message(),
        }


# --- records ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Block:
    """A ``reserve`` record: ``amount`` taken by a run on a UTC day."""

    key: str  # "YYYY-MM/seq", the block's name in settlements
    id: str
    run_id: str
    at: str
    day: str
    amount: Decimal
    currency: str


@dataclass(frozen=True)
class BlockSpend:
    """What a settled block really cost, per model."""

    spent: dict[str, Decimal]
    possibly: dict[str, Decimal]

    @property
    def total(self) -> Decimal:
        return sum(self.spent.values(), Decimal(0)) + sum(self.possibly.values(), Decimal(0))

    def to_json(self) -> dict[str, dict[str, str]]:
        return {
            "spent": {m: str(a) for m, a in sorted(self.spent.items())},
            "possibly": {m: str(a) for m, a in sorted(self.possibly.items())},
        }


@dataclass(frozen=True)
class Settlement:
    """A ``settle`` record: the final spend of some blocks of one month."""

    key: str
    id: str
    run_id: str
    at: str
    currency: str
    blocks: dict[str, BlockSpend]


Record = Block | Settlement


def _money(value: Any, where: str) -> Decimal:
    try:
        amount = Decimal(str(value))
    except InvalidOperation:
        raise SpendLedgerError(f"{where}: not an amount: {str(value)[:40]!r}") from None
    if not amount.is_finite() or amount < 0:
        raise SpendLedgerError(f"{where}: not an amount ≥ 0: {str(value)[:40]!r}")
    return amount


def _amounts(value: Any, where: str) -> dict[str, Decimal]:
    if not isinstance(value, dict):
        raise SpendLedgerError(f"{where}: expected an object of amounts per model")
    return {str(model)[:200]: _money(amount, where) for model, amount in value.items()}


def parse_record(key: str, data: bytes) -> Record:
    """A record read back from the store; ``SpendLedgerError`` naming the key if it is not one."""
    where = f"spend ledger record {key}"
    if len(data) > RECORD_LIMIT:
        raise SpendLedgerError(f"{where}: {len(data)} bytes, more than a record can be")
    try:
        body = json.loads(data)
    except (ValueError, RecursionError):
        raise SpendLedgerError(f"{where}: not JSON") from None
    if not isinstance(body, dict) or body.get("v") != FORMAT:
        raise SpendLedgerError(f"{where}: not a spend record of format {FORMAT}")
    try:
        common = {
            "key": key,
            "id": str(body["id"]),
            "run_id": str(body["run_id"]),
            "at": str(body["at"]),
            "currency": str(body["currency"]),
        }
        if body["kind"] == "reserve":
            return Block(day=str(body["day"]), amount=_money(body["amount"], where), **common)
        if body["kind"] == "settle":
            blocks = body["blocks"]
            if not isinstance(blocks, dict):
                raise SpendLedgerError(f"{where}: blocks must be an object")
            spends = {
                str(name): BlockSpend(
                    _amounts(b.get("spent", {}), where), _amounts(b.get("possibly", {}), where)
                )
                for name, b in blocks.items()
                if isinstance(b, dict)
            }
            return Settlement(blocks=spends, **common)
    except (KeyError, TypeError, AttributeError):
        raise SpendLedgerError(f"{where}: a field is missing or of the wrong type") from None
    raise SpendLedgerError(f"{where}: unknown kind {str(body.get('kind'))[:40]!r}")


# --- one month of the log --------------------------------------------------------------------------


@dataclass
class MonthState:
    """A month's log folded: its blocks, their settlements, the last sequence number."""

    month: str
    blocks: dict[str, Block] = field(default_factory=dict)
    settled: dict[str, BlockSpend] = field(default_factory=dict)  # block key → spend (first one wins)
    settlements: list[Settlement] = field(default_factory=list)
    last_seq: int = 0

    def add(self, seq: int, record: Record) -> None:
        self.last_seq = max(self.last_seq, seq)
        if isinstance(record, Block):
            self.blocks[record.key] = record
        else:
            self.settlements.append(record)
            for name, spend in record.blocks.items():
                self.settled.setdefault(name, spend)

    def counted(self, block: Block) -> Decimal:
        """What a block counts against the caps: its spend once settled, else all of it."""
        spend = self.settled.get(block.key)
        return spend.total if spend is not None else block.amount

    def used(self, day: str | None = None) -> Decimal:
        """Spent or held on ``day`` (None: the whole month)."""
        return sum((self.counted(b) for b in self.blocks.values() if day is None or b.day == day), Decimal(0))

    def currencies(self) -> set[str]:
        return {b.currency for b in self.blocks.values()}

    def copy(self) -> MonthState:
        return MonthState(
            self.month, dict(self.blocks), dict(self.settled), list(self.settlements), self.last_seq
        )


# --- the ledger in a store ---------------------------------------------------------------------------


class SpendLedger:
    """The spend log of one store (see the module docstring). Thread-safe; records are cached."""

    def __init__(self, dest: Destination, *, clock: Clock = utcnow) -> None:
        self.dest = dest
        self.clock = clock
        self._cache: dict[str, Record] = {}  # full key → record (records never change)
        self._lock = threading.Lock()
        self._months: dict[str, MonthState] = {}  # month → its log as last read (it only grows)
        self._months_lock = threading.Lock()

    @classmethod
    def open(cls, uri: str, *, clock: Clock = utcnow) -> SpendLedger:
        """The ledger at ``uri`` (s3:// or a folder); refuses a store that ignores conditional writes."""
        return cls.checked(open_destination(uri), clock=clock)

    @classmethod
    def checked(cls, dest: Destination, *, clock: Clock = utcnow) -> SpendLedger:
        """The ledger in ``dest``, once the store has shown it honours conditional writes (S3 probe)."""
        probe = getattr(dest, "probe_conditional_writes", None)
        if probe is not None and not probe():
            raise SpendLedgerError(
                f"spend ledger {dest.uri()}: the store does not honour conditional writes "
                "(If-None-Match), so two runs could both reserve the last dollar; use a store that does"
            )
        return cls(dest, clock=clock)

    @property
    def uri(self) -> str:
        return self.dest.uri("")

    def _month_prefix(self, month: str) -> str:
        return f"{SPEND_PREFIX}/{month}/"

    def months(self) -> list[str]:
        """The months that have a log, oldest first."""
        found = set()
        for key in self.dest.list_keys(f"{SPEND_PREFIX}/"):
            parts = key.split("/")
            if len(parts) == 3 and _MONTH.fullmatch(parts[1]) and _SEQ_NAME.fullmatch(parts[2]):
                found.add(parts[1])
        return sorted(found)

    def _read(self, key: str) -> Record | None:
        with self._lock:
            cached = self._cache.get(key)
        if cached is not None:
            return cached
        data = self.dest.get_bytes(key)
        if data is None:
            return None
        month, name = key.split("/")[-2:]
        record = parse_record(f"{month}/{name.removesuffix('.json')}", data)
        with self._lock:
            self._cache[key] = record
        return record

    def month(self, month: str) -> MonthState:
        """The month's log, read now: listed once per ledger object (records fetched side by side), then
        followed by reading the next sequence numbers until one is missing (the log has no gaps: a number
        is written only by a run that read the one before it)."""
        with self._months_lock:
            state = self._months.get(month)
            if state is None:
                state = self._months[month] = self._listed(month)
            seq = state.last_seq + 1
            while (record := self._read(self._seq_key(month, seq))) is not None:
                state.add(seq, record)
                seq += 1
            return state.copy()

    def _seq_key(self, month: str, seq: int) -> str:
        return f"{self._month_prefix(month)}{seq:012d}.json"

    def _listed(self, month: str) -> MonthState:
        state = MonthState(month)
        found: list[tuple[int, str]] = []
        for key in self.dest.list_keys(self._month_prefix(month)):
            match = _SEQ_NAME.fullmatch(key.rsplit("/", 1)[-1])
            if match is not None and key.count("/") == 2:
                found.append((int(match.group(1)), key))
        with self._lock:
            new = [key for _, key in found if key not in self._cache]
        if len(new) > 1:  # a first look at a busy month: read the records side by side
            with ThreadPoolExecutor(min(READERS, len(new)), thread_name_prefix="qwenedit-spend") as pool:
                list(pool.map(self._read, new))
        for seq, key in sorted(found):
            record = self._read(key)
            if record is not None:
                state.add(seq, record)
        return state

    def append(self, month: str, build: Callable[[MonthState], dict[str, Any] | None]) -> Record | None:
        """Append the record ``build`` makes from the month's current state at the next sequence number.

        ``build`` returning None means "nothing to write" (e.g. a cap leaves no room): None is returned.
        A lost race (another run wrote that number first) re-reads the month and calls ``build`` again.
        """
        for race in range(MAX_RACES):
            state = self.month(month)
            body = build(state)
            if body is None:
                return None
            seq = state.last_seq + 1
            key = self._seq_key(month, seq)
            data = json.dumps(body, sort_keys=True, separators=(",", ":")).encode("utf-8")
            try:
                outcome = self.dest.put_create_only(key, _Bytes(data), "application/json")
            except ConditionalWritesUnsupported:
                raise SpendLedgerError(
                    f"spend ledger {self.uri}: the store refuses conditional writes; it cannot hold a spend ledger"
                ) from None
            except botocore.exceptions.ClientError as err:
                if s3_error_code(err) != "ConditionalRequestConflict":
                    raise
                outcome = "exists"  # a concurrent write to the same number, still in progress
            if not getattr(self.dest, "conditional_writes", True):
                raise SpendLedgerError(
                    f"spend ledger {self.uri}: the store stopped honouring conditional writes"
                )
            if outcome == "created":
                record = parse_record(f"{month}/{seq:012d}", data)
                with self._lock:
                    self._cache[key] = record
                return record
            mine = self._read(key)  # our own earlier try may have landed before an error
            if mine is not None and mine.id == body["id"]:
                return mine
            time.sleep(random.uniform(0, 0.005 * min(race + 1, 20)))  # spread the racers a little
        raise SpendLedgerError(f"spend ledger {self.uri}: {MAX_RACES} appends lost in a row to other runs")

    def usage(self, now: datetime | None = None) -> tuple[str, str, Decimal, Decimal, set[str]]:
        """(day, month, used that day, used that month, currencies) at ``now`` (default: the clock)."""
        moment = now or self.clock()
        day, month = day_of(moment), month_of(moment)
        state = self.month(month)
        return day, month, state.used(day), state.used(), state.currencies()

    def reached(
        self, caps: Caps, need: Decimal = Decimal(0), now: datetime | None = None
    ) -> CapReached | None:
        """The cap that leaves less than ``need`` now (need 0: no room at all); None if none does."""
        if not caps.active:
            return None
        day, month, used_day, used_month, currencies = self.usage(now)
        _check_currency(self.uri, caps.currency, currencies)
        return caps.first_reached(used_day, used_month, need, day, month, self.uri)


class _Bytes:
    """``read(n)`` over bytes (the store's create-only write takes a readable)."""

    def __init__(self, data: bytes) -> None:
        self._data, self._pos = data, 0

    def read(self, n: int = -1, /) -> bytes:
        end = len(self._data) if n < 0 else self._pos + n
        chunk = self._data[self._pos : end]
        self._pos += len(chunk)
        return chunk


def _check_currency(uri: str, currency: str, found: Iterable[str]) -> None:
    others = sorted(set(found) - {currency})
    if others:
        raise SpendLedgerError(
            f"spend ledger {uri} holds reservations in {', '.join(others)}; caps in {currency} cannot be "
            "weighed against them: use one currency per spend ledger"
        )


def cap_reached(
    ledger: str | SpendLedger,
    daily_budget: str | None = None,
    monthly_budget: str | None = None,
    *,
    need: Decimal = Decimal(0),
    clock: Clock = utcnow,
) -> CapReached | None:
    """Is a cap of this ledger reached now? The cap (with a message naming it) or None.

    ``ledger`` is a URI (s3:// or a folder) or an open ledger; the budgets are money text like
    ``--daily-budget``. With ``need`` > 0 a cap counts as reached when less than ``need`` is left (e.g.
    the cheapest call a run could make). What runs hold and have not settled counts as spent.
    """
    caps = Caps.parse(daily_budget, monthly_budget)
    if not caps.active:
        return None
    opened = ledger if isinstance(ledger, SpendLedger) else SpendLedger(open_destination(ledger), clock=clock)
    return opened.reached(caps, need)


def caps_status(ledger: SpendLedger, caps: Caps, now: datetime | None = None) -> list[dict[str, Any]]:
    """Each cap now: its period, limit, what is counted against it (spent + possibly + held), what is left."""
    day, month, used_day, used_month, _ = ledger.usage(now)
    rows = []
    for cap, limit, used, period in (
        ("daily", caps.daily, used_day, day),
        ("monthly", caps.monthly, used_month, month),
    ):
        if limit is None:
            continue
        rows.append(
            {
                "cap": cap,
                "period": period,
                "limit": f"{limit} {caps.currency}",
                "counted": f"{used} {caps.currency}",
                "left": f"{max(limit - used, Decimal(0))} {caps.currency}",
                "reached": used >= limit,
            }
        )
    return rows


# --- one run's guard -----------------------------------------------------------------------------------


@dataclass
class _Held:
    """A block this run holds, and what it has been charged so far (filled oldest block first)."""

    block: Block
    spent: dict[str, Decimal] = field(default_factory=dict)
    possibly: dict[str, Decimal] = field(default_factory=dict)

    @property
    def used(self) -> Decimal:
        return sum(self.spent.values(), Decimal(0)) + sum(self.possibly.values(), Decimal(0))


class SpendGuard:
    """One run's share of a spend ledger: blocks it holds, what it has spent of them, the cap that stopped it.

    ``cover`` is asked before each call (by the run's ``Budget``) whether the blocks held cover the run's
    charged + possibly charged + reserved worst case; it takes a new block when they do not. ``note``
    records what a call cost; ``settle`` writes the run's final spend and gives the rest back.
    """

    def __init__(
        self,
        ledger: SpendLedger,
        caps: Caps,
        run_id: str,
        *,
        expected: Decimal | None = None,
        block_calls: int = BLOCK_CALLS,
        store_tries: int = STORE_TRIES,
        backoff_s: float = 1.0,
    ) -> None:
        self.ledger = ledger
        self.caps = caps
        self.run_id = run_id
        self.expected = expected  # the run's worst case (its quote): no block beyond it
        self.block_calls = block_calls
        self.store_tries = store_tries
        self.backoff_s = backoff_s
        self.held: list[_Held] = []
        self.reached: CapReached | None = None
        self.failure: str | None = None  # the ledger could not be read or written: nothing more is spent
        self.settled = False
        self._lock = asyncio.Lock()

    @property
    def currency(self) -> str:
        return self.caps.currency

    @property
    def held_total(self) -> Decimal:
        return sum((h.block.amount for h in self.held), Decimal(0))

    @property
    def stopped(self) -> bool:
        return self.reached is not None or self.failure is not None

    def refusal(self) -> str:
        """Why a call was not started (for the job's error message)."""
        if self.reached is not None:
            return f"not started: the {self.reached.message()}"
        return f"not started: the spend ledger could not be used ({self.failure})"

    async def cover(self, total: Callable[[], Decimal], amount: Decimal, grant: Callable[[], bool]) -> bool:
        """Make the blocks held cover ``total()`` (the run's charged + possibly charged + reserved, plus
        ``amount``, the call about to start), taking new blocks if needed, then ``grant()`` the call (the
        caller's own reservation, made under the same lock so no other call can count on the same
        block). False once a cap leaves too little, or the ledger could not be used."""
        async with self._lock:
            while not self.stopped and (need := total() - self.held_total) > 0:
                want = max(need, amount * self.block_calls)
                if self.expected is not None:
                    want = max(need, min(want, self.expected - self.held_total))
                block = await self._take_retried(need, want)
                if block is None:
                    return False
                self.held.append(_Held(block))
                log.info(
                    "run %s: reserved %s %s of the spend caps (%s)",
                    self.run_id,
                    block.amount,
                    block.currency,
                    block.key,
                )
            return not self.stopped and grant()

    async def _take_retried(self, need: Decimal, want: Decimal) -> Block | None:
        """``_take`` in a thread, retried through a store outage; None (and why) when refused."""
        for attempt in range(1, self.store_tries + 1):
            try:
                block = await asyncio.to_thread(self._take, need, want)
            except SpendLedgerError as err:
                self.failure = str(err)
                log.error("run %s: %s; no new call starts", self.run_id, err)
                return None
            except Exception as err:
                if not is_transient_storage_error(err) or attempt == self.store_tries:
                    self.failure = f"{type(err).__name__} at {self.ledger.uri}"
                    log.error(
                        "run %s: spend ledger unusable (%s); no new call starts", self.run_id, self.failure
                    )
                    return None
                await asyncio.sleep(self.backoff_s * attempt)
                continue
            if block is None and self.reached is not None:
                log.warning("run %s: %s; no new call starts", self.run_id, self.reached.message())
            return block
        return None  # pragma: no cover (the loop returns)

    def _take(self, need: Decimal, want: Decimal) -> Block | None:
        """Append a reserve record of at least ``need`` (up to ``want``) if the caps leave room (blocking)."""
        moment = self.ledger.clock()
        day, month = day_of(moment), month_of(moment)
        record_id = uuid.uuid4().hex

        def build(state: MonthState) -> dict[str, Any] | None:
            _check_currency(self.ledger.uri, self.caps.currency, state.currencies())
            used_day, used_month = state.used(day), state.used()
            reached = self.caps.first_reached(used_day, used_month, need, day, month, self.ledger.uri)
            if reached is not None:
                self.reached = reached
                return None
            room = self.caps.room(used_day, used_month)
            take = want if room is None else min(want, room)
            return {
                "v": FORMAT,
                "kind": "reserve",
                "id": record_id,
                "run_id": self.run_id,
                "at": moment.isoformat(timespec="milliseconds"),
                "day": day,
                "amount": str(take),
                "currency": self.caps.currency,
            }

        record = self.ledger.append(month, build)
        assert record is None or isinstance(record, Block)
        return record

    def note(self, model: str | None, amount: Decimal, *, possibly: bool = False) -> None:
        """A call cost ``amount`` (or may have: ``possibly``); filled into the oldest block with room."""
        left = amount
        name = model or "unknown"
        for i, held in enumerate(self.held):
            room = held.block.amount - held.used
            last = i == len(self.held) - 1
            part = left if last else min(left, max(room, Decimal(0)))
            if part <= 0:
                continue
            bucket = held.possibly if possibly else held.spent
            bucket[name] = bucket.get(name, Decimal(0)) + part
            left -= part
            if left <= 0:
                return
        if left > 0:  # nothing held (cannot happen through Budget): keep it visible in the log
            log.error("run %s: %s %s spent outside any spend-cap block", self.run_id, left, self.currency)

    def settle_now(self) -> None:
        """Write the run's settlements, one per month of its blocks (blocking). Idempotent."""
        if self.settled or not self.held:
            self.settled = True
            return
        by_month: dict[str, list[_Held]] = {}
        for held in self.held:
            by_month.setdefault(held.block.key.split("/")[0], []).append(held)
        for month, blocks in sorted(by_month.items()):
            record_id = uuid.uuid4().hex
            body = {
                "v": FORMAT,
                "kind": "settle",
                "id": record_id,
                "run_id": self.run_id,
                "at": self.ledger.clock().isoformat(timespec="milliseconds"),
                "currency": self.caps.currency,
                "blocks": {
                    h.block.key: BlockSpend(dict(h.spent), dict(h.possibly)).to_json() for h in blocks
                },
            }
            self.ledger.append(month, _always(body))
        self.settled = True

    async def settle(self) -> None:
        """``settle_now`` in a thread, retried through a store outage; a failure leaves the blocks
        counting in full (safe: the caps hold) and is logged."""
        for attempt in range(1, self.store_tries + 1):
            try:
                await asyncio.to_thread(self.settle_now)
                return
            except Exception as err:
                if not is_transient_storage_error(err) or attempt == self.store_tries:
                    log.error(
                        "run %s: spend not settled at %s (%s): its blocks (%s %s) count in full",
                        self.run_id,
                        self.ledger.uri,
                        type(err).__name__,
                        self.held_total,
                        self.currency,
                    )
                    return
                await asyncio.sleep(self.backoff_s * attempt)


def _always(body: dict[str, Any]) -> Callable[[MonthState], dict[str, Any] | None]:
    """A record builder that writes ``body`` whatever the log holds (settlements are never refused)."""
    return lambda _state: body


def open_guard(
    uri: str, caps: Caps, run_id: str, *, expected: Decimal | None = None, clock: Clock = utcnow
) -> SpendGuard:
    """A run's guard on the spend ledger at ``uri`` (blocking: probes the store's conditional writes)."""
    return SpendGuard(SpendLedger.open(uri, clock=clock), caps, run_id, expected=expected)


# --- what `qwenedit spend` prints -------------------------------------------------------------------------


def _add(table: dict[str, Decimal], key: str, amount: Decimal) -> None:
    table[key] = table.get(key, Decimal(0)) + amount


def spend_report(ledger: SpendLedger, months: Iterable[str] | None = None) -> dict[str, Any]:
    """Spend per UTC day, month, model and run, read from the ledger (amounts as decimal strings).

    ``spent``: charged; ``possibly``: calls whose answer was lost (worst case); ``held``: blocks not
    settled (a run in progress, or one that died: they count against the caps in full).
    """
    rows: dict[str, dict[tuple[str, str], dict[str, Decimal]]] = {
        "day": {},
        "month": {},
        "model": {},
        "run": {},
    }
    runs_open: set[str] = set()

    def bump(kind: str, name: str, currency: str, column: str, amount: Decimal) -> None:
        entry = rows[kind].setdefault((name, currency), {})
        _add(entry, column, amount)

    for month in months if months is not None else ledger.months():
        state = ledger.month(month)
        for block in state.blocks.values():
            spend = state.settled.get(block.key)
            columns: list[tuple[str, Decimal]]
            if spend is None:
                runs_open.add(block.run_id)
                columns = [("held", block.amount)]
            else:
                columns = [
                    ("spent", sum(spend.spent.values(), Decimal(0))),
                    ("possibly", sum(spend.possibly.values(), Decimal(0))),
                ]
                for model, amount in spend.spent.items():
                    bump("model", model, block.currency, "spent", amount)
                for model, amount in spend.possibly.items():
                    bump("model", model, block.currency, "possibly", amount)
            for column, amount in columns:
                bump("day", block.day, block.currency, column, amount)
                bump("month", month, block.currency, column, amount)
                bump("run", block.run_id, block.currency, column, amount)

    def listing(kind: str) -> list[dict[str, Any]]:
        out = []
        for (name, currency), entry in sorted(rows[kind].items()):
            spent, possibly, held = (entry.get(c, Decimal(0)) for c in ("spent", "possibly", "held"))
            row: dict[str, Any] = {
                kind: name,
                "currency": currency,
                "spent": str(spent),
                "possibly": str(possibly),
                "held": str(held),
                "counted": str(spent + possibly + held),
            }
            if kind == "run":
                row["settled"] = name not in runs_open
            out.append(row)
        return out

    return {
        "ledger": ledger.uri,
        "days": listing("day"),
        "months": listing("month"),
        "models": listing("model"),
        "runs": listing("run"),
    }


__all__ = [
    "BLOCK_CALLS",
    "SPEND_PREFIX",
    "Block",
    "BlockSpend",
    "CapReached",
    "Caps",
    "MonthState",
    "Settlement",
    "SpendGuard",
    "SpendLedger",
    "SpendLedgerError",
    "cap_reached",
    "caps_status",
    "open_guard",
    "parse_record",
    "spend_report",
    "utcnow",
]
