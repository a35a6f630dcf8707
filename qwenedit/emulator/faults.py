"""Fault and latency draws: which fault (if any) a valid request gets, and how long it takes.

Forced faults (``next_faults``) are consumed first, in order; otherwise one uniform draw picks a fault
by the configured rates. Faults and latencies use separate seeded generators, so changing the latency
does not reshuffle which requests fail.
"""

from __future__ import annotations

import math
import random

from qwenedit.emulator.config import RATE_FIELDS, EmulatorConfig

_Z99 = 2.3263478740408408  # the standard normal's 99th percentile


class FaultDice:
    """Seeded draws of faults, latencies and partial counts."""

    def __init__(self, seed: int | None) -> None:
        self.reseed(seed)

    def reseed(self, seed: int | None) -> None:
        """Start both random sequences again from ``seed`` (None: unpredictable)."""
        self.faults = random.Random(None if seed is None else f"faults-{seed}")
        self.latencies = random.Random(None if seed is None else f"latency-{seed}")
        self.jitters = random.Random(None if seed is None else f"jitter-{seed}")

    def jitter(self, max_s: float) -> float:
        """Seconds a request travels before it is counted: uniform in [0, ``max_s``]."""
        return self.jitters.uniform(0.0, max_s) if max_s > 0 else 0.0

    def pick_fault(self, config: EmulatorConfig) -> str:
        """The fault for the next valid request (``ok`` for none)."""
        if config.next_faults:
            return config.next_faults.pop(0)
        roll = self.faults.random()
        for fault, name in RATE_FIELDS.items():
            rate = getattr(config, name)
            if roll < rate:
                if fault == "malformed":
                    return self.faults.choice(("malformed_json", "malformed_fields"))
                return fault
            roll -= rate
        return "ok"

    def latency(self, config: EmulatorConfig) -> float:
        """Seconds the model "works" on one request."""
        if config.latency is not None:
            return max(0.0, float(config.latency(self.latencies)))
        median = config.latency_median_s
        p99 = config.latency_p99_s
        if median <= 0:
            return 0.0
        if p99 is None or p99 <= median:
            return median
        sigma = (math.log(p99) - math.log(median)) / _Z99
        return self.latencies.lognormvariate(math.log(median), sigma)

    def partial_count(self, n: int) -> int:
        """How many of ``n`` images a partial success delivers (1 .. n-1)."""
        return self.faults.randint(1, n - 1)
