"""Pure numbers for the benchmark: sliding-window counts, steady-state rate, per-second series, verdicts.

Everything here works on plain lists of arrival times (seconds, any clock) so it can be tested on
synthetic data. The conventions match the emulator's rate limiter (``qwenedit.emulator.ratelimit``):
two arrivals share a window when they are *less than* ``window_s`` apart. The busiest-window count is
the project's one implementation, ``devkit.rates.max_in_window`` (re-exported here).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from devkit.rates import max_in_window

__all__ = [
    "STEADY_TRIM",
    "SteadyState",
    "Verdict",
    "max_in_window",
    "per_hour",
    "per_second",
    "quantile",
    "steady_state",
    "windows_over",
]

STEADY_TRIM = 0.10  # steady state = the arrival span minus its first and last 10 %


def windows_over(times: Iterable[float], limit: int, window_s: float = 1.0) -> int:
    """How many arrivals end a window (of ``window_s``) holding more than ``limit`` arrivals."""
    ts = sorted(times)
    over = 0
    lo = 0
    for hi, t in enumerate(ts):
        while t - ts[lo] >= window_s:
            lo += 1
        if hi - lo + 1 > limit:
            over += 1
    return over


@dataclass(frozen=True)
class SteadyState:
    """The rate over the middle of the arrival span: ``count`` arrivals in ``[start, end)``."""

    start: float
    end: float
    count: int

    @property
    def duration(self) -> float:
        return self.end - self.start

    @property
    def rate(self) -> float:
        return self.count / self.duration if self.duration > 0 else 0.0


def steady_state(times: Iterable[float], trim: float = STEADY_TRIM) -> SteadyState:
    """Arrivals per second between ``first + trim·span`` and ``last − trim·span``.

    The ramp-up (the first window of calls) and the drain (the last calls of the manifest, when fewer
    jobs are left than the window) are not what a long run looks like; trimming a fixed share of the
    *time* span on both ends removes them without knowing the latency distribution.
    """
    if not 0 <= trim < 0.5:
        raise ValueError(f"trim must be in [0, 0.5), got {trim}")
    ts = sorted(times)
    if len(ts) < 2:
        return SteadyState(0.0, 0.0, len(ts))
    first, last = ts[0], ts[-1]
    span = last - first
    start, end = first + trim * span, last - trim * span
    count = sum(1 for t in ts if start <= t < end)
    return SteadyState(start, end, count)


def per_second(times: Iterable[float], origin: float, bin_s: float = 1.0) -> list[int]:
    """Arrivals per ``bin_s`` from ``origin``: bin k covers ``[origin + k·bin_s, origin + (k+1)·bin_s)``."""
    counts: list[int] = []
    for t in sorted(times):
        k = math.floor((t - origin) / bin_s)
        if k < 0:
            continue
        if k >= len(counts):
            counts.extend([0] * (k + 1 - len(counts)))
        counts[k] += 1
    return counts


def per_hour(count: float, seconds: float) -> float:
    """``count`` events in ``seconds`` as a rate per hour (0 for an empty or zero-length interval)."""
    return count * 3600.0 / seconds if seconds > 0 else 0.0


def quantile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated quantile of ``values`` (q in [0, 1]); NaN for no values."""
    if not values:
        return math.nan
    xs = sorted(values)
    pos = q * (len(xs) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


@dataclass(frozen=True)
class Verdict:
    """One target: what it asks, the measured number, and whether it holds."""

    name: str
    measured: str
    target: str
    met: bool
    note: str = ""

    @property
    def label(self) -> str:
        return "PASS" if self.met else "MISS"

    def to_dict(self) -> dict[str, object]:
        return {
            "target": self.name,
            "measured": self.measured,
            "wanted": self.target,
            "result": self.label,
            "note": self.note,
        }
