"""The pacer at its edges: spacing at a count per period, no bursts, FIFO order, cancellation, push-back,
adaptation after 429s and per-model pools (the ``--rps`` specs: tests/test_rates.py). Time is virtual: tests are instant."""

from __future__ import annotations

import asyncio
import itertools
import random

import pytest

from devkit.rates import max_in_window
from qwenedit.catalog import RateLimit, builtin_models
from qwenedit.errors import UnknownLimit
from qwenedit.pacer import (
    BACKOFF_FACTOR,
    DEFAULT_GUARD_S,
    FLOOR_FACTOR,
    FLOOR_STEP_S,
    HISTORY_POINTS,
    MIN_GUARD_S,
    PERMIT_LEAD_MAX_S,
    RECOVERY_FACTOR,
    RECOVERY_PERMITS,
    Pacer,
    PacerPool,
    pacer_key,
)
from qwenedit.rates import model_limits

MAX = "qwen-image-edit-max"
PLUS = "qwen-image-edit-plus"


class VirtualClock:
    """Time that moves only when a waiter sleeps, so spacing is exact and tests are instant."""

    def __init__(self) -> None:
        self.now = 1000.0

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += max(0.0, seconds)
        await asyncio.sleep(0)


def pacer(limit: RateLimit | float, vc: VirtualClock, **kw: float) -> Pacer:
    return Pacer(limit, clock=vc.clock, sleep=vc.sleep, **kw)


async def test_permits_are_spaced_evenly_and_never_exceed_the_limit() -> None:
    vc = VirtualClock()
    p = pacer(2.0, vc)
    grants = await asyncio.gather(*(p.acquire() for _ in range(50)))
    gaps = [b - a for a, b in itertools.pairwise(grants)]
    first = gaps[: RECOVERY_PERMITS - 1]  # before the first recovery step: the starting guard
    assert min(first) == pytest.approx((1 + DEFAULT_GUARD_S) / 2) == pytest.approx(max(first))
    assert all(b <= a + 1e-9 for a, b in itertools.pairwise(gaps))  # then only narrower, never wider
    assert min(gaps) >= (1 + MIN_GUARD_S) / 2
    assert max_in_window(grants) == 2
    rate = (len(grants) - 1) / (grants[-1] - grants[0])
    assert 0.95 * 2.0 <= rate < 2.0


async def test_a_per_minute_limit_is_spaced_evenly_never_two_together() -> None:
    vc = VirtualClock()
    p = pacer(RateLimit(2, 60), vc)
    grants = [await p.acquire() for _ in range(10)]
    gaps = [b - a for a, b in itertools.pairwise(grants)]
    assert all(g == pytest.approx(30.02) for g in gaps)  # one every ~30 s, not two then a minute's wait
    assert max_in_window(grants, 60.0) == 2
    assert max_in_window(grants, 29.0) == 1


async def test_jitter_up_to_the_smallest_guard_never_puts_count_plus_one_arrivals_in_a_period() -> None:
    vc = VirtualClock()
    p = pacer(2.0, vc)
    rng = random.Random(7)
    grants = [await p.acquire() for _ in range(2000)]
    assert p.guard_s == pytest.approx(MIN_GUARD_S)  # shrunk all the way: nothing was refused
    arrivals = [t + rng.uniform(0, MIN_GUARD_S) for t in grants]
    assert max_in_window(arrivals, 1.0) == 2


async def test_no_burst_after_an_idle_spell() -> None:
    vc = VirtualClock()
    p = pacer(2.0, vc)
    await p.acquire()
    vc.now += 60.0  # idle for a minute: nothing may accumulate
    idle_end = vc.now
    t1 = await p.acquire()
    t2 = await p.acquire()
    t3 = await p.acquire()
    assert t1 == idle_end  # the first permit after idling is immediate...
    assert t2 - t1 == pytest.approx(p.interval)  # ...and the next ones are spaced, not bunched
    assert t3 - t2 == pytest.approx(p.interval)


