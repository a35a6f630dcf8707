"""Unit prices per (region, model), the cost of a call, and the quote for a whole manifest.

All money is ``decimal.Decimal`` with its currency attached; nothing here ever uses floats, and
amounts in different currencies are never added together (a quote keeps one total per currency).

The built-in table is the seed document's list price. Prices change, so a user price file (JSON or
CSV with ``region, model, unit_price, currency``) can override or extend it; a model with no price
is refused (``UnknownPrice``), never guessed.

The API bills per *generated* image (``usage.image_count``), so ``cost = image_count × unit price``.
A quote prices the worst case: every requested image (``n`` per job) generated.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from qwenedit.errors import QwenEditError

# The regions the API serves these models from (see reference/dashscope-api.md §0), and the names
# people also write for them. Matching is case-insensitive.
REGION_ALIASES: dict[str, str] = {
    "singapore": "singapore",
    "intl": "singapore",
    "international": "singapore",
    "ap-southeast-1": "singapore",
    "beijing": "beijing",
    "cn": "beijing",
    "china": "beijing",
    "cn-beijing": "beijing",
}

_USD = "USD"
_PLUS_MODELS = ("qwen-image-edit-plus", "qwen-image-edit-plus-2025-10-30", "qwen-image-edit-plus-2025-12-15")

# USD list prices per generated image, from the seed document. Beijing is natively priced in CNY
# (0.2 and 0.3 CNY per image); the seed's $0.028671 and $0.043 are those CNY prices converted at
# ≈ 6.976 CNY/USD (reference/dashscope-api.md §6). Singapore's $0.03 / $0.045 are the list prices
# there. A user price file can restate Beijing in CNY (currency "CNY", 0.2 / 0.3) if that is how
# the account is billed.
_DEFAULT_ROWS: tuple[tuple[str, str, str, str], ...] = (
    *(("singapore", m, "0.03", _USD) for m in _PLUS_MODELS),
    ("singapore", "qwen-image-edit", "0.045", _USD),
    *(("beijing", m, "0.028671", _USD) for m in _PLUS_MODELS),
    ("beijing", "qwen-image-edit", "0.043", _USD),
)

_CURRENCY = re.compile(r"^[A-Z]{3}$")


class PricingError(QwenEditError):
    """Base class of pricing failures."""


class UnknownPrice(PricingError):
    """No unit price is known for this (region, model): refused rather than guessed."""


class PriceFileError(PricingError):
    """The user price file cannot be read or has an invalid entry."""


class MixedCurrencies(PricingError):
    """Amounts in different currencies were about to be added or compared."""


@dataclass(frozen=True)
class Price:
    """The price of one generated image."""

    amount: Decimal
    currency: str

    def __str__(self) -> str:
        return format_money(self.amount, self.currency)


def normalize_region(name: str) -> str:
    """The canonical region name for ``name`` (aliases and case folded); unknown names are returned
    lower-cased so the caller's error message can name them."""
    key = name.strip().lower()
    return REGION_ALIASES.get(key, key)


def normalize_model(name: str) -> str:
    """Model ids are lower-case on the API; accept any case in a manifest."""
    return name.strip().lower()


class PriceTable:
    """Unit prices keyed by (region, model)."""

    def __init__(self, prices: Mapping[tuple[str, str], Price]) -> None:
        self._prices = {(normalize_region(r), normalize_model(m)): p for (r, m), p in prices.items()}

    def unit_price(self, region: str, model: str) -> Price:
        """The price of one image of ``model`` in ``region``; raises ``UnknownPrice`` if none is known."""
        key = (normalize_region(region), normalize_model(model))
        try:
            return self._prices[key]
        except KeyError:
            raise UnknownPrice(
                f"no price known for model {key[1]!r} in region {key[0]!r}; "
                "add it with a --prices file (region, model, unit_price, currency)"
            ) from None

    def has(self, region: str, model: str) -> bool:
        """Whether a price is known for (region, model)."""
        return (normalize_region(region), normalize_model(model)) in self._prices

    def regions(self) -> list[str]:
        """Every region with at least one price, sorted."""
        return sorted({r for r, _ in self._prices})

    def models(self, region: str | None = None) -> list[str]:
        """Every priced model (in ``region`` if given), sorted."""
        wanted = None if region is None else normalize_region(region)
        return sorted({m for r, m in self._prices if wanted is None or r == wanted})

    def merged(self, overrides: PriceTable) -> PriceTable:
        """This table with ``overrides``' entries added or replacing ours."""
        return PriceTable({**self._prices, **overrides._prices})

    def items(self) -> Iterator[tuple[tuple[str, str], Price]]:
        """(region, model), price pairs in a stable order."""
        yield from sorted(self._prices.items())

    def __len__(self) -> int:
        return len(self._prices)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PriceTable) and self._prices == other._prices

    def __repr__(self) -> str:
        return f"PriceTable({len(self._prices)} prices)"


def default_prices() -> PriceTable:
    """The built-in list prices (USD)."""
    return PriceTable({(r, m): Price(Decimal(a), c) for r, m, a, c in _DEFAULT_ROWS})


def load_prices(path: str | Path | None) -> PriceTable:
    """The default table with the user's price file (JSON or CSV) merged over it.

    JSON: a list of ``{"region", "model", "unit_price", "currency"}`` objects (or ``{"prices": [...]}``);
    numbers are read as exact decimals. CSV: a header with those four column names.
    """
    table = default_prices()
    if path is None:
        return table
    return table.merged(read_price_file(path))


