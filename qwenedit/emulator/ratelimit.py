"""Sliding-window rate limiting per (account, model), counted at arrival.

A request is refused when accepting it would put more than ``limit`` accepted requests inside any
window of ``window_s`` seconds ending at its arrival. Refused requests do not count, so a client that
backs off recovers as soon as the window slides past its earlier requests.
"""

from __future__ import annotations

import bisect
import math


def rule_for_rps(rps: float) -> tuple[int, float]:
    """``(limit, window_s)`` for a requests-per-second figure: 2.0 -> (2, 1 s); 0.5 -> (1, 2 s)."""
    if rps >= 1:
        return max(1, math.floor(rps)), 1.0
    return 1, 1.0 / rps


class SlidingWindow:
    """Sorted arrival times of accepted requests for one key, pruned as the window slides."""

    __slots__ = ("times",)

    def __init__(self) -> None:
        self.times: list[float] = []

    def admit(self, now: float, limit: int, window_s: float) -> bool:
        """Record and return True if one more request at ``now`` keeps every window within ``limit``.

        Two arrivals share a window when they are less than ``window_s`` apart. Arrivals are nearly,
        not strictly, ordered (bodies finish reading at different times), so the check looks at both
        sides of ``now``.
        """
        times = self.times
        cut = bisect.bisect_right(times, now - 2 * window_s)
        if cut:
            del times[:cut]
        pos = bisect.bisect_right(times, now)
        candidate = [*times[:pos], now, *times[pos:]]
        here = pos
        lo = 0
        for hi in range(here, len(candidate)):
            while candidate[hi] - candidate[lo] >= window_s:
                lo += 1
            if lo > here:
                break
            if hi - lo + 1 > limit:
                return False
        times.insert(pos, now)
        return True

    def idle(self, now: float, window_s: float) -> bool:
        """True when nothing recent is left: the window can be dropped to bound memory."""
        return not self.times or self.times[-1] <= now - window_s


class RateLimiter:
    """One sliding window per (account, model)."""

    def __init__(self) -> None:
        self._windows: dict[tuple[str, str, str], SlidingWindow] = {}
        self._admitted = 0

    def admit(self, kind: str, account: str, model: str, now: float, limit: int, window_s: float) -> bool:
        """Whether a request of ``account`` for ``model`` arriving at ``now`` is within the limit."""
        key = (kind, account, model)
        window = self._windows.get(key)
        if window is None:
            window = self._windows[key] = SlidingWindow()
        ok = window.admit(now, limit, window_s)
        self._admitted += 1
        if self._admitted % 1024 == 0:  # occasionally forget idle (account, model) pairs
            horizon = max(window_s, 60.0)
            for stale in [k for k, w in self._windows.items() if w.idle(now, horizon)]:
                del self._windows[stale]
        return ok

    def reset(self) -> None:
        """Forget every window."""
        self._windows.clear()
