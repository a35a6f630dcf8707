"""`make demo`: the whole product on one machine, offline, in well under two minutes.

Starts a SeaweedFS S3 server and the DashScope emulator on loopback, runs ``jobs.example.csv``
through ``qwenedit run`` into a bucket, then prints the results table, the total cost (checked
against the emulator's billing ledger) and the stored objects, writes an HTML contact sheet
(inputs → outputs, prompt, cost per job) and stops its servers.
"""

from __future__ import annotations

import html
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

console = Console(width=None if sys.stdout.isatty() else 132)  # a log file gets full tables


def main(out: Path = ROOT / "demo-out") -> int:
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    manifest = ROOT / "jobs.example.csv"
    console.rule("[bold]qwenedit demo: emulator + SeaweedFS on loopback")
    with (
        SeaweedServer(out / "seaweed") as s3,
        EmulatorServer(EmulatorConfig(rps=2.0, latency_median_s=1.5, latency_p99_s=4.0, seed=7)) as emulator,
    ):
        env = {**os.environ, **s3.env(), "DASHSCOPE_API_KEY": os.environ.get("DASHSCOPE_API_KEY", DEMO_KEY)}
        os.environ.update(s3.env())
        client = make_s3_client(S3Settings.from_env())
        ensure_bucket(client, BUCKET)
        console.print(f"S3 server  {s3.endpoint_url}   emulator  {emulator.base_url}")
        cmd = [
            sys.executable, "-m", "qwenedit", "run", str(manifest),
            "--dest", f"s3://{BUCKET}/demo", "--base-url", emulator.base_url,
            "--report-dir", str(out / "runs"),
        ]  # fmt: skip
        console.print("$ qwenedit run jobs.example.csv --dest s3://qwenedit-demo/demo --base-url <emulator>")
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
        sheet = _contact_sheet(out, manifest, results, client)
        console.print(f"\ncontact sheet: {sheet}")
        console.print(f"reports:       {run_dir}")
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


def _contact_sheet(out: Path, manifest: Path, results: pd.DataFrame, client: object) -> Path:
    """inputs → outputs, prompt and cost per job, with the images copied next to the page."""
    img_dir = out / "sheet"
    img_dir.mkdir(exist_ok=True)
    rows = pd.read_csv(manifest, dtype=str, keep_default_na=False).set_index("job_id")
    parts = [
        "<!doctype html><meta charset='utf-8'><title>qwenedit contact sheet</title>",
        "<style>body{font-family:sans-serif}td{vertical-align:top;padding:6px;border-bottom:1px solid #ccc}"
        "img{max-height:160px;margin:2px;border:1px solid #999}</style>",
        "<h1>qwenedit demo — contact sheet</h1><table><tr><th>job</th><th>inputs</th><th>outputs</th>"
        "<th>prompt</th><th>cost</th></tr>",
    ]
    for _, r in results.iterrows():
        job_id = r["job_id"]
        src = rows.loc[job_id] if job_id in rows.index else None
        inputs = []
        for col in ("image_1", "image_2", "image_3"):
            ref = "" if src is None else str(src.get(col, ""))
            if ref and "://" not in ref and not ref.startswith("data:"):
                name = f"in-{job_id}-{col}{Path(ref).suffix}"
                shutil.copy(manifest.parent / ref, img_dir / name)
                inputs.append(f"<img src='sheet/{html.escape(name)}'>")
        outputs = []
        for uri in str(r["outputs"]).split():
            bucket, _, key = uri.removeprefix("s3://").partition("/")
            name = "out-" + key.replace("/", "-")
            client.download_file(bucket, key, str(img_dir / name))  # type: ignore[attr-defined]
            outputs.append(f"<img src='sheet/{html.escape(name)}'>")
        prompt = "" if src is None else str(src.get("prompt", ""))
        parts.append(
            f"<tr><td><b>{html.escape(job_id)}</b><br>{html.escape(r['status'])}</td><td>{''.join(inputs)}</td>"
            f"<td>{''.join(outputs)}</td><td>{html.escape(prompt)}</td>"
            f"<td>{html.escape(r['cost'])} {html.escape(r['currency'])}</td></tr>"
        )
    parts.append("</table>")
    page = out / "contact-sheet.html"
    page.write_text("\n".join(parts), encoding="utf-8")
    return page


if __name__ == "__main__":
    raise SystemExit(main())
