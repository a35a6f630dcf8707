"""``process_new_manifests``: the scheduled flow that runs every new manifest dropped under a prefix.

Each tick (the deployment's cron schedule) lists ``prefix`` (``s3://bucket/incoming/`` or a folder),
and for every ``.csv`` / ``.jsonl`` manifest without a current *marker* it runs the ``edit_manifest``
deployment (``edit-manifest/edit``) and waits for it, one manifest at a time.

- **No single file stops a tick.** Each manifest is handled in its own ``try``: a manifest that cannot
  be run (an unreadable or oversized marker, a name that collides, a bad manifest, a run that failed)
  becomes one ``failed`` row of the tick, with its reason, and the tick goes on with the next one.
- **Markers** live under ``{dest}/_watch/{manifest key}.json``, never in the watched prefix: whoever can
  drop a manifest cannot forge its marker. A marker is read only if it is at most ``MARKER_MAX_BYTES``
  and a flat JSON object; anything else is ignored (the manifest runs again; the ledger skips the jobs
  already done) and the row says so. It records the manifest's version (S3 ETag, else the content's
  SHA-256), the outcome and the run:
  - ``processed``: the run ended Completed and not stopped;
  - ``failed``: the run refused this version of the manifest (``ManifestInvalid`` and its subclasses:
    bad rows, a policy breach), so it would fail the same way again: not tried again until a new
    version (a new ETag) is dropped.
  A run that stopped (a cap, a signal, the breaker), crashed or was cancelled writes no marker: the next
  tick tries again, and the ledger skips what is done.
- **Destinations cannot collide.** A manifest writes to ``{dest}/{key without its suffix}/`` (the layout
  of earlier versions, so their ledgers keep skipping what they did). Two manifests whose destinations
  are the same (``a.csv`` and ``a.jsonl``) or nested (``x.csv`` and ``x/y.csv``) are both refused, each
  naming the other, until one is renamed; so is a name whose destination would be a reserved ``_``
  folder (``_watch.csv``). Refusing costs nothing: no run, no marker, re-checked each tick.
- **Exactly once.** Each run is started with ``idempotency_key = manifest URI + version``: Prefect
  returns the existing flow run for a key instead of creating a second one. So a tick that crashed
  after starting a run (or after the run finished but before the marker was written) re-attaches to
  that same run on the next tick. Only if that run ended without finishing its work is a new attempt
  made (with the key suffixed ``#attempt-N``).
- **Spend caps.** Every run gets ``spend_ledger = dest`` (unless the deployment names one), so all the
  watcher's runs count against the same daily / monthly caps; once a run stops at a shared cap, the
  tick starts no more runs (``not_started`` rows).
- **Inputs.** Where the deployment sets no ``allow_input_prefix``, a manifest dropped in ``s3://bucket/``
  may read ``s3://`` / ``https://`` inputs only from ``s3://bucket/`` (for a local watched folder, set
  ``allow_input_prefix`` in the deployment).
- **No overlap.** The scheduler's deployment has ``concurrency_limit=1`` with ``CANCEL_NEW``: a tick
  that comes while the previous one still runs is cancelled, never queued. The edit deployment has
  ``concurrency_limit=1``, so runs on the account never overlap, whoever starts them.
- **What the UI shows.** The tick's table artifact ``manifest-tick`` (one row per manifest: outcome,
  reason, run) and, per manifest run, a markdown artifact with a stable key (``watch-<name>-<hash>``) so
  the UI lists one manifest's nights as versions of one artifact. ``dest`` must lie outside ``prefix``
  (else a dropper could write markers); the tick refuses to start otherwise.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
from collections.abc import Awaitable, Callable, Iterable
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from prefect import flow
from prefect.artifacts import acreate_markdown_artifact, acreate_table_artifact
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import FlowRun
from prefect.deployments import arun_deployment

from flows.runlog import emit, forward_run_logs
from qwenedit.errors import ManifestInvalid
from qwenedit.options import RunOptions
from qwenedit.redact import redact
from qwenedit.run import new_run_id
from qwenedit.shards import MANIFEST_SUFFIXES
from qwenedit.storage import open_destination

log = logging.getLogger("qwenedit.scheduled")

EDIT_DEPLOYMENT = "edit-manifest/edit"
MARKER_FOLDER = "_watch"
MARKER_MAX_BYTES = 64 * 1024  # a marker is a few hundred bytes; anything bigger is not one of ours
SUMMARY_MAX_BYTES = 64 * 1024 * 1024
REASON_MAX_CHARS = 500
MAX_ATTEMPTS_PER_TICK = 20  # failed earlier attempts are looked up by key; each lookup is one API call
# The summary fields a marker and a manifest's artifact keep (the whole summary is in _runs/{run}/).
SUMMARY_FIELDS = (
    "jobs",
    "by_status",
    "images_stored",
    "total_cost",
    "possibly_billed_jobs",
    "possibly_billed_cost",
    "billed_not_stored_images",
    "qa_flagged_jobs",
    "stopped_by",
)
# Stop causes that belong to the shared spend ledger: once one is reached, the tick starts no more runs.
SHARED_CAP_CAUSES = frozenset({"spend_cap", "daily_budget", "monthly_budget", "daily_cap", "monthly_cap"})


def is_manifest_key(key: str) -> bool:
    """A manifest to process: .csv / .jsonl, not in a ``_``- or ``.``-prefixed folder (reports, ledger)."""
    parts = key.split("/")
    if any(p.startswith(("_", ".")) for p in parts[:-1]) or parts[-1].startswith("."):
        return False
    return key.lower().endswith(MANIFEST_SUFFIXES)


def marker_key(key: str) -> str:
    """Where the marker of manifest ``key`` (relative to the watched prefix) lives, relative to ``dest``."""
    return f"{MARKER_FOLDER}/{key}.json"


def dest_stem(key: str) -> str:
    """``key`` without its suffix: ``a/b.csv`` → ``a/b``."""
    return key.rsplit(".", 1)[0]


def dest_for(dest: str, key: str) -> str:
    """The destination of one manifest: ``{dest}/{key without its suffix}`` (``a/b.csv`` → ``dest/a/b``)."""
    return f"{dest.rstrip('/')}/{dest_stem(key)}"


def refusals(keys: Iterable[str]) -> dict[str, str]:
    """The manifests that must not run, with the reason: a destination in a reserved ``_`` folder, or
    one that equals or contains another manifest's (``a.csv`` / ``a.jsonl``; ``x.csv`` / ``x/y.csv``)."""
    reasons: dict[str, str] = {}
    by_stem: dict[str, list[str]] = {}
    for key in keys:
        stem = dest_stem(key)
        if any(part.startswith("_") for part in stem.split("/")):
            reasons[key] = f"destination '{stem}/' would be a reserved '_' folder; rename the manifest"
        else:
            by_stem.setdefault(stem, []).append(key)
    for stem, owners in by_stem.items():
        if len(owners) > 1:
            for key in owners:
                names = ", ".join(repr(o) for o in owners if o != key)
                reasons[key] = f"destination '{stem}/' is also the destination of {names}; rename one of them"
        parts = stem.split("/")
        for i in range(1, len(parts)):  # an ancestor's destination holds this one's: their folders mix
            for other in by_stem.get("/".join(parts[:i]), []):
                for key in owners:
                    _collide(reasons, key, other, "inside the destination of")
                    _collide(reasons, other, key, "around the destination of")
    return reasons


