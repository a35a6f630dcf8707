"""Injected faults: each one is observable by a client, and the ledger bills exactly what it should."""

from __future__ import annotations

import asyncio
import math
import statistics
import time
from collections.abc import Callable

import httpx
import pytest

from qwenedit.emulator import ConfigError, EmulatorConfig, EmulatorServer
from qwenedit.emulator.faults import FaultDice
from tests.emulator.helpers import body, image_urls, post


def _wait_for_ledger(server: EmulatorServer, count: int, timeout: float = 3.0) -> list[dict[str, object]]:
    deadline = time.monotonic() + timeout
    while len(server.ledger()) < count and time.monotonic() < deadline:
        time.sleep(0.02)
    return server.ledger()


@pytest.mark.parametrize(
    ("fault", "status", "code", "message"),
    [
        (
            "500",
            500,
            "InternalError.Algo",
            "An internal error has occured during execution, please try again later or contact service "
            "support.",
        ),
        ("503", 503, "ModelUnavailable", "Model is unavailable, please try again later."),
        (
            "inspection",
            400,
            "DataInspectionFailed",
            "Input or output data may contain inappropriate content.",
        ),
    ],
)
def test_error_faults_answer_the_real_error_and_bill_nothing(
    emulator: EmulatorServer, fault: str, status: int, code: str, message: str
) -> None:
    emulator.configure(next_faults=[fault])
    with httpx.Client(base_url=emulator.base_url) as c:
        failed = post(c, body(n=2))
        after = post(c, body(n=2))

    assert failed.status_code == status
    assert failed.json() == {"request_id": failed.headers["x-request-id"], "code": code, "message": message}
    assert after.status_code == 200
    assert [e["request_id"] for e in emulator.ledger()] == [after.json()["request_id"]]
    assert emulator.stats()["faults"] == {fault: 1}


def test_partial_success_returns_and_bills_fewer_images(emulator: EmulatorServer) -> None:
    emulator.configure(next_faults=["partial"])
    with httpx.Client(base_url=emulator.base_url) as c:
        response = post(c, body(n=4))

    k = response.json()["usage"]["image_count"]
    assert response.status_code == 200
    assert 1 <= k < 4
    assert len(image_urls(response)) == k
    assert all(httpx.get(url).status_code == 200 for url in image_urls(response))
    assert [(e["request_id"], e["image_count"]) for e in emulator.ledger()] == [
        (response.json()["request_id"], k)
    ]


def test_dropped_connection_is_a_protocol_error_and_not_billed(emulator: EmulatorServer) -> None:
    emulator.configure(next_faults=["drop"])
    with (
        httpx.Client(base_url=emulator.base_url) as c,
        pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)),
    ):
        post(c, body())

    assert emulator.ledger() == []
    assert emulator.stats()["by_status"] == {"dropped": 1}


def test_billed_then_dropped_is_charged_though_no_answer_came(emulator: EmulatorServer) -> None:
    emulator.configure(next_faults=["drop_billed"])
    with (
        httpx.Client(base_url=emulator.base_url) as c,
        pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)),
    ):
        post(c, body(n=3))

    assert [e["image_count"] for e in emulator.ledger()] == [3]


def test_the_server_keeps_serving_after_a_drop(emulator: EmulatorServer) -> None:
    emulator.configure(next_faults=["drop"])
    with httpx.Client(base_url=emulator.base_url) as c:
        with pytest.raises(httpx.TransportError):
            post(c, body())
        assert post(c, body()).status_code == 200


def test_hang_outlasts_the_client_timeout_and_is_still_billed(emulator: EmulatorServer) -> None:
    emulator.configure(next_faults=["hang"])
    with httpx.Client(base_url=emulator.base_url, timeout=0.3) as c, pytest.raises(httpx.ReadTimeout):
        post(c, body(n=2))

    ledger = _wait_for_ledger(emulator, 1)
    assert [e["image_count"] for e in ledger] == [2]
    assert emulator.stats()["by_status"] == {"client_gone": 1}


def test_malformed_json_body_is_billed(emulator: EmulatorServer) -> None:
    emulator.configure(next_faults=["malformed_json"])
    with httpx.Client(base_url=emulator.base_url) as c:
        response = post(c, body())

    assert response.status_code == 200
    with pytest.raises(ValueError):
        response.json()
    assert response.headers["x-request-id"] == emulator.ledger()[0]["request_id"]


def test_malformed_fields_body_lacks_output_and_is_billed(emulator: EmulatorServer) -> None:
    emulator.configure(next_faults=["malformed_fields"])
    with httpx.Client(base_url=emulator.base_url) as c:
        response = post(c, body(n=2))

    assert response.status_code == 200
    assert "output" not in response.json()
    assert [e["image_count"] for e in emulator.ledger()] == [2]


def test_foreign_host_urls_point_elsewhere(emulator_factory: Callable[..., EmulatorServer]) -> None:
    server = emulator_factory(foreign_base_url="https://evil.example.invalid", next_faults=["foreign_host"])
    with httpx.Client(base_url=server.base_url) as c:
        response = post(c, body(n=2))

    assert response.status_code == 200
    assert all(url.startswith("https://evil.example.invalid/") for url in image_urls(response))
    assert len(server.ledger()) == 1


