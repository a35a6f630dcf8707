"""The model table: the one source of what each image-edit model accepts, how fast it may be called,
and what it costs. Validation (``manifest/``), costing (``catalog/money.py``), pacing (``pacer.py``) and
the emulator (``emulator/config.py``) all read it.

Per model id (dated snapshots are rows of their own):

- ``max_n``: n may be 1..``max_n``;
- ``size``: a ``SizeRule`` (each side in [min, max] px — or, for the qwen-image-2.0 generation, the
  total pixels in [512*512, 2048*2048] — rounded by the API to a multiple of 16, and whether size is
  allowed only with n = 1), or ``None`` when the model takes no ``size``;
- ``prompt_limit``: the prompt length the model reads (the rest is silently dropped);
- ``prompt_extend``: whether the model accepts the ``prompt_extend`` parameter;
- ``rate_limit``: a ``RateLimit`` — a count per period (``2/s``, ``2/min``) per account and model;
- ``replaced_by``: for a legacy model (Model Studio lists qwen-image-edit, -plus and -max as "legacy
  image models" since September 2026), the current model that replaces it;
- unit prices per region (``Price``: a ``Decimal`` with its currency).

Where the built-in figures come from (``docs/dashscope-api.md``): n, size and
prompt_extend from §0/§1; limits from §4 "Rate limit" (identical in Beijing and Singapore); prices from
§6 and the seed document. Beijing is natively priced in CNY; like the seed, the table states it in USD
converted at the seed's own rate (CNY / 6.976): plus 0.2 CNY → $0.028671, edit 0.3 CNY → $0.043,
max 0.5 CNY → $0.071674. Singapore: plus $0.03, edit $0.045, max $0.075 (CNY 0.550443 / 7.3392).

The current generation (§0, §6): ``qwen-image-2.0`` (= ``-2026-03-03``) and ``qwen-image-2.0-pro``
(= ``-2026-04-22``; also ``-2026-03-03``, ``-2026-06-22``) edit through the same endpoint and request
shape; n 1–6; ``size`` is an area rule (512*512 ≤ W×H ≤ 2048*2048) and may be set with any n; the
prompt is read up to 1,300 characters. Prices: 2.0 CNY 0.2 in Beijing (→ $0.028671 at the seed's rate),
$0.035 in Singapore; 2.0-pro CNY 0.5 (→ $0.071674), $0.075. Their rate limits are not published in
our references (docs/dashscope-api.md §4 lists none): the table marks them unknown, so a run refuses
them until ``--rps MODEL=RATE`` or a ``rate_limit`` row in the price file states one.

A user file (the ``--prices`` file, JSON or CSV) overrides or extends the table; its rows are
``region, model, unit_price, currency`` as before, with two optional columns: ``rate_limit`` (``2/s``,
``2/min``, ``120/h`` or a bare number per second) and ``like`` (an existing model whose rules — n,
size, prompt_extend and rate limit — a new model copies). A row with only ``model`` and
``rate_limit`` changes a limit without touching any price (a raised quota). A new snapshot is one row.

Never guessed: a model with no known limit (``UnknownLimit``) or no price in a region
(``UnknownPrice``) is refused with a message that says how to add it. A model the table does not list
at all but that a user row prices gets the plus family's rules (every newer model on this endpoint
shares them) and still needs a limit.
"""

from __future__ import annotations

import csv
import json
import math
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from qwenedit.catalog.limits import (
    AREA_MAX_PIXELS,
    AREA_MIN_PIXELS,
    MAX_N,
    MAX_SIDE,
    MIN_SIDE,
    PROMPT_LIMIT,
    PROMPT_LIMIT_2_0,
    SIZE_MULTIPLE,
)
from qwenedit.catalog.money import CURRENCY_CODE, USD, Price
from qwenedit.catalog.names import normalize_model, normalize_region
from qwenedit.errors import PriceFileError, UnknownLimit, UnknownModel, UnknownPrice

# --- rate limits --------------------------------------------------------------------------------

