"""`make demo`: the whole product on one machine, offline, in well under two minutes.

Starts a SeaweedFS S3 server and the DashScope emulator on loopback, runs ``jobs.example.csv``
through ``qwenedit run`` into a bucket with the gates on, then prints the results table, the total
cost (checked against the emulator's billing ledger) and the stored objects, and stops its servers.

The gates it shows: a canary of 3 jobs (one per model of the manifest) approved in advance with
``--yes``; output QA flagging one output (the emulator is told to make the first output after the
canary blank: its ``qa`` cell reads ``2.png=blank``, the image is kept); a roll-up of jobs, images and
cost by the manifest's ``sku`` column (``--group-by sku``); and the run's self-contained report.html,
whose path it prints last.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pandas as pd
from rich.console import Console
from rich.table import Table

from qwenedit.emulator import EmulatorConfig, EmulatorServer
from qwenedit.storage import S3Settings, make_s3_client
from qwenedit.testing.seaweed import SeaweedServer, ensure_bucket

ROOT = Path(__file__).resolve().parent.parent
BUCKET = "qwenedit-demo"
DEMO_KEY = "sk-demo-0000000000000000"
# The gates of a run: a 3-job canary approved in advance, a roll-up by the manifest's sku column. One
# call at a time, so the emulator's scripted blank output lands on a known job (fusion-dress-pose).
GATES = ["--canary", "3", "--yes", "--group-by", "sku", "--max-in-flight", "1"]

console = Console(width=None if sys.stdout.isatty() else 132)  # a log file gets full tables


def main(out: Path = ROOT / "demo-out") -> int:
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    manifest = ROOT / "jobs.example.csv"
    console.rule("[bold]qwenedit demo: emulator + SeaweedFS on loopback")
    with (
        SeaweedServer(out / "seaweed") as s3,
        EmulatorServer(
            EmulatorConfig(
                rps=2.0,
                latency_median_s=1.5,
                latency_p99_s=4.0,
                seed=7,
                # The canary's 3 calls come first; the 4th call (the first after it) answers with a
                # blank image, which output QA flags.
                next_faults=["ok", "ok", "ok", "blank_output"],
                allow_private_urls=True,  # inputs are presigned URLs of the loopback S3 server
            )
        ) as emulator,
    ):
        env = {**os.environ, **s3.env(), "DASHSCOPE_API_KEY": os.environ.get("DASHSCOPE_API_KEY", DEMO_KEY)}
        if not sys.stdout.isatty():  # a log file gets the run's tables as wide as the demo's own
            env.setdefault("COLUMNS", "132")
        os.environ.update(s3.env())
        client = make_s3_client(S3Settings.from_env())
        ensure_bucket(client, BUCKET)
        console.print(f"S3 server  {s3.endpoint_url}   emulator  {emulator.base_url}")
        cmd = [
            sys.executable, "-m", "qwenedit", "run", str(manifest),
            "--dest", f"s3://{BUCKET}/demo", "--base-url", emulator.base_url,
            "--report-dir", str(out / "runs"),
            *GATES,
        ]  # fmt: skip
        console.print(
            "$ qwenedit run jobs.example.csv --dest s3://qwenedit-demo/demo --base-url <emulator> "
            + " ".join(GATES)
        )
        code = subprocess.run(cmd, env=env, check=False).returncode
        runs = list((out / "runs").glob("*/results.csv"))
        if not runs:
            console.print(f"[red]the run wrote no report (exit code {code}); see the messages above[/]")
            return code or 1
        run_dir = max(runs, key=lambda p: p.stat().st_mtime).parent
        results = pd.read_csv(run_dir / "results.csv", dtype=str, keep_default_na=False)
        _print_results(results)
        billed = sum(e["image_count"] for e in emulator.ledger())
        reported = sum(Decimal(c or "0") for c in results["cost"])
        console.print(
            f"[bold]total cost {reported} USD[/] for {int(results['image_count'].astype(int).sum())} images; "
            f"the emulator's billing ledger shows {billed} billed images"
        )
        keys = _list(client, BUCKET, "demo/")
        images = [(k, size) for k, size in keys if k.endswith(".png") and "/_" not in k]
        console.print(f"\n[bold]stored images[/] in s3://{BUCKET}/demo/ ({len(images)}):")
        for key, size in images:
            console.print(f"  {size:>9,d}  {key}")
        bookkeeping = len(keys) - len(images)
        console.print(
            f"  + {bookkeeping} bookkeeping objects (ledger under demo/_ledger/, reports under demo/_runs/)"
        )
        flagged = results[results["qa"] != ""]
        console.print(
            f"\n[bold]output QA[/]: {len(flagged)} job(s) flagged (kept, see the qa column): "
            + ", ".join(f"{r.job_id} {r.qa}" for r in flagged.itertuples())
        )
        console.print(f"reports:     {run_dir}")
        console.print(f"[bold]report.html: {run_dir / 'report.html'}[/]  (open it in a browser)")
    console.rule(f"demo finished (qwenedit run exit code {code})")
    return code


def _print_results(results: pd.DataFrame) -> None:
    columns = (
        "job_id",
        "status",
        "model",
        "image_count",
        "width",
        "height",
        "cost",
        "attempts",
        "qa",
        "error_code",
    )
    t = Table(title="results.csv")
    for col in columns:
        t.add_column(col)
    for _, row in results.iterrows():
        t.add_row(*(str(row[c]) for c in columns))
    console.print(t)


def _list(client: object, bucket: str, prefix: str) -> list[tuple[str, int]]:
    found: list[tuple[str, int]] = []
    paginator = client.get_paginator("list_objects_v2")  # type: ignore[attr-defined]
    for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
        found.extend((o["Key"], o["Size"]) for o in page.get("Contents", []))
    return found


if __name__ == "__main__":
    raise SystemExit(main())
