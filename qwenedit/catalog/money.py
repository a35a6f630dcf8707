"""Money: the price of one image, the cost of a call, the quote for a whole manifest, amounts as text.

All money is ``decimal.Decimal`` with its currency attached; nothing here ever uses floats, and
amounts in different currencies are never added together (a quote keeps one total per currency).

The unit prices live in the one model table (``catalog/models.py``, which also holds each model's
rules and rate limit). The built-in prices are the seed document's list prices (Max from
docs/dashscope-api.md §6). Prices change, so a user price file (JSON or CSV with ``region, model,
unit_price, currency``, optionally ``rate_limit`` and ``like``) can override or extend it; a model with
no price is refused (``UnknownPrice``), never guessed.

The API bills per *generated* image (``usage.image_count``), so ``cost = image_count × unit price``.
A quote prices the worst case: every requested image (``n`` per job) generated.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any, Protocol

from qwenedit.catalog.names import normalize_model, normalize_region
from qwenedit.errors import MixedCurrencies, PricingError

USD = "USD"
CURRENCY_CODE = re.compile(r"^[A-Z]{3}$")
"""A currency as the catalog accepts it: three capital letters (USD, CNY)."""


@dataclass(frozen=True)
class Price:
    """The price of one generated image."""

    amount: Decimal
    currency: str

    def __str__(self) -> str:
        return format_money(self.amount, self.currency)


class UnitPrices(Protocol):
    """Anything that prices one image of a model in a region (``catalog.models.ModelTable``)."""

    def unit_price(self, region: str, model: str) -> Price: ...


def cost(image_count: int, price: Price) -> Decimal:
    """What ``image_count`` generated images cost at ``price`` (exact)."""
    return image_count * price.amount


def format_money(amount: Decimal, currency: str) -> str:
    """``$0.36`` for USD, ``0.2 CNY`` otherwise; never rounds (prices have up to 6 decimals)."""
    text = _plain(amount)
    if currency == USD:
        return f"${text}"
    return f"{text} {currency}"


def _plain(amount: Decimal) -> str:
    # Fixed-point, no exponent, at least 2 decimals (``0.36``, ``0.086013``, ``12.00``).
    text = format(amount, "f")
    whole, _, frac = text.partition(".")
    return f"{whole}.{frac.ljust(2, '0')}"


def parse_money(text: str, default_currency: str = USD) -> tuple[Decimal, str]:
    """``"50"``, ``"50 USD"``, ``"USD 50"``, ``"$50"`` or ``"12.5 CNY"`` → (amount, currency).

    Raises ``ValueError`` with a readable reason."""
    s = text.strip().replace(",", "")
    currency = default_currency
    if s.startswith("$"):
        s, currency = s[1:].strip(), USD
    parts = s.split()
    if len(parts) == 2:
        if CURRENCY_CODE.match(parts[0].upper()):
            currency, s = parts[0].upper(), parts[1]
        elif CURRENCY_CODE.match(parts[1].upper()):
            s, currency = parts[0], parts[1].upper()
        else:
            raise ValueError(f"expected an amount like 50 or 50 USD, got {text!r}")
    elif len(parts) != 1:
        raise ValueError(f"expected an amount like 50 or 50 USD, got {text!r}")
    else:
        s = parts[0]
    try:
        amount = Decimal(s)
    except InvalidOperation:
        raise ValueError(f"expected an amount like 50 or 50 USD, got {text!r}") from None
    if not amount.is_finite() or amount < 0:
        raise ValueError(f"must be a number ≥ 0, got {text!r}")
    return amount, currency


@dataclass(frozen=True)
class QuoteLine:
    """One (region, model) group of a quote."""

    region: str
    model: str
    price: Price
    jobs: int
    images: int

    @property
    def cost(self) -> Decimal:
        return cost(self.images, self.price)


class Quote:
    """What a set of jobs costs if every requested image is generated, per (region, model).

    Build it with ``add`` one job at a time (constant memory: one counter per group).
    """

    def __init__(self) -> None:
        self._groups: dict[tuple[str, str], list[Any]] = {}  # key → [price, jobs, images]

    def add(self, region: str, model: str, images: int, price: Price) -> None:
        """Count one job asking for ``images`` images of ``model`` in ``region`` at ``price``."""
        key = (normalize_region(region), normalize_model(model))
        group = self._groups.get(key)
        if group is None:
            self._groups[key] = [price, 1, images]
            return
        if group[0] != price:
            raise PricingError(f"two different prices for {key[1]} in {key[0]}: {group[0]} and {price}")
        group[1] += 1
        group[2] += images

    @property
    def lines(self) -> list[QuoteLine]:
        """One line per (region, model), sorted."""
        return [QuoteLine(r, m, g[0], g[1], g[2]) for (r, m), g in sorted(self._groups.items())]

    @property
    def jobs(self) -> int:
        return sum(g[1] for g in self._groups.values())

    @property
    def images(self) -> int:
        return sum(g[2] for g in self._groups.values())

    @property
    def totals(self) -> dict[str, Decimal]:
        """Worst-case cost per currency (never summed across currencies)."""
        out: dict[str, Decimal] = {}
        for line in self.lines:
            out[line.price.currency] = out.get(line.price.currency, Decimal(0)) + line.cost
        return out

    @property
    def currencies(self) -> list[str]:
        return sorted(self.totals)

    def total(self, currency: str = USD) -> Decimal:
        """The worst-case cost in ``currency``; raises ``MixedCurrencies`` if any cost is in another one."""
        totals = self.totals
        others = sorted(set(totals) - {currency})
        if others:
            raise MixedCurrencies(
                f"the quote has costs in {', '.join(others)}, which cannot be added to {currency}"
            )
        return totals.get(currency, Decimal(0))

    def fits(self, budget: Decimal | None, currency: str = USD) -> bool:
        """Whether the worst case is within ``budget`` (always true without one)."""
        if budget is None:
            return True
        return self.total(currency) <= budget

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready form; amounts as exact decimal strings."""
        return {
            "jobs": self.jobs,
            "images": self.images,
            "lines": [
                {
                    "region": ln.region,
                    "model": ln.model,
                    "jobs": ln.jobs,
                    "images": ln.images,
                    "unit_price": str(ln.price.amount),
                    "currency": ln.price.currency,
                    "cost": str(ln.cost),
                }
                for ln in self.lines
            ],
            "totals": {c: str(a) for c, a in self.totals.items()},
        }


def quote(jobs: Iterable[Any], prices: UnitPrices) -> Quote:
    """The quote for anything with ``region``, ``model`` and ``n`` (e.g. ``Job``s)."""
    q = Quote()
    for job in jobs:
        q.add(job.region, job.model, job.n, prices.unit_price(job.region, job.model))
    return q
