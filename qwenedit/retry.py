"""One way to retry: transient failures only, capped exponential backoff with full jitter (tenacity).

Two retry layers exist in a run, and no more:

- **API calls** (``pipeline``): retried when the error taxonomy says ``retryable`` (network, 5xx,
  throttling). Every attempt takes a pacer permit first, so retries are paced like first tries.
- **Storage operations** (ledger records, output copies, report uploads): retried when
  ``errors.is_transient_storage_error`` says the failure is an outage (connection errors, 5xx,
  SlowDown, a copy whose source stalled) — for a minute or two, with the run's backoff. botocore's
  own retries stay at a few quick tries for single-request glitches (``storage.settings``); this
  layer rides out outages.

Anything else — a ``TypeError``, a 403, a missing bucket — is not retried: it fails the job at once
and its traceback reaches the log. ``RetryPolicy(attempts, base=0)`` makes every wait zero (tests).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from dataclasses import dataclass, field

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt

log = logging.getLogger("qwenedit.retry")


def backoff_delay(
    attempt: int, *, base: float = 1.0, cap: float = 30.0, rng: random.Random | None = None
) -> float:
    """Capped exponential backoff with full jitter: uniform in [0.5, 1] × min(cap, base·2^(attempt-1))."""
    ceiling = min(cap, base * 2 ** max(0, attempt - 1))
    return ceiling * (0.5 + 0.5 * (rng or random).random())


@dataclass(frozen=True)
class RetryPolicy:
    """How many tries and how long between them."""

    attempts: int
    base: float = 1.0
    cap: float = 30.0
    rng: random.Random = field(default_factory=random.Random, compare=False)

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed try number ``attempt`` (1-based)."""
        return backoff_delay(attempt, base=self.base, cap=self.cap, rng=self.rng)

    def retrying(
        self,
        retry_on: Callable[[BaseException], bool],
        *,
        describe: Callable[[], str] | None = None,
    ) -> AsyncRetrying:
        """A tenacity loop that retries exceptions ``retry_on`` accepts and re-raises the last one.

        ``describe`` names the operation in the log line of each retry.
        """

        def wait(state: RetryCallState) -> float:
            return self.delay(state.attempt_number)

        def before_sleep(state: RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome is not None else None
            what = describe() if describe is not None else "operation"
            log.info(
                "%s failed (try %d of %d): %s; retrying",
                what,
                state.attempt_number,
                self.attempts,
                type(exc).__name__,
            )

        return AsyncRetrying(
            stop=stop_after_attempt(self.attempts),
            wait=wait,
            retry=retry_if_exception(retry_on),
            before_sleep=before_sleep,
            reraise=True,
        )
