"""A clock that moves only when a test says so, for the emulator (``EmulatorConfig(clock=FakeClock())``).

``advance(seconds)`` moves both readings at once, so a test expires a signed link or slides a rate
window in no time instead of sleeping through it. Safe to read from the emulator's server thread while
the test thread advances it.
"""

from __future__ import annotations

import threading
import time

__all__ = ["FakeClock"]


class FakeClock:
    """Implements :class:`qwenedit.emulator.clock.Clock`; starts at ``start_time`` (default: now)."""

    def __init__(self, start_time: float | None = None, start_monotonic: float = 1_000.0) -> None:
        self._lock = threading.Lock()
        self._time = time.time() if start_time is None else start_time
        self._monotonic = start_monotonic

    def monotonic(self) -> float:
        with self._lock:
            return self._monotonic

    def time(self) -> float:
        with self._lock:
            return self._time

    def advance(self, seconds: float) -> None:
        """Move both readings forward by ``seconds`` (never back)."""
        if seconds < 0:
            raise ValueError(f"a clock does not go back ({seconds} s)")
        with self._lock:
            self._time += seconds
            self._monotonic += seconds