def _collide(reasons: dict[str, str], key: str, other: str, how: str) -> None:
    reasons.setdefault(key, f"destination '{dest_stem(key)}/' is {how} {other!r}; rename one of them")


def idempotency_key(uri: str, version: str, attempt: int) -> str:
    base = f"qwenedit-manifest:{uri}#{version}"
    return base if attempt == 1 else f"{base}#attempt-{attempt}"


def is_current(marker: dict[str, Any] | None, version: str) -> bool:
    """True if the marker is about this version of the manifest (processed, or refused for good)."""
    return marker is not None and marker.get("version") == version


def manifest_version(watched: Any, key: str) -> str:
    """The S3 ETag of the manifest, or the SHA-256 of its content where the store has no ETag."""
    head = watched.head(key) or {}
    etag = head.get("etag")
    if etag:
        return f"etag:{str(etag).strip(chr(34))}"
    data = watched.get_bytes(key) or b""
    return "sha256:" + hashlib.sha256(data).hexdigest()


class BadMarker(ValueError):
    """A marker that is not one this watcher wrote: too big, not JSON, too deep, not an object."""


def read_bounded(store: Any, key: str, limit: int) -> bytes | None:
    """The object at ``key`` if it is at most ``limit`` bytes (None if absent); ``BadMarker`` if larger."""
    head = store.head(key)
    if head is None:
        return None
    if int(head.get("size") or 0) > limit:
        raise BadMarker(f"{head.get('size')} bytes, more than {limit}")
    data = store.get_bytes(key)
    if data is not None and len(data) > limit:  # replaced since the HEAD
        raise BadMarker(f"{len(data)} bytes, more than {limit}")
    return data


