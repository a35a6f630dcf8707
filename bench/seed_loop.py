"""Contender (b), what users do today: the seed document's code in a sequential loop.

One ``dashscope.MultiModalConversation.call`` per manifest row (local files sent as data URIs with the
seed's ``encode_file``), each output downloaded with ``requests`` exactly like the seed's
``download_image``. No retries (the SDK has none and the seed adds none): an error is printed and the
loop moves on. Stops after ``--max-jobs`` rows or once ``--time-budget`` seconds have passed, because
at 12 s per call a full manifest would take hours; the bench reports images/hour from what it did.

Run as ``python -m bench.seed_loop --base-url URL --manifest M --out DIR --result R.json`` with
``DASHSCOPE_API_KEY`` set.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections import Counter
from pathlib import Path
from typing import Any

import dashscope
import requests
from dashscope import MultiModalConversation

from bench.workload import data_uri, read_manifest


def download_image(image_url: str, save_path: Path) -> None:
    """The seed's ``download_image`` (streamed, 8 KiB chunks, raise on HTTP errors)."""
    response = requests.get(image_url, stream=True, timeout=300)
    response.raise_for_status()
    with open(save_path, "wb") as f:
        for chunk in response.iter_content(chunk_size=8192):
            f.write(chunk)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--base-url", required=True, help="API root (the emulator), without /api/v1")
    p.add_argument("--manifest", required=True, type=Path)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--result", required=True, type=Path)
    p.add_argument("--max-jobs", type=int, default=40)
    p.add_argument("--time-budget", type=float, default=600.0)
    p.add_argument("--model", default="qwen-image-edit-plus")
    args = p.parse_args()

    dashscope.base_http_api_url = f"{args.base_url.rstrip('/')}/api/v1"
    api_key = os.environ["DASHSCOPE_API_KEY"]
    args.out.mkdir(parents=True, exist_ok=True)
    rows = read_manifest(args.manifest)
    errors: Counter[str] = Counter()
    attempted = ok = images = 0
    capped_by = None
    started = time.monotonic()
    for row in rows:
        if attempted >= args.max_jobs:
            capped_by = "jobs"
            break
        if time.monotonic() - started >= args.time_budget:
            capped_by = "time"
            break
        attempted += 1
        content = [{"image": data_uri(path)} for path in row.images]
        messages = [{"role": "user", "content": [*content, {"text": row.prompt}]}]
        # stream=False returns one response (the SDK's type also allows a generator).
        response: Any = MultiModalConversation.call(
            api_key=api_key,
            model=args.model,
            messages=messages,
            stream=False,
            n=row.n,
            watermark=False,
            negative_prompt=" ",
            prompt_extend=True,
        )
        if response.status_code == 200:
            for i, item in enumerate(response.output.choices[0].message.content):
                try:
                    download_image(item["image"], args.out / f"{row.job_id}_{i + 1}.png")
                    images += 1
                except requests.exceptions.RequestException as e:
                    errors[f"download:{type(e).__name__}"] += 1
            ok += 1
        else:
            errors[f"{response.status_code}:{response.code}"] += 1
    loop_s = time.monotonic() - started
    result = {
        "contender": "b",
        "jobs_total": len(rows),
        "jobs_attempted": attempted,
        "jobs_ok": ok,
        "images": images,
        "http_429": sum(n for k, n in errors.items() if k.startswith("429:")),
        "errors": dict(errors),
        "loop_s": round(loop_s, 3),
        "capped_by": capped_by,
    }
    args.result.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
