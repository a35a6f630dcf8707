"""The rate pacer: evenly spaced, first-come-first-served permits at a model's own limit, with a
spacing that adapts to the throttling answers it gets.

Contract
--------
A limit is a count per period (``RateLimit``: 2/s, 2/min), counted by the API where requests *arrive*,
per (account, model): never more than ``count`` arrivals in any window of ``period_s``. Permits are
spaced evenly ``interval = (period_s + guard_s) / count`` apart, so any ``count + 1`` consecutive
requests span at least ``period_s + guard_s``: up to ``guard_s`` of variation between permit and arrival
(network and event-loop jitter) cannot put ``count + 1`` arrivals into one window. A per-minute limit is
therefore spaced evenly too (Max: one request every ~30.3 s, never two together), never sent as a burst.
A pool's pacers start with ``guard_s`` = 40 ms, or 1 % of the period if that is more (Max: 0.6 s).

``guard_s`` adapts (AIMD on the spacing): a fixed guard costs a fixed slice of every spacing (10 ms is
4 % of the 250 ms spacing at 4 req/s), paid for nothing where the network is quiet, so the guard
shrinks while requests arrive cleanly and grows when the API refuses one.

- **Multiplicative backoff.** ``throttled()`` (a 429 ``Throttling*`` or ``Throttling.BurstRate``)
  multiplies the guard by ``BACKOFF_FACTOR`` (at least ``+MIN_BACKOFF_STEP_S``), at most once per
  ``period_s + guard_s``: the requests already sent at the old spacing may still be refused, and one
  cause must not back off twice. The guard never exceeds a quarter of the period.
- **Memory.** The guard a throttle happened at, ×``FLOOR_FACTOR`` and at least ``+FLOOR_STEP_S``,
  becomes the floor: recovery never returns to a spacing that was refused. The additive step matters
  for small guards: a 429 at 20 ms says the arrival spread is above 20 ms, and 25 ms would soon be
  refused again (measured with 0–40 ms of jitter: one 429 per model instead of three).
- **Recovery while clean.** After every ``RECOVERY_PERMITS`` permits without a throttle the guard
  shrinks by ``RECOVERY_FACTOR`` (at least ``RECOVERY_STEP_S``), down to the floor — which starts at
  ``min_guard`` (5 ms, or 0.1 % of the period if that is more), below the starting guard: on a quiet
  network the pacer converges on the limit itself.
- **History.** Every change of the guard is kept (time since the pacer started, new guard; at most
  ``HISTORY_POINTS``, thinned evenly when full) and shown in ``snapshot()`` for the summary and bench.

Behaviour at the edges:

- **FIFO**: waiters are served in arrival order (``asyncio.Lock`` wakes waiters in order).
- **No burst**: after an idle spell the next permit is immediate and the one after waits a full
  interval; permits never accumulate.
- **Cancellation**: a waiter cancelled while queued or sleeping consumes no permit.
- **Push-back**: ``penalize(seconds)`` delays every later permit by that much (by default one interval
  of the widened spacing: a limit's own time scale, 0.5 s at 2/s, 30 s at 2/min); it is what the
  pipeline calls on a 429, so it also counts as ``throttled()``.
- **Permits keep their schedule**: a permit granted a little late (the event loop woke the waiter
  up to ``CATCH_UP_MAX_S`` late, at most ``CATCH_UP_FRACTION`` of an interval) does not move the
  ones after it, and a request that reaches the wire after its permit moves the next permit only by
  what exceeds ``PERMIT_LEAD_MAX_S`` (at most ``PERMIT_LEAD_FRACTION`` of an interval). The few
  milliseconds every request spends between its permit and the wire on a quiet machine (a
  connection from the pool, the body's encoding, event-loop hops) are then not added to every
  spacing, while a busy machine, whose requests leave tens of milliseconds late, still slows the
  pacer down: the lateness that comes with load also bunches arrivals.
- **Send-time accounting** (the send gate): ``before_send()`` awaited just before the first byte
  leaves, ``after_send()`` once the headers are written, lets requests out first come first served,
  each one interval after the previous one's write. So sends stay spaced even when requests
  overtake each other or a stall delays a write. ``mark_sent()`` records a send for callers without
  a gate.

Every attempt of every job takes a permit, retries included: the pacer is the only way to the API.

``PacerPool`` holds one pacer per (endpoint, account, model), each at the limit one function gives for
that model: ``qwenedit.rates.model_limits`` (an override for the model, ``--rps MODEL=RATE``, else one
for every model, ``--rps RATE``, else the model table's limit, times the run's ``rate_share``); a model
with none is refused (``UnknownLimit``), never guessed.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from qwenedit.catalog import RateLimit, normalize_model

# The old fixed spacing factor (permits 1/(0.98·rps) apart). ``shards.window_bound`` still reasons with
# it; the guard below always spaces permits at least as wide.
DEFAULT_MARGIN = 0.98
DEFAULT_GUARD_S = 0.04  # ~40 ms of arrival jitter absorbed from the start (2/s: 0.96 of the limit)
MIN_GUARD_FRACTION = 0.01  # ...and at least 1 % of the period: per-minute limits get 0.6 s for ~1 %
BACKOFF_FACTOR = 2.0
MIN_BACKOFF_STEP_S = 0.005
MAX_GUARD_FRACTION = 0.25  # of the period
FLOOR_FACTOR = 1.25
FLOOR_STEP_S = 0.02
RECOVERY_PERMITS = 10
RECOVERY_FACTOR = 0.85
RECOVERY_STEP_S = 0.001
MIN_GUARD_S = 0.005
MIN_GUARD_PERIOD_FRACTION = 0.001
HISTORY_POINTS = 256
CATCH_UP_FRACTION = 0.1  # of an interval (at most CATCH_UP_MAX_S): a late wake-up keeps the schedule
CATCH_UP_MAX_S = 0.02
PERMIT_LEAD_FRACTION = 0.5  # of an interval (at most PERMIT_LEAD_MAX_S): send lateness that is forgiven
PERMIT_LEAD_MAX_S = 0.02

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[object]]


class Pacer:
    """Evenly spaced, FIFO permits at ``limit`` (a ``RateLimit``, or a number per second)."""

    def __init__(
        self,
        limit: RateLimit | float,
        *,
        guard_s: float = DEFAULT_GUARD_S,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        if not isinstance(limit, RateLimit):
            if not limit > 0:
                raise ValueError(f"rate must be positive, got {limit}")
            limit = RateLimit.per_second(limit)
        if not 0 <= guard_s <= MAX_GUARD_FRACTION * limit.period_s:
            raise ValueError(f"guard_s must be in [0, {MAX_GUARD_FRACTION} × period], got {guard_s}")
        self.limit = limit
        self._guard = guard_s
        self._floor = min(guard_s, min_guard(limit))
        self._clock = clock
        self._origin = clock()
        self._history: list[tuple[float, float]] = [(0.0, guard_s)]
        self._sleep = sleep
        self._lock = asyncio.Lock()
        self._next = float("-inf")  # earliest time the next permit may be granted
        self._last = float("-inf")  # when the last permit was granted
        self._last_sent = float("-inf")  # when the last request left (mark_sent / before_send)
        self._send_lock = asyncio.Lock()
        self._writing: asyncio.Event | None = None  # set when the gated request's headers are out
        self._hold_until = float("-inf")  # throttles before this belong to the last backoff
        self._calm = 0  # permits since the last throttle or recovery step
        self.granted = 0
        self.throttles = 0  # every throttle reported
        self.backoffs = 0  # the ones that widened the spacing

    @property
    def rate(self) -> float:
        """The limit in requests per second (what the API allows, not what the pacer delivers)."""
        return self.limit.rate

    @property
    def guard_s(self) -> float:
        """The current jitter allowance added to every period."""
        return self._guard

    @property
    def interval(self) -> float:
        """Seconds between two permits now: ``(period + guard) / count``."""
        return (self.limit.period_s + self._guard) / self.limit.count

    async def acquire(self) -> float:
        """Wait for the next permit; returns the clock time at which it was granted."""
        async with self._lock:
            while True:
                wait = self._next - self._clock()
                if wait <= 0:
                    break
                await self._sleep(wait)  # loop again: penalize()/throttled() may have moved _next
            now = self._clock()
            self._recover()
            # A waiter woken a little late keeps the schedule; after an idle spell it starts afresh.
            late = now - self._next
            base = self._next if 0 <= late <= min(CATCH_UP_FRACTION * self.interval, CATCH_UP_MAX_S) else now
            self._last = now
            self._next = base + self.interval
            self.granted += 1
            return now

    def mark_sent(self) -> None:
        """Send-time accounting: the request behind the last permit actually left now.

        The next send is spaced from the real send time (by the gate). The next *permit* is spaced
        from it too, less the forgiven lateness (``_lead``): the few milliseconds every request
        spends reaching the wire are not added to every spacing, more than that is.
        """
        now = self._clock()
        self._last_sent = max(self._last_sent, now)
        self._next = max(self._next, now + self.interval - self._lead)

    @property
    def _lead(self) -> float:
        return min(PERMIT_LEAD_FRACTION * self.interval, PERMIT_LEAD_MAX_S)

    async def before_send(self) -> None:
        """Send gate, first half: await it as the request's first byte is about to leave
        (``DashScopeClient.edit(..., gate=pacer)``). It waits, first come first served, until the
        previous gated request's headers are written (at most one interval) and one interval has
        passed since the previous send, then records this send like ``mark_sent``.

        Permits are spaced, but what happens between a permit and the write (a new connection, a
        busy or starved event loop) differs per request: a request can overtake another, or be held
        after its gate while the next one passes. The gate spaces the writes themselves."""
        async with self._send_lock:
            writing = self._writing
            if writing is not None and not writing.is_set():
                await self._wait_at_most(writing, self.interval)  # a lost after_send costs one interval
            while True:
                wait = self._last_sent + self.interval - self._clock()
                if wait <= 0:
                    break
                await self._sleep(wait)
            self._writing = asyncio.Event()
            self.mark_sent()

    async def _wait_at_most(self, event: asyncio.Event, seconds: float) -> None:
        waiter = asyncio.ensure_future(event.wait())
        timer = asyncio.ensure_future(self._sleep(seconds))
        try:
            await asyncio.wait({waiter, timer}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
            timer.cancel()

    def after_send(self) -> None:
        """Send gate, second half: the gated request's headers are written (or failed) now; the next
        send is spaced from this moment if it is later than the gate's."""
        writing, self._writing = self._writing, None
        if writing is not None:
            writing.set()
        self.mark_sent()

    def throttled(self) -> bool:
        """A request was refused for its rate (429): widen the spacing; True if it did.

        At most one backoff per ``period + guard``: later refusals in that span come from requests
        sent at the old spacing."""
        now = self._clock()
        self.throttles += 1
        self._calm = 0
        if now < self._hold_until:
            return False
        failed_at = self._guard
        self._floor = min(
            max(self._floor, failed_at * FLOOR_FACTOR, failed_at + FLOOR_STEP_S), self._max_guard
        )
        backoff = max(failed_at * BACKOFF_FACTOR, failed_at + MIN_BACKOFF_STEP_S, self._floor)
        self._guard = min(backoff, self._max_guard)
        self._next = max(self._next, self._last + self.interval)
        self._hold_until = now + self.limit.period_s + self._guard
        self.backoffs += 1
        self._note_guard()
        return True

    def penalize(self, seconds: float | None = None) -> None:
        """Hold back every later permit until ``seconds`` from now, by default one interval of the
        spacing ``throttled()`` (which this calls: it follows a 429) has just widened."""
        self.throttled()
        self._next = max(self._next, self._clock() + (self.interval if seconds is None else seconds))

    def snapshot(self) -> dict[str, Any]:
        """Counters for progress lines and summaries."""
        return {
            "limit": str(self.limit),
            "granted": self.granted,
            "throttles": self.throttles,
            "backoffs": self.backoffs,
            "guard_s": round(self._guard, 6),
            "paced_rate": round(1.0 / self.interval, 6),
            "guard_history": [[round(t, 3), round(g, 6)] for t, g in self._history],
        }

    @property
    def _max_guard(self) -> float:
        return MAX_GUARD_FRACTION * self.limit.period_s

    def _recover(self) -> None:
        self._calm += 1
        if self._calm >= RECOVERY_PERMITS:
            self._calm = 0
            shrunk = max(self._floor, min(self._guard * RECOVERY_FACTOR, self._guard - RECOVERY_STEP_S))
            if shrunk != self._guard:
                self._guard = shrunk
                self._note_guard()

    def _note_guard(self) -> None:
        self._history.append((self._clock() - self._origin, self._guard))
        if len(self._history) > HISTORY_POINTS:  # keep the first point and every other one after it
            self._history = self._history[:1] + self._history[2::2]