async def test_waiters_are_served_in_arrival_order() -> None:
    vc = VirtualClock()
    p = pacer(5.0, vc)
    order: list[int] = []

    async def waiter(i: int) -> None:
        await p.acquire()
        order.append(i)

    tasks = []
    for i in range(20):
        tasks.append(asyncio.create_task(waiter(i)))
        await asyncio.sleep(0)  # each waiter queues before the next is created
    await asyncio.gather(*tasks)
    assert order == list(range(20))


async def test_a_cancelled_waiter_consumes_no_permit_and_keeps_the_order() -> None:
    vc = VirtualClock()
    p = pacer(RateLimit(2, 60), vc)
    await p.acquire()
    gate = asyncio.Event()

    async def stalled_sleep(seconds: float) -> None:  # time stands still until the test says so
        await gate.wait()
        await vc.sleep(seconds)

    p._sleep = stalled_sleep
    doomed = asyncio.create_task(p.acquire())
    survivor = asyncio.create_task(p.acquire())
    await asyncio.sleep(0)
    doomed.cancel()
    with pytest.raises(asyncio.CancelledError):
        await doomed
    gate.set()
    t = await survivor
    assert p.granted == 2
    assert t == pytest.approx(1000.0 + p.interval)


@pytest.mark.parametrize("limit", [RateLimit(2, 1), RateLimit(2, 60)])
async def test_penalize_by_default_holds_the_next_permit_one_widened_interval(limit: RateLimit) -> None:
    vc = VirtualClock()
    p = pacer(limit, vc, guard_s=0.01 * limit.period_s)
    await p.acquire()
    vc.now += 0.1 * limit.interval_s  # the 429 comes back a little later
    refused_at = vc.now
    p.penalize()
    t1 = await p.acquire()
    assert p.backoffs == 1
    assert t1 - refused_at == pytest.approx(p.interval)  # the new, wider interval: the limit's own time scale
    assert p.interval > (limit.period_s + 0.01 * limit.period_s) / limit.count


async def test_penalize_pushes_every_later_permit_back() -> None:
    vc = VirtualClock()
    p = pacer(2.0, vc)
    t0 = await p.acquire()
    p.penalize(5.0)
    t1 = await p.acquire()
    t2 = await p.acquire()
    assert t1 - t0 == pytest.approx(5.0)
    assert t2 - t1 == pytest.approx(p.interval)


async def test_penalize_never_pulls_permits_forward() -> None:
    vc = VirtualClock()
    p = pacer(0.5, vc)  # ~2.08 s spacing
    t0 = await p.acquire()
    p.penalize(0.1)
    t1 = await p.acquire()
    assert t1 - t0 == pytest.approx(p.interval)


async def test_a_429_widens_the_spacing_multiplicatively() -> None:
    vc = VirtualClock()
    p = pacer(2.0, vc)
    await p.acquire()
    before = p.interval
    assert p.throttled()
    assert p.guard_s == pytest.approx(DEFAULT_GUARD_S * BACKOFF_FACTOR)
    t1 = await p.acquire()
    t2 = await p.acquire()
    assert t2 - t1 == pytest.approx(p.interval) and p.interval > before


async def test_429s_of_one_cause_back_off_once_per_period() -> None:
    vc = VirtualClock()
    p = pacer(2.0, vc)
    await p.acquire()
    assert p.throttled()
    vc.now += 0.3  # the requests sent before the backoff are refused too: same cause
    assert not p.throttled()
    assert (p.throttles, p.backoffs) == (2, 1)
    vc.now += 1.0
    assert p.throttled()
    assert p.backoffs == 2


