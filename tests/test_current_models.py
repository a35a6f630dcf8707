"""The current generation of edit models (qwen-image-2.0, -2.0-pro and their snapshots): in the model
table with their prices and area size rule, validated and quoted, refused by the emulator with the API's
code when the area is wrong, run against the emulator once a limit is stated; legacy models name their
replacement."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

from qwenedit.catalog import Price, builtin_models
from qwenedit.emulator import EmulatorConfig, EmulatorServer
from qwenedit.errors import UnknownLimit
from qwenedit.manifest import validate_manifest
from qwenedit.rates import with_stated_limits
from tests.emulator.helpers import body, post
from tests.gates.helpers import billed_calls, results, run_here
from tests.manifest.conftest import HEADER, image_bytes, run_validate
from tests.pipeline.conftest import images_dir, pipeline_env, simple_rows, write_manifest

__all__ = ["images_dir", "pipeline_env", "write_manifest"]  # fixtures of the run test

NEW, PRO = "qwen-image-2.0", "qwen-image-2.0-pro"
SNAPSHOTS = {
    NEW: ["qwen-image-2.0-2026-03-03"],
    PRO: ["qwen-image-2.0-pro-2026-03-03", "qwen-image-2.0-pro-2026-04-22", "qwen-image-2.0-pro-2026-06-22"],
}
STATED = ("20", f"{NEW}=20", f"{PRO}=20")


@pytest.mark.parametrize(
    ("model", "singapore", "beijing"),
    [(m, "0.035", "0.028671") for m in [NEW, *SNAPSHOTS[NEW]]]
    + [(m, "0.075", "0.071674") for m in [PRO, *SNAPSHOTS[PRO]]],
)
def test_the_current_models_are_in_the_table_with_their_prices_and_rules(
    model: str, singapore: str, beijing: str
) -> None:
    table = builtin_models()
    spec = table.spec(model)
    assert table.unit_price("singapore", model) == Price(Decimal(singapore), "USD")
    assert table.unit_price("beijing", model) == Price(Decimal(beijing), "USD")
    assert (spec.max_n, spec.prompt_extend, spec.prompt_limit, spec.replaced_by) == (6, True, 1300, None)
    assert spec.size is not None and not spec.size.only_with_n1
    assert spec.rate_limit is None  # not published: never guessed


@pytest.mark.parametrize(
    ("size", "refused"),
    [("2048*2048", False), ("2560*1440", False), ("512*512", False), ("4096*4096", True), ("300*300", True)],
)
def test_the_current_models_take_an_area_rule_not_a_side_rule(size: str, refused: bool) -> None:
    rule = builtin_models().spec(NEW).size
    assert rule is not None
    w, h = (int(x) for x in size.split("*"))
    reason = rule.refusal(w, h)
    assert (reason is not None) == refused
    if refused:
        assert reason is not None and "total pixels must be 512*512–2048*2048" in reason
    # The plus family keeps its side rule: 2560 px is too wide for it.
    plus_rule = builtin_models().spec("qwen-image-edit-plus").size
    assert plus_rule is not None and plus_rule.refusal(2560, 1440) is not None


def test_a_stated_limit_lets_a_model_without_one_be_paced_and_a_bare_rate_does_not() -> None:
    table = builtin_models()
    with pytest.raises(UnknownLimit):
        with_stated_limits(table, ("2",)).rate_limit(NEW)  # a rate for every model states none for it
    stated = with_stated_limits(table, (f"{NEW}=1/s",))
    assert str(stated.rate_limit(NEW)) == "1/s"
    assert stated.rate_limit("qwen-image-edit-plus") == table.rate_limit("qwen-image-edit-plus")
    with pytest.raises(UnknownLimit):
        stated.rate_limit(PRO)


def test_legacy_models_name_the_model_that_replaces_them() -> None:
    notes = builtin_models().legacy_notices(["qwen-image-edit-plus", "qwen-image-edit-max", NEW])
    assert notes == [
        "qwen-image-edit-max is a legacy model (Model Studio, September 2026); "
        "the current model that replaces it is qwen-image-2.0-pro",
        "qwen-image-edit-plus is a legacy model (Model Studio, September 2026); "
        "the current model that replaces it is qwen-image-2.0",
    ]


def _mixed_manifest(folder: Path, *, bad_size: bool = False) -> Path:
    (folder / "a.png").write_bytes(image_bytes())
    lines = [
        HEADER + ",model,n,size",
        "p1,a.png,,,make it blue,qwen-image-edit-plus,1,",
        f"n1,a.png,,,make it blue,{NEW},2,2560*1440",
        f"r1,a.png,,,make it blue,{PRO},1,{'4096*4096' if bad_size else '1024*1024'}",
    ]
    path = folder / "jobs.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_a_manifest_mixing_plus_2_0_and_pro_validates_and_is_quoted_at_the_table_prices(
    tmp_path: Path,
) -> None:
    table = with_stated_limits(builtin_models(), STATED)
    result = validate_manifest(_mixed_manifest(tmp_path), prices=table)
    assert result.ok, [p.message() for p in result.problems]
    assert result.quote.total("USD") == Decimal("0.03") + 2 * Decimal("0.035") + Decimal("0.075")


def test_a_2_0_row_breaking_the_area_rule_is_refused_by_validation(tmp_path: Path) -> None:
    table = with_stated_limits(builtin_models(), STATED)
    result = validate_manifest(_mixed_manifest(tmp_path, bad_size=True), prices=table)
    assert not result.ok
    [problem] = [p for p in result.problems if p.severity == "error"]
    assert problem.column == "size" and "total pixels must be 512*512–2048*2048" in problem.reason


def test_without_a_stated_limit_validation_refuses_the_model_rather_than_guess(tmp_path: Path) -> None:
    result = validate_manifest(_mixed_manifest(tmp_path), prices=builtin_models())
    refused = {p.row for p in result.problems if p.column == "model" and "no known rate limit" in p.reason}
    assert refused == {2, 3}


@pytest.fixture(scope="module")
def fast_emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmulatorServer]:
    config = EmulatorConfig(rps=10_000, render="fast", output_dir=str(tmp_path_factory.mktemp("out")))
    with EmulatorServer(config) as server:
        yield server


@pytest.mark.parametrize(("size", "status"), [("2560*1440", 200), ("4096*4096", 400), ("256*256", 400)])
def test_the_emulator_holds_the_2_0_models_to_the_area_rule(
    fast_emulator: EmulatorServer, size: str, status: int
) -> None:
    with httpx.Client(base_url=fast_emulator.base_url, timeout=10) as client:
        response = post(client, body(model=NEW, n=2, size=size))
    assert response.status_code == status, response.text
    if status == 400:
        assert response.json()["code"] == "InvalidParameter"


async def test_a_mixed_manifest_runs_against_the_emulator_at_the_table_prices(
    pipeline_env: Any, emulator_factory: Any, write_manifest: Any, tmp_path: Path
) -> None:
    server = emulator_factory()
    rows = simple_rows(3)
    for row, model in zip(rows, ["qwen-image-edit-plus", NEW, PRO], strict=True):
        row["model"] = model
    summary = await run_here(write_manifest(rows), pipeline_env, server, tmp_path, rates=STATED)
    assert summary["by_status"]["succeeded"] == 3
    assert billed_calls(server) == 3
    costs = dict(zip(results(summary)["model"], results(summary)["cost"], strict=True))
    assert {m: Decimal(c) for m, c in costs.items()} == {
        "qwen-image-edit-plus": Decimal("0.03"),
        NEW: Decimal("0.035"),
        PRO: Decimal("0.075"),
    }


def test_validate_prints_one_notice_per_legacy_model_naming_its_replacement(tmp_path: Path) -> None:
    out = run_validate(_mixed_manifest(tmp_path), "--prices", _limits_file(tmp_path))
    assert out.exit_code == 0, out.stdout + out.stderr
    notes = [line for line in out.stdout.splitlines() if line.startswith("note: ")]
    assert notes == [
        "note: qwen-image-edit-plus is a legacy model (Model Studio, September 2026); "
        "the current model that replaces it is qwen-image-2.0"
    ]


def _limits_file(folder: Path) -> Path:
    """A price file that states the 2.0 models' limits (a raised or published quota) and nothing else."""
    path = folder / "limits.csv"
    path.write_text(f"model,rate_limit\n{NEW},2/s\n{PRO},2/s\n")
    return path


def test_validate_quotes_the_current_models_once_rps_states_their_limits(tmp_path: Path) -> None:
    refused = run_validate(_mixed_manifest(tmp_path))
    assert refused.exit_code == 1 and "has no known rate limit" in refused.stdout
    out = run_validate(_mixed_manifest(tmp_path), "--rps", f"{NEW}=2", "--rps", f"{PRO}=2")
    assert out.exit_code == 0, out.stdout + out.stderr
    assert "at most $0.175." in out.stdout  # 0.03 + 2 × 0.035 + 0.075, without a price file