def min_guard(limit: RateLimit) -> float:
    """The smallest guard a pacer at ``limit`` shrinks to while requests arrive cleanly."""
    return max(MIN_GUARD_S, MIN_GUARD_PERIOD_FRACTION * limit.period_s)


def initial_guard(limit: RateLimit, guard_s: float = DEFAULT_GUARD_S) -> float:
    """The starting guard of a pacer at ``limit``: ``guard_s``, at least 1 % of the period (cheap
    insurance for per-minute limits), at most a quarter of it."""
    return min(max(guard_s, MIN_GUARD_FRACTION * limit.period_s), MAX_GUARD_FRACTION * limit.period_s)


def pacer_key(endpoint: str, api_key: str, model: str) -> tuple[str, str, str]:
    """The identity a rate limit applies to: endpoint, account (by key hash, never the key), model."""
    return (endpoint.rstrip("/"), hashlib.sha256(api_key.encode()).hexdigest()[:16], model)


class PacerPool:
    """One pacer per (endpoint, key, model), created on first use and shared by every job, each at
    ``limit_of(model)`` (``qwenedit.rates.model_limits``: the run's overrides, else the model table's
    limit, times the run's share)."""

    def __init__(
        self,
        limit_of: Callable[[str], RateLimit],
        *,
        guard_s: float = DEFAULT_GUARD_S,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self._limit_of = limit_of
        self.guard_s = guard_s
        self._clock = clock
        self._sleep = sleep
        self._pacers: dict[tuple[str, str, str], Pacer] = {}

    def limit_for(self, model: str) -> RateLimit:
        """The limit ``model`` is paced at (``UnknownLimit`` if none is known)."""
        return self._limit_of(normalize_model(model))

    def rates(self, models: Iterable[str]) -> dict[str, float]:
        """Requests per second per model, for ``Window.set_rates`` (one account each)."""
        return {normalize_model(m): self.limit_for(m).rate for m in models}

    def get(self, endpoint: str, api_key: str, model: str) -> Pacer:
        """The pacer of (endpoint, account, model); raises ``UnknownLimit`` for a model with no limit."""
        key = pacer_key(endpoint, api_key, model)
        pacer = self._pacers.get(key)
        if pacer is None:
            limit = self.limit_for(model)
            guard = initial_guard(limit, self.guard_s)
            pacer = Pacer(limit, guard_s=guard, clock=self._clock, sleep=self._sleep)
            self._pacers[key] = pacer
        return pacer

    def stats(self) -> dict[str, dict[str, Any]]:
        """Per model (summed over endpoints and accounts): limit, permits, throttles, backoffs, and
        the current spacing of its busiest pacer."""
        out: dict[str, dict[str, Any]] = {}
        for (_, _, model), pacer in sorted(self._pacers.items()):
            snap = pacer.snapshot()
            row = out.get(model)
            if row is None:
                out[model] = snap
                continue
            for name in ("granted", "throttles", "backoffs"):
                row[name] += snap[name]
            row["guard_s"] = max(row["guard_s"], snap["guard_s"])
            row["paced_rate"] = min(row["paced_rate"], snap["paced_rate"])
        return out