async def test_after_429s_the_spacing_recovers_slowly_but_not_to_the_refused_one() -> None:
    vc = VirtualClock()
    p = pacer(2.0, vc)
    await p.acquire()
    p.throttled()
    widened = p.guard_s
    for _ in range(RECOVERY_PERMITS):
        await p.acquire()
    assert p.guard_s == pytest.approx(widened * RECOVERY_FACTOR)  # one step per RECOVERY_PERMITS clean ones
    for _ in range(RECOVERY_PERMITS * 100):
        await p.acquire()
    floor = max(DEFAULT_GUARD_S * FLOOR_FACTOR, DEFAULT_GUARD_S + FLOOR_STEP_S)
    assert p.guard_s == pytest.approx(floor)  # the floor: above the refused spacing
    assert DEFAULT_GUARD_S < p.guard_s < widened


async def test_a_clean_pacer_shrinks_its_guard_to_the_minimum_and_paces_at_the_limit() -> None:
    vc = VirtualClock()
    p = pacer(RateLimit(4, 1.0), vc)
    start = p.interval
    for _ in range(RECOVERY_PERMITS * 30):
        await p.acquire()
    assert p.guard_s == pytest.approx(MIN_GUARD_S)
    assert 1 / p.interval >= 0.99 * 4 > 1 / start  # 40 ms of guard cost 4 % of the limit at first
    history = p.snapshot()["guard_history"]
    assert history[0] == [0.0, DEFAULT_GUARD_S] and history[-1][1] == pytest.approx(MIN_GUARD_S)
    assert all(b[1] <= a[1] for a, b in itertools.pairwise(history))  # only shrinking: no throttle
    assert all(b[0] >= a[0] for a, b in itertools.pairwise(history))


async def test_a_per_minute_pacer_shrinks_no_lower_than_a_thousandth_of_its_period() -> None:
    vc = VirtualClock()
    p = pacer(RateLimit(2, 60.0), vc, guard_s=0.6)
    for _ in range(RECOVERY_PERMITS * 40):
        await p.acquire()
    assert p.guard_s == pytest.approx(0.06)


async def test_the_guard_history_stays_bounded() -> None:
    vc = VirtualClock()
    p = pacer(2.0, vc)
    for _ in range(2000):
        p.throttled()
        vc.now += 10
        for _ in range(RECOVERY_PERMITS):
            await p.acquire()
    history = p.snapshot()["guard_history"]
    assert len(history) <= HISTORY_POINTS and history[0] == [0.0, DEFAULT_GUARD_S]


async def test_the_guard_never_exceeds_a_quarter_of_the_period() -> None:
    vc = VirtualClock()
    p = pacer(2.0, vc)
    for _ in range(100):
        p.throttled()
        vc.now += 10
    assert p.guard_s == pytest.approx(0.25)