def parse_marker(data: bytes) -> dict[str, Any]:
    """A marker's content: a JSON object whose values are scalars or one level of nesting (what
    :func:`marker_record` writes); anything else is ``BadMarker`` (a deep nest never reaches the parser's
    recursion: the bytes are refused by their depth first)."""
    if _depth(data) > 4:
        raise BadMarker("nested deeper than a marker is")
    try:
        marker = json.loads(data)
    except (ValueError, RecursionError) as err:
        raise BadMarker(f"not JSON ({type(err).__name__})") from None
    if not isinstance(marker, dict) or not isinstance(marker.get("version"), str):
        raise BadMarker("not a marker object")
    return marker


def _depth(data: bytes) -> int:
    """The deepest bracket nesting in ``data`` (strings skipped), without parsing it."""
    depth = deepest = 0
    in_string = escaped = False
    for byte in data:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):
            depth += 1
            deepest = max(deepest, depth)
        elif byte in (0x5D, 0x7D):
            depth -= 1
    return deepest


def read_marker(store: Any, key: str) -> tuple[dict[str, Any] | None, str | None]:
    """The marker of manifest ``key`` and, if one is there but unusable, why it was ignored."""
    try:
        data = read_bounded(store, marker_key(key), MARKER_MAX_BYTES)
        return (parse_marker(data) if data is not None else None), None
    except BadMarker as err:
        log.warning("marker of %s ignored (%s); the manifest is run again", key, err)
        return None, f"marker ignored: {err}"


def compact_summary(summary: dict[str, Any] | None) -> dict[str, Any] | None:
    """The few summary fields a marker and a manifest's artifact keep."""
    if summary is None:
        return None
    return {name: summary.get(name) for name in SUMMARY_FIELDS if name in summary}


def refused_for_good(run: FlowRun) -> bool:
    """True if the run failed because of this version of the manifest itself (bad rows, a policy
    breach): another attempt would fail the same way."""
    state = run.state
    if state is None or not state.is_failed():
        return False
    match = re.search(r"encountered an exception:\s*(\w+)", state.message or "")
    return match is not None and match.group(1) in _subclass_names(ManifestInvalid)


def _subclass_names(cls: type) -> set[str]:
    names, todo = {cls.__name__}, [cls]
    while todo:
        sub: type
        for sub in todo.pop().__subclasses__():
            names.add(sub.__name__)
            todo.append(sub)
    return names


def stop_cause(summary: dict[str, Any] | None) -> str | None:
    stopped = (summary or {}).get("stopped_by")
    if not stopped:
        return None
    if isinstance(stopped, dict):
        return str(stopped.get("cause") or "stopped")
    return "stopped"


def stop_text(summary: dict[str, Any] | None) -> str:
    stopped = (summary or {}).get("stopped_by") or {}
    if not isinstance(stopped, dict):
        return "stopped"
    detail = stopped.get("reason") or stopped.get("message") or stopped.get("limit") or ""
    return f"stopped ({stopped.get('cause', 'stop')}{': ' + str(detail) if detail else ''})"


def artifact_key(uri: str) -> str:
    """A stable Prefect artifact key for one watched manifest: lowercase letters, digits and dashes."""
    name = uri.rstrip("/").rsplit("/", 1)[-1].rsplit(".", 1)[0]
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:32] or "manifest"
    return f"watch-{slug}-{hashlib.sha256(uri.encode('utf-8')).hexdigest()[:10]}"


