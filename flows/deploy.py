"""Register qwenedit's Prefect deployments on a process work pool (no image: the workers run the code
from ``project_dir``, which must exist at the same path on every worker machine).

    python -m flows.deploy --pool qwenedit \\
        --watch s3://catalogue/incoming/ --dest s3://catalogue/edited/ --cron "0 2 * * *" --timezone UTC

Deployments (``flow name/deployment name``):

- ``edit-manifest/edit``: the single-run flow, ``concurrency_limit=1`` (queued, never parallel), so two
  runs never share the account's 2 req/s. One such deployment per account (``--edit-name``,
  ``--param api_key_env=...``).
- ``edit-manifest/shard``: the same flow, for the shard runs of ``edit-manifest-sharded`` (which paces
  each shard at its share of the account's rate); limit ``--shard-limit``.
- ``edit-manifest-sharded/sharded``: the scale-out parent, ``concurrency_limit=1``.
- ``process-new-manifests/nightly`` (with ``--watch`` and ``--dest``): the scheduled flow on the cron
  (or ``--interval``) schedule; ``concurrency_limit=1`` with ``CANCEL_NEW``, so ticks never overlap.
  With ``--edit-name X`` it is ``nightly-X`` and starts runs of ``edit-manifest/X``.

Re-running the script updates the deployments in place (same names).
"""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from uuid import UUID

from prefect import Flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import WorkPoolCreate
from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
from prefect.exceptions import ObjectNotFound
from prefect.schedules import Cron, Interval, Schedule
from prefect.workers.process import ProcessWorker

PROJECT_DIR = Path(__file__).resolve().parent.parent
EDIT_ENTRYPOINT = "flows/edit_manifest.py:edit_manifest"
SHARDED_ENTRYPOINT = "flows/sharded.py:edit_manifest_sharded"
SCHEDULER_ENTRYPOINT = "flows/scheduled.py:process_new_manifests"
ALL_PARTS = ("edit", "shard", "sharded", "scheduler")


async def ensure_process_pool(name: str) -> None:
    """Create the process work pool if it does not exist (with the process worker's default template)."""
    async with get_client() as client:
        try:
            await client.read_work_pool(name)
        except ObjectNotFound:
            template = ProcessWorker.get_default_base_job_template()
            await client.create_work_pool(
                WorkPoolCreate(name=name, type="process", base_job_template=template)
            )


def _schedule(cron: str | None, interval_s: float | None, timezone: str) -> Schedule:
    if interval_s:
        return Interval(interval_s, timezone=timezone)
    return Cron(cron or "0 2 * * *", timezone=timezone)


