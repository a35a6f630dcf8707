"""Unit prices, cost and quotes: exact decimals, refusals instead of guesses, one total per currency."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import pytest

from qwenedit.catalog import (
    ModelTable,
    Price,
    Quote,
    builtin_models,
    cost,
    format_money,
    load_models,
    normalize_region,
    parse_money,
    quote,
)
from qwenedit.errors import MixedCurrencies, PriceFileError, UnknownPrice
from qwenedit.jobs import Job

PLUS = ("qwen-image-edit-plus", "qwen-image-edit-plus-2025-10-30", "qwen-image-edit-plus-2025-12-15")
MAX = ("qwen-image-edit-max", "qwen-image-edit-max-2026-01-16")


@pytest.mark.parametrize(
    ("region", "model", "amount"),
    [
        *(("singapore", m, "0.03") for m in PLUS),
        ("singapore", "qwen-image-edit", "0.045"),
        *(("beijing", m, "0.028671") for m in PLUS),
        ("beijing", "qwen-image-edit", "0.043"),
        *(("singapore", m, "0.075") for m in MAX),
        # Beijing's CNY 0.5 at the seed's own rate (CNY / 6.976), like plus and edit.
        *(("beijing", m, "0.071674") for m in MAX),
    ],
)
def test_default_prices_are_the_seed_list_prices_in_usd(region: str, model: str, amount: str) -> None:
    assert builtin_models().unit_price(region, model) == Price(Decimal(amount), "USD")


def test_an_unpriced_model_is_refused_not_guessed() -> None:
    with pytest.raises(UnknownPrice, match="no price known for model 'qwen-image-9' in region 'singapore'"):
        builtin_models().unit_price("singapore", "qwen-image-9")
    with pytest.raises(UnknownPrice):
        builtin_models().unit_price("virginia", "qwen-image-edit-plus")


def test_region_and_model_names_are_matched_case_insensitively_with_aliases() -> None:
    table = builtin_models()
    assert table.unit_price("Singapore", "QWEN-IMAGE-EDIT-PLUS").amount == Decimal("0.03")
    assert table.unit_price("ap-southeast-1", "qwen-image-edit").amount == Decimal("0.045")
    assert table.unit_price("cn-beijing", "qwen-image-edit").amount == Decimal("0.043")
    assert normalize_region(" Intl ") == "singapore"
    assert normalize_region("mars") == "mars"


def test_cost_is_exact_decimal_arithmetic() -> None:
    beijing = builtin_models().unit_price("beijing", "qwen-image-edit-plus")
    assert cost(3, beijing) == Decimal("0.086013")
    assert cost(1_000_000, beijing) == Decimal("28671.000000")
    assert cost(0, beijing) == 0
    # The float version of the same sum is not exact; ours is.
    assert sum([cost(1, beijing)] * 10) == Decimal("0.286710")


def test_user_price_file_in_json_overrides_and_extends(tmp_path: Path) -> None:
    path = tmp_path / "prices.json"
    path.write_text(
        json.dumps(
            [
                {
                    "region": "singapore",
                    "model": "qwen-image-edit-plus",
                    "unit_price": 0.025,
                    "currency": "usd",
                },
                {
                    "region": "singapore",
                    "model": "qwen-image-edit-max",
                    "unit_price": "0.07",
                    "currency": "USD",
                },
            ]
        )
    )
    table = load_models(path)
    assert table.unit_price("singapore", "qwen-image-edit-plus") == Price(Decimal("0.025"), "USD")
    assert table.unit_price("singapore", "qwen-image-edit-max") == Price(Decimal("0.07"), "USD")
    assert table.unit_price("beijing", "qwen-image-edit") == Price(
        Decimal("0.043"), "USD"
    )  # untouched default
    # JSON numbers are read as decimals, never through float.
    assert str(table.unit_price("singapore", "qwen-image-edit-plus").amount) == "0.025"


def test_user_price_file_in_csv_can_state_cny(tmp_path: Path) -> None:
    path = tmp_path / "prices.csv"
    path.write_text(
        "region,model,unit_price,currency\n"
        "beijing,qwen-image-edit-plus,0.2,CNY\n"
        "\n"
        "beijing,qwen-image-edit,0.3,CNY\n"
    )
    table = load_models(path)
    assert table.unit_price("beijing", "qwen-image-edit-plus") == Price(Decimal("0.2"), "CNY")
    assert cost(3, table.unit_price("beijing", "qwen-image-edit")) == Decimal("0.9")


def test_no_price_file_means_the_defaults_and_json_may_wrap_the_list(tmp_path: Path) -> None:
    assert load_models(None) == builtin_models()
    path = tmp_path / "p.json"
    path.write_text(
        '{"prices": [{"region": "beijing", "model": "qwen-image-edit", "unit_price": 0.3, '
        '"currency": "CNY"}]}'
    )
    assert load_models(path).unit_price("beijing", "qwen-image-edit") == Price(Decimal("0.3"), "CNY")


@pytest.mark.parametrize(
    ("name", "content", "suffix"),
    [
        (
            "p.json",
            "[{",
            " is not valid JSON: Expecting property name enclosed in double quotes (line 1, column 3)",
        ),
        (
            "p.json",
            '{"singapore": 1}',
            ': expected a JSON list of {"region", "model", "unit_price", "currency"} objects',
        ),
        ("p.json", "[1]", ", entry 1: expected an object"),
        (
            "p.json",
            '[{"region": "singapore", "model": "m"}]',
            ", entry 1: missing unit_price, currency (needed: region, model, unit_price, currency)",
        ),
        (
            "p.json",
            '[{"region": "singapore", "model": "m", "unit_price": -1, "currency": "USD"}]',
            ", entry 1: unit_price must be a finite number ≥ 0, got '-1'",
        ),
        (
            "p.json",
            '[{"region": "singapore", "model": "m", "unit_price": true, "currency": "USD"}]',
            ", entry 1: unit_price must be a number, got True",
        ),
        (
            "p.csv",
            "region,model,unit_price,currency\nsingapore,m,0.1,dollars\n",
            ", line 2: currency must be a 3-letter code like USD or CNY, got 'dollars'",
        ),
        ("p.csv", "region,model,unit_price,currency\n", " has no prices"),
        ("p.json", '{"prices": []}', " has no prices"),
    ],
)
def test_bad_price_files_are_refused_with_the_entry_at_fault(
    tmp_path: Path, name: str, content: str, suffix: str
) -> None:
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(PriceFileError) as err:
        load_models(path)
    assert str(err.value) == f"price file {str(path)!r}{suffix}"


def test_missing_price_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(PriceFileError, match="does not exist"):
        load_models(tmp_path / "nope.json")
    with pytest.raises(PriceFileError, match="is a directory"):
        load_models(tmp_path)


def _job(job_id: str, region: str, model: str, n: int) -> Job:
    return Job(row=1, job_id=job_id, images=("a.png",), prompt="p", model=model, region=region, n=n)


def test_quote_counts_jobs_images_and_cost_per_region_and_model() -> None:
    jobs = [
        _job("a", "singapore", "qwen-image-edit-plus", 2),
        _job("b", "singapore", "qwen-image-edit-plus", 6),
        _job("c", "singapore", "qwen-image-edit", 1),
        _job("d", "beijing", "qwen-image-edit-plus", 3),
    ]
    q = quote(jobs, builtin_models())
    assert [(ln.region, ln.model, ln.jobs, ln.images, ln.cost) for ln in q.lines] == [
        ("beijing", "qwen-image-edit-plus", 1, 3, Decimal("0.086013")),
        ("singapore", "qwen-image-edit", 1, 1, Decimal("0.045")),
        ("singapore", "qwen-image-edit-plus", 2, 8, Decimal("0.24")),
    ]
    assert (q.jobs, q.images) == (4, 12)
    assert q.totals == {"USD": Decimal("0.371013")}
    assert q.total() == Decimal("0.371013")
    assert q.fits(Decimal("0.371013")) and not q.fits(Decimal("0.37")) and q.fits(None)
    assert q.to_dict()["totals"] == {"USD": "0.371013"}


def test_quote_never_adds_different_currencies() -> None:
    table = builtin_models().merged(
        ModelTable({("beijing", "qwen-image-edit-plus"): Price(Decimal("0.2"), "CNY")})
    )
    q = quote(
        [_job("a", "beijing", "qwen-image-edit-plus", 2), _job("b", "singapore", "qwen-image-edit", 1)], table
    )
    assert q.totals == {"CNY": Decimal("0.4"), "USD": Decimal("0.045")}
    with pytest.raises(MixedCurrencies, match="the quote has costs in CNY, which cannot be added to USD"):
        q.total("USD")
    with pytest.raises(MixedCurrencies):
        q.fits(Decimal(100), "USD")


def test_empty_quote_costs_nothing() -> None:
    q = Quote()
    assert (q.jobs, q.images, q.totals, q.total()) == (0, 0, {}, Decimal(0))
    assert q.fits(Decimal(0))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("50", (Decimal("50"), "USD")),
        (" 12.50 ", (Decimal("12.50"), "USD")),
        ("$7", (Decimal("7"), "USD")),
        ("300 CNY", (Decimal("300"), "CNY")),
        ("cny 300", (Decimal("300"), "CNY")),
        ("1,000", (Decimal("1000"), "USD")),
    ],
)
def test_budget_amounts_parse(text: str, expected: tuple[Decimal, str]) -> None:
    assert parse_money(text) == expected


@pytest.mark.parametrize("text", ["lots", "-5", "5 5", "NaN", "inf", "5 dollars now"])
def test_bad_budget_amounts_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_money(text)


def test_money_is_shown_without_rounding() -> None:
    assert format_money(Decimal("0.086013"), "USD") == "$0.086013"
    assert format_money(Decimal("12"), "USD") == "$12.00"
    assert format_money(Decimal("0.3"), "CNY") == "0.30 CNY"
    assert format_money(Decimal("1E+1"), "USD") == "$10.00"
