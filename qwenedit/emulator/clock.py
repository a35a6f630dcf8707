"""The emulator's clock: where arrival times (rate windows) and wall time (link expiry) come from.

:data:`SYSTEM_CLOCK` reads ``time.monotonic`` and ``time.time``. Tests inject another one through
``EmulatorConfig(clock=...)`` (e.g. :class:`devkit.clock.FakeClock`) to expire a signed link or
slide a rate window without waiting for it.
"""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    """Two readings: a monotonic one for arrivals, and unix time for link expiry."""

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back (arrival times, rate windows)."""
        ...

    def time(self) -> float:
        """Unix time in seconds (``Expires`` of signed output links)."""
        ...


class SystemClock:
    """The real clocks of this process."""

    def monotonic(self) -> float:
        return time.monotonic()

    def time(self) -> float:
        return time.time()


SYSTEM_CLOCK: Clock = SystemClock()
