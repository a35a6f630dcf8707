"""The catalog: what each model accepts, how fast it may be called, what it costs, and the API's limits.

=============  =========================================================================================
Module         What it holds
=============  =========================================================================================
``names``      canonical region and model names (``normalize_region``, ``normalize_model``)
``limits``     the API's documented per-request limits (images, n, prompt length, sizes, bytes)
``money``      ``Price``, ``cost``, ``Quote``, ``format_money``, ``parse_money``: exact decimal money
``models``     ``ModelTable`` (rules, rate limit and prices per model), ``RateLimit``, the user price file
=============  =========================================================================================

The errors (``UnknownModel``, ``UnknownLimit``, ``PricingError`` and its kin) live in
:mod:`qwenedit.errors`. Import the names from here; the modules import each other only downwards
(``models`` → ``money`` → ``names``).
"""

from __future__ import annotations

from qwenedit.catalog.models import (
    ModelSpec,
    ModelTable,
    RateLimit,
    SizeRule,
    builtin_models,
    load_models,
    parse_rate,
    read_model_file,
)
from qwenedit.catalog.money import (
    USD,
    Price,
    Quote,
    QuoteLine,
    UnitPrices,
    cost,
    format_money,
    parse_money,
    quote,
)
from qwenedit.catalog.names import REGION_ALIASES, normalize_model, normalize_region

__all__ = [
    "REGION_ALIASES",
    "USD",
    "ModelSpec",
    "ModelTable",
    "Price",
    "Quote",
    "QuoteLine",
    "RateLimit",
    "SizeRule",
    "UnitPrices",
    "builtin_models",
    "cost",
    "format_money",
    "load_models",
    "normalize_model",
    "normalize_region",
    "parse_money",
    "parse_rate",
    "quote",
    "read_model_file",
]
