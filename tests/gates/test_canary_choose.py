"""``canary.choose``: the canary is spread over the (model, region) groups, then evenly within each."""

from __future__ import annotations

import pytest

from qwenedit.canary import CanaryPlan, answer_means_yes, choose

A = ("qwen-image-edit-plus", "singapore")
B = ("qwen-image-edit", "singapore")
C = ("qwen-image-edit-plus", "beijing")


@pytest.mark.parametrize(
    ("groups", "n", "expected"),
    [
        ({A: list(range(10))}, 0, set()),
        ({A: list(range(10))}, 1, {5}),  # the middle row, not the first
        ({A: list(range(10))}, 2, {2, 7}),  # evenly spread
        ({A: list(range(10))}, 5, {1, 3, 5, 7, 9}),
        ({A: [0, 1, 2]}, 9, {0, 1, 2}),  # fewer rows than asked: all of them
        ({A: [], B: [4]}, 3, {4}),  # an empty group takes no turn
        ({A: [0, 1, 2, 3], B: [10, 11], C: [20]}, 3, {2, 11, 20}),  # one per group first
        ({A: [0, 1, 2, 3], B: [10, 11], C: [20]}, 5, {1, 3, 10, 11, 20}),  # then the bigger groups again
        ({A: [0, 1, 2, 3], B: [10, 11], C: [20]}, 7, {0, 1, 2, 3, 10, 11, 20}),
    ],
)
def test_choose_spreads_the_canary_over_groups_then_within_each(
    groups: dict[tuple[str, str], list[int]], n: int, expected: set[int]
) -> None:
    assert choose(groups, n) == expected


def test_choose_samples_every_group_before_any_gets_a_second_job() -> None:
    groups = {(f"m{i}", "r"): list(range(i * 100, i * 100 + 50)) for i in range(6)}
    picked = choose(groups, 6)
    assert len(picked) == 6
    assert {row // 100 for row in picked} == set(range(6))


def test_choose_is_stable_whatever_order_the_groups_come_in() -> None:
    groups = {A: [0, 1, 2, 3], B: [10, 11], C: [20, 21, 22]}
    reversed_groups = dict(reversed(list(groups.items())))
    for n in range(10):
        assert choose(groups, n) == choose(reversed_groups, n)


@pytest.mark.parametrize(
    ("answer", "approved"),
    [
        ("y\n", True),
        ("yes\n", True),
        (" YES \n", True),
        ("Y", True),
        ("no\n", False),
        ("n\n", False),
        ("\n", False),  # just Enter
        ("yess\n", False),
        ("ok\n", False),
        ("", False),
        (None, False),  # end of input
    ],
)
def test_only_y_or_yes_approves(answer: str | None, approved: bool) -> None:
    assert answer_means_yes(answer) is approved


def test_projected_text_lists_each_currency() -> None:
    from decimal import Decimal

    plan = CanaryPlan(rows={1}, remaining_jobs=3, projected={"USD": Decimal("0.09"), "CNY": Decimal("1.2")})
    assert plan.projected_text() == "1.2 CNY, 0.09 USD"
    assert CanaryPlan().projected_text() == "0"
