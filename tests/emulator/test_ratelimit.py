"""Rate limiting: more than ``rps`` arrivals in any 1-second window per (account, model) get 429."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable

import httpx
import pytest

from devkit.clock import FakeClock
from qwenedit.emulator import EmulatorServer
from qwenedit.emulator.config import GENERATION_PATH
from qwenedit.emulator.ratelimit import SlidingWindow, rule_for_rps
from tests.emulator.helpers import body


async def _burst(base_url: str, requests: list[tuple[str, str]]) -> list[httpx.Response]:
    """Send all (key, model) requests at once, each on its own connection."""
    payloads = {model: body(model=model) for _, model in requests}
    async with httpx.AsyncClient(base_url=base_url, timeout=10) as client:
        return list(
            await asyncio.gather(
                *(
                    client.post(
                        GENERATION_PATH, json=payloads[model], headers={"Authorization": f"Bearer {key}"}
                    )
                    for key, model in requests
                )
            )
        )


def _statuses(responses: list[httpx.Response]) -> Counter[int]:
    return Counter(r.status_code for r in responses)


async def test_five_at_once_for_one_key_and_model_lets_exactly_two_through(
    emulator_factory: Callable[..., EmulatorServer],
) -> None:
    server = emulator_factory(rps=2)

    responses = await _burst(server.base_url, [("sk-a", "qwen-image-edit-plus")] * 5)

    assert _statuses(responses) == {200: 2, 429: 3}
    throttled = [r.json() for r in responses if r.status_code == 429]
    assert all(e["code"] == "Throttling.RateQuota" for e in throttled)
    assert all(e["message"] == "Requests rate limit exceeded, please try again later." for e in throttled)
    assert server.stats()["throttled_429"] == 3
    assert sum(e["image_count"] for e in server.ledger()) == 2
    assert Counter(a["status"] for a in server.arrivals()) == {200: 2, 429: 3}


async def test_models_are_limited_independently(emulator_factory: Callable[..., EmulatorServer]) -> None:
    server = emulator_factory(rps=2)

    responses = await _burst(
        server.base_url,
        [("sk-a", "qwen-image-edit-plus")] * 4 + [("sk-a", "qwen-image-edit-plus-2025-12-15")] * 4,
    )

    by_model = Counter((a["model"], a["status"]) for a in server.arrivals())
    assert by_model[("qwen-image-edit-plus", 200)] == 2
    assert by_model[("qwen-image-edit-plus-2025-12-15", 200)] == 2
    assert _statuses(responses) == {200: 4, 429: 4}


async def test_accounts_are_limited_independently_but_keys_of_one_account_share(
    emulator_factory: Callable[..., EmulatorServer],
) -> None:
    server = emulator_factory(rps=2, accounts={"sk-a1": "alpha", "sk-a2": "alpha"})
    model = "qwen-image-edit-plus"

    await _burst(server.base_url, [("sk-a1", model), ("sk-a2", model)] * 2 + [("sk-b", model)] * 3)

    ok = Counter(a["account"] for a in server.arrivals() if a["status"] == 200)
    assert ok["alpha"] == 2
    assert sum(n for account, n in ok.items() if account != "alpha") == 2


async def test_the_window_slides_so_paced_requests_all_pass(
    emulator_factory: Callable[..., EmulatorServer],
) -> None:
    clock = FakeClock()
    server = emulator_factory(rps=2, clock=clock)

    first = await _burst(server.base_url, [("sk-a", "qwen-image-edit-plus")] * 2)
    clock.advance(0.5)
    too_soon = await _burst(server.base_url, [("sk-a", "qwen-image-edit-plus")])
    clock.advance(0.55)
    second = await _burst(server.base_url, [("sk-a", "qwen-image-edit-plus")] * 2)

    assert _statuses(first + second) == {200: 4}
    assert _statuses(too_soon) == {429: 1}  # the window had not slid yet: the clock is what counts


async def test_max_model_allows_two_per_minute(emulator_factory: Callable[..., EmulatorServer]) -> None:
    server = emulator_factory(rps=100)

    responses = await _burst(server.base_url, [("sk-a", "qwen-image-edit-max")] * 3)

    assert _statuses(responses) == {200: 2, 429: 1}


async def test_burst_guard_refuses_uneven_sending(emulator_factory: Callable[..., EmulatorServer]) -> None:
    server = emulator_factory(rps=10, burst_max=1, burst_window_s=0.5)

    responses = await _burst(server.base_url, [("sk-a", "qwen-image-edit-plus")] * 2)

    assert _statuses(responses) == {200: 1, 429: 1}
    assert server.stats()["by_code"] == {"Throttling.BurstRate": 1}


async def test_arrivals_are_stamped_on_receipt_before_latency(
    emulator_factory: Callable[..., EmulatorServer],
) -> None:
    server = emulator_factory(rps=100, latency_median_s=0.4)
    sent = time.monotonic()

    await _burst(server.base_url, [("sk-a", "qwen-image-edit-plus")] * 3)
    done = time.monotonic()

    times = [a["time"] for a in server.arrivals()]
    assert len(times) == 3
    assert all(sent <= t <= done - 0.4 for t in times)  # stamped before the 0.4 s "model" latency


@pytest.mark.parametrize(
    ("rps", "rule"), [(2.0, (2, 1.0)), (2.5, (2, 1.0)), (1.0, (1, 1.0)), (0.5, (1, 2.0))]
)
def test_rps_becomes_a_count_per_window(rps: float, rule: tuple[int, float]) -> None:
    assert rule_for_rps(rps) == rule


def test_window_allows_exact_spacing_and_refuses_a_third_within_a_second() -> None:
    window = SlidingWindow()

    assert [window.admit(t, 2, 1.0) for t in (0.0, 0.5, 1.0, 1.5, 1.75)] == [True, True, True, True, False]


def test_window_counts_late_recorded_earlier_arrivals() -> None:
    window = SlidingWindow()

    # Arrival 0.3 is checked last: it would make three inside (0.0, 0.3, 0.6).
    assert [window.admit(t, 2, 1.0) for t in (0.6, 0.0, 0.3)] == [True, True, False]
