"""The model table: one source of rules, limits and prices; a user file overrides or extends it."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import pytest

from qwenedit.catalog import ModelSpec, Price, RateLimit, builtin_models, load_models
from qwenedit.errors import PriceFileError, UnknownLimit, UnknownModel
from qwenedit.manifest import validate_manifest
from tests.manifest.conftest import HEADER, image_bytes


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    (tmp_path / "a.png").write_bytes(image_bytes())
    return tmp_path


@pytest.mark.parametrize(
    ("model", "limit", "max_n", "sizes", "extend"),
    [
        ("qwen-image-edit-max", RateLimit(2, 60), 6, True, True),
        ("qwen-image-edit-max-2026-01-16", RateLimit(2, 60), 6, True, True),
        ("qwen-image-edit-plus", RateLimit(2, 1), 6, True, True),
        ("qwen-image-edit-plus-2025-10-30", RateLimit(2, 1), 6, True, True),
        ("qwen-image-edit-plus-2025-12-15", RateLimit(2, 1), 6, True, True),
        ("qwen-image-edit", RateLimit(2, 1), 1, False, False),
    ],
)
def test_every_documented_model_has_its_rules_and_limit(
    model: str, limit: RateLimit, max_n: int, sizes: bool, extend: bool
) -> None:
    table = builtin_models()
    spec = table.spec(model)
    assert (table.rate_limit(model), spec.max_n, spec.size is not None, spec.prompt_extend) == (
        limit,
        max_n,
        sizes,
        extend,
    )
    assert table.has("singapore", model) and table.has("beijing", model)


@pytest.mark.parametrize(
    ("text", "limit", "shown"),
    [
        ("2", RateLimit(2, 1), "2/s"),
        ("2/s", RateLimit(2, 1), "2/s"),
        ("2/min", RateLimit(2, 60), "2/min"),
        ("2 rpm", RateLimit(2, 60), "2/min"),
        ("120/h", RateLimit(120, 3600), "120/h"),
        ("0.5", RateLimit(0.5, 1), "0.5/s"),
    ],
)
def test_rates_parse_as_a_count_per_period(text: str, limit: RateLimit, shown: str) -> None:
    assert RateLimit.parse(text) == limit
    assert str(limit) == shown


@pytest.mark.parametrize("text", ["", "fast", "2/fortnight", "-1/s", "0", "2//s"])
def test_bad_rates_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        RateLimit.parse(text)


def test_max_is_spaced_thirty_seconds_apart() -> None:
    assert builtin_models().rate_limit("qwen-image-edit-max").interval_s == 30.0


def test_an_unknown_model_or_limit_is_refused_with_how_to_add_it() -> None:
    with pytest.raises(UnknownModel, match="unknown model 'qwen-image-9'"):
        builtin_models().spec("qwen-image-9")
    table = builtin_models().merged(
        type(builtin_models())({("singapore", "qwen-image-9"): Price(Decimal("0.1"), "USD")})
    )
    with pytest.raises(UnknownLimit, match="no rate limit known for model 'qwen-image-9'; refusing to guess"):
        table.rate_limit("qwen-image-9")


def test_a_csv_file_raises_a_limit_without_touching_prices(tmp_path: Path) -> None:
    path = tmp_path / "prices.csv"
    path.write_text("region,model,unit_price,currency,rate_limit\n,qwen-image-edit-max,,,10/min\n")
    table = load_models(path)
    assert table.rate_limit("qwen-image-edit-max") == RateLimit(10, 60)
    assert table.unit_price("singapore", "qwen-image-edit-max") == Price(Decimal("0.075"), "USD")
    assert table.rate_limit("qwen-image-edit-plus") == RateLimit(2, 1)


def test_a_new_snapshot_is_one_row_copying_rules_with_like(tmp_path: Path) -> None:
    path = tmp_path / "prices.json"
    path.write_text(
        json.dumps(
            [
                {
                    "region": "singapore",
                    "model": "qwen-image-edit-2026-09-01",
                    "unit_price": "0.04",
                    "currency": "USD",
                    "like": "qwen-image-edit",
                }
            ]
        )
    )
    table = load_models(path)
    spec = table.spec("qwen-image-edit-2026-09-01")
    assert (spec.max_n, spec.size, spec.prompt_extend, spec.rate_limit) == (1, None, False, RateLimit(2, 1))
    assert table.unit_price("singapore", "qwen-image-edit-2026-09-01").amount == Decimal("0.04")


def test_a_price_only_row_keeps_the_built_in_rules_and_limit(tmp_path: Path) -> None:
    path = tmp_path / "prices.csv"
    path.write_text("region,model,unit_price,currency\nbeijing,qwen-image-edit-max,0.5,CNY\n")
    table = load_models(path)
    assert table.unit_price("beijing", "qwen-image-edit-max") == Price(Decimal("0.5"), "CNY")
    assert table.spec("qwen-image-edit-max") == builtin_models().spec("qwen-image-edit-max")


@pytest.mark.parametrize(
    ("content", "suffix"),
    [
        (
            "region,model,unit_price,currency,rate_limit\n,qwen-image-edit,,,fast\n",
            ", line 2: rate_limit: expected a rate like 2/s, 2/min or 120/h, got 'fast'",
        ),
        (
            "region,model,unit_price,currency,like\nsingapore,new,0.1,USD,qwen-image-7\n",
            ", line 2: like names an unknown model 'qwen-image-7'; known: qwen-image-2.0, "
            "qwen-image-2.0-2026-03-03, qwen-image-2.0-pro, qwen-image-2.0-pro-2026-03-03, "
            "qwen-image-2.0-pro-2026-04-22, qwen-image-2.0-pro-2026-06-22, qwen-image-edit, "
            "qwen-image-edit-max, qwen-image-edit-max-2026-01-16, qwen-image-edit-plus, "
            "qwen-image-edit-plus-2025-10-30, qwen-image-edit-plus-2025-12-15",
        ),
        (
            "model,rate_limit\nqwen-image-edit,2/s\nqwen-image-edit,3/s\n",
            ", line 3: rate_limit 3/s for qwen-image-edit contradicts 2/s at line 2",
        ),
        (
            "region,model,unit_price,currency,rate_limit\nsingapore,,0.1,USD,2/s\n",
            ", line 2: missing model (needed: region, model, unit_price, currency)",
        ),
    ],
)
def test_bad_limit_rows_are_refused_with_the_entry_at_fault(
    tmp_path: Path, content: str, suffix: str
) -> None:
    path = tmp_path / "p.csv"
    path.write_text(content)
    with pytest.raises(PriceFileError) as err:
        load_models(path)
    assert str(err.value) == f"price file {str(path)!r}{suffix}"


def test_validation_reads_n_size_and_prompt_extend_from_the_table(folder: Path) -> None:
    (folder / "m.csv").write_text(
        f"{HEADER},model,n,size,prompt_extend\n"
        "a,a.png,,,p,qwen-image-edit-max,2,1024*1536,true\n"  # max: size with n > 1 is documented
        "b,a.png,,,p,qwen-image-edit-plus,2,1024*1536,\n"  # plus: size only with n = 1
        "c,a.png,,,p,qwen-image-edit,1,,true\n"  # edit: no prompt_extend
    )
    result = validate_manifest(folder / "m.csv")
    assert [(p.row, p.column) for p in result.problems] == [(2, "size"), (3, "prompt_extend")]
    assert result.quote.totals == {"USD": Decimal("0.15")}


def test_a_model_the_file_prices_and_limits_validates(folder: Path) -> None:
    prices = folder / "p.csv"
    prices.write_text("region,model,unit_price,currency,rate_limit\nsingapore,qwen-image-3.0,0.05,USD,1/s\n")
    (folder / "m.csv").write_text(f"{HEADER},model\na,a.png,,,p,qwen-image-3.0\n")
    assert validate_manifest(folder / "m.csv", prices=load_models(prices)).ok


def test_the_old_price_table_call_keeps_built_in_rules() -> None:
    table = type(builtin_models())({("singapore", "qwen-image-edit"): Price(Decimal("1"), "USD")})
    assert table.spec("qwen-image-edit") == ModelSpec(
        "qwen-image-edit",
        max_n=1,
        size=None,
        prompt_extend=False,
        rate_limit=RateLimit(2, 1),
        replaced_by="qwen-image-2.0",
    )