async def deploy_all(
    pool: str,
    *,
    project_dir: str | Path = PROJECT_DIR,
    watch: str | None = None,
    dest: str | None = None,
    cron: str | None = "0 2 * * *",
    interval_s: float | None = None,
    timezone: str = "UTC",
    paused: bool = False,
    parameters: dict[str, Any] | None = None,
    edit_name: str = "edit",
    shard_limit: int = 8,
    parts: Sequence[str] = ALL_PARTS,
    run_timeout_s: float | None = None,
    poll_interval_s: float = 5.0,
) -> dict[str, UUID]:
    """Create or update the deployments; returns their ids by ``flow/deployment`` name."""
    unknown = set(parts) - set(ALL_PARTS)
    if unknown:
        raise ValueError(f"unknown deployment part(s) {sorted(unknown)}; choose from {ALL_PARTS}")
    if "scheduler" in parts and not (watch and dest):
        parts = [p for p in parts if p != "scheduler"]
    await ensure_process_pool(pool)
    source = str(Path(project_dir).resolve())
    params = dict(parameters or {})
    common: dict[str, Any] = {"work_pool_name": pool, "print_next_steps": False}
    ids: dict[str, UUID] = {}
    if {"edit", "shard"} & set(parts):
        edit = await Flow.afrom_source(source=source, entrypoint=EDIT_ENTRYPOINT)
        if "edit" in parts:
            ids[f"edit-manifest/{edit_name}"] = await edit.adeploy(
                name=edit_name,
                concurrency_limit=ConcurrencyLimitConfig(
                    limit=1, collision_strategy=ConcurrencyLimitStrategy.ENQUEUE
                ),
                description="One manifest, one account: runs queue, never overlap (the account's 2 req/s).",
                **common,
            )
        if "shard" in parts:
            ids["edit-manifest/shard"] = await edit.adeploy(
                name="shard",
                concurrency_limit=ConcurrencyLimitConfig(
                    limit=shard_limit, collision_strategy=ConcurrencyLimitStrategy.ENQUEUE
                ),
                description="Shard runs of edit-manifest-sharded, each paced at its share of the rate.",
                **common,
            )
    if "sharded" in parts:
        sharded = await Flow.afrom_source(source=source, entrypoint=SHARDED_ENTRYPOINT)
        ids["edit-manifest-sharded/sharded"] = await sharded.adeploy(
            name="sharded",
            concurrency_limit=ConcurrencyLimitConfig(
                limit=1, collision_strategy=ConcurrencyLimitStrategy.ENQUEUE
            ),
            description="One manifest split into shards run on the pool's workers; one consolidated report.",
            **common,
        )
    if "scheduler" in parts:
        scheduler = await Flow.afrom_source(source=source, entrypoint=SCHEDULER_ENTRYPOINT)
        # One scheduler per edit deployment (per account): "nightly", "nightly-<edit name>", ...
        scheduler_name = "nightly" if edit_name == "edit" else f"nightly-{edit_name}"
        ids[f"process-new-manifests/{scheduler_name}"] = await scheduler.adeploy(
            name=scheduler_name,
            schedules=[_schedule(cron, interval_s, timezone)],
            paused=paused,
            parameters={
                "prefix": watch,
                "dest": dest,
                "edit_deployment": f"edit-manifest/{edit_name}",
                "parameters": params,
                "run_timeout_s": run_timeout_s,
                "poll_interval_s": poll_interval_s,
            },
            concurrency_limit=ConcurrencyLimitConfig(
                limit=1, collision_strategy=ConcurrencyLimitStrategy.CANCEL_NEW
            ),
            description=f"Runs every new manifest under {watch} (markers: {dest}/_watch/).",
            **common,
        )
    return ids


def _parse_param(text: str) -> tuple[str, Any]:
    name, sep, raw = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"--param wants NAME=VALUE, got {text!r}")
    try:
        return name, json.loads(raw)
    except ValueError:
        return name, raw  # a bare string


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.deploy", description=__doc__.split("\n\n")[0])
    parser.add_argument("--pool", default="qwenedit", help="process work pool (created if missing)")
    parser.add_argument("--project-dir", default=str(PROJECT_DIR), help="code location on every worker")
    parser.add_argument("--watch", help="prefix the scheduler lists, e.g. s3://bucket/incoming/")
    parser.add_argument("--dest", help="where the scheduler's runs write, e.g. s3://bucket/edited/")
    parser.add_argument("--cron", default="0 2 * * *", help='cron schedule (default "0 2 * * *")')
    parser.add_argument("--interval", type=float, help="interval schedule in seconds (instead of --cron)")
    parser.add_argument("--timezone", default="UTC")
    parser.add_argument("--paused", action="store_true", help="create the schedule paused")
    parser.add_argument("--edit-name", default="edit", help="name of the edit deployment (one per account)")
    parser.add_argument("--shard-limit", type=int, default=8)
    parser.add_argument(
        "--run-timeout", type=float, help="scheduler: stop waiting for a run after this many s"
    )
    parser.add_argument("--poll-interval", type=float, default=5.0, help="scheduler: run state poll, s")
    parser.add_argument(
        "--param",
        action="append",
        type=_parse_param,
        default=[],
        help="a RunOptions field NAME=VALUE (JSON value, else text) the scheduler gives every edit run, "
        "e.g. api_key_env=KEY_B or rates=1/s",
    )
    parser.add_argument("--only", default=",".join(ALL_PARTS), help=f"comma list of {', '.join(ALL_PARTS)}")
    args = parser.parse_args(argv)
    ids = asyncio.run(
        deploy_all(
            args.pool,
            project_dir=args.project_dir,
            watch=args.watch,
            dest=args.dest,
            cron=args.cron,
            interval_s=args.interval,
            timezone=args.timezone,
            paused=args.paused,
            parameters=dict(args.param),
            edit_name=args.edit_name,
            shard_limit=args.shard_limit,
            parts=[p.strip() for p in args.only.split(",") if p.strip()],
            run_timeout_s=args.run_timeout,
            poll_interval_s=args.poll_interval,
        )
    )
    for name, deployment_id in ids.items():
        print(f"{name}\t{deployment_id}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
