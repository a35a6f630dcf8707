"""How many calls may be in flight: a window sized by Little's law from what the run observes.

To keep a model at its limit, enough calls must be open that one is always ready when its pacer hands
out a permit. By Little's law the calls open at once are ``L = λ × W``: the model's rate (requests
per second, from its limit) times how long one call holds its place (observed latency). The window is

    Σ over models of ceil(rate × latency × headroom)       (each model at least 1)

bounded by ``memory_cap`` (what the process can hold) and ``cap`` (``--max-in-flight``, a hard cap;
None: none). ``headroom`` (1.5) covers latency variance and the calls queued at the pacer. Before any
latency is observed, ``initial_latency_s`` (30 s, the slow end of the API's 5–30 s) is assumed, so the
limit is reached at 30 s latency with no tuning flag.

Each model has its own lane of ``ceil(rate × latency × headroom)`` places: a slow model (Max, 2/min)
can never fill the window with calls waiting for its pacer and starve the fast ones. The total is
still capped by ``cap``/``memory_cap``; lanes then share it first come, first served.

Latency per model is an exponentially weighted mean of ``observe_latency(model, seconds)``: the
server's time for a call, from its first byte out to its answer (the pipeline reports the time after
the permit when the transport does not say when the request left) — not the waits before the send
(the pacer, the connection pool, the send gate): those are the run's own queueing, and counting them
would make the window feed itself. On a machine short of CPU that loop grew a run's window to its
``memory_cap`` (calls waiting seconds for the GIL before their first byte).

``Window`` is asyncio-only (one event loop). ``window_size`` is the pure sizing function.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections import deque
from collections.abc import AsyncIterator, Mapping

DEFAULT_HEADROOM = 1.5
DEFAULT_INITIAL_LATENCY_S = 30.0
DEFAULT_MEMORY_CAP = 512  # calls (each holds a request body and a few small objects)
LATENCY_WEIGHT = 0.2  # weight of a new observation in the mean
ANY = "*"  # the lane of callers that name no model


def lane_size(rate: float, latency_s: float, headroom: float = DEFAULT_HEADROOM) -> int:
    """Places one model needs: ``ceil(rate × latency × headroom)``, at least 1."""
    if rate < 0 or latency_s < 0 or headroom <= 0:
        raise ValueError("rate and latency must be >= 0 and headroom > 0")
    return max(1, math.ceil(rate * latency_s * headroom - 1e-9))


def window_size(
    rates: Mapping[str, float],
    latency_s: float | Mapping[str, float],
    headroom: float = DEFAULT_HEADROOM,
    cap: int | None = None,
) -> int:
    """Little's law for a mix of models: Σ ``lane_size`` (latency per model or one for all), then
    at most ``cap``; at least 1."""
    total = 0
    for model, rate in rates.items():
        latency = latency_s if isinstance(latency_s, int | float) else latency_s[model]
        total += lane_size(rate, latency, headroom)
    total = max(1, total)
    return total if cap is None else max(1, min(total, cap))


class Window:
    """Places for calls in flight, per model lane, sized from rates and observed latencies.

    ``await acquire(model)`` / ``release(model)`` (or ``async with window.slot(model)``) around the
    part of a job that needs a place; ``set_rates`` when the mix of models is known; and
    ``observe_latency`` after each call. Waiters are served first come, first served per lane.
    """

    def __init__(
        self,
        *,
        cap: int | None = None,
        memory_cap: int = DEFAULT_MEMORY_CAP,
        headroom: float = DEFAULT_HEADROOM,
        initial_latency_s: float = DEFAULT_INITIAL_LATENCY_S,
        rates: Mapping[str, float] | None = None,
    ) -> None:
        if cap is not None and cap < 1:
            raise ValueError(f"cap must be >= 1, got {cap}")
        if memory_cap < 1:
            raise ValueError(f"memory_cap must be >= 1, got {memory_cap}")
        if headroom <= 0 or initial_latency_s < 0:
            raise ValueError("headroom must be > 0 and initial_latency_s >= 0")
        self.cap = cap
        self.memory_cap = memory_cap
        self.headroom = headroom
        self.initial_latency_s = initial_latency_s
        self._rates: dict[str, float] = {}
        self._latency: dict[str, float] = {}
        self._lanes: dict[str, int] = {}
        self._busy: dict[str, int] = {}
        self._in_flight = 0
        self._waiters: deque[tuple[str, asyncio.Future[None]]] = deque()
        self.set_rates(rates or {})

    # -- sizing --

    def set_rates(self, rates: Mapping[str, float]) -> None:
        """Requests per second per model (summed over accounts); models not named keep theirs."""
        for model, rate in rates.items():
            if rate < 0:
                raise ValueError(f"rate of {model} must be >= 0, got {rate}")
            self._rates[model] = rate
        self._resize()

    def observe_latency(self, model: str, seconds: float) -> None:
        """One call of ``model`` took the server ``seconds`` (see the module docstring)."""
        if seconds < 0 or not math.isfinite(seconds):
            return
        old = self._latency.get(model)
        self._latency[model] = seconds if old is None else old + LATENCY_WEIGHT * (seconds - old)
        self._resize()

    def latency(self, model: str) -> float:
        """The latency the window assumes for ``model``: its mean, else the mean of all observed, else
        ``initial_latency_s``."""
        if model in self._latency:
            return self._latency[model]
        if self._latency:
            return sum(self._latency.values()) / len(self._latency)
        return self.initial_latency_s

    def lane(self, model: str) -> int:
        """Places of ``model``'s lane (a model with no rate: the whole window)."""
        return self._lanes.get(model, self.size)

    @property
    def size(self) -> int:
        """Calls allowed in flight now: Σ lanes, bounded by ``memory_cap`` and ``cap``."""
        total = sum(self._lanes.values()) if self._lanes else self.memory_cap
        bound = self.memory_cap if self.cap is None else min(self.cap, self.memory_cap)
        return max(1, min(total, bound))

    @property
    def in_flight(self) -> int:
        """Places taken now."""
        return self._in_flight

    @property
    def bound(self) -> int:
        """The most places the window can ever have: ``memory_cap``, or ``cap`` if lower."""
        return self.memory_cap if self.cap is None else min(self.cap, self.memory_cap)

    def has_room(self, model: str = ANY) -> bool:
        """True if ``acquire(model)`` would not wait now (its lane and the window have a free place)."""
        return self._free(model) and not any(m == model for m, _ in self._waiters)

    def snapshot(self) -> dict[str, object]:
        """Size, places taken, and per model: rate, assumed latency, lane and places taken."""
        return {
            "size": self.size,
            "in_flight": self._in_flight,
            "cap": self.cap,
            "memory_cap": self.memory_cap,
            "models": {
                m: {
                    "rate": self._rates[m],
                    "latency_s": round(self.latency(m), 3),
                    "lane": self._lanes[m],
                    "busy": self._busy.get(m, 0),
                }
                for m in sorted(self._rates)
            },
        }

    def _resize(self) -> None:
        self._lanes = {m: lane_size(r, self.latency(m), self.headroom) for m, r in self._rates.items()}
        self._wake()

    # -- places --

    async def acquire(self, model: str = ANY) -> None:
        """Wait for a place in ``model``'s lane and in the window."""
        if self._free(model) and not any(m == model for m, _ in self._waiters):
            self._take(model)
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (model, future)
        self._waiters.append(entry)
        try:
            await future
        except BaseException:
            if future.done() and not future.cancelled():
                self.release(model)  # granted just as we were cancelled: give it back
            else:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(entry)
            raise

    def release(self, model: str = ANY) -> None:
        """Give back a place taken by ``acquire(model)``."""
        if self._busy.get(model, 0) <= 0:
            raise RuntimeError(f"release({model!r}) without a matching acquire")
        self._busy[model] -= 1
        self._in_flight -= 1
        self._wake()

    @contextlib.asynccontextmanager
    async def slot(self, model: str = ANY) -> AsyncIterator[None]:
        """``async with window.slot(model):`` — a place for the duration of the block."""
        await self.acquire(model)
        try:
            yield
        finally:
            self.release(model)

    def _free(self, model: str) -> bool:
        return self._in_flight < self.size and self._busy.get(model, 0) < self.lane(model)

    def _take(self, model: str) -> None:
        self._busy[model] = self._busy.get(model, 0) + 1
        self._in_flight += 1

    def _wake(self) -> None:
        # First come, first served per lane: a waiter whose lane is full does not block other lanes.
        blocked: set[str] = set()
        for entry in list(self._waiters):
            if self._in_flight >= self.size:
                break
            model, future = entry
            if model in blocked:
                continue
            if future.done():
                self._waiters.remove(entry)
                continue
            if self._free(model):
                self._waiters.remove(entry)
                self._take(model)
                future.set_result(None)
            else:
                blocked.add(model)
