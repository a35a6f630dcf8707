"""The pacer at its edges: spacing, no bursts, FIFO order, cancellation, push-back, pools."""

from __future__ import annotations

import asyncio
import itertools

import pytest

from qwenedit.pacer import Pacer, PacerPool, pacer_key
from qwenedit.testing.rates import max_in_window


class VirtualClock:
    """Time that moves only when a waiter sleeps, so spacing is exact and tests are instant."""

    def __init__(self) -> None:
        self.now = 1000.0

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += max(0.0, seconds)
        await asyncio.sleep(0)


async def test_permits_are_spaced_by_interval_and_never_exceed_rate_per_second() -> None:
    vc = VirtualClock()
    pacer = Pacer(2.0, clock=vc.clock, sleep=vc.sleep)
    grants = await asyncio.gather(*(pacer.acquire() for _ in range(50)))
    gaps = [b - a for a, b in itertools.pairwise(grants)]
    assert min(gaps) == pytest.approx(1 / (2.0 * 0.98))
    assert max_in_window(grants) == 2
    rate = (len(grants) - 1) / (grants[-1] - grants[0])
    assert 0.97 * 2.0 <= rate <= 2.0


async def test_no_burst_after_an_idle_spell() -> None:
    vc = VirtualClock()
    pacer = Pacer(2.0, clock=vc.clock, sleep=vc.sleep)
    await pacer.acquire()
    vc.now += 60.0  # idle for a minute: nothing may accumulate
    idle_end = vc.now
    t1 = await pacer.acquire()
    t2 = await pacer.acquire()
    t3 = await pacer.acquire()
    assert t1 == idle_end  # the first permit after idling is immediate...
    assert t2 - t1 == pytest.approx(pacer.interval)  # ...and the next ones are spaced, not bunched
    assert t3 - t2 == pytest.approx(pacer.interval)


async def test_waiters_are_served_in_arrival_order() -> None:
    vc = VirtualClock()
    pacer = Pacer(5.0, clock=vc.clock, sleep=vc.sleep)
    order: list[int] = []

    async def waiter(i: int) -> None:
        await pacer.acquire()
        order.append(i)

    tasks = []
    for i in range(20):
        tasks.append(asyncio.create_task(waiter(i)))
        await asyncio.sleep(0)  # each waiter queues before the next is created
    await asyncio.gather(*tasks)
    assert order == list(range(20))


async def test_cancelled_waiter_consumes_no_permit() -> None:
    pacer = Pacer(20.0)  # real clock: 51 ms spacing
    await pacer.acquire()
    doomed = asyncio.create_task(pacer.acquire())
    await asyncio.sleep(0.005)
    doomed.cancel()
    with pytest.raises(asyncio.CancelledError):
        await doomed
    assert pacer.granted == 1
    t = await pacer.acquire()
    assert pacer.granted == 2
    assert t > 0


async def test_penalize_pushes_every_later_permit_back() -> None:
    vc = VirtualClock()
    pacer = Pacer(2.0, clock=vc.clock, sleep=vc.sleep)
    t0 = await pacer.acquire()
    pacer.penalize(5.0)
    t1 = await pacer.acquire()
    t2 = await pacer.acquire()
    assert t1 - t0 == pytest.approx(5.0)
    assert t2 - t1 == pytest.approx(pacer.interval)


async def test_penalize_never_pulls_permits_forward() -> None:
    vc = VirtualClock()
    pacer = Pacer(0.5, clock=vc.clock, sleep=vc.sleep)  # 2.04 s spacing
    t0 = await pacer.acquire()
    pacer.penalize(0.1)
    t1 = await pacer.acquire()
    assert t1 - t0 == pytest.approx(pacer.interval)


def test_rejects_nonsense_rates() -> None:
    with pytest.raises(ValueError, match="rate must be positive"):
        Pacer(0)
    with pytest.raises(ValueError, match="margin"):
        Pacer(2, margin=1.5)


def test_pool_shares_one_pacer_per_endpoint_key_and_model() -> None:
    pool = PacerPool(2.0)
    a = pool.get("http://x/", "sk-one", "m1")
    assert pool.get("http://x", "sk-one", "m1") is a
    assert pool.get("http://x", "sk-one", "m2") is not a
    assert pool.get("http://x", "sk-two", "m1") is not a
    assert pool.get("http://y", "sk-one", "m1") is not a


def test_pacer_key_never_contains_the_api_key() -> None:
    key = pacer_key("http://x", "sk-SECRET-123456", "m")
    assert "sk-SECRET-123456" not in repr(key)


async def test_a_late_send_spaces_the_next_permit_from_the_real_send_time() -> None:
    vc = VirtualClock()
    pacer = Pacer(2.0, clock=vc.clock, sleep=vc.sleep)
    t0 = await pacer.acquire()
    vc.now += 0.2  # the request left 200 ms after its permit (busy event loop)
    pacer.mark_sent()
    t1 = await pacer.acquire()
    assert t1 - (t0 + 0.2) == pytest.approx(pacer.interval)


async def test_an_on_time_send_does_not_slow_the_pacer() -> None:
    vc = VirtualClock()
    pacer = Pacer(2.0, clock=vc.clock, sleep=vc.sleep)
    t0 = await pacer.acquire()
    pacer.mark_sent()
    t1 = await pacer.acquire()
    assert t1 - t0 == pytest.approx(pacer.interval)