_PERIODS = {
    "": 1.0,
    "s": 1.0,
    "sec": 1.0,
    "second": 1.0,
    "rps": 1.0,
    "m": 60.0,
    "min": 60.0,
    "minute": 60.0,
    "rpm": 60.0,
    "h": 3600.0,
    "hour": 3600.0,
}
_RATE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*(?:/\s*([a-z]+)|([a-z]*))\s*$", re.IGNORECASE)


@dataclass(frozen=True)
class RateLimit:
    """``count`` requests in any window of ``period_s`` seconds (per account and model)."""

    count: float
    period_s: float = 1.0

    def __post_init__(self) -> None:
        if not (self.count > 0 and math.isfinite(self.count)):
            raise ValueError(f"a rate limit needs a positive count, got {self.count!r}")
        if not (self.period_s > 0 and math.isfinite(self.period_s)):
            raise ValueError(f"a rate limit needs a positive period, got {self.period_s!r}")

    @classmethod
    def per_second(cls, rate: float) -> RateLimit:
        """``rate`` requests per second as a count per one second."""
        return cls(float(rate), 1.0)

    @classmethod
    def parse(cls, text: str | float | Decimal) -> RateLimit:
        """``"2"``, ``"2/s"``, ``"2/min"``, ``"120/h"``, ``"0.5"``, ``"2 rpm"`` (a bare number is per second)."""
        if isinstance(text, bool):
            raise ValueError(f"expected a rate like 2/s or 2/min, got {text!r}")
        if isinstance(text, int | float | Decimal):
            return cls.per_second(float(text))
        m = _RATE.match(text)
        unit = ((m.group(2) or m.group(3) or "") if m else "").lower()
        if m is None or unit not in _PERIODS:
            raise ValueError(f"expected a rate like 2/s, 2/min or 120/h, got {text!r}")
        return cls(float(m.group(1)), _PERIODS[unit])

    @property
    def rate(self) -> float:
        """Requests per second on average."""
        return self.count / self.period_s

    @property
    def interval_s(self) -> float:
        """The even spacing that delivers exactly the limit: ``period_s / count``."""
        return self.period_s / self.count

    def __str__(self) -> str:
        count = f"{self.count:g}"
        for name, seconds in (("s", 1.0), ("min", 60.0), ("h", 3600.0)):
            if self.period_s == seconds:
                return f"{count}/{name}"
        return f"{count}/{self.period_s:g}s"


def parse_rate(text: str | float) -> RateLimit:
    """``RateLimit.parse`` as a function."""
    return RateLimit.parse(text)


# --- model rules --------------------------------------------------------------------------------


@dataclass(frozen=True)
class SizeRule:
    """What ``size`` (``"W*H"``) a model accepts."""

    min_side: int = MIN_SIDE
    max_side: int = MAX_SIDE
    multiple: int = SIZE_MULTIPLE  # the API rounds each side to the nearest multiple
    only_with_n1: bool = True  # the Dec-2025 docs: "size may only be set when n = 1"
    # An area rule (the qwen-image-2.0 generation): total pixels in [min_pixels, max_pixels] instead of
    # each side in [min_side, max_side].
    min_pixels: int | None = None
    max_pixels: int | None = None

    def refusal(self, width: int, height: int) -> str | None:
        """Why ``width*height`` is not an accepted size, or None."""
        if self.min_pixels is not None and self.max_pixels is not None:
            if width <= 0 or height <= 0 or not self.min_pixels <= width * height <= self.max_pixels:
                return (
                    f"total pixels must be {_area(self.min_pixels)}–{_area(self.max_pixels)} "
                    f"(width × height), got {width}*{height} = {width * height:,}"
                )
            return None
        if not (self.min_side <= width <= self.max_side and self.min_side <= height <= self.max_side):
            return f"each side must be {self.min_side}–{self.max_side} px, got {width}*{height}"
        return None


def _area(pixels: int) -> str:
    side = math.isqrt(pixels)
    return f"{side}*{side}" if side * side == pixels else f"{pixels:,} px"


@dataclass(frozen=True)
class ModelSpec:
    """Rules and limit of one model id (its prices live in the ``ModelTable``, per region)."""

    name: str
    max_n: int = MAX_N
    size: SizeRule | None = SizeRule()
    prompt_extend: bool = True
    rate_limit: RateLimit | None = None
    prompt_limit: int = PROMPT_LIMIT
    replaced_by: str | None = None  # a legacy model: the current model that replaces it

    @property
    def single_image(self) -> bool:
        """True for models that make one image per call (n must be 1)."""
        return self.max_n == 1


