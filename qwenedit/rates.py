"""The rate-limit option: the one place ``rates`` specs are read, and the one place a model's limit
for a run is decided.

Contract
--------
``RunOptions.rates`` (the CLI's repeatable ``--rps``, a deployment's ``rates`` parameter) is a tuple
of specs; each spec is one of

- ``RATE`` — every model, e.g. ``2`` (a bare number is per second), ``2/s``, ``2/min``, ``120/h``,
  ``0.5``, ``2 rpm``. ``RATE`` is read by ``RateLimit.parse``: a positive, finite count per period.
- ``MODEL=RATE`` — one model, overriding the every-model rate for it, e.g.
  ``qwen-image-edit-plus=1.5/s``. ``MODEL`` is a model id in any case, or its short name as the
  progress line prints it: ``plus``, ``max`` (``qwen-image-edit-`` + the name) and ``edit``
  (``qwen-image-edit``).

One string may also hold several specs separated by commas (``"2, max=2/min"``; a deployment's
``--param rates=...`` is one string); empty parts are ignored. Giving the same target two different
rates (``--rps 2 --rps 3``, or ``max=2/min`` and ``qwen-image-edit-max=3/min``) is an error, never "the
last one wins"; repeating the same rate is harmless. A bad spec raises ``ValueError`` whose text names
the spec and the reason.

A model's limit for a run (``model_limits``) is, first match wins: its own override, the every-model
rate, the model table's limit (``UnknownLimit`` for a model the table has no limit for: refused, never
guessed) — then multiplied by ``rate_share``, the fraction of the account's limits this run may use
(a shard of a run that shares an account gets a part). ``PacerPool`` is built from that function. An
override naming a model the table does not list is refused when the run opens: a typo (``mx=1/min``)
would otherwise leave that model at its table limit without a word.

Shards of one run that share an account each get a part of it as their ``rate_share``
(``qwenedit.shards.plan_shards``, from every model's own limit as ``model_limits`` gives it).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Protocol

from qwenedit.catalog import ModelTable, RateLimit, normalize_model
from qwenedit.errors import UnknownLimit

ModelLimit = Callable[[str], RateLimit]

_PREFIX = "qwen-image-edit"


class Limits(Protocol):
    """Anything that knows the models and their own limits (``qwenedit.catalog.ModelTable``)."""

    def knows(self, model: str) -> bool: ...

    def rate_limit(self, model: str) -> RateLimit: ...


@dataclass(frozen=True)
class Rates:
    """Parsed ``rates``: the every-model rate (``None``: each model's own) and per-model overrides."""

    every: RateLimit | None = None
    models: Mapping[str, RateLimit] = field(default_factory=dict)

    def override(self, model: str) -> RateLimit | None:
        """The rate the specs set for ``model`` (its own, else the every-model one), or None."""
        return self.models.get(normalize_model(model), self.every)


def model_name(text: str) -> str:
    """A model id from a spec: lower case; ``plus``/``max``/... are ``qwen-image-edit-plus``/..., ``edit``
    is ``qwen-image-edit``; anything starting with ``qwen`` is taken as it is."""
    name = normalize_model(text)
    if not name or name.startswith("qwen"):
        return name
    return _PREFIX if name == "edit" else f"{_PREFIX}-{name}"


def _specs(values: Iterable[object] | str | float | None) -> list[str]:
    if values is None:
        return []
    if isinstance(values, str | int | float):
        values = [values]
    out: list[str] = []
    for value in values:
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise ValueError(f"{value!r}: expected a rate like 2, 2/s, 2/min or MODEL=RATE")
        out.extend(part.strip() for part in str(value).split(",") if part.strip())
    return out


def parse_rates(values: Iterable[object] | str | float | None) -> Rates:
    """Specs (see the module contract) → ``Rates``. Raises ``ValueError`` naming the bad spec."""
    every: RateLimit | None = None
    models: dict[str, RateLimit] = {}
    for spec in _specs(values):
        target, sep, rate_text = spec.partition("=") if "=" in spec else ("", "", spec)
        model = model_name(target) if sep else None
        if sep and not model:
            raise ValueError(f"{spec!r}: expected MODEL=RATE, the model is empty")
        try:
            limit = RateLimit.parse(rate_text)
        except ValueError as exc:
            raise ValueError(f"{spec!r}: {exc}") from None
        before = every if model is None else models.get(model)
        if before is not None and before != limit:
            who = "every model" if model is None else model
            raise ValueError(f"{spec!r}: two rates for {who}: {before} and {limit}")
        if model is None:
            every = limit
        else:
            models[model] = limit
    return Rates(every, models)


def normalize_rates(values: Iterable[object] | str | float | None) -> tuple[str, ...]:
    """The specs as ``RunOptions.rates`` keeps them: checked, one spec per item, as written."""
    specs = _specs(values)
    parse_rates(specs)
    return tuple(specs)


def with_stated_limits(table: ModelTable, rates: Rates | Iterable[str] | str | None) -> ModelTable:
    """``table`` where a model it lists without a known limit gets the one its ``MODEL=RATE`` spec states.

    A model whose limit nobody published (the qwen-image-2.0 generation) is refused by validation and
    pacing until the user states one; a rate for every model (a bare ``2``) does not count as stating it.
    """
    parsed = rates if isinstance(rates, Rates) else parse_rates(rates)
    specs = table.specs()
    stated = {
        name: replace(specs[name], rate_limit=limit)
        for name, limit in parsed.models.items()
        if name in specs and specs[name].rate_limit is None
    }
    return table.merged(ModelTable({}, stated)) if stated else table


def scaled(limit: RateLimit, share: float) -> RateLimit:
    """``limit`` times ``share`` (same period): ``scaled(2/min, 0.5)`` is ``1/min``."""
    if not 0 < share <= 1:
        raise ValueError(f"a share of a rate limit must be in (0, 1], got {share}")
    return limit if share == 1 else RateLimit(limit.count * share, limit.period_s)


def model_limits(
    rates: Rates | Iterable[str] | str | None, table: Limits | None = None, share: float = 1.0
) -> ModelLimit:
    """model → the limit a run paces it at: its override, else the every-model rate, else ``table``'s
    limit (``UnknownLimit`` from the table if it has none), times ``share``. An override for a model
    ``table`` does not list (a typo: ``mx=1/min``) raises ``ValueError`` at once."""
    parsed = rates if isinstance(rates, Rates) else parse_rates(rates)
    scaled(RateLimit(1), share)  # refuse a bad share now, not at the first request
    unknown = sorted(m for m in parsed.models if table is not None and not table.knows(m))
    if unknown:
        raise ValueError(f"--rps names a model the model table does not list: {', '.join(unknown)}")

    def limit_of(model: str) -> RateLimit:
        limit = parsed.override(model)
        if limit is None:
            if table is None:
                raise UnknownLimit(f"no rate limit known for model {model!r}; refusing to guess")
            limit = table.rate_limit(normalize_model(model))
        return scaled(limit, share)

    return limit_of
