"""Roll-ups: jobs, images and exact cost per group value, streaming, bounded, and rendered three ways."""

from __future__ import annotations

import json
import random
from decimal import Decimal
from typing import Any

import pytest

from qwenedit.report import JobResult, RunTotals
from qwenedit.rollups import Rollups, markdown_rollups, parse_group_by, text_rollups, unknown_columns


def result(
    row: int,
    sku: str | None,
    *,
    status: str = "succeeded",
    model: str = "qwen-image-edit-plus",
    region: str = "singapore",
    images: int = 1,
    cost: str = "0.03",
    currency: str = "USD",
    **extra: str,
) -> JobResult:
    if sku is not None:
        extra["sku"] = sku
    return JobResult(
        row=row,
        job_id=f"job-{row}",
        status=status,
        model=model,
        region=region,
        images_requested=images,
        image_count=images if status != "skipped" else 0,
        cost=cost if status in ("succeeded", "failed") else "0",
        currency=currency,
        extra=extra,
    )


RESULTS = [
    result(1, "A1", images=2, cost="0.06"),
    result(2, "A1", status="failed", images=0, cost="0"),
    result(3, "B7", images=1, cost="0.03"),
    result(4, "B7", region="beijing", images=1, cost="0.2", currency="CNY"),
    result(5, "A1", status="skipped", images=0),
    result(6, None, images=1, cost="0.03"),
]


def _groups(rollups: Rollups, index: int = 0) -> dict[tuple[str, ...], dict[str, Any]]:
    data = rollups.to_dict()[index]
    return {tuple(g["key"].values()): {k: v for k, v in g.items() if k != "key"} for g in data["groups"]}


def test_jobs_images_and_cost_per_sku() -> None:
    rollups = Rollups(["sku"]).add_all(RESULTS)

    assert _groups(rollups) == {
        ("",): {"jobs": 1, "succeeded": 1, "failed": 0, "images": 1, "cost": {"USD": "0.03"}},
        ("A1",): {"jobs": 3, "succeeded": 1, "failed": 1, "images": 2, "cost": {"USD": "0.06"}},
        ("B7",): {"jobs": 2, "succeeded": 2, "failed": 0, "images": 2, "cost": {"CNY": "0.2", "USD": "0.03"}},
    }


def test_groups_by_result_fields_and_by_combinations() -> None:
    rollups = Rollups(["region", "sku+region"]).add_all(RESULTS)

    assert {k: v["jobs"] for k, v in _groups(rollups, 0).items()} == {("beijing",): 1, ("singapore",): 5}
    assert {k: v["jobs"] for k, v in _groups(rollups, 1).items()} == {
        ("", "singapore"): 1,
        ("A1", "singapore"): 3,
        ("B7", "beijing"): 1,
        ("B7", "singapore"): 1,
    }
    assert rollups.to_dict()[1]["group_by"] == ["sku", "region"]


def test_group_costs_add_up_exactly_to_the_run_total() -> None:
    rng = random.Random(4)
    results = [
        result(i, f"sku-{rng.randrange(30)}", cost=str(Decimal(rng.randrange(1, 7)) * Decimal("0.0286")))
        for i in range(2000)
    ]
    totals = RunTotals()
    for r in results:
        totals.add(r)

    rollups = Rollups(["sku"]).add_all(results)
    summed = sum((Decimal(g["cost"]["USD"]) for g in rollups.to_dict()[0]["groups"]), Decimal(0))

    assert str(summed) == totals.total_cost()["USD"]
    assert sum(g["images"] for g in rollups.to_dict()[0]["groups"]) == totals.images


def test_order_of_arrival_does_not_change_the_roll_up() -> None:
    shuffled = RESULTS[::-1]

    assert Rollups(["sku"]).add_all(RESULTS).to_dict() == Rollups(["sku"]).add_all(shuffled).to_dict()


def test_distinct_values_past_the_limit_go_to_one_other_entry() -> None:
    results = [result(i, f"unique-{i:04d}") for i in range(25)]

    data = Rollups(["sku"], max_groups=10).add_all(results).to_dict()[0]

    assert len(data["groups"]) == 10
    assert data["other"] == {"jobs": 15, "succeeded": 15, "failed": 0, "images": 15, "cost": {"USD": "0.45"}}
    assert "(other values, past 10)" in text_rollups([data])


def test_a_column_no_row_has_is_reported() -> None:
    data = Rollups(["skuu"]).add_all(RESULTS).to_dict()[0]

    assert data["missing_columns"] == ["skuu"]
    assert [g["key"] for g in data["groups"]] == [{"skuu": ""}]
    assert "no row has skuu" in text_rollups([data])


def test_to_dict_is_json_with_string_costs() -> None:
    data = Rollups(["sku", "model"]).add_all(RESULTS).to_dict()

    assert json.loads(json.dumps(data)) == data


@pytest.mark.parametrize(
    ("spec", "columns"),
    [("sku", ("sku",)), ("sku+region", ("sku", "region")), (" sku + model ", ("sku", "model"))],
)
def test_group_by_specs_parse(spec: str, columns: tuple[str, ...]) -> None:
    assert parse_group_by(spec) == columns


@pytest.mark.parametrize("spec", ["", "+", "sku+", "sku+sku"])
def test_bad_group_by_specs_are_refused(spec: str) -> None:
    with pytest.raises(ValueError, match="--group-by"):
        parse_group_by(spec)


def test_unknown_columns_names_typos_against_a_header() -> None:
    header = ["job_id", "image_1", "prompt", "sku", "collection"]

    assert unknown_columns(["sku", "region", "skuu+collection", "colour"], header) == ["skuu", "colour"]


def test_text_rendering_is_aligned_largest_cost_first() -> None:
    lines = Rollups(["sku"]).add_all(RESULTS).text().splitlines()

    assert lines[0] == "By sku"
    assert lines[1].split() == ["sku", "jobs", "images", "cost"]
    assert [line.split()[:3] for line in lines[2:5]] == [
        ["B7", "2", "2"],
        ["A1", "3", "2"],
        ["(empty)", "1", "1"],
    ]
    assert lines[2].endswith("0.20 CNY, $0.03")
    assert len({len(line) for line in lines[1:5]}) == 1  # right-aligned cost column


def test_renderings_cap_the_rows_and_say_how_many_are_left_out() -> None:
    results = [result(i, f"s{i:03d}") for i in range(50)]
    rollups = Rollups(["sku"]).add_all(results)

    assert "… and 40 more groups in summary.json" in rollups.text(max_rows=10)
    assert "… and 45 more groups in summary.json." in rollups.markdown(max_rows=5)


def test_markdown_cells_cannot_break_the_table_or_inject_markup() -> None:
    hostile = result(1, "a|b\n<img src=x onerror=alert(1)> [link](javascript:x) `code`")

    md = markdown_rollups(Rollups(["sku"]).add_all([hostile]).to_dict())

    row = next(line for line in md.splitlines() if line.startswith("| a"))
    assert row.count(" | ") == 3  # four cells, the value's pipe escaped
    assert "<img" not in md and "&lt;img" in md
    assert "](" not in md.replace("\\](", "")