def bucket_root(uri: str) -> str | None:
    """``s3://bucket/`` for an ``s3://`` URI, else None."""
    if not uri.startswith("s3://"):
        return None
    return "s3://" + uri[len("s3://") :].split("/", 1)[0] + "/"


def _reason(err: BaseException) -> str:
    text = redact(f"{type(err).__name__}: {err}")
    return text if len(text) <= REASON_MAX_CHARS else text[: REASON_MAX_CHARS - 1] + "…"


def _inside(dest: str, prefix: str) -> bool:
    d, p = dest.rstrip("/") + "/", prefix.rstrip("/") + "/"
    return d.startswith(p) or p.startswith(d)


async def _start_or_attach(
    deployment: str,
    uri: str,
    version: str,
    parameters: dict[str, Any],
    timeout_s: float | None,
    poll_interval_s: float,
    passed_over: Callable[[FlowRun], Awaitable[bool]],
) -> FlowRun:
    """Run the manifest once: attach to the run an earlier tick started for it, or start one. An earlier
    attempt that ended without finishing its work (``passed_over``) is skipped: the next key starts one."""
    for attempt in range(1, MAX_ATTEMPTS_PER_TICK + 1):
        key = idempotency_key(uri, version, attempt)
        # Look first without waiting: an earlier attempt that ended must not be waited for again.
        run = await arun_deployment(deployment, parameters=parameters, idempotency_key=key, timeout=0)
        state = run.state
        started_now = run_option(run, "run_id") == parameters["options"].get("run_id")
        if not started_now and state is not None and state.is_final() and await passed_over(run):
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