def read_price_file(path: str | Path) -> PriceTable:
    """Only the entries in a user price file; raises ``PriceFileError`` with the entry at fault."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise PriceFileError(f"price file {str(p)!r} does not exist") from None
    except IsADirectoryError:
        raise PriceFileError(f"price file {str(p)!r} is a directory") from None
    except UnicodeDecodeError:
        raise PriceFileError(f"price file {str(p)!r} is not UTF-8 text") from None
    except OSError as exc:
        raise PriceFileError(f"price file {str(p)!r} cannot be read: {exc.strerror}") from None
    stripped = text.lstrip()
    if stripped.startswith(("[", "{")) or p.suffix.lower() == ".json":
        entries = _json_entries(p, text)
    else:
        entries = _csv_entries(text)
    prices: dict[tuple[str, str], Price] = {}
    for where, entry in entries:
        key, price = _price_entry(p, where, entry)
        prices[key] = price
    if not prices:
        raise PriceFileError(f"price file {str(p)!r} has no prices")
    return PriceTable(prices)


def _json_entries(path: Path, text: str) -> list[tuple[str, Mapping[str, Any]]]:
    try:
        data = json.loads(text, parse_float=Decimal, parse_int=Decimal)
    except json.JSONDecodeError as exc:
        raise PriceFileError(
            f"price file {str(path)!r} is not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})"
        ) from None
    if isinstance(data, dict) and "prices" in data:
        data = data["prices"]
    if not isinstance(data, list):
        raise PriceFileError(
            f"price file {str(path)!r}: expected a JSON list of "
            '{"region", "model", "unit_price", "currency"} objects'
        )
    out: list[tuple[str, Mapping[str, Any]]] = []
    for i, entry in enumerate(data, start=1):
        if not isinstance(entry, dict):
            raise PriceFileError(f"price file {str(path)!r}, entry {i}: expected an object")
        out.append((f"entry {i}", entry))
    return out


def _csv_entries(text: str) -> list[tuple[str, Mapping[str, Any]]]:
    reader = csv.DictReader(text.splitlines())
    out: list[tuple[str, Mapping[str, Any]]] = []
    for row in reader:
        if not any((v or "").strip() for v in row.values() if isinstance(v, str)):
            continue
        out.append((f"line {reader.line_num}", row))
    return out


def _price_entry(path: Path, where: str, entry: Mapping[str, Any]) -> tuple[tuple[str, str], Price]:
    def fail(reason: str) -> PriceFileError:
        return PriceFileError(f"price file {str(path)!r}, {where}: {reason}")

    needed = ("region", "model", "unit_price", "currency")
    missing = [k for k in needed if not str(entry.get(k) or "").strip()]
    if missing:
        raise fail("missing " + ", ".join(missing) + " (needed: region, model, unit_price, currency)")
    raw_amount = entry["unit_price"]
    if isinstance(raw_amount, bool):
        raise fail(f"unit_price must be a number, got {raw_amount!r}")
    try:
        amount = Decimal(str(raw_amount).strip())
    except InvalidOperation:
        raise fail(f"unit_price must be a decimal number, got {str(raw_amount)!r}") from None
    if not amount.is_finite() or amount < 0:
        raise fail(f"unit_price must be a finite number ≥ 0, got {str(raw_amount)!r}")
    currency = str(entry["currency"]).strip().upper()
    if not _CURRENCY.match(currency):
        raise fail(f"currency must be a 3-letter code like USD or CNY, got {str(entry['currency'])!r}")
    region = normalize_region(str(entry["region"]))
    model = normalize_model(str(entry["model"]))
    return (region, model), Price(amount, currency)


def cost(image_count: int, price: Price) -> Decimal:
    """What ``image_count`` generated images cost at ``price`` (exact)."""
    return image_count * price.amount


def format_money(amount: Decimal, currency: str) -> str:
    """``$0.36`` for USD, ``0.2 CNY`` otherwise; never rounds (prices have up to 6 decimals)."""
    text = _plain(amount)
    if currency == _USD:
        return f"${text}"
    return f"{text} {currency}"


def _plain(amount: Decimal) -> str:
    # Fixed-point, no exponent, at least 2 decimals (``0.36``, ``0.086013``, ``12.00``).
    text = format(amount, "f")
    whole, _, frac = text.partition(".")
    return f"{whole}.{frac.ljust(2, '0')}"


def parse_money(text: str, default_currency: str = _USD) -> tuple[Decimal, str]:
    """``"50"``, ``"50 USD"``, ``"USD 50"``, ``"$50"`` or ``"12.5 CNY"`` → (amount, currency).

    Raises ``ValueError`` with a readable reason."""
    s = text.strip().replace(",", "")
    currency = default_currency
    if s.startswith("$"):
        s, currency = s[1:].strip(), _USD
    parts = s.split()
    if len(parts) == 2:
        if _CURRENCY.match(parts[0].upper()):
            currency, s = parts[0].upper(), parts[1]
        elif _CURRENCY.match(parts[1].upper()):
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

    def total(self, currency: str = _USD) -> Decimal:
        """The worst-case cost in ``currency``; raises ``MixedCurrencies`` if any cost is in another one."""
        totals = self.totals
        others = sorted(set(totals) - {currency})
        if others:
            raise MixedCurrencies(
                f"the quote has costs in {', '.join(others)}, which cannot be added to {currency}"
            )
        return totals.get(currency, Decimal(0))

    def fits(self, budget: Decimal | None, currency: str = _USD) -> bool:
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


def quote(jobs: Iterable[Any], prices: PriceTable) -> Quote:
    """The quote for anything with ``region``, ``model`` and ``n`` (e.g. ``Job``s)."""
    q = Quote()
    for job in jobs:
        q.add(job.region, job.model, job.n, prices.unit_price(job.region, job.model))
    return q