def test_fault_rate_one_fails_every_valid_request(emulator_factory: Callable[..., EmulatorServer]) -> None:
    server = emulator_factory(fail_503=1.0)
    with httpx.Client(base_url=server.base_url) as c:
        statuses = {post(c, body()).status_code for _ in range(5)}

    assert statuses == {503}


def test_same_seed_gives_the_same_faults(emulator_factory: Callable[..., EmulatorServer]) -> None:
    def run(server: EmulatorServer) -> list[int]:
        with httpx.Client(base_url=server.base_url) as c:
            return [post(c, body()).status_code for _ in range(16)]

    rates = {"fail_500": 0.25, "fail_503": 0.25, "fail_inspection": 0.2, "seed": 7}
    first = run(emulator_factory(**rates))
    second = run(emulator_factory(**rates))

    assert first == second
    assert len(set(first)) > 1


def test_faults_can_be_set_over_http(emulator: EmulatorServer) -> None:
    with httpx.Client(base_url=emulator.base_url) as c:
        changed = c.post("/_emulator/config", json={"fail_500": 1.0})
        failing = post(c, body())
        c.post("/_emulator/config", json={"fail_500": 0.0, "next_faults": ["503"]})
        forced = post(c, body())
        healthy = post(c, body())
        refused = c.post("/_emulator/config", json={"fail_500": 2})
        unknown = c.post("/_emulator/config", json={"no_such_knob": 1})

    assert changed.status_code == 200 and changed.json()["fail_500"] == 1.0
    assert (failing.status_code, forced.status_code, healthy.status_code) == (500, 503, 200)
    assert refused.status_code == 400
    assert unknown.status_code == 400


def test_control_endpoints_report_and_reset(emulator: EmulatorServer) -> None:
    with httpx.Client(base_url=emulator.base_url) as c:
        post(c, body(n=2))
        post(c, body(n=9))
        ledger = c.get("/_emulator/ledger").json()
        stats = c.get("/_emulator/stats").json()
        arrivals = c.get("/_emulator/arrivals").json()
        config = c.get("/_emulator/config").json()
        c.post("/_emulator/reset").raise_for_status()
        after = c.get("/_emulator/stats").json()

    assert [e["image_count"] for e in ledger] == [2]
    assert set(ledger[0]) == {"request_id", "account", "key_id", "model", "image_count", "time"}
    assert stats["requests"] == 2 and stats["by_status"] == {"200": 1, "400": 1}
    assert [a["status"] for a in arrivals] == [200, 400]
    assert config["keys"] is None and config["rps"] == 1000.0
    assert after["requests"] == 0 and emulator.ledger() == []


def test_runtime_config_rejects_bad_values_and_keeps_the_old_ones(emulator: EmulatorServer) -> None:
    with pytest.raises(ConfigError):
        emulator.configure(fail_500=0.7, fail_503=0.7)
    with pytest.raises(ConfigError):
        emulator.configure(next_faults=["explode"])

    assert emulator.config.fail_500 == 0.0


async def test_latency_sleeps_without_blocking_other_requests(
    emulator_factory: Callable[..., EmulatorServer],
) -> None:
    latency = 2.0
    server = emulator_factory(latency_median_s=latency)
    started = time.monotonic()
    async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as client:
        responses = await asyncio.gather(
            *(
                client.post(
                    "/api/v1/services/aigc/multimodal-generation/generation",
                    json=body(),
                    headers={"Authorization": "Bearer sk-a"},
                )
                for _ in range(6)
            )
        )
    elapsed = time.monotonic() - started

    arrived = [a["time"] for a in server.arrivals()]

    assert {r.status_code for r in responses} == {200}
    assert elapsed >= latency
    # Proven by the emulator's own arrival times, not by a wall-clock bound that a busy machine can miss: a
    # sleep that blocked the server would keep each request out until the one before it had slept (six calls
    # one after another would arrive over 5 x latency).
    assert len(arrived) == 6 and max(arrived) - min(arrived) < latency, arrived


def test_lognormal_latency_matches_median_and_p99() -> None:
    dice = FaultDice(seed=1)
    config = EmulatorConfig(latency_median_s=2.0, latency_p99_s=10.0)

    samples = sorted(dice.latency(config) for _ in range(20_000))

    assert statistics.median(samples) == pytest.approx(2.0, rel=0.05)
    assert samples[int(len(samples) * 0.99)] == pytest.approx(10.0, rel=0.1)


def test_fixed_and_custom_latency() -> None:
    dice = FaultDice(seed=1)

    assert dice.latency(EmulatorConfig(latency_median_s=1.5)) == 1.5
    assert dice.latency(EmulatorConfig(latency=lambda rng: 0.25)) == 0.25
    assert dice.latency(EmulatorConfig()) == 0.0


def test_fault_rates_follow_the_configured_mix() -> None:
    dice = FaultDice(seed=3)
    config = EmulatorConfig(fail_500=0.1, partial_rate=0.2, malformed_rate=0.1)

    picks = [dice.pick_fault(config) for _ in range(10_000)]

    assert picks.count("500") / len(picks) == pytest.approx(0.1, abs=0.015)
    assert picks.count("partial") / len(picks) == pytest.approx(0.2, abs=0.015)
    malformed = picks.count("malformed_json") + picks.count("malformed_fields")
    assert malformed / len(picks) == pytest.approx(0.1, abs=0.015)
    assert math.isclose(picks.count("ok") / len(picks), 0.6, abs_tol=0.02)
