"""The spend guard of a run: charged + possibly charged + worst case in flight never exceeds the limit.

A budget has one currency. Every amount it is given must be in that currency: a job priced in CNY
cannot be weighed against a USD budget, so the run layer refuses such a run before it starts
(``check_currencies``) and ``Budget`` raises ``MixedCurrencies`` rather than add unlike amounts.

With spend caps shared by runs (``--daily-budget``, ``--monthly-budget``), the budget also has a
``shared`` guard (``qwenedit.spend.SpendGuard``): ``reserve`` then holds the amount against the run's
own limit *and* makes sure the blocks the run holds on the spend ledger cover its charged + possibly
charged + reserved worst case (taking a new block from the ledger when they do not). Once the shared
caps refuse, every later reservation is refused: the run starts no new call.
"""

from __future__ import annotations

from collections.abc import Iterable
from decimal import Decimal
from typing import TYPE_CHECKING

from qwenedit.errors import MixedCurrencies

if TYPE_CHECKING:
    from qwenedit.spend import CapReached, Caps, SpendGuard


class Budget:
    """``reserve`` (or ``try_reserve``, without shared caps) before a call, ``release`` after it,
    ``charge`` what it cost."""

    def __init__(
        self, limit: Decimal | None, currency: str = "USD", shared: SpendGuard | None = None
    ) -> None:
        self.limit = limit
        self.currency = currency
        self.shared = shared
        self.charged = Decimal(0)
        self.possibly_charged = Decimal(0)
        self.reserved = Decimal(0)
        self.exhausted = False

    def _same(self, currency: str) -> None:
        if (self.limit is not None or self.shared is not None) and currency != self.currency:
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

    async def reserve(self, amount: Decimal, currency: str) -> bool:
        """``try_reserve``, and with shared caps the blocks held on the spend ledger must cover it too
        (a new block is taken from the ledger when they do not); False if either refuses."""
        if self.shared is None:
            return self.try_reserve(amount, currency)
        if not self.try_reserve(amount, currency):  # the run's own budget refuses: the ledger is not asked
            return False
        self.reserved -= amount  # granted again below, under the guard's lock, once blocks cover it
        return await self.shared.cover(
            lambda: self.outstanding() + amount, amount, lambda: self.try_reserve(amount, currency)
        )

    async def still_fits(self) -> bool:
        """After a lost answer (counted as possibly charged while its call's reservation still holds the
        retry): whether the run's spend still fits its budget and the shared caps (taking a block if the
        held ones no longer cover it). False (and ``exhausted`` or the cap) if the retry could overspend."""
        if self.limit is not None and self.outstanding() > self.limit:
            self.exhausted = True
            return False
        if self.shared is None:
            return True
        return await self.shared.cover(self.outstanding, Decimal(0), lambda: True)

    def outstanding(self) -> Decimal:
        """Charged + possibly charged + reserved: what the run may have spent once its open calls end."""
        return self.charged + self.possibly_charged + self.reserved

    @property
    def cap_reached(self) -> CapReached | None:
        """The shared spend cap that stopped the run, if one did."""
        return None if self.shared is None else self.shared.reached

    def spend_cap_stop(self) -> dict[str, str] | None:
        """The run's ``stopped_by`` when the shared caps stopped it: ``cause`` ``spend_cap``, the cap, its
        limit and period, and a ``message`` (also as ``reason``) naming it, or why the spend ledger could not
        be used."""
        if self.shared is None or not self.shared.stopped:
            return None
        if self.shared.reached is not None:
            reached = self.shared.reached.to_dict()
            return {"cause": "spend_cap", "reason": reached["message"], **reached}
        message = f"spend ledger could not be used: {self.shared.failure}"
        return {"cause": "spend_cap", "reason": message, "message": message}

    def refusal(self) -> str:
        """Why a call was not started: the shared caps' reason, else the run's own budget."""
        if self.shared is not None and self.shared.stopped:
            return self.shared.refusal()
        return f"not started: it could take the spend over the budget {self.describe()}"

    def release(self, amount: Decimal) -> None:
        """The call holding ``amount`` has ended (its real cost is given to ``charge``)."""
        self.reserved -= amount

    def charge(self, amount: Decimal, currency: str, model: str | None = None) -> None:
        self._same(currency)
        self.charged += amount
        if self.shared is not None:
            self.shared.note(model, amount)

    def possibly_charge(self, amount: Decimal, currency: str, model: str | None = None) -> None:
        """A call whose answer was lost may have cost ``amount``: count it as spent (worst case)."""
        self._same(currency)
        self.possibly_charged += amount
        if self.shared is not None:
            self.shared.note(model, amount, possibly=True)

    def describe(self) -> str | None:
        return None if self.limit is None else f"{self.limit} {self.currency}"


def check_guards(budget: tuple[Decimal, str] | None, caps: Caps, priced_in: Iterable[str]) -> None:
    """The run's budget and the shared spend caps must be in the currency of the manifest's prices."""
    priced_in = list(priced_in)
    if budget is not None:
        check_currencies(budget[1], priced_in)
    if caps.active:
        check_currencies(caps.currency, priced_in)
        if budget is not None and budget[1] != caps.currency:
            raise MixedCurrencies(
                f"the budget is in {budget[1]} but the daily/monthly budgets are in {caps.currency}: use one currency"
            )


def check_currencies(budget_currency: str, priced_in: Iterable[str]) -> None:
    """Refuse a budget whose currency differs from a currency the manifest's jobs are priced in."""
    others = sorted({c for c in priced_in if c != budget_currency})
    if others:
        raise MixedCurrencies(
            f"the budget is in {budget_currency} but jobs of this manifest are priced in {', '.join(others)}; "
            f"give the budget in that currency (e.g. --budget '50 {others[0]}') or use one price currency"
        )
