"""``qwenedit run``'s flags become one ``RunOptions``: what each flag turns into, and the messages for
bad values (exit 2, naming the flag). The run itself is replaced by a stub that records the options."""

from __future__ import annotations

from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from qwenedit.cli import app
from qwenedit.options import RunOptions


@pytest.fixture
def captured(monkeypatch: pytest.MonkeyPatch) -> list[RunOptions]:
    seen: list[RunOptions] = []

    async def no_run(options: RunOptions, progress: bool, yes: bool = False) -> dict[str, Any]:
        seen.append(options)
        raise typer.Exit(0)

    monkeypatch.setattr("qwenedit.cli.run._run", no_run)
    return seen


def invoke(*args: str) -> Any:
    return CliRunner().invoke(app, ["run", "m.csv", "--dest", "out", *args])


def test_rps_takes_a_rate_per_minute_and_per_model_rates(captured: list[RunOptions]) -> None:
    result = invoke("--rps", "2/min", "--rps", "plus=1.5/s")
    assert result.exit_code == 0, result.output
    assert captured[0].rates == ("2/min", "plus=1.5/s")


def test_without_rps_each_model_keeps_its_own_limit(captured: list[RunOptions]) -> None:
    assert invoke().exit_code == 0
    assert captured[0].rates == ()


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("2/fortnight", "'2/fortnight': expected a rate like 2/s"),
        ("0", "'0': a rate limit needs a positive count"),
        ("=2", "the model is empty"),
    ],
)
def test_a_bad_rps_exits_2_naming_the_flag_and_the_value(
    captured: list[RunOptions], value: str, message: str
) -> None:
    result = invoke("--rps", value)
    assert result.exit_code == 2
    assert "--rps" in result.output and message in " ".join(result.output.split())
    assert captured == []
