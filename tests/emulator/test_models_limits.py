"""The emulator reads the one model table: per-model limits and rules, a per-model burst guard,
arrival jitter, and the fault of a server closing idle keep-alive connections."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable

import httpx
import pytest

from qwenedit.catalog import builtin_models
from qwenedit.emulator import EmulatorServer
from qwenedit.emulator.config import (
    GENERATION_PATH,
    ConfigError,
    EmulatorConfig,
    ModelSpec,
    burst_rule,
    check_config,
    default_models,
    model_limit,
)
from qwenedit.emulator.faults import FaultDice
from qwenedit.testing.clock import FakeClock
from tests.emulator.helpers import KEY, body

MAX = "qwen-image-edit-max"
PLUS = "qwen-image-edit-plus"
AUTH = {"Authorization": f"Bearer {KEY}"}


def test_the_emulator_models_are_the_model_table() -> None:
    models = default_models()
    assert sorted(models) == sorted(builtin_models().specs())
    assert models[MAX] == ModelSpec(
        max_n=6, accepts_size=True, rate_limit=(2, 60.0), size_only_with_n1=False, prompt_chars=800
    )
    assert models["qwen-image-edit"] == ModelSpec(
        max_n=1, accepts_size=False, rate_limit=(2, 1.0), prompt_chars=800
    )
    assert model_limit(models[MAX], rps=1000) == (2, 60.0)  # per-minute: the table, whatever rps
    assert model_limit(models[PLUS], rps=2) == (2, 1.0)  # per-second: follows rps (tests speed up)
    assert burst_rule(models[MAX], rps=2) == (1, 15.0)
    assert burst_rule(models[PLUS], rps=2) == (1, 0.25)


async def _at_once(server: EmulatorServer, model: str, count: int) -> Counter[str]:
    async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as client:
        responses = await asyncio.gather(
            *(client.post(GENERATION_PATH, json=body(model=model), headers=AUTH) for _ in range(count))
        )
    return Counter(
        str(r.status_code) + ("" if r.status_code == 200 else " " + r.json()["code"]) for r in responses
    )


@pytest.mark.parametrize("model", [MAX, PLUS])
async def test_the_per_model_burst_guard_refuses_two_together(
    emulator_factory: Callable[..., EmulatorServer], model: str
) -> None:
    server = emulator_factory(rps=2, burst_guard=True)
    assert await _at_once(server, model, 2) == {"200": 1, "429 Throttling.BurstRate": 1}


async def test_without_the_burst_guard_two_together_fit_the_limit(
    emulator_factory: Callable[..., EmulatorServer],
) -> None:
    server = emulator_factory(rps=2)
    assert await _at_once(server, MAX, 3) == {"200": 2, "429 Throttling.RateQuota": 1}


def test_max_takes_size_with_n_above_1_and_plus_does_not(
    emulator_factory: Callable[..., EmulatorServer],
) -> None:
    server = emulator_factory()
    with httpx.Client(base_url=server.base_url, timeout=10) as client:
        ok = client.post(GENERATION_PATH, json=body(model=MAX, n=2, size="1024*1536"), headers=AUTH)
        refused = client.post(GENERATION_PATH, json=body(model=PLUS, n=2, size="1024*1536"), headers=AUTH)
    assert (ok.status_code, refused.status_code) == (200, 400)


def test_jitter_draws_are_seeded_and_bounded() -> None:
    draws = [FaultDice(5).jitter(0.04) for _ in range(3)]
    assert draws[0] == draws[1] == draws[2]
    dice = FaultDice(5)
    assert all(0 <= dice.jitter(0.04) <= 0.04 for _ in range(1000))
    assert dice.jitter(0.0) == 0.0
    with pytest.raises(ConfigError, match="arrival_jitter_s"):
        check_config(EmulatorConfig(arrival_jitter_s=-1))


def test_a_request_is_counted_after_its_arrival_jitter(
    emulator_factory: Callable[..., EmulatorServer],
) -> None:
    server = emulator_factory(arrival_jitter_s=0.3, seed=11)
    expected = FaultDice(11).jitter(0.3)
    with httpx.Client(base_url=server.base_url, timeout=10) as client:
        sent = time.monotonic()
        assert client.post(GENERATION_PATH, json=body(), headers=AUTH).status_code == 200
    [arrival] = server.arrivals()
    assert arrival["time"] - sent >= expected - 0.005


def test_a_connection_idle_past_idle_close_s_is_closed_unread_and_unbilled(
    emulator_factory: Callable[..., EmulatorServer],
) -> None:
    clock = FakeClock()
    server = emulator_factory(idle_close_s=5.0, clock=clock)
    with httpx.Client(base_url=server.base_url, timeout=10) as client:
        assert client.post(GENERATION_PATH, json=body(), headers=AUTH).status_code == 200
        clock.advance(4.0)
        assert client.post(GENERATION_PATH, json=body(), headers=AUTH).status_code == 200  # not idle enough
        clock.advance(5.0)
        # The server "closed" the idle connection just as the client reused it: no answer at all. The
        # client sees the close (RemoteProtocolError) or, when the kernel answers the unread request
        # with a reset (a loaded machine), ECONNRESET (ReadError).
        with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)) as lost:
            client.post(GENERATION_PATH, json=body(), headers=AUTH)
        assert "without sending a response" in str(lost.value) or "reset" in str(lost.value).lower()
        assert client.post(GENERATION_PATH, json=body(), headers=AUTH).status_code == 200  # new connection
    stats = server.stats()
    assert (stats["arrivals"], stats["billed_requests"], stats["faults"]) == (3, 3, {"idle_close": 1})
