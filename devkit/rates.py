"""How a request log measures against a rate limit: the busiest sliding window, the steady-state rate.

Used by the tests, the benchmark and the distributed integration test, on arrival times as the
emulator records them (where the limit is counted).
"""

from __future__ import annotations

from collections.abc import Iterable


def max_in_window(times: Iterable[float], window: float = 1.0) -> int:
    """The most events in any half-open window ``[t, t + window)``."""
    ordered = sorted(times)
    best, start = 0, 0
    for end, t in enumerate(ordered):
        while t - ordered[start] >= window:
            start += 1
        best = max(best, end - start + 1)
    return best


def mean_rate(times: Iterable[float]) -> float:
    """Events per second between the first and the last event (0 for fewer than two)."""
    ordered = sorted(times)
    if len(ordered) < 2 or ordered[-1] == ordered[0]:
        return 0.0
    return (len(ordered) - 1) / (ordered[-1] - ordered[0])