_PLUS_SIZE = SizeRule()
# The Feb-2026 docs' own curl example sends qwen-image-edit-max with n = 2 and a size [C].
_MAX_SIZE = SizeRule(only_with_n1=False)
_AREA_SIZE = SizeRule(only_with_n1=False, min_pixels=AREA_MIN_PIXELS, max_pixels=AREA_MAX_PIXELS)
_PER_SECOND = RateLimit(2, 1.0)
_PER_MINUTE = RateLimit(2, 60.0)
_NEW = "qwen-image-2.0"
_NEW_PRO = "qwen-image-2.0-pro"

# docs/dashscope-api.md §0, §4, §6. Beijing in USD at the seed's rate (CNY / 6.976), see the docstring.
_PLUS_PRICES = {"singapore": ("0.03", USD), "beijing": ("0.028671", USD)}
_EDIT_PRICES = {"singapore": ("0.045", USD), "beijing": ("0.043", USD)}
_MAX_PRICES = {"singapore": ("0.075", USD), "beijing": ("0.071674", USD)}
_NEW_PRICES = {"singapore": ("0.035", USD), "beijing": ("0.028671", USD)}
_NEW_PRO_PRICES = {"singapore": ("0.075", USD), "beijing": ("0.071674", USD)}


def _legacy(name: str, size: SizeRule | None, limit: RateLimit, by: str, max_n: int = MAX_N) -> ModelSpec:
    return ModelSpec(name, max_n, size, size is not None, limit, replaced_by=by)


def _current(name: str) -> ModelSpec:
    return ModelSpec(name, MAX_N, _AREA_SIZE, True, None, prompt_limit=PROMPT_LIMIT_2_0)


_BUILTIN: tuple[tuple[ModelSpec, dict[str, tuple[str, str]]], ...] = (
    (_legacy("qwen-image-edit-max", _MAX_SIZE, _PER_MINUTE, _NEW_PRO), _MAX_PRICES),
    (_legacy("qwen-image-edit-max-2026-01-16", _MAX_SIZE, _PER_MINUTE, _NEW_PRO), _MAX_PRICES),
    (_legacy("qwen-image-edit-plus", _PLUS_SIZE, _PER_SECOND, _NEW), _PLUS_PRICES),
    (_legacy("qwen-image-edit-plus-2025-10-30", _PLUS_SIZE, _PER_SECOND, _NEW), _PLUS_PRICES),
    (_legacy("qwen-image-edit-plus-2025-12-15", _PLUS_SIZE, _PER_SECOND, _NEW), _PLUS_PRICES),
    (_legacy("qwen-image-edit", None, _PER_SECOND, _NEW, max_n=1), _EDIT_PRICES),
    (_current(_NEW), _NEW_PRICES),
    (_current("qwen-image-2.0-2026-03-03"), _NEW_PRICES),
    (_current(_NEW_PRO), _NEW_PRO_PRICES),
    (_current("qwen-image-2.0-pro-2026-03-03"), _NEW_PRO_PRICES),
    (_current("qwen-image-2.0-pro-2026-04-22"), _NEW_PRO_PRICES),
    (_current("qwen-image-2.0-pro-2026-06-22"), _NEW_PRO_PRICES),
)


