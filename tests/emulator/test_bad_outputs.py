"""Bad outputs on demand (blank, mis-sized, truncated) and output QA flagging each one against the emulator."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest

from qwenedit.emulator import ConfigError, EmulatorConfig, EmulatorServer
from qwenedit.qa import BLANK, SIZE_MISMATCH, UNDECODABLE, check_output
from tests.emulator.helpers import body, image_urls, png_uri, post
from tests.emulator.test_cli import _start


def _outputs(server: EmulatorServer, **params: Any) -> tuple[tuple[int, int], list[bytes]]:
    """One successful call: usage's (width, height) and every output image's bytes."""
    with httpx.Client(base_url=server.base_url) as c:
        response = post(c, body(images=[png_uri(300, 200)], **params))
        assert response.status_code == 200
        usage = response.json()["usage"]
        images = []
        for url in image_urls(response):
            got = httpx.get(url)
            assert got.status_code == 200
            assert len(got.content) == int(got.headers["content-length"])  # served whole
            images.append(got.content)
    return (usage["width"], usage["height"]), images


@pytest.mark.parametrize("render", ["fast", "full"])
@pytest.mark.parametrize(
    ("fault", "flags"),
    [
        ("blank_output", [BLANK]),
        ("missized_output", [SIZE_MISMATCH]),
        ("truncated_output", [UNDECODABLE]),
        ("ok", []),
    ],
)
def test_qa_flags_the_matching_bad_output_and_passes_the_good_ones(
    emulator_factory: Callable[..., EmulatorServer], render: str, fault: str, flags: list[str]
) -> None:
    server = emulator_factory(render=render, next_faults=[fault], strict_size_n=False)

    usage, images = _outputs(server, n=3)

    assert [check_output(data, expected=usage) for data in images] == [[], [], flags]


def test_a_bad_output_is_billed_like_any_success(emulator: EmulatorServer) -> None:
    emulator.configure(next_faults=["blank_output"])

    _outputs(emulator, n=2)

    assert [e["image_count"] for e in emulator.ledger()] == [2]
    assert emulator.stats()["faults"] == {"blank_output": 1}


def test_a_mis_sized_output_also_misses_the_requested_size(emulator: EmulatorServer) -> None:
    emulator.configure(next_faults=["missized_output", "ok"])

    usage, [bad] = _outputs(emulator, size="1033*1032")
    _, [good] = _outputs(emulator, size="1033*1032")

    assert usage == (1040, 1024)
    assert check_output(bad, expected=usage, requested="1033*1032") == ["size_mismatch", "size_not_requested"]
    assert check_output(good, expected=usage, requested="1033*1032") == []


def test_bad_output_rates_are_drawn_from_the_seed(emulator_factory: Callable[..., EmulatorServer]) -> None:
    def flags(server: EmulatorServer) -> list[list[str]]:
        out = []
        for _ in range(12):
            usage, [data] = _outputs(server)
            out.append(check_output(data, expected=usage))
        return out

    rates = {
        "blank_output_rate": 0.25,
        "missized_output_rate": 0.25,
        "truncated_output_rate": 0.25,
        "seed": 5,
    }
    first = flags(emulator_factory(**rates))
    second = flags(emulator_factory(**rates))

    assert first == second
    assert {tuple(f) for f in first} == {(), (BLANK,), (SIZE_MISMATCH,), (UNDECODABLE,)}


def test_bad_output_rates_count_towards_the_fault_total() -> None:
    from qwenedit.emulator.config import check_config

    with pytest.raises(ConfigError, match="more than 1"):
        check_config(EmulatorConfig(blank_output_rate=0.6, truncated_output_rate=0.6))
    with pytest.raises(ConfigError, match="blank_output_rate"):
        check_config(EmulatorConfig(blank_output_rate=1.5))


def test_bad_outputs_can_be_forced_over_http(emulator: EmulatorServer) -> None:
    with httpx.Client(base_url=emulator.base_url) as c:
        changed = c.post("/_emulator/config", json={"next_faults": ["truncated_output"]})
    assert changed.status_code == 200

    usage, [data] = _outputs(emulator)

    assert check_output(data, expected=usage) == [UNDECODABLE]


def test_cli_flags_set_the_bad_output_rates() -> None:
    proc, base_url = _start(
        "--render",
        "fast",
        "--rps",
        "50",
        "--blank-output",
        "1",
        "--missized-output",
        "0",
        "--truncated-output",
        "0",
    )
    try:
        config = httpx.get(f"{base_url}/_emulator/config").json()
        with httpx.Client(base_url=base_url) as c:
            response = post(c, body())
            data = httpx.get(image_urls(response)[0]).content
        usage = response.json()["usage"]
    finally:
        proc.kill()
        proc.wait()

    assert config["blank_output_rate"] == 1.0
    assert check_output(data, expected=(usage["width"], usage["height"])) == [BLANK]
