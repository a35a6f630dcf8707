"""The rate-limit option at its edges: the specs ``--rps`` and ``RunOptions.rates`` accept, what they
refuse and why, and the limit a run paces each model at (override, every-model rate, the table's, times
the share)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from qwenedit.catalog import RateLimit, builtin_models
from qwenedit.errors import UnknownLimit
from qwenedit.options import RunOptions
from qwenedit.rates import Rates, model_limits, model_name, normalize_rates, parse_rates, scaled

MAX = "qwen-image-edit-max"
PLUS = "qwen-image-edit-plus"
EDIT = "qwen-image-edit"


@pytest.mark.parametrize(
    ("specs", "expected"),
    [
        ("2", Rates(RateLimit(2, 1))),  # a bare number is per second
        (["2/s"], Rates(RateLimit(2, 1))),
        (["2/min"], Rates(RateLimit(2, 60))),
        (["0.5"], Rates(RateLimit(0.5, 1))),
        (["120/h"], Rates(RateLimit(120, 3600))),
        (2, Rates(RateLimit(2, 1))),  # a deployment's --param rates=2 arrives as a number
        ([f"{PLUS}=1.5/s"], Rates(None, {PLUS: RateLimit(1.5, 1)})),
        (["max=2/min"], Rates(None, {MAX: RateLimit(2, 60)})),  # short names, as the progress line
        (["Edit=1"], Rates(None, {EDIT: RateLimit(1, 1)})),
        (["Qwen-Image-Edit-Max=3/min"], Rates(None, {MAX: RateLimit(3, 60)})),
        (["4", "max=2/min"], Rates(RateLimit(4, 1), {MAX: RateLimit(2, 60)})),
        ("max=3/min, 4", Rates(RateLimit(4, 1), {MAX: RateLimit(3, 60)})),  # one string, commas
        (["2", "2/s"], Rates(RateLimit(2, 1))),  # the same rate twice is harmless
        ([" ", ""], Rates()),
        (None, Rates()),
        ((), Rates()),
    ],
)
def test_rate_specs_parse(specs: object, expected: Rates) -> None:
    assert parse_rates(specs) == expected  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("specs", "message"),
    [
        (["2/fortnight"], r"'2/fortnight': expected a rate like 2/s"),
        (["fast"], r"'fast': expected a rate like"),
        (["max=fast"], r"'max=fast': expected a rate like"),
        (["max="], r"'max=': expected a rate like"),
        (["=2"], r"'=2': expected MODEL=RATE, the model is empty"),
        (["0"], r"'0': a rate limit needs a positive count"),
        (["0/min"], r"positive count"),
        (["-2"], r"'-2': expected a rate like"),
        (["max=-1/s"], r"expected a rate like"),
        (["inf"], r"expected a rate like"),
        (["2", "3"], r"'3': two rates for every model: 2/s and 3/s"),
        (["max=2/min", f"{MAX}=3/min"], rf"two rates for {MAX}: 2/min and 3/min"),
        ([True], r"expected a rate like"),
    ],
)
def test_bad_rate_specs_name_the_spec_and_the_reason(specs: list[object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_rates(specs)


def test_the_options_keep_the_specs_one_per_item_as_written() -> None:
    assert normalize_rates("2, max=2/min") == ("2", "max=2/min")
    assert normalize_rates(1.5) == ("1.5",)
    options = RunOptions(manifest="m.csv", dest="out", rates=("2/min", "plus=1/s"))
    assert options.rates == ("2/min", "plus=1/s")
    assert RunOptions.model_validate(options.model_dump(mode="json")) == options  # a deployment's round trip


def test_the_options_refuse_a_bad_rate_naming_the_field() -> None:
    with pytest.raises(ValidationError, match=r"rates\n.*'2/fortnight': expected a rate like"):
        RunOptions(manifest="m.csv", dest="out", rates=("2/fortnight",))


def test_a_models_limit_is_its_override_then_the_every_model_rate_then_the_tables() -> None:
    table = builtin_models()
    own = model_limits(None, table)
    assert (own(MAX), own(PLUS)) == (RateLimit(2, 60), RateLimit(2, 1))
    per_model = model_limits(["max=4/min"], table)
    assert (per_model(MAX), per_model(PLUS)) == (RateLimit(4, 60), RateLimit(2, 1))
    both = model_limits(["5", "max=4/min"], table)
    assert (both(MAX), both(PLUS), both("Qwen-Image-Edit-Plus")) == (
        RateLimit(4, 60),
        RateLimit(5, 1),
        RateLimit(5, 1),
    )
    with pytest.raises(UnknownLimit, match="refusing to guess"):
        own("qwen-image-9")
    with pytest.raises(UnknownLimit, match="refusing to guess"):
        model_limits(["max=1/min"])(PLUS)  # no table, no override for this model


def test_the_share_scales_every_limit_and_keeps_its_period() -> None:
    half = model_limits(["plus=4/s"], builtin_models(), share=0.5)
    assert (half(MAX), half(PLUS)) == (RateLimit(1, 60), RateLimit(2, 1))
    assert scaled(RateLimit(2, 60), 1.0) == RateLimit(2, 60)
    for bad in (0.0, -0.5, 1.5):
        with pytest.raises(ValueError, match="share"):
            model_limits(None, builtin_models(), share=bad)


def test_short_model_names_expand_and_full_ids_stay() -> None:
    assert [model_name(n) for n in ("plus", "MAX", "edit", "qwen-image-edit-plus-2025-12-15", "")] == [
        PLUS,
        MAX,
        EDIT,
        "qwen-image-edit-plus-2025-12-15",
        "",
    ]


def test_an_override_for_a_model_the_table_does_not_list_is_refused_when_the_run_opens() -> None:
    with pytest.raises(ValueError, match="does not list: qwen-image-edit-mx"):
        model_limits(["mx=1/min"], builtin_models())
    model_limits(["mx=1/min"])  # no table to check against (a fixed-rate pool in a test)
