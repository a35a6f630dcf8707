"""``process_new_manifests``: the scheduled flow that runs every new manifest dropped under a prefix.

Each tick (the deployment's cron schedule) lists ``prefix`` (``s3://bucket/incoming/`` or a folder),
and for every ``.csv`` / ``.jsonl`` manifest without a current *processed marker* it runs the
``edit_manifest`` deployment (``edit-manifest/edit``) and waits for it, one manifest at a time.

- **Marker.** ``<manifest>.processed.json`` next to the manifest, written only after its run ended
  Completed: the manifest's version (S3 ETag, else the content's SHA-256), the run id, the flow run,
  and the run's summary. A manifest replaced by a new version is processed again (the ledger skips
  the jobs already done). A run that fails or crashes writes no marker: the next tick tries again.
- **Exactly once.** Each run is started with ``idempotency_key = manifest URI + version``: Prefect
  returns the existing flow run for a key instead of creating a second one. So a tick that crashed
  after starting a run (or after the run finished but before the marker was written) re-attaches to
  that same run on the next tick instead of starting another. Only if that run ended failed is a new
  attempt made (with the key suffixed ``#attempt-N``).
- **No overlap.** The scheduler's deployment has ``concurrency_limit=1`` with ``CANCEL_NEW``: a tick
  that comes while the previous one still runs is cancelled, never queued. The edit deployment has
  ``concurrency_limit=1``, so runs on the account never overlap, whoever starts them.
- **Where outputs go.** Each manifest gets its own destination, ``{dest}/{name without suffix}/``, so
  two drops that reuse job ids never share a ledger. Keep ``dest`` outside ``prefix`` (keys under
  ``_``-prefixed folders such as ``_runs/`` are ignored anyway, so reports are never taken for drops).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from datetime import UTC, datetime
from typing import Any

from prefect import flow
from prefect.artifacts import acreate_table_artifact
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import FlowRun
from prefect.deployments import arun_deployment

from qwenedit.options import RunOptions
from qwenedit.run import new_run_id
from qwenedit.shards import MANIFEST_SUFFIXES
from qwenedit.storage import open_destination

log = logging.getLogger("qwenedit.scheduled")

EDIT_DEPLOYMENT = "edit-manifest/edit"
MARKER_SUFFIX = ".processed.json"
MAX_ATTEMPTS_PER_TICK = 20  # failed earlier attempts are looked up by key; each lookup is one API call


def is_manifest_key(key: str) -> bool:
    """A manifest to process: .csv / .jsonl, not in a ``_``- or ``.``-prefixed folder (reports, ledger)."""
    parts = key.split("/")
    if any(p.startswith(("_", ".")) for p in parts[:-1]) or parts[-1].startswith("."):
        return False
    return key.lower().endswith(MANIFEST_SUFFIXES)


def marker_key(key: str) -> str:
    return key + MARKER_SUFFIX


def dest_for(dest: str, key: str) -> str:
    """The destination of one manifest: ``{dest}/{key without its suffix}`` (``a/b.csv`` → ``dest/a/b``)."""
    stem = key.rsplit(".", 1)[0]
    return f"{dest.rstrip('/')}/{stem}"


def idempotency_key(uri: str, version: str, attempt: int) -> str:
    base = f"qwenedit-manifest:{uri}#{version}"
    return base if attempt == 1 else f"{base}#attempt-{attempt}"


def is_current(marker: dict[str, Any] | None, version: str) -> bool:
    """True if the marker says this version of the manifest was processed."""
    return marker is not None and marker.get("version") == version


def manifest_version(watched: Any, key: str) -> str:
    """The S3 ETag of the manifest, or the SHA-256 of its content where the store has no ETag."""
    head = watched.head(key) or {}
    etag = head.get("etag")
    if etag:
        return f"etag:{str(etag).strip(chr(34))}"
    data = watched.get_bytes(key) or b""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def read_marker(watched: Any, key: str) -> dict[str, Any] | None:
    data = watched.get_bytes(marker_key(key))
    if data is None:
        return None
    try:
        marker = json.loads(data)
    except ValueError:
        log.warning("marker of %s is not JSON; the manifest will be processed again", key)
        return None
    return marker if isinstance(marker, dict) else None


async def _start_or_attach(
    deployment: str,
    uri: str,
    version: str,
    parameters: dict[str, Any],
    timeout_s: float | None,
    poll_interval_s: float,
) -> FlowRun:
    """Run the manifest once: attach to the run an earlier tick started for it, or start one."""
    for attempt in range(1, MAX_ATTEMPTS_PER_TICK + 1):
        key = idempotency_key(uri, version, attempt)
        # Look first without waiting: an earlier attempt that ended failed must not be waited for again.
        run = await arun_deployment(deployment, parameters=parameters, idempotency_key=key, timeout=0)
        state = run.state
        started_now = run_option(run, "run_id") == parameters["options"].get(
            "run_id"
        )  # else an earlier tick's
        if not started_now and state is not None and state.is_final() and not state.is_completed():
            log.info(
                "attempt %d for %s ended %s; starting attempt %d", attempt, uri, state.type.value, attempt + 1
            )
            continue
        if state is not None and state.is_final():
            return run
        return await _wait(run, timeout_s, poll_interval_s)
    raise RuntimeError(
        f"{uri}: {MAX_ATTEMPTS_PER_TICK} attempts failed; fix the cause or remove it from the prefix"
    )


async def _wait(run: FlowRun, timeout_s: float | None, poll_interval_s: float) -> FlowRun:
    loop = asyncio.get_running_loop()
    deadline = None if timeout_s is None else loop.time() + timeout_s
    async with get_client() as client:
        while True:
            run = await client.read_flow_run(run.id)
            if run.state is not None and run.state.is_final():
                return run
            if deadline is not None and loop.time() >= deadline:
                return run
            await asyncio.sleep(poll_interval_s)


@flow(name="process-new-manifests", log_prints=False)
async def process_new_manifests(
    prefix: str,
    dest: str,
    edit_deployment: str = EDIT_DEPLOYMENT,
    parameters: dict[str, Any] | None = None,
    run_timeout_s: float | None = None,
    poll_interval_s: float = 5.0,
) -> dict[str, Any]:
    """Run ``edit_deployment`` once for every manifest under ``prefix`` not yet processed; returns what
    was processed, skipped and failed this tick. ``parameters`` are ``RunOptions`` fields given to every
    edit run (rates, region, budget, api_key_env, report_dir, ...)."""
    watched = open_destination(prefix)
    keys = sorted(k for k in await asyncio.to_thread(lambda: list(watched.list_keys())) if is_manifest_key(k))
    tick: dict[str, Any] = {
        "prefix": prefix,
        "found": len(keys),
        "processed": [],
        "skipped": [],
        "failed": [],
    }
    for key in keys:
        uri = watched.uri(key)
        version = await asyncio.to_thread(manifest_version, watched, key)
        marker = await asyncio.to_thread(read_marker, watched, key)
        if is_current(marker, version):
            tick["skipped"].append({"manifest": uri, "run_id": (marker or {}).get("run_id")})
            continue
        manifest_dest = dest_for(dest, key)
        options = RunOptions.model_validate(
            {**(parameters or {}), "manifest": uri, "dest": manifest_dest, "run_id": new_run_id()}
        )
        run_parameters = {"options": options.model_dump(mode="json")}
        try:
            run = await _start_or_attach(
                edit_deployment, uri, version, run_parameters, run_timeout_s, poll_interval_s
            )
        except Exception as err:
            log.error("%s: could not run: %s", uri, err)
            tick["failed"].append({"manifest": uri, "error": f"{type(err).__name__}: {err}"})
            continue
        state = run.state.type.value if run.state is not None else "UNKNOWN"
        run_id = str(run_option(run, "run_id"))  # an attached run keeps the id it was started with
        run_dest = str(run_option(run, "dest") or manifest_dest)
        if state != "COMPLETED":
            log.error("%s: run %s ended %s; no marker written, the next tick retries", uri, run.name, state)
            tick["failed"].append({"manifest": uri, "flow_run": run.name, "state": state})
            continue
        summary = await asyncio.to_thread(_read_summary, run_dest, run_id)
        marker = {
            "manifest": uri,
            "version": version,
            "run_id": run_id,
            "flow_run_id": str(run.id),
            "flow_run_name": run.name,
            "deployment": edit_deployment,
            "dest": run_dest,
            "state": state,
            "processed_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "summary": summary,
        }
        data = (json.dumps(marker, indent=2, ensure_ascii=False) + "\n").encode("utf-8")
        await asyncio.to_thread(watched.put_bytes, marker_key(key), data, "application/json")
        tick["processed"].append({"manifest": uri, "run_id": run_id, "flow_run": run.name})
        log.info("%s: processed by run %s", uri, run_id)
    await _publish(tick)
    return tick


def run_option(run: FlowRun, name: str) -> Any:
    """One of the ``RunOptions`` an edit flow run was started with."""
    options = run.parameters.get("options")
    return options.get(name) if isinstance(options, dict) else None


def _read_summary(dest: str, run_id: str) -> dict[str, Any] | None:
    data = open_destination(dest).get_bytes(f"_runs/{run_id}/summary.json")
    return json.loads(data) if data is not None else None


async def _publish(tick: dict[str, Any]) -> None:
    rows = [
        {"manifest": item["manifest"], "outcome": outcome, "detail": json.dumps(item)}
        for outcome in ("processed", "skipped", "failed")
        for item in tick[outcome]
    ]
    try:
        await acreate_table_artifact(key="manifest-tick", table=rows or [{"manifest": "", "outcome": "none"}])
    except Exception as err:  # no Prefect API: the markers are the record
        log.info("artifact not published: %s", type(err).__name__)
