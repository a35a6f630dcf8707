"""The run over time: requests sent and 429s per model, and spend, in time buckets (report.html's chart).

``Timeline`` counts events into buckets of ``bucket_s`` seconds from the run's start (1 s at first). It is
bounded: once a run outlasts ``max_buckets`` buckets, neighbouring buckets are merged in pairs and the
bucket width doubles, so a 10-hour run keeps at most ``max_buckets`` buckets per series (64 s each with the
default 720) and summary.json stays small. Counts are never lost by merging, only time resolution.

``to_json`` is summary.json's ``timeline``: ``bucket_s``, ``buckets``, per model ``sent`` and
``throttled`` (counts per bucket) and its ``limit_rps``, and ``spend`` per currency (cumulative at the end
of each bucket, exact decimals as strings).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import Any

MAX_BUCKETS = 720


class Timeline:
    """Bounded per-bucket series of sends, 429s and spend (see the module docstring)."""

    def __init__(self, max_buckets: int = MAX_BUCKETS, clock: Callable[[], float] = time.monotonic) -> None:
        if max_buckets < 2:
            raise ValueError("max_buckets must be at least 2")
        self.max_buckets = max_buckets
        self._clock = clock
        self.start = clock()
        self.bucket_s = 1
        self._sent: dict[str, list[int]] = {}
        self._throttled: dict[str, list[int]] = {}
        self._spend: dict[str, list[Decimal]] = {}  # spent in each bucket (cumulated by to_json)
        self._used = 0  # buckets in use (the last event's bucket + 1)

    def _bucket(self, now: float | None) -> int:
        t = (self._clock() if now is None else now) - self.start
        index = max(0, int(t // self.bucket_s))
        while index >= self.max_buckets:  # outlasted the buckets: halve the resolution
            self._merge()
            index = max(0, int(t // self.bucket_s))
        self._used = max(self._used, index + 1)
        return index

    def _merge(self) -> None:
        self.bucket_s *= 2
        for counts in (self._sent, self._throttled):
            for key, series in counts.items():
                counts[key] = [sum(series[i : i + 2]) for i in range(0, len(series), 2)]
        for currency, amounts in self._spend.items():
            self._spend[currency] = [sum(amounts[i : i + 2], Decimal(0)) for i in range(0, len(amounts), 2)]
        self._used = (self._used + 1) // 2

    @staticmethod
    def _add(table: dict[str, list[Any]], key: str, index: int, amount: Any, zero: Any) -> None:
        series = table.setdefault(key, [])
        if len(series) <= index:
            series.extend([zero] * (index + 1 - len(series)))
        series[index] += amount

    def note_send(self, model: str, now: float | None = None) -> None:
        self._add(self._sent, model, self._bucket(now), 1, 0)

    def note_throttled(self, model: str, now: float | None = None) -> None:
        self._add(self._throttled, model, self._bucket(now), 1, 0)

    def note_cost(self, amount: Decimal, currency: str, now: float | None = None) -> None:
        if amount:
            self._add(self._spend, currency, self._bucket(now), amount, Decimal(0))

    def to_json(self, limits: Mapping[str, float] | None = None) -> dict[str, Any]:
        """The series, each ``buckets`` long; ``limits`` (requests per second per model) drawn as lines."""
        n = self._used

        def padded(series: list[Any], zero: Any) -> list[Any]:
            return series[:n] + [zero] * (n - len(series))

        models: dict[str, dict[str, Any]] = {}
        for model in sorted(set(self._sent) | set(self._throttled)):
            line: dict[str, Any] = {
                "sent": padded(self._sent.get(model, []), 0),
                "throttled": padded(self._throttled.get(model, []), 0),
            }
            if limits and model in limits:
                line["limit_rps"] = round(float(limits[model]), 6)
            models[model] = line
        spend: dict[str, list[str]] = {}
        for currency, series in sorted(self._spend.items()):
            total, running = Decimal(0), []
            for amount in padded(series, Decimal(0)):
                total += amount
                running.append(str(total))
            spend[currency] = running
        return {"bucket_s": self.bucket_s, "buckets": n, "models": models, "spend": spend}
