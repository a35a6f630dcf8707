"""The books stay small: bounded arrival log, tiny ledger entries, no request bodies kept."""

from __future__ import annotations

import gc
import io
import tracemalloc
from pathlib import Path

import httpx
from PIL import Image

from qwenedit.emulator import EmulatorConfig, create_app
from qwenedit.emulator.books import Books, key_id
from qwenedit.emulator.config import GENERATION_PATH
from qwenedit.emulator.ratelimit import RateLimiter
from tests.emulator.helpers import body, data_uri


def test_arrival_log_is_a_ring_buffer() -> None:
    books = Books(max_arrivals=100)

    for i in range(1000):
        books.arrived(float(i), "acct", "model", 200)

    arrivals = books.arrivals()
    assert len(arrivals) == 100
    assert arrivals[0]["time"] == 900.0
    assert books.stats()["requests"] == 1000


def test_key_id_is_stable_and_does_not_contain_the_key() -> None:
    assert key_id("sk-abcdef") == key_id("sk-abcdef")
    assert key_id("sk-abcdef") != key_id("sk-abcdeg")
    assert "abcdef" not in key_id("sk-abcdef")


def test_rate_limiter_forgets_idle_pairs() -> None:
    limiter = RateLimiter()

    for i in range(5000):
        limiter.admit("rate", f"acct-{i}", "model", now=float(i), limit=2, window_s=1.0)

    assert len(limiter._windows) < 1100


async def test_memory_per_request_stays_small(tmp_path: Path) -> None:
    app = create_app(EmulatorConfig(output_dir=str(tmp_path), rps=1e6, malformed_rate=1.0))
    noisy = Image.effect_noise((160, 160), 50).convert("RGB")
    buf = io.BytesIO()
    noisy.save(buf, "PNG")
    payload = body([data_uri(buf.getvalue())], text="x" * 800, n=2)  # ~100 KB: kept bodies would show
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://emu") as client:

        async def burst(count: int) -> None:
            for _ in range(count):
                await client.post(GENERATION_PATH, json=payload, headers={"Authorization": "Bearer sk-x"})

        await burst(30)  # warm caches and pools
        gc.collect()
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        await burst(150)
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - before
        tracemalloc.stop()

    assert len(app.emulator.books.ledger()) == 180
    assert grown / 150 < 2_000  # bytes retained per request: a ledger entry and an arrival, no bodies