async def test_the_adaptive_pacer_settles_without_429s_under_jitter_it_did_not_expect() -> None:
    # An emulated sliding window refuses whatever would put a 3rd arrival in 1 s; arrivals carry
    # 0–60 ms of jitter (more than the initial 40 ms guard). After a few 429s early on, none later.
    vc = VirtualClock()
    p = pacer(2.0, vc)
    rng = random.Random(3)
    accepted: list[float] = []
    refused_at: list[int] = []
    for i in range(3000):
        t = await p.acquire()
        arrival = t + rng.uniform(0, 0.060)
        window = [a for a in accepted[-4:] if abs(a - arrival) < 1.0]
        if len(window) >= 2:
            refused_at.append(i)
            p.throttled()
        else:
            accepted.append(arrival)
    assert refused_at and max(refused_at) < 1500
    assert len(refused_at) <= 6
    assert max_in_window(accepted) == 2
    late = accepted[len(accepted) // 2 :]
    assert (len(late) - 1) / (late[-1] - late[0]) >= 0.93 * 2.0


def test_rejects_nonsense_rates_and_guards() -> None:
    with pytest.raises(ValueError, match="rate must be positive"):
        Pacer(0)
    with pytest.raises(ValueError, match="guard_s"):
        Pacer(2, guard_s=0.5)


def test_pool_shares_one_pacer_per_endpoint_key_and_model() -> None:
    pool = PacerPool(model_limits("2"))
    a = pool.get("http://x/", "sk-one", "m1")
    assert pool.get("http://x", "sk-one", "m1") is a
    assert pool.get("http://x", "sk-one", "m2") is not a
    assert pool.get("http://x", "sk-two", "m1") is not a
    assert pool.get("http://y", "sk-one", "m1") is not a


def test_a_pool_paces_each_model_at_its_own_limit() -> None:
    pool = PacerPool(model_limits(None, builtin_models()))
    assert pool.get("http://x", "sk-1", MAX).limit == RateLimit(2, 60)
    assert pool.get("http://x", "sk-1", PLUS).limit == RateLimit(2, 1)
    assert pool.rates([MAX, PLUS]) == {MAX: pytest.approx(1 / 30), PLUS: 2.0}
    with pytest.raises(UnknownLimit, match="refusing to guess"):
        pool.get("http://x", "sk-1", "qwen-image-9")


def test_a_pool_asks_its_limit_function_with_the_model_id_in_lower_case() -> None:
    asked: list[str] = []

    def limit_of(model: str) -> RateLimit:
        asked.append(model)
        return RateLimit(3, 1)

    pool = PacerPool(limit_of)
    assert pool.get("http://x", "sk-1", "Qwen-Image-Edit-Plus").limit == RateLimit(3, 1)
    assert asked == [PLUS]


def test_pool_stats_are_per_model() -> None:
    pool = PacerPool(builtin_models().rate_limit)
    pool.get("http://x", "sk-1", PLUS).throttled()
    pool.get("http://x", "sk-2", PLUS)
    pool.get("http://x", "sk-1", MAX)
    stats = pool.stats()
    assert stats[PLUS]["throttles"] == 1 and stats[PLUS]["limit"] == "2/s"
    assert stats[MAX]["limit"] == "2/min" and stats[MAX]["throttles"] == 0


def test_pacer_key_never_contains_the_api_key() -> None:
    key = pacer_key("http://x", "sk-SECRET-123456", "m")
    assert "sk-SECRET-123456" not in repr(key)


async def test_a_late_send_keeps_the_permit_schedule() -> None:
    vc = VirtualClock()
    p = pacer(2.0, vc)
    t0 = await p.acquire()
    vc.now += 0.015  # the request left 15 ms after its permit (a connection, the body, a few hops)
    p.mark_sent()
    t1 = await p.acquire()
    assert t1 - t0 == pytest.approx(p.interval)  # the gate spaces the sends; the permits keep time


@pytest.mark.parametrize("late", [0.05, 0.4])
async def test_a_send_later_than_the_forgiven_lead_holds_the_next_permit_back(late: float) -> None:
    vc = VirtualClock()
    p = pacer(2.0, vc)
    t0 = await p.acquire()
    vc.now += late  # a busy machine: what exceeds the lead slows the pacer, as load bunches arrivals
    p.mark_sent()
    t1 = await p.acquire()
    assert t1 - (t0 + late) == pytest.approx(p.interval - PERMIT_LEAD_MAX_S)


async def test_a_waiter_woken_a_little_late_does_not_move_later_permits() -> None:
    vc = VirtualClock()
    p = pacer(2.0, vc)

    async def late_sleep(seconds: float) -> None:  # every wake-up 5 ms late (a busy event loop)
        await vc.sleep(seconds + 0.005)

    p._sleep = late_sleep
    grants = [await p.acquire() for _ in range(RECOVERY_PERMITS - 1)]  # at the starting guard
    gaps = [b - a for a, b in itertools.pairwise(grants[1:])]  # the first permit was immediate
    assert all(g == pytest.approx(p.interval) for g in gaps)  # 5 ms late each, yet not 5 ms apart


async def test_time_every_request_spends_reaching_the_wire_costs_no_rate() -> None:
    vc = VirtualClock()
    p = pacer(2.0, vc)
    sends: list[float] = []
    for _ in range(RECOVERY_PERMITS - 1):  # at the starting guard
        await p.acquire()
        await vc.sleep(0.015)  # every request reaches its gate 15 ms after its permit
        await p.before_send()
        sends.append(vc.now)
        p.mark_sent()
        p.after_send()
    gaps = [b - a for a, b in itertools.pairwise(sends)]
    assert all(g == pytest.approx(p.interval) for g in gaps)


async def test_an_on_time_send_does_not_slow_the_pacer() -> None:
    vc = VirtualClock()
    p = pacer(2.0, vc)
    t0 = await p.acquire()
    p.mark_sent()
    t1 = await p.acquire()
    assert t1 - t0 == pytest.approx(p.interval)


def test_a_pools_per_minute_pacer_starts_with_one_percent_of_the_period_as_guard() -> None:
    pool = PacerPool(builtin_models().rate_limit)
    max_pacer = pool.get("http://x", "sk-1", MAX)
    assert max_pacer.guard_s == pytest.approx(0.6)
    assert max_pacer.interval == pytest.approx(30.3)  # ~1 % under the limit, never two together
    assert pool.get("http://x", "sk-1", PLUS).guard_s == pytest.approx(DEFAULT_GUARD_S)


async def test_the_send_gate_keeps_sends_spaced_when_a_request_overtakes_another() -> None:
    vc = VirtualClock()
    p = pacer(2.0, vc)
    t0 = await p.acquire()
    t1 = await p.acquire()  # request 0 is still connecting...
    vc.now = t1 + 0.01
    await p.before_send()  # ...request 1 leaves first
    p.after_send()
    first_send = vc.now
    vc.now += 0.01
    await p.before_send()  # request 0 leaves right behind it: held one interval
    p.after_send()
    assert vc.now - first_send == pytest.approx(p.interval)
    assert t1 - t0 == pytest.approx(p.interval)


async def test_a_write_stalled_after_its_gate_spaces_the_next_send_from_the_write() -> None:
    vc = VirtualClock()
    p = pacer(2.0, vc)
    await p.before_send()  # request 0 passes its gate...
    passed: list[float] = []

    async def next_request() -> None:
        await p.before_send()
        passed.append(vc.now)

    nxt = asyncio.create_task(next_request())
    for _ in range(3):
        await asyncio.sleep(0)
    assert not passed  # ...and request 1 waits for request 0's write, not just for its gate
    stalled_until = vc.now + 0.3
    vc.now = stalled_until  # the process stalled 300 ms before request 0's headers went out
    p.after_send()
    await nxt
    assert passed[0] - stalled_until == pytest.approx(p.interval)


async def test_concurrent_send_gates_pass_one_interval_apart_in_order() -> None:
    vc = VirtualClock()
    p = pacer(2.0, vc)
    sends: list[tuple[int, float]] = []

    async def send(i: int) -> None:
        await p.before_send()
        sends.append((i, vc.now))
        p.after_send()

    await asyncio.gather(*(send(i) for i in range(5)))
    assert [i for i, _ in sends] == list(range(5))
    gaps = [b - a for (_, a), (_, b) in itertools.pairwise(sends)]
    assert all(g == pytest.approx(p.interval) for g in gaps)


@pytest.mark.parametrize("limit", [RateLimit(2, 1), RateLimit(5, 1), RateLimit(2, 60), RateLimit(0.5, 1)])
async def test_sends_late_at_random_stay_one_interval_apart(limit: RateLimit) -> None:
    vc = VirtualClock()
    p = pacer(limit, vc, guard_s=0.01 * limit.period_s)
    rng = random.Random(11)
    sends: list[float] = []
    for _ in range(300):
        await p.acquire()
        await vc.sleep(rng.choice([0.0, 0.0, 0.3, 0.7]) * p.interval)  # on time, or late by up to 70 %
        await p.before_send()
        sends.append(vc.now)
        p.mark_sent()
        vc.now += rng.uniform(0, 0.2) * p.interval  # the write takes a while
        p.after_send()
    assert min(b - a for a, b in itertools.pairwise(sends)) >= p.interval * (1 - 1e-9)
    assert max_in_window(sends, limit.period_s) <= max(1, int(limit.count))
