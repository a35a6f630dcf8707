"""The canary: a few jobs first, spread over the manifest's models and regions, then a human decision.

``choose(groups, n)`` picks the canary from the pending rows of each (model, region) group: the groups
take turns (so every model and region the run would pay for is sampled before any gets a second
job), and within a group the picks are spread evenly over its rows (the first rows of a manifest are
often its least typical). ``CanaryPlan`` is what the run layer learns about the rest while choosing:
how many jobs remain and their worst-case cost per currency — the projected spend a person approves.
``QuoteApproval`` is the other question an approver is asked: whether a run whose quote is above
``--approve-above`` may start at all (the same approvers answer both: the terminal, the Prefect UI).

``answer_means_yes`` is the approval rule of the terminal, as ``terraform apply`` has it: ``y`` or
``yes`` continues; anything else, or end of input, stops.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import TypeVar

from qwenedit.summary import RunSummary

K = TypeVar("K", bound=Hashable)


def choose(groups: Mapping[K, Sequence[int]], n: int) -> set[int]:
    """``n`` rows (fewer if there are fewer), the groups taking turns, evenly spread within each."""
    sizes = {key: len(rows) for key, rows in groups.items() if rows}
    quota = dict.fromkeys(sizes, 0)
    left = min(n, sum(sizes.values()))
    while left > 0:
        for key in sorted(sizes, key=str):  # a stable turn order
            if left > 0 and quota[key] < sizes[key]:
                quota[key] += 1
                left -= 1
    picked: set[int] = set()
    for key, k in quota.items():
        rows, m = groups[key], sizes[key]
        picked.update(rows[min(m - 1, int((i + 0.5) * m / k))] for i in range(k))
    return picked


@dataclass
class CanaryPlan:
    """The canary rows and what the rest of the run would cost at worst."""

    rows: set[int] = field(default_factory=set)
    remaining_jobs: int = 0
    projected: dict[str, Decimal] = field(default_factory=dict)  # currency → worst-case cost of the rest

    def projected_text(self) -> str:
        return ", ".join(f"{amount} {currency}" for currency, amount in sorted(self.projected.items())) or "0"


@dataclass
class CanaryOutcome:
    """What the person deciding sees: the canary's results, the projected spend, the report."""

    jobs: int
    summary: RunSummary
    remaining_jobs: int
    projected: str
    report: str  # path of report.html written for the canary
    key: str = "canary"  # the approval's name (a deployment run's pause)

    def question(self) -> str:
        return f"Run the remaining {self.remaining_jobs} jobs (at most {self.projected})?"

    def markdown(self) -> str:
        totals = self.summary.totals
        cost = ", ".join(f"{a} {c}" for c, a in totals.total_cost.items()) or "0"
        return (
            f"**Canary: {self.jobs} jobs** — {totals.count('succeeded')} succeeded, "
            f"{totals.count('failed')} failed; {totals.images_stored} images stored, cost {cost}; "
            f"{totals.qa_flagged_images} images flagged by QA.\n\n"
            f"**The rest: {self.remaining_jobs} jobs, projected spend at most {self.projected}.**\n\n"
            f"Report: `{self.report}`"
        )


@dataclass
class QuoteApproval:
    """What the person deciding sees before the first call of a run whose quote is above
    ``--approve-above``: the jobs it would call (rows done already excluded) and their worst-case cost."""

    jobs: int
    projected: str  # worst-case cost of those jobs
    limit: str  # the --approve-above amount
    key: str = "approve-above"

    @property
    def remaining_jobs(self) -> int:
        return self.jobs

    def headline(self) -> str:
        return f"the quote {self.projected} for {self.jobs} jobs is above --approve-above {self.limit}"

    def question(self) -> str:
        return f"Run these {self.jobs} jobs (at most {self.projected})?"

    def markdown(self) -> str:
        return (
            f"**Approval needed before the first call: {self.jobs} jobs, projected spend at most "
            f"{self.projected}, above the {self.limit} that needs approval (--approve-above).**\n\n"
            "Nothing has been called yet."
        )


Question = CanaryOutcome | QuoteApproval  # what an approver is asked about


def answer_means_yes(answer: str | None) -> bool:
    """``y``/``yes`` (any case, surrounding blanks ignored) approves; anything else, or None (EOF), does not."""
    return answer is not None and answer.strip().lower() in ("y", "yes")
