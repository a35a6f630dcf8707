"""The emulator's books: the billing ledger, request counters and the arrival log.

Tests assert against these exactly what the real service would have charged and how requests arrived.
Memory stays bounded: a ledger entry is a small dict (no bodies), the arrival log is a ring buffer.
The app mutates the books on its event loop; ``EmulatorServer`` reads them from the test's thread,
hence the lock.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import Counter, deque
from typing import Any


def key_id(api_key: str) -> str:
    """A stable, non-reversible id for an API key (the raw key is never stored)."""
    return "key-" + hashlib.sha256(api_key.encode()).hexdigest()[:12]


class Books:
    """Ledger, counters and arrival log of one emulator."""

    def __init__(self, max_arrivals: int = 200_000) -> None:
        self._lock = threading.Lock()
        self._ledger: list[dict[str, Any]] = []
        self._arrivals: deque[dict[str, Any]] = deque(maxlen=max_arrivals)
        self._status: Counter[str] = Counter()
        self._codes: Counter[str] = Counter()
        self._faults: Counter[str] = Counter()
        self._requests = 0
        self._images = 0

    def bill(self, request_id: str, account: str, key: str, model: str, image_count: int) -> None:
        """Record that ``image_count`` images were charged to ``account`` for this request."""
        entry = {
            "request_id": request_id,
            "account": account,
            "key_id": key_id(key),
            "model": model,
            "image_count": image_count,
            "time": time.time(),
        }
        with self._lock:
            self._ledger.append(entry)
            self._images += image_count

    def arrived(self, arrival: float, account: str, model: str, status: int | str, code: str = "") -> None:
        """Count one request on the generation endpoint and log its arrival (monotonic clock)."""
        with self._lock:
            self._requests += 1
            self._status[str(status)] += 1
            if code:
                self._codes[code] += 1
            self._arrivals.append({"time": arrival, "account": account, "model": model, "status": status})

    def fault(self, name: str) -> None:
        """Count one injected fault."""
        with self._lock:
            self._faults[name] += 1

    def ledger(self) -> list[dict[str, Any]]:
        """A copy of every charge, oldest first."""
        with self._lock:
            return [dict(e) for e in self._ledger]

    def arrivals(self) -> list[dict[str, Any]]:
        """A copy of the arrival log (the newest ``max_arrivals``), sorted by arrival time.

        Entries are logged when the answer is decided, so a slow request is logged after faster ones
        that arrived later; sorting restores arrival order.
        """
        with self._lock:
            entries = [dict(a) for a in self._arrivals]
        return sorted(entries, key=lambda a: a["time"])

    def stats(self) -> dict[str, Any]:
        """Counters: requests, by status, by error code, throttled_429, faults, billed images."""
        with self._lock:
            return {
                "requests": self._requests,
                "by_status": dict(self._status),
                "by_code": dict(self._codes),
                "throttled_429": self._codes["Throttling.RateQuota"] + self._codes["Throttling.BurstRate"],
                "faults": dict(self._faults),
                "billed_requests": len(self._ledger),
                "billed_images": self._images,
                "arrivals": len(self._arrivals),
            }

    def reset(self) -> None:
        """Forget everything."""
        with self._lock:
            self._ledger.clear()
            self._arrivals.clear()
            self._status.clear()
            self._codes.clear()
            self._faults.clear()
            self._requests = 0
            self._images = 0