class Tick:
    """What one tick did, manifest by manifest (the flow's return value and its table artifact)."""

    OUTCOMES = ("processed", "stopped", "failed", "not_started", "skipped")

    def __init__(self, prefix: str, dest: str) -> None:
        self.prefix, self.dest = prefix, dest
        self.rows: dict[str, list[dict[str, Any]]] = {o: [] for o in self.OUTCOMES}
        self.found = 0
        self.cap_reached: str | None = None

    def add(self, outcome: str, uri: str, reason: str = "", **detail: Any) -> None:
        row = {"manifest": uri, "reason": reason, **{k: v for k, v in detail.items() if v is not None}}
        self.rows[outcome].append(row)
        level = logging.WARNING if outcome in ("failed", "stopped") else logging.INFO
        log.log(level, "%s: %s%s", uri, outcome, f" ({reason})" if reason else "")

    def to_dict(self) -> dict[str, Any]:
        return {"prefix": self.prefix, "dest": self.dest, "found": self.found, **self.rows}

    def table(self) -> list[dict[str, str]]:
        rows = [
            {
                "manifest": row["manifest"],
                "outcome": outcome,
                "reason": row.get("reason", ""),
                "run_id": str(row.get("run_id") or ""),
                "flow_run": str(row.get("flow_run") or ""),
            }
            for outcome in self.OUTCOMES
            for row in self.rows[outcome]
        ]
        return rows or [{"manifest": "", "outcome": "none", "reason": "no manifest under the prefix"}]


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
    was processed, stopped, failed, not started and skipped this tick. ``parameters`` are ``RunOptions``
    fields given to every edit run (rates, region, budget, api_key_env, report_dir, ...)."""
    with forward_run_logs():
        if _inside(dest, prefix):
            raise ValueError(
                f"dest {dest} and the watched prefix {prefix} overlap: a dropper could write markers; "
                "keep dest outside the prefix"
            )
        watched = open_destination(prefix)
        store = open_destination(dest)
        keys = sorted(
            k for k in await asyncio.to_thread(lambda: list(watched.list_keys())) if is_manifest_key(k)
        )
        tick = Tick(prefix, dest)
        tick.found = len(keys)
        log.info("tick: %d manifest(s) under %s", len(keys), prefix)
        refused = refusals(keys)
        for key in keys:
            uri = watched.uri(key)
            try:
                await _one(
                    tick,
                    watched,
                    store,
                    key,
                    uri,
                    refused.get(key),
                    edit_deployment,
                    parameters or {},
                    run_timeout_s,
                    poll_interval_s,
                )
            except Exception as err:  # one manifest, one row: never the whole tick
                tick.add("failed", uri, _reason(err))
        result = tick.to_dict()
        await _publish(tick)
        log.info(
            "tick done: %s",
            ", ".join(f"{len(tick.rows[o])} {o}" for o in Tick.OUTCOMES if tick.rows[o]) or "nothing to do",
        )
    return result


async def _one(
    tick: Tick,
    watched: Any,
    store: Any,
    key: str,
    uri: str,
    refusal: str | None,
    edit_deployment: str,
    parameters: dict[str, Any],
    run_timeout_s: float | None,
    poll_interval_s: float,
) -> None:
    """Handle one manifest: add exactly one row to ``tick`` (or raise, which the caller turns into one)."""
    if refusal is not None:
        tick.add("failed", uri, refusal)
        emit("qwenedit.watch.refused", uri, reason=refusal)
        return
    version = await asyncio.to_thread(manifest_version, watched, key)
    marker, marker_note = await asyncio.to_thread(read_marker, store, key)
    if marker is not None and is_current(marker, version):
        if marker.get("outcome") == "failed":
            reason = f"failed earlier ({marker.get('reason', '')}); drop a new version to retry"
            tick.add("skipped", uri, reason, run_id=marker.get("run_id"))
        else:
            tick.add("skipped", uri, "processed", run_id=marker.get("run_id"))
        return
    if tick.cap_reached is not None:
        tick.add("not_started", uri, f"spend cap reached in this tick: {tick.cap_reached}")
        return
    manifest_dest = dest_for(tick.dest, key)
    fields: dict[str, Any] = {**parameters, "manifest": uri, "dest": manifest_dest, "run_id": new_run_id()}
    if "spend_ledger" in RunOptions.model_fields and not parameters.get("spend_ledger"):
        fields["spend_ledger"] = tick.dest  # every run of this watcher counts against the same caps
    own_bucket = bucket_root(uri)
    if (
        own_bucket
        and "allow_input_prefix" in RunOptions.model_fields
        and not parameters.get("allow_input_prefix")
    ):
        fields["allow_input_prefix"] = [
            own_bucket
        ]  # a dropped manifest reads remote inputs from its bucket only
    options = RunOptions.model_validate(fields)
    run_parameters = {"options": options.model_dump(mode="json")}

    async def passed_over(run: FlowRun) -> bool:
        if refused_for_good(run):
            return False  # the same version fails the same way: adopt that answer
        if run.state is None or not run.state.is_completed():
            return True
        summary = await asyncio.to_thread(_read_summary, _run_dest(run, manifest_dest), _run_id(run))
        return stop_cause(summary) is not None

    run = await _start_or_attach(
        edit_deployment, uri, version, run_parameters, run_timeout_s, poll_interval_s, passed_over
    )
    state = run.state.type.value if run.state is not None else "UNKNOWN"
    run_id, run_dest = _run_id(run), _run_dest(run, manifest_dest)
    ids = {"run_id": run_id, "flow_run": run.name}
    notes = {"note": marker_note} if marker_note else {}
    if run.state is None or not run.state.is_final():
        tick.add("failed", uri, f"still {state} after the tick's wait; the next tick attaches to it", **ids)
        return
    if refused_for_good(run):
        reason = redact(run.state.message or state)[:REASON_MAX_CHARS]
        await _write_marker(store, key, uri, version, run, run_dest, "failed", reason, None)
        tick.add("failed", uri, reason + " (not retried until a new version is dropped)", **ids, **notes)
        return
    if not run.state.is_completed():
        reason = f"run ended {state}: {redact(run.state.message or '')[:200]}; the next tick retries"
        tick.add("failed", uri, reason, **ids, **notes)
        return
    summary = compact_summary(await asyncio.to_thread(_read_summary, run_dest, run_id))
    await _publish_manifest(uri, run_id, summary)
    cause = stop_cause(summary)
    if cause is not None:
        if cause in SHARED_CAP_CAUSES:
            tick.cap_reached = stop_text(summary)
        tick.add("stopped", uri, stop_text(summary) + "; the next tick continues it", **ids, **notes)
        return
    await _write_marker(store, key, uri, version, run, run_dest, "processed", "", summary)
    tick.add("processed", uri, "", **ids, **notes)


def marker_record(
    uri: str, version: str, run: FlowRun, dest: str, outcome: str, reason: str, summary: dict[str, Any] | None
) -> dict[str, Any]:
    """The marker of one manifest version (flat: it must pass :func:`parse_marker`)."""
    return {
        "manifest": uri,
        "version": version,
        "outcome": outcome,
        "reason": reason,
        "run_id": _run_id(run),
        "flow_run_id": str(run.id),
        "flow_run_name": run.name,
        "dest": dest,
        "state": run.state.type.value if run.state is not None else "UNKNOWN",
        "processed_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "summary": summary,
    }


async def _write_marker(
    store: Any,
    key: str,
    uri: str,
    version: str,
    run: FlowRun,
    dest: str,
    outcome: str,
    reason: str,
    summary: dict[str, Any] | None,
) -> None:
    record = marker_record(uri, version, run, dest, outcome, reason, summary)
    data = (json.dumps(record, indent=2, ensure_ascii=False) + "\n").encode("utf-8")
    await asyncio.to_thread(store.put_bytes, marker_key(key), data, "application/json")


def run_option(run: FlowRun, name: str) -> Any:
    """One of the ``RunOptions`` an edit flow run was started with."""
    options = run.parameters.get("options")
    return options.get(name) if isinstance(options, dict) else None


def _run_id(run: FlowRun) -> str:
    return str(run_option(run, "run_id"))  # an attached run keeps the id it was started with


def _run_dest(run: FlowRun, default: str) -> str:
    return str(run_option(run, "dest") or default)


def _read_summary(dest: str, run_id: str) -> dict[str, Any] | None:
    data = read_bounded(open_destination(dest), f"_runs/{run_id}/summary.json", SUMMARY_MAX_BYTES)
    if data is None:
        return None
    summary = json.loads(data)
    return summary if isinstance(summary, dict) else None


def manifest_markdown(uri: str, run_id: str, summary: dict[str, Any] | None) -> str:
    """One night of one manifest: counts, spend, QA, stop (the stable-key artifact's content)."""
    s = summary or {}
    by_status = s.get("by_status") or {}
    spend = ", ".join(f"{_money(a)} {c}" for c, a in (s.get("total_cost") or {}).items()) or "0"
    lines = [
        f"### {uri}",
        "",
        "| run | jobs | succeeded | skipped | failed | not attempted | spend | QA flagged | possibly billed |",
        "|---|---|---|---|---|---|---|---|---|",
        f"| `{run_id}` | {s.get('jobs', '')} | {by_status.get('succeeded', 0)} | {by_status.get('skipped', 0)} "
        f"| {by_status.get('failed', 0)} | {by_status.get('not_attempted', 0)} | {spend} "
        f"| {s.get('qa_flagged_jobs', 0)} | {s.get('possibly_billed_jobs', 0)} |",
    ]
    if stop_cause(s):
        lines += ["", f"**{stop_text(s)}**"]
    return "\n".join(lines)


def _money(amount: Any) -> str:
    try:
        return str(Decimal(str(amount)))
    except InvalidOperation:
        return str(amount)


async def _publish_manifest(uri: str, run_id: str, summary: dict[str, Any] | None) -> None:
    try:
        await acreate_markdown_artifact(
            key=artifact_key(uri),
            markdown=manifest_markdown(uri, run_id, summary),
            description=f"Nightly results of {uri} (one version per run)",
        )
    except Exception as err:  # no Prefect API: the markers and reports are the record
        log.info("manifest artifact not published: %s", type(err).__name__)


async def _publish(tick: Tick) -> None:
    try:
        await acreate_table_artifact(
            key="manifest-tick",
            table=tick.table(),
            description=f"One tick of the watcher on {tick.prefix}: every manifest, its outcome and why",
        )
    except Exception as err:  # no Prefect API: the markers are the record
        log.info("artifact not published: %s", type(err).__name__)
    failed = tick.rows["failed"]
    if failed or tick.cap_reached:
        emit(
            "qwenedit.watch.tick-problems",
            tick.prefix,
            failed=len(failed),
            cap_reached=tick.cap_reached or "",
            manifests=", ".join(r["manifest"] for r in failed)[:1000],
        )
