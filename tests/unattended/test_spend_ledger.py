"""The spend ledger (qwenedit.spend): caps per UTC day and month shared by runs, kept in the store.

Edges of the ledger on a local folder (fast) and races on one sequence number on a real S3 server
(SeaweedFS), with an injected clock for day and month roll-over.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import botocore.exceptions
import pytest

from qwenedit.budget import Budget
from qwenedit.spend import (
    SPEND_PREFIX,
    Block,
    Caps,
    SpendGuard,
    SpendLedger,
    SpendLedgerError,
    cap_reached,
    spend_report,
)
from qwenedit.storage import Destination, LocalDestination, PutOutcome, Readable
from tests.fixtures.s3 import S3Bucket

D = Decimal
CALL = D("0.03")  # one plus image in Singapore


class Clock:
    """A settable UTC clock."""

    def __init__(self, moment: datetime) -> None:
        self.now = moment

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock(datetime(2026, 12, 6, 10, 0, tzinfo=UTC))


@pytest.fixture
def ledger(tmp_path: Path, clock: Clock) -> SpendLedger:
    return SpendLedger.checked(LocalDestination(tmp_path / "ledger"), clock=clock)


def guard(
    ledger: SpendLedger, daily: str | None = None, monthly: str | None = None, run: str = "run-a", **kw: Any
) -> SpendGuard:
    return SpendGuard(ledger, Caps.parse(daily, monthly), run, backoff_s=0, **kw)


def budget(g: SpendGuard, limit: Decimal | None = None) -> Budget:
    return Budget(limit, g.currency, shared=g)


async def reserve_calls(b: Budget, count: int, amount: Decimal = CALL, model: str = "plus") -> int:
    """Reserve ``count`` calls one after another (none released): how many were granted."""
    granted = 0
    for _ in range(count):
        if await b.reserve(amount, "USD"):
            granted += 1
    return granted


def finish_calls(b: Budget, count: int, amount: Decimal = CALL, model: str = "plus") -> None:
    for _ in range(count):
        b.release(amount)
        b.charge(amount, "USD", model)


# --- caps ---------------------------------------------------------------------------------------------


def test_caps_parse_money_like_budget_and_refuse_two_currencies() -> None:
    caps = Caps.parse("0.75", "$20")
    assert (caps.daily, caps.monthly, caps.currency) == (D("0.75"), D("20"), "USD")
    assert Caps.parse("5 CNY", None).currency == "CNY"
    assert not Caps.parse(None, " ").active
    with pytest.raises(ValueError, match="daily budget"):
        Caps.parse("lots", None)
    with pytest.raises(ValueError, match="one currency"):
        Caps.parse("1 USD", "10 CNY")


# --- reservations ---------------------------------------------------------------------------------------


async def test_calls_in_flight_count_against_the_cap_and_the_cap_is_named(ledger: SpendLedger) -> None:
    g = guard(ledger, daily="0.10")
    b = budget(g)
    assert await reserve_calls(b, 4) == 3  # 3 × 0.03 in flight; a 4th could take it to 0.12
    assert b.cap_reached is not None and b.cap_reached.cap == "daily"
    assert "daily spend cap 0.10 USD reached for 2026-12-06" in b.refusal()
    # Once a cap refused, nothing more starts, even what would fit.
    finish_calls(b, 3)
    assert not await b.reserve(D("0.001"), "USD")
    assert ledger.usage()[2] == D("0.10")  # the run holds the whole room until it settles


async def test_one_block_covers_several_calls(ledger: SpendLedger) -> None:
    g = guard(ledger, daily="10")
    b = budget(g)
    assert await reserve_calls(b, 8) == 8
    assert len(g.held) == 1 and g.held_total == 8 * CALL  # one record for eight calls
    assert await reserve_calls(b, 1) == 1
    assert len(g.held) == 2


async def test_a_block_is_no_bigger_than_the_runs_own_worst_case(ledger: SpendLedger) -> None:
    g = guard(ledger, daily="10", expected=D("0.09"))
    b = budget(g)
    assert await reserve_calls(b, 3) == 3
    assert g.held_total == D("0.09")
    other = guard(ledger, daily="10", run="run-b")
    assert ledger.usage()[2] == D("0.09")
    assert await reserve_calls(budget(other), 1) == 1


async def test_a_block_is_cut_to_the_room_left_but_never_below_the_call(ledger: SpendLedger) -> None:
    first = guard(ledger, daily="0.30", run="first")
    assert await reserve_calls(budget(first), 8) == 8  # holds 0.24
    second = guard(ledger, daily="0.30", run="second")
    b = budget(second)
    assert await reserve_calls(b, 3) == 2  # 0.06 left: two calls, then the cap
    assert second.held_total == D("0.06")
    assert second.reached is not None and second.reached.used == D("0.30")


async def test_settling_gives_back_what_was_not_spent_and_counts_possible_charges(
    ledger: SpendLedger,
) -> None:
    g = guard(ledger, daily="1")
    b = budget(g)
    assert await reserve_calls(b, 3) == 3  # a block of 8 calls: 0.24 held
    b.release(CALL)
    b.charge(CALL, "USD", "qwen-image-edit-plus")
    b.possibly_charge(CALL, "USD", "qwen-image-edit-plus")  # an answer lost: counted at worst case
    b.release(CALL)
    b.release(CALL)  # a call that failed before it was billed
    assert ledger.usage()[2] == D("0.24")
    await g.settle()
    assert ledger.usage()[2] == D("0.06")
    report = spend_report(ledger)
    assert report["runs"] == [
        {
            "run": "run-a",
            "currency": "USD",
            "spent": "0.03",
            "possibly": "0.03",
            "held": "0",
            "counted": "0.06",
            "settled": True,
        }
    ]
    assert report["models"][0]["model"] == "qwen-image-edit-plus"


async def test_a_run_that_dies_holding_a_block_counts_in_full_until_the_day_ends(
    ledger: SpendLedger, clock: Clock
) -> None:
    dead = guard(ledger, daily="0.30", monthly="1", run="dead")
    assert await reserve_calls(budget(dead), 1) == 1  # holds 0.24 and never settles
    assert cap_reached(ledger, "0.30", "1", need=D("0.09")) is not None  # 0.06 left today
    report = spend_report(ledger)
    assert report["runs"][0]["settled"] is False and report["runs"][0]["held"] == "0.24"

    clock.now += timedelta(days=1)  # a new UTC day: the daily room is back; the month still counts it
    assert cap_reached(ledger, "0.30", "1") is None
    assert ledger.usage()[2:4] == (D(0), D("0.24"))
    late = guard(ledger, monthly="0.30", run="late")
    assert await reserve_calls(budget(late), 3) == 2  # 0.06 of the month left


async def test_day_and_month_roll_over_with_the_clock(ledger: SpendLedger, clock: Clock) -> None:
    clock.now = datetime(2026, 11, 30, 23, 59, tzinfo=UTC)
    g = guard(ledger, daily="0.09", monthly="0.12", run="night")
    b = budget(g)
    assert await reserve_calls(b, 3) == 3  # 30 Nov: the daily cap is full
    assert not await budget(guard(ledger, daily="0.09", monthly="0.12", run="other")).reserve(CALL, "USD")

    clock.now = datetime(2026, 12, 1, 0, 0, 1, tzinfo=UTC)  # a new day and a new month
    fresh = guard(ledger, daily="0.09", monthly="0.12", run="morning")
    assert await reserve_calls(budget(fresh), 4) == 3
    assert sorted(ledger.months()) == ["2026-11", "2026-12"]
    assert ledger.usage()[2:4] == (D("0.09"), D("0.09"))

    # The run that crossed midnight settles its November block in November's folder.
    finish_calls(b, 3)
    await g.settle()
    assert ledger.month("2026-11").used() == D("0.09")
    assert [r["day"] for r in spend_report(ledger)["days"]] == ["2026-11-30", "2026-12-01"]


async def test_the_monthly_cap_counts_every_day_of_the_month(ledger: SpendLedger, clock: Clock) -> None:
    for day in (1, 2, 3):
        clock.now = datetime(2026, 12, day, 12, tzinfo=UTC)
        g = guard(ledger, daily="0.06", monthly="0.15", run=f"day{day}")
        b = budget(g)
        granted = await reserve_calls(b, 2)
        finish_calls(b, granted)
        await g.settle()
    assert ledger.usage()[3] == D("0.15")  # 0.06 + 0.06 + 0.03: the month cap cut the third day
    assert cap_reached(ledger, "0.06", "0.15") is not None
    assert cap_reached(ledger, "0.06", "0.15").cap == "monthly"  # type: ignore[union-attr]


def test_cap_reached_without_caps_or_on_an_empty_ledger(ledger: SpendLedger) -> None:
    assert cap_reached(ledger, None, None) is None
    assert cap_reached(ledger, "0.75", None) is None
    assert cap_reached(ledger, "0", None) is not None  # a cap of 0 is reached from the start


async def test_a_cap_in_another_currency_than_the_ledgers_records_is_refused(ledger: SpendLedger) -> None:
    assert await reserve_calls(budget(guard(ledger, daily="1")), 1) == 1
    cny = guard(ledger, daily="10 CNY", run="cny")
    assert not await Budget(None, "CNY", shared=cny).reserve(D("0.2"), "CNY")
    assert cny.failure is not None and "use one currency per spend ledger" in cny.failure


def test_a_record_that_is_not_ours_stops_the_ledger_naming_its_key(
    tmp_path: Path, ledger: SpendLedger
) -> None:
    ledger.dest.put_bytes(f"{SPEND_PREFIX}/2026-12/000000000001.json", b"[" * 100_000)
    with pytest.raises(SpendLedgerError, match="2026-12/000000000001"):
        ledger.usage()
    (tmp_path / "ledger" / SPEND_PREFIX / "2026-12" / "000000000001.json").write_text(
        json.dumps(
            {
                "v": 1,
                "kind": "reserve",
                "id": "x",
                "run_id": "r",
                "at": "t",
                "day": "d",
                "amount": "-5",
                "currency": "USD",
            }
        )
    )
    fresh = SpendLedger(LocalDestination(tmp_path / "ledger"))
    with pytest.raises(SpendLedgerError, match="not an amount"):
        fresh.month("2026-12")


# --- the store ---------------------------------------------------------------------------------------------


class Flaky:
    """A destination whose first ``failures`` writes fail like a store outage."""

    def __init__(self, inner: Destination, failures: int) -> None:
        self.inner, self.failures = inner, failures

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def put_create_only(
        self,
        key: str,
        fileobj: Readable,
        content_type: str,
        metadata: Mapping[str, str] | None = None,
        *,
        size: int | None = None,
    ) -> PutOutcome:
        if self.failures > 0:
            self.failures -= 1
            raise botocore.exceptions.EndpointConnectionError(endpoint_url="http://127.0.0.1:9")
        return self.inner.put_create_only(key, fileobj, content_type, metadata, size=size)


async def test_a_store_outage_is_ridden_out_and_a_lasting_one_stops_the_run(
    tmp_path: Path, clock: Clock
) -> None:
    brief = SpendLedger(Flaky(LocalDestination(tmp_path / "a"), failures=2), clock=clock)  # type: ignore[arg-type]
    assert await reserve_calls(budget(guard(brief, daily="1")), 1) == 1
    lasting = SpendLedger(Flaky(LocalDestination(tmp_path / "b"), failures=99), clock=clock)  # type: ignore[arg-type]
    g = guard(lasting, daily="1")
    b = budget(g)
    assert not await b.reserve(CALL, "USD")  # fail closed: no call without the caps checked
    assert g.failure is not None and "spend ledger could not be used" in b.refusal()
    assert b.reserved == 0


def test_a_store_that_ignores_conditional_writes_is_refused(s3_bucket: S3Bucket) -> None:
    with pytest.raises(SpendLedgerError, match="conditional writes"):
        SpendLedger.checked(s3_bucket.destination("spend", conditional_writes=False))


class RaceAtFirstWrite:
    """Holds every writer's first create-only write until ``parties`` writers are there: they all read the
    same (empty) log and all try the same sequence number at once."""

    def __init__(self, inner: Destination, barrier: threading.Barrier, outcomes: list[str]) -> None:
        self.inner, self.barrier, self.outcomes = inner, barrier, outcomes
        self.first = True

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def put_create_only(
        self,
        key: str,
        fileobj: Readable,
        content_type: str,
        metadata: Mapping[str, str] | None = None,
        *,
        size: int | None = None,
    ) -> PutOutcome:
        if self.first:
            self.first = False
            self.barrier.wait(timeout=60)
        name = key.rsplit("/", 1)[-1]
        try:
            outcome = self.inner.put_create_only(key, fileobj, content_type, metadata, size=size)
        except botocore.exceptions.ClientError:  # 409 ConditionalRequestConflict: lost too
            self.outcomes.append(f"{name}:conflict")
            raise
        self.outcomes.append(f"{name}:{outcome}")
        return outcome


def test_runs_racing_on_one_sequence_number_never_reserve_more_than_the_cap(
    s3_bucket: S3Bucket, clock: Clock
) -> None:
    racers = 6
    barrier = threading.Barrier(racers)
    outcomes: list[str] = []
    caps = Caps.parse("0.30", None)

    def run(i: int) -> Block | None:
        dest = RaceAtFirstWrite(s3_bucket.destination("shared"), barrier, outcomes)
        ledger = SpendLedger.checked(dest, clock=clock)  # type: ignore[arg-type]
        g = SpendGuard(ledger, caps, f"racer-{i}", backoff_s=0)
        return g._take(need=D("0.09"), want=D("0.09"))  # each wants three calls' worth

    with ThreadPoolExecutor(racers) as pool:
        blocks = list(pool.map(run, range(racers)))

    taken = [b for b in blocks if b is not None]
    assert len(taken) == 3  # 3 × 0.09 = 0.27; the 0.03 left is less than a racer needs
    assert sum((b.amount for b in taken), D(0)) <= D("0.30")
    first_round = [o for o in outcomes if o.startswith("000000000001.json")]
    assert first_round.count("000000000001.json:created") == 1  # one winner of seq 1…
    assert len(first_round) == racers  # …every other racer tried it and lost
    reader = SpendLedger(s3_bucket.destination("shared"), clock=clock)
    assert reader.usage()[2] == sum((b.amount for b in taken), D(0))
    assert reader.month("2026-12").last_seq == len(taken)  # no gap, no duplicate


async def test_two_guards_on_one_s3_ledger_share_the_cap(s3_bucket: S3Bucket, clock: Clock) -> None:
    uri_dest: Callable[[], Destination] = lambda: s3_bucket.destination("caps")  # noqa: E731
    caps, quote = Caps.parse("0.45", None), 10 * CALL  # two runs of ten calls under a cap of fifteen

    def run(name: str) -> Budget:
        return budget(
            SpendGuard(SpendLedger.checked(uri_dest(), clock=clock), caps, name, expected=quote, backoff_s=0)
        )

    a, b = run("a"), run("b")
    granted = await asyncio.gather(reserve_calls(a, 10), reserve_calls(b, 10))
    assert sum(granted) == 15  # whoever was first, every dollar under the cap was usable, none beyond
    assert SpendLedger(uri_dest(), clock=clock).usage()[2] == D("0.45")


async def test_calls_of_one_run_reserving_at_once_get_exactly_the_room_left(ledger: SpendLedger) -> None:
    g = guard(ledger, daily="0.15", expected=D("0.30"))
    b = budget(g)
    granted = await asyncio.gather(*(b.reserve(CALL, "USD") for _ in range(10)))
    assert granted.count(True) == 5  # 0.15 / 0.03: calls waiting for a block do not count on each other
    assert b.reserved == D("0.15") and g.held_total == D("0.15")