class ModelTable:
    """Per model: its ``ModelSpec``; per (region, model): its unit ``Price``.

    ``ModelTable(prices)`` takes the built-in rules and limits for the models it knows; ``specs``
    replaces them. ``merged`` lays another table over this one.
    """

    def __init__(
        self,
        prices: Mapping[tuple[str, str], Price] | None = None,
        specs: Mapping[str, ModelSpec] | None = None,
    ) -> None:
        self._prices = {(normalize_region(r), normalize_model(m)): p for (r, m), p in (prices or {}).items()}
        base = _builtin_specs() if specs is None else {normalize_model(k): v for k, v in specs.items()}
        self._specs: dict[str, ModelSpec] = dict(base)
        # Rules nobody stated for this table (built-in defaults, or the plus family's rules without a
        # limit for a priced but unlisted model): ``merged`` lets the other table's rules win over them.
        self._placeholders: set[str] = set(base) if specs is None else set()
        for _, model in self._prices:
            if model not in self._specs:
                self._specs[model] = ModelSpec(model)
                self._placeholders.add(model)

    # -- prices --

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

    def items(self) -> Iterator[tuple[tuple[str, str], Price]]:
        """(region, model), price pairs in a stable order."""
        yield from sorted(self._prices.items())

    # -- rules and limits --

    def spec(self, model: str) -> ModelSpec:
        """The rules of ``model``; raises ``UnknownModel`` if the table does not list it."""
        name = normalize_model(model)
        try:
            return self._specs[name]
        except KeyError:
            known = ", ".join(sorted(self._specs))
            raise UnknownModel(f"unknown model {name!r}; known: {known}") from None

    def knows(self, model: str) -> bool:
        """Whether the table lists ``model`` (priced or not)."""
        return normalize_model(model) in self._specs

    def rate_limit(self, model: str) -> RateLimit:
        """The limit of ``model``; raises ``UnknownLimit`` (never a guess) if none is known."""
        name = normalize_model(model)
        spec = self._specs.get(name)
        if spec is None or spec.rate_limit is None:
            raise UnknownLimit(
                f"no rate limit known for model {name!r}; refusing to guess: add a rate_limit "
                "(e.g. 2/s or 2/min) to its row in the --prices file"
            )
        return spec.rate_limit

    def limits(self) -> dict[str, RateLimit]:
        """Every model with a known limit → its limit."""
        return {m: s.rate_limit for m, s in sorted(self._specs.items()) if s.rate_limit is not None}

    def legacy_notices(self, models: Iterable[str]) -> list[str]:
        """One line per legacy model among ``models``, naming the current model that replaces it."""
        notes = []
        for name in sorted({normalize_model(m) for m in models}):
            spec = self._specs.get(name)
            if spec is not None and spec.replaced_by:
                notes.append(
                    f"{name} is a legacy model (Model Studio, September 2026); "
                    f"the current model that replaces it is {spec.replaced_by}"
                )
        return notes

    def specs(self) -> dict[str, ModelSpec]:
        """Every listed model → its rules, sorted by name."""
        return dict(sorted(self._specs.items()))

    # -- composition --

    def merged(self, overrides: ModelTable) -> ModelTable:
        """This table with ``overrides``' prices and rules added or replacing ours.

        A model ``overrides`` lists only because it prices it (rules defaulted, no limit) keeps our
        rules and limit if we know the model."""
        specs = dict(self._specs)
        placeholders = set(self._placeholders)
        for name, spec in overrides._specs.items():
            if name in overrides._placeholders:
                if name in specs:
                    continue
                placeholders.add(name)
            else:
                placeholders.discard(name)
            specs[name] = spec
        table = type(self)({}, specs)
        table._prices = {**self._prices, **overrides._prices}
        table._placeholders = placeholders
        return table

    def __len__(self) -> int:
        return len(self._prices)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ModelTable) and self._prices == other._prices and self._specs == other._specs

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({len(self._specs)} models, {len(self._prices)} prices)"


def _builtin_specs() -> dict[str, ModelSpec]:
    return {spec.name: spec for spec, _ in _BUILTIN}


def builtin_models() -> ModelTable:
    """The built-in table: every documented model's rules, limit and list prices (see the docstring)."""
    prices = {
        (region, spec.name): Price(Decimal(amount), currency)
        for spec, by_region in _BUILTIN
        for region, (amount, currency) in by_region.items()
    }
    return ModelTable(prices, _builtin_specs())


def load_models(path: str | Path | None) -> ModelTable:
    """The built-in table with the user's file (JSON or CSV) merged over it (``None``: built-in only)."""
    table = builtin_models()
    if path is None:
        return table
    return table.merged(read_model_file(path, base=table))


# --- the user file --------------------------------------------------------------------------------


