"""The rate pacer: one permit every ``1 / (margin × rps)`` seconds, first come first served.

The API allows ``rps`` requests in any one-second window per (account, model), counted where the
requests *arrive*. A token bucket would allow a burst after an idle spell; evenly spaced permits never
do, and they also keep the API's burst guard quiet. Spacing exactly ``1/rps`` apart is not enough:
the time from permit to arrival varies (body encoding, connection reuse), so two permits 0.5 s apart
can arrive 0.49 s apart and put three requests in one window. ``margin`` (default 0.98) widens the
spacing just enough to absorb that jitter while still delivering ≥ 0.97 × ``rps``.

Behaviour at the edges:

- **FIFO**: waiters are served in arrival order (``asyncio.Lock`` wakes waiters in order).
- **No burst**: after an idle spell the next permit is immediate and the one after waits a full
  interval; permits never "accumulate".
- **Cancellation**: a waiter cancelled while queued or sleeping consumes no slot.
- **Push-back**: ``penalize(seconds)`` (on a 429) delays every later permit by that much.
- **Send-time accounting**: ``mark_sent()`` (called when the request's first byte leaves) spaces the
  next permit from the real send time when a request left later than its permit.

Every attempt of every job takes a permit, retries included: the pacer is the only way to the API.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Awaitable, Callable

DEFAULT_MARGIN = 0.98


class Pacer:
    """Evenly spaced, FIFO permits at ``margin × rate`` per second."""

    def __init__(
        self,
        rate: float,
        *,
        margin: float = DEFAULT_MARGIN,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
    ) -> None:
        if rate <= 0:
            raise ValueError(f"rate must be positive, got {rate}")
        if not 0 < margin <= 1:
            raise ValueError(f"margin must be in (0, 1], got {margin}")
        self.rate = rate
        self.interval = 1.0 / (rate * margin)
        self._clock = clock
        self._sleep = sleep
        self._lock = asyncio.Lock()
        self._next = float("-inf")  # earliest time the next permit may be granted
        self.granted = 0

    async def acquire(self) -> float:
        """Wait for the next permit; returns the clock time at which it was granted."""
        async with self._lock:
            while True:
                wait = self._next - self._clock()
                if wait <= 0:
                    break
                await self._sleep(wait)  # loop again: penalize() may have moved _next meanwhile
            now = self._clock()
            self._next = now + self.interval
            self.granted += 1
            return now

    def mark_sent(self) -> None:
        """Send-time accounting: the request behind the last permit actually left now.

        A request that leaves late (a busy event loop, a slow body encode) would otherwise arrive
        closer than one interval to the next one; spacing the next permit from the real send time
        keeps the gap where the requests are counted.
        """
        self._next = max(self._next, self._clock() + self.interval)

    def penalize(self, seconds: float) -> None:
        """Hold back every later permit until ``seconds`` from now (e.g. after a 429)."""
        self._next = max(self._next, self._clock() + seconds)


def pacer_key(endpoint: str, api_key: str, model: str) -> tuple[str, str, str]:
    """The identity a rate limit applies to: endpoint, account (by key hash, never the key), model."""
    return (endpoint.rstrip("/"), hashlib.sha256(api_key.encode()).hexdigest()[:16], model)


class PacerPool:
    """One pacer per (endpoint, key, model), created on first use and shared by every job."""

    def __init__(self, rate: float, *, margin: float = DEFAULT_MARGIN) -> None:
        self.rate = rate
        self.margin = margin
        self._pacers: dict[tuple[str, str, str], Pacer] = {}

    def get(self, endpoint: str, api_key: str, model: str) -> Pacer:
        key = pacer_key(endpoint, api_key, model)
        pacer = self._pacers.get(key)
        if pacer is None:
            pacer = self._pacers[key] = Pacer(self.rate, margin=self.margin)
        return pacer
