"""Contender (c), the obvious "make it concurrent" fix: asyncio + httpx + a semaphore of 50, no pacer.

Every row becomes a coroutine up front (``asyncio.gather``); 50 at a time POST the generation request
(same body as the SDK sends, local files as data URIs); a 429 is retried after a short fixed sleep,
anything else non-200 is counted as failed; outputs are downloaded with the same client.

Run as ``python -m bench.naive_loop --base-url URL --manifest M --out DIR --result R.json`` with
``DASHSCOPE_API_KEY`` set.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

from bench.workload import Row, data_uri, read_manifest

GENERATION_PATH = "/api/v1/services/aigc/multimodal-generation/generation"
MAX_ATTEMPTS = 1000  # "retry on 429" without a cap would spin forever against a dead account


async def run(args: argparse.Namespace) -> dict[str, Any]:
    rows = read_manifest(args.manifest)
    args.out.mkdir(parents=True, exist_ok=True)
    headers = {"Authorization": f"Bearer {os.environ['DASHSCOPE_API_KEY']}"}
    url = args.base_url.rstrip("/") + GENERATION_PATH
    sem = asyncio.Semaphore(args.concurrency)
    errors: Counter[str] = Counter()
    counts = {"ok": 0, "images": 0, "http_429": 0, "requests": 0}

    async def one(client: httpx.AsyncClient, row: Row) -> None:
        async with sem:
            body = {
                "model": args.model,
                "input": {
                    "messages": [
                        {
                            "role": "user",
                            "content": [*({"image": data_uri(p)} for p in row.images), {"text": row.prompt}],
                        }
                    ]
                },
                "parameters": {"n": row.n, "watermark": False, "negative_prompt": " ", "prompt_extend": True},
            }
            for _ in range(MAX_ATTEMPTS):
                counts["requests"] += 1
                try:
                    r = await client.post(url, json=body, headers=headers)
                except httpx.HTTPError as e:
                    errors[f"transport:{type(e).__name__}"] += 1
                    return
                if r.status_code != 429:
                    break
                counts["http_429"] += 1
                await asyncio.sleep(args.retry_sleep)
            if r.status_code != 200:
                errors[f"{r.status_code}:{r.json().get('code', '') if r.content else ''}"] += 1
                return
            for i, item in enumerate(r.json()["output"]["choices"][0]["message"]["content"]):
                img = await client.get(item["image"])
                if img.status_code != 200:
                    errors[f"download:{img.status_code}"] += 1
                    continue
                (args.out / f"{row.job_id}_{i + 1}.png").write_bytes(img.content)
                counts["images"] += 1
            counts["ok"] += 1

    started = time.monotonic()
    async with httpx.AsyncClient(timeout=300.0) as client:
        await asyncio.gather(*(one(client, row) for row in rows))
    return {
        "contender": "c",
        "jobs_total": len(rows),
        "jobs_attempted": len(rows),
        "jobs_ok": counts["ok"],
        "images": counts["images"],
        "requests": counts["requests"],
        "http_429": counts["http_429"],
        "errors": dict(errors),
        "loop_s": round(time.monotonic() - started, 3),
        "capped_by": None,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--base-url", required=True, help="API root (the emulator), without /api/v1")
    p.add_argument("--manifest", required=True, type=Path)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--result", required=True, type=Path)
    p.add_argument("--concurrency", type=int, default=50)
    p.add_argument("--retry-sleep", type=float, default=1.0, help="seconds to sleep after a 429")
    p.add_argument("--model", default="qwen-image-edit-plus")
    args = p.parse_args()
    result = asyncio.run(run(args))
    args.result.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