def read_model_file(path: str | Path, *, base: ModelTable | None = None) -> ModelTable:
    """Only the entries of a user price/model file; ``PriceFileError`` names the entry at fault.

    ``base`` is the table ``like`` refers to (default: the built-in one, plus the file's own rows)."""
    p = Path(path)
    text = _read_text(p)
    stripped = text.lstrip()
    if stripped.startswith(("[", "{")) or p.suffix.lower() == ".json":
        entries = _json_entries(p, text)
    else:
        entries = _csv_entries(text)
    base = base or builtin_models()
    prices: dict[tuple[str, str], Price] = {}
    specs: dict[str, ModelSpec] = {}
    limits: dict[str, tuple[RateLimit, str]] = {}
    for where, entry in entries:
        _read_entry(p, where, entry, base, prices, specs, limits)
    if not prices and not specs:
        raise PriceFileError(f"price file {str(p)!r} has no prices")
    # Priced models without a rule row become placeholders, which ``merged`` lets the base's rules win.
    return ModelTable(prices, specs)


def _read_text(p: Path) -> str:
    try:
        return p.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise PriceFileError(f"price file {str(p)!r} does not exist") from None
    except IsADirectoryError:
        raise PriceFileError(f"price file {str(p)!r} is a directory") from None
    except UnicodeDecodeError:
        raise PriceFileError(f"price file {str(p)!r} is not UTF-8 text") from None
    except OSError as exc:
        raise PriceFileError(f"price file {str(p)!r} cannot be read: {exc.strerror}") from None


def _json_entries(path: Path, text: str) -> list[tuple[str, Mapping[str, Any]]]:
    try:
        data = json.loads(text, parse_float=Decimal, parse_int=Decimal)
    except json.JSONDecodeError as exc:
        raise PriceFileError(
            f"price file {str(path)!r} is not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})"
        ) from None
    if isinstance(data, dict) and ("prices" in data or "models" in data):
        data = [*(data.get("prices") or []), *(data.get("models") or [])]
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


def _cell(entry: Mapping[str, Any], key: str) -> str:
    value = entry.get(key)
    return "" if value is None else str(value).strip()


def _read_entry(
    path: Path,
    where: str,
    entry: Mapping[str, Any],
    base: ModelTable,
    prices: dict[tuple[str, str], Price],
    specs: dict[str, ModelSpec],
    limits: dict[str, tuple[RateLimit, str]],
) -> None:
    def fail(reason: str) -> PriceFileError:
        return PriceFileError(f"price file {str(path)!r}, {where}: {reason}")

    price_keys = ("region", "unit_price", "currency")
    limit_text, like_text = _cell(entry, "rate_limit"), _cell(entry, "like")
    price_row = any(_cell(entry, k) for k in price_keys) or not (limit_text or like_text)
    if not _cell(entry, "model") or price_row:
        needed = ("region", "model", "unit_price", "currency")
        missing = [k for k in needed if not _cell(entry, k)]
        if missing:
            raise fail("missing " + ", ".join(missing) + " (needed: region, model, unit_price, currency)")
    model = normalize_model(_cell(entry, "model"))

    if price_row:
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
        if not CURRENCY_CODE.match(currency):
            raise fail(f"currency must be a 3-letter code like USD or CNY, got {str(entry['currency'])!r}")
        prices[(normalize_region(str(entry["region"])), model)] = Price(amount, currency)

    if not (limit_text or like_text):
        return
    if like_text:
        like = normalize_model(like_text)
        source = specs.get(like) or (base.spec(like) if base.knows(like) else None)
        if source is None:
            raise fail(f"like names an unknown model {like_text!r}; known: {', '.join(sorted(base.specs()))}")
        spec = replace(source, name=model)
    else:
        spec = specs.get(model) or (base.spec(model) if base.knows(model) else ModelSpec(model))
    if limit_text:
        try:
            raw = entry["rate_limit"]
            limit = RateLimit.parse(raw if isinstance(raw, Decimal | int | float) else limit_text)
        except ValueError as exc:
            raise fail(f"rate_limit: {exc}") from None
        earlier = limits.get(model)
        if earlier is not None and earlier[0] != limit:
            raise fail(f"rate_limit {limit} for {model} contradicts {earlier[0]} at {earlier[1]}")
        limits[model] = (limit, where)
        spec = replace(spec, rate_limit=limit)
    specs[model] = spec
