"""The spend guard of a run: charged + possibly charged + worst case in flight never exceeds the limit.

A budget has one currency. Every amount it is given must be in that currency: a job priced in CNY
cannot be weighed against a USD budget, so the run layer refuses such a run before it starts
(``check_currencies``) and ``Budget`` raises ``MixedCurrencies`` rather than add unlike amounts.
"""

from __future__ import annotations

from collections.abc import Iterable
from decimal import Decimal

from qwenedit.errors import MixedCurrencies


class Budget:
    """``try_reserve`` before a call, ``release`` after it, ``charge`` what it cost."""

    def __init__(self, limit: Decimal | None, currency: str = "USD") -> None:
        self.limit = limit
        self.currency = currency
        self.charged = Decimal(0)
        self.possibly_charged = Decimal(0)
        self.reserved = Decimal(0)
        self.exhausted = False

    def _same(self, currency: str) -> None:
        if self.limit is not None and currency != self.currency:
            raise MixedCurrencies(f"a {currency} amount cannot count against a budget in {self.currency}")

    def try_reserve(self, amount: Decimal, currency: str) -> bool:
        """Hold ``amount`` for a call about to start; False (and ``exhausted``) if it could overspend."""
        self._same(currency)
        if (
            self.limit is not None
            and self.charged + self.possibly_charged + self.reserved + amount > self.limit
        ):
            self.exhausted = True
            return False
        self.reserved += amount
        return True

    def release(self, amount: Decimal) -> None:
        """The call holding ``amount`` has ended (its real cost is given to ``charge``)."""
        self.reserved -= amount

    def charge(self, amount: Decimal, currency: str) -> None:
        self._same(currency)
        self.charged += amount

    def possibly_charge(self, amount: Decimal, currency: str) -> None:
        """A call whose answer was lost may have cost ``amount``: count it as spent (worst case)."""
        self._same(currency)
        self.possibly_charged += amount

    def describe(self) -> str | None:
        return None if self.limit is None else f"{self.limit} {self.currency}"


def check_currencies(budget_currency: str, priced_in: Iterable[str]) -> None:
    """Refuse a budget whose currency differs from a currency the manifest's jobs are priced in."""
    others = sorted({c for c in priced_in if c != budget_currency})
    if others:
        raise MixedCurrencies(
            f"the budget is in {budget_currency} but jobs of this manifest are priced in {', '.join(others)}; "
            f"give the budget in that currency (e.g. --budget '50 {others[0]}') or use one price currency"
        )
