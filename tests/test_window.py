"""The window: Little's law sizing from rates and observed latency, per-model lanes, hard caps."""

from __future__ import annotations

import asyncio

import pytest

from qwenedit.window import Window, lane_size, window_size

MAX = "qwen-image-edit-max"
PLUS = "qwen-image-edit-plus"
EDIT = "qwen-image-edit"


@pytest.mark.parametrize(
    ("rates", "latency", "headroom", "cap", "expected"),
    [
        ({PLUS: 2.0}, 30.0, 1.0, None, 60),  # the example: 2 req/s × 30 s
        ({PLUS: 2.0, EDIT: 2.0}, 25.0, 1.0, None, 100),  # two limits, 4 req/s together, 25 s
        ({PLUS: 2.0, EDIT: 2.0}, 25.0, 1.5, None, 150),
        ({PLUS: 2.0, EDIT: 2.0}, 25.0, 1.5, 64, 64),  # --max-in-flight stays a hard cap
        ({MAX: 2 / 60}, 30.0, 1.5, None, 2),  # Max: one call every 30 s needs ~1 place
        ({MAX: 2 / 60}, 1.0, 1.5, None, 1),  # never 0
        ({}, 30.0, 1.5, None, 1),
        ({PLUS: 2.0, EDIT: 2.0}, {PLUS: 10.0, EDIT: 30.0}, 1.0, None, 80),  # latency per model
    ],
)
def test_window_size_is_littles_law_bounded_by_the_cap(
    rates: dict[str, float],
    latency: float | dict[str, float],
    headroom: float,
    cap: int | None,
    expected: int,
) -> None:
    assert window_size(rates, latency, headroom, cap) == expected


def test_lane_size_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        lane_size(-1, 30)
    with pytest.raises(ValueError):
        lane_size(1, 30, headroom=0)


def test_before_any_observation_30_s_is_assumed() -> None:
    w = Window(rates={PLUS: 2.0, EDIT: 2.0})
    assert w.size == 180  # 4 req/s × 30 s × 1.5: the limit is reachable at 30 s with no flag


def test_the_size_follows_observed_latency() -> None:
    w = Window(rates={PLUS: 2.0})
    for _ in range(50):
        w.observe_latency(PLUS, 5.0)
    assert w.size == 15
    for _ in range(50):
        w.observe_latency(PLUS, 20.0)
    assert w.size == 60
    w.observe_latency(PLUS, float("nan"))  # ignored
    assert w.size == 60


def test_a_model_not_yet_observed_borrows_the_others_latency() -> None:
    w = Window(rates={PLUS: 2.0, EDIT: 2.0})
    for _ in range(50):
        w.observe_latency(PLUS, 10.0)
    assert w.latency(EDIT) == pytest.approx(10.0, rel=1e-3)
    assert w.size == 60


def test_memory_cap_and_hard_cap_bound_the_size() -> None:
    assert Window(rates={PLUS: 2.0}, memory_cap=40).size == 40
    assert Window(rates={PLUS: 2.0}, cap=8, memory_cap=40).size == 8
    assert Window(memory_cap=40).size == 40  # no rates: the memory cap
    with pytest.raises(ValueError):
        Window(cap=0)


async def test_acquire_waits_when_full_and_release_wakes_in_order() -> None:
    w = Window(cap=2)
    await w.acquire()
    await w.acquire()
    order: list[int] = []

    async def waiter(i: int) -> None:
        await w.acquire()
        order.append(i)

    tasks = [asyncio.create_task(waiter(i)) for i in range(3)]
    await asyncio.sleep(0)
    assert order == [] and w.in_flight == 2
    w.release()
    await asyncio.sleep(0)
    assert order == [0]
    w.release()
    w.release()
    await asyncio.gather(*tasks)
    assert order == [0, 1, 2] and w.in_flight == 2


async def test_a_slow_models_lane_never_starves_the_fast_ones() -> None:
    w = Window(rates={MAX: 2 / 60, PLUS: 2.0}, initial_latency_s=10.0)
    assert (w.lane(MAX), w.lane(PLUS)) == (1, 30)
    await w.acquire(MAX)
    blocked = asyncio.create_task(w.acquire(MAX))  # Max's lane is full...
    await asyncio.sleep(0)
    for _ in range(30):
        await asyncio.wait_for(w.acquire(PLUS), 1)  # ...plus still gets all of its places
    assert not blocked.done()
    w.release(MAX)
    await asyncio.wait_for(blocked, 1)
    assert w.in_flight == 31


async def test_a_cancelled_waiter_takes_no_place() -> None:
    w = Window(cap=1)
    await w.acquire()
    doomed = asyncio.create_task(w.acquire())
    await asyncio.sleep(0)
    doomed.cancel()
    with pytest.raises(asyncio.CancelledError):
        await doomed
    w.release()
    assert w.in_flight == 0
    async with w.slot():
        assert w.in_flight == 1
    assert w.in_flight == 0


async def test_shrinking_lets_calls_in_flight_drain_and_growing_wakes_waiters() -> None:
    w = Window(rates={PLUS: 2.0}, initial_latency_s=1.0)  # 3 places
    for _ in range(3):
        await w.acquire(PLUS)
    waiter = asyncio.create_task(w.acquire(PLUS))
    await asyncio.sleep(0)
    assert not waiter.done()
    w.observe_latency(PLUS, 2.0)  # 6 places: the waiter gets one at once
    await asyncio.wait_for(waiter, 1)
    assert w.in_flight == 4


def test_release_without_acquire_is_a_bug() -> None:
    with pytest.raises(RuntimeError):
        Window().release(PLUS)


def test_snapshot_shows_each_lane() -> None:
    w = Window(rates={PLUS: 2.0})
    snap = w.snapshot()
    assert snap["size"] == 90
    assert snap["models"] == {PLUS: {"rate": 2.0, "latency_s": 30.0, "lane": 90, "busy": 0}}
