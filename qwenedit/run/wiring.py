"""Wiring a run: every check that must pass before anything is spent, then the services its jobs use.

``prepare`` checks the options and the whole manifest once (price file, budget currency, every row
validated and quoted: ``ManifestInvalid``). ``check_destination`` proves the destination listable and
writable (``DestinationUnusable``) before the first call. ``wire`` builds a run's fixed services (API
client, destination, ledger, pacers, input resolver, thread pool, HTTP client for copies) and its
mutable state (result spool, budget, counters), registering every resource on the caller's exit
stack. ``pacer_pool`` builds the pacers from the options' rate limits and the model table.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from qwenedit.api import api_key_from_env
from qwenedit.budget import Budget, check_guards
from qwenedit.catalog import ModelTable, load_models, normalize_model, normalize_region
from qwenedit.errors import DestinationUnusable, ManifestInvalid, MixedCurrencies
from qwenedit.inputs import InputResolver
from qwenedit.ledger import Ledger
from qwenedit.manifest import (
    MIB,
    ManifestLimits,
    ManifestSource,
    Validation,
    manifest_base,
    validate_manifest,
)
from qwenedit.options import RunOptions
from qwenedit.pacer import PacerPool
from qwenedit.pipeline import DEFAULT_OUTPUT_HOSTS, RunContext, RunServices, RunState, RunStats, Served
from qwenedit.policy import policy_for
from qwenedit.rates import model_limits, with_stated_limits
from qwenedit.redact import install_log_redaction
from qwenedit.regions import run_routes
from qwenedit.report import ResultSpool
from qwenedit.retry import RetryPolicy
from qwenedit.rollups import Rollups
from qwenedit.spend import open_guard
from qwenedit.stopping import StoppableClient
from qwenedit.storage import Destination, make_s3_client, open_destination
from qwenedit.window import Window

log = logging.getLogger("qwenedit.run")


def new_run_id() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ-") + uuid.uuid4().hex[:6]


def check_destination(destination: Destination) -> None:
    """Fail before the first call if the destination cannot be read and written.

    A missing bucket or refused credentials would otherwise fail every job after minutes of store
    retries, and a read-only key would let every call be paid for and then not be stored.
    """
    try:
        next(iter(destination.list_keys("_ledger/")), None)
        destination.put_bytes(".qwenedit-write-check", b"ok\n", "text/plain")
    except Exception as err:
        response = getattr(err, "response", None)
        code = response.get("Error", {}).get("Code") if isinstance(response, dict) else None
        reason = code or f"{type(err).__name__}: {err}"[:200]
        raise DestinationUnusable(f"destination {destination.uri()} cannot be used: {reason}") from None


@dataclass(frozen=True)
class Prepared:
    """A manifest checked against a run's options: its validation and quote, the price table."""

    validation: Validation
    prices: ModelTable


def prepare(options: RunOptions, source: ManifestSource | None = None) -> Prepared:
    """Every check on the options and the manifest that must pass before anything is spent (blocking).
    ``source``: the manifest already opened (the run's own copy), else ``options.manifest``.

    Raises ``PricingError`` (bad price file, budget, caps or ``approve_above`` in another currency than
    the jobs' prices), ``ManifestError`` (unreadable file) or ``ManifestInvalid`` (rows with errors,
    breaches of the run's policy among them: ``qwenedit.policy``).
    """
    prices = with_stated_limits(load_models(options.prices), options.rates)
    budget = options.budget_amount()
    policy = policy_for(options)  # a row that breaks it is a row error: refused before any call
    manifest = source or options.manifest
    validation = validate_manifest(manifest, **manifest_reading(options, prices), policy=policy)
    if not validation.ok:
        raise ManifestInvalid(validation)
    check_guards(budget, options.spend_caps(), validation.quote.currencies)
    approve_above = options.approve_above_amount()
    others = sorted(set(validation.quote.currencies) - {approve_above[1]}) if approve_above else []
    if approve_above is not None and others:
        raise MixedCurrencies(
            f"--approve-above is in {approve_above[1]} but jobs of this manifest are priced in "
            f"{', '.join(others)}: give the amount in that currency"
        )
    return Prepared(validation, prices)


def manifest_reading(options: RunOptions, prices: ModelTable) -> dict[str, Any]:
    """How a run reads its manifest (the same for validating it and for iterating its jobs)."""
    return {
        "region": options.region,
        "model": options.model,
        "prices": prices,
        "input_root": options.input_root,
        "prompt_template": options.prompt_template,
        "limits": manifest_limits(options),
        "allow_private_urls": options.allow_private_urls,
    }


def manifest_limits(options: RunOptions) -> ManifestLimits:
    """The options' bounds on reading a manifest (file size, decompressed size, rows)."""
    return ManifestLimits(
        max_bytes=options.max_manifest_mib * MIB,
        max_decompressed_bytes=options.max_manifest_decompressed_mib * MIB,
        max_rows=options.max_manifest_rows,
    )


@dataclass(frozen=True)
class Wired:
    """A run's pieces once every check passed."""

    validation: Validation
    source: ManifestSource  # the run's one copy of its manifest: validated, quoted, approved and run
    resolver: InputResolver  # image references: identity (planning), data URIs and presigned URLs
    window: Window  # calls in flight, per model lane
    ctx: RunContext  # what every job is given: the fixed services and the mutable state


async def wire(
    options: RunOptions,
    run_id: str,
    out_dir: Path,
    stack: contextlib.AsyncExitStack,
    *,
    stats: RunStats,
    abandon: asyncio.Event,
    stopping: Callable[[], bool],
) -> Wired:
    """Check everything, then build the run's services and state; resources close with ``stack``."""
    o = options
    routes = run_routes(o)  # one endpoint and key per region a row may name (qwenedit.regions)
    keys = {region: api_key_from_env(route.key_env or o.api_key_env) for region, route in routes.items()}
    install_log_redaction(*keys.values())  # no credential in any log line, whoever logs it
    own = normalize_region(o.region)
    api_key = keys[own]
    # One copy of the manifest for the whole run (a remote one is downloaded once): what runs is what
    # was validated against the policy, quoted and approved; a dropper cannot swap it in between.
    source = await asyncio.to_thread(stack.enter_context, ManifestSource.open(o.manifest, manifest_limits(o)))
    prepared = await asyncio.to_thread(prepare, o, source)
    budget = o.budget_amount()
    prices = prepared.prices
    for note in prepared.validation.notices:
        log.warning("%s", note)
    stats.total_jobs = prepared.validation.job_count
    destination = open_destination(o.dest)
    await asyncio.to_thread(check_destination, destination)  # before anything is paid for
    endpoints = {region: str(route.endpoint) for region, route in routes.items()}
    endpoint = endpoints[own]
    resolver = InputResolver(
        input_root=o.input_root, manifest_dir=manifest_base(o.manifest), s3_client_factory=make_s3_client
    )
    stack.callback(resolver.close)
    io = ThreadPoolExecutor(max_workers=16, thread_name_prefix="qwenedit-io")
    stack.callback(io.shutdown, wait=True)
    pacers = pacer_pool(o, prices)
    models = sorted({normalize_model(line.model) for line in prepared.validation.quote.lines})
    window = Window(cap=o.max_in_flight, rates=pacers.rates(models))  # UnknownLimit: refused here
    served: dict[str, Served] = {}
    for region, url in endpoints.items():  # one client per region: a row is sent to its own
        region_client = await stack.enter_async_context(
            StoppableClient(
                keys[region],
                url,
                timeout=o.timeout_s,
                max_connections=window.bound + 8,
                abandon=abandon,
                stopping=stopping,
            )
        )
        served[region] = Served(region, region_client, url, keys[region])
    limits = httpx.Limits(max_connections=32, max_keepalive_connections=32)
    http = stack.enter_context(httpx.Client(timeout=httpx.Timeout(60.0, connect=10.0), limits=limits))
    caps, shared = o.spend_caps(), None
    if caps.active:  # the caps shared by every run of the spend ledger (qwenedit.spend)
        worst = prepared.validation.quote.total(caps.currency)
        shared = await asyncio.to_thread(open_guard, o.spend_ledger_uri(), caps, run_id, expected=worst)
        stack.push_async_callback(shared.settle)  # gives back what the run did not spend
    spool = ResultSpool(out_dir / "results.jsonl")
    stack.callback(spool.close)
    hosts = (
        o.allowed_output_hosts + DEFAULT_OUTPUT_HOSTS + tuple(_host_pattern(u) for u in endpoints.values())
    )
    services = RunServices(
        run_id=run_id,
        client=served[own].client,
        endpoint=endpoint,
        api_key=api_key,
        served=served,
        dest=destination,
        ledger=Ledger(destination),
        prices=prices,
        pacers=pacers,
        resolve_input=resolver.resolve,
        locate_input=lambda ref: resolver.locate(ref).location,
        http=http,
        io=io,
        allowed_output_hosts=hosts,
        api_retry=RetryPolicy(o.max_attempts, o.backoff_base, o.backoff_cap),
        store_retry=RetryPolicy(o.store_attempts, o.backoff_base, o.backoff_cap),
        throttle_penalty=o.throttle_penalty,
        recall_expired=o.recall_expired,
        qa=o.qa,
        qa_retries=o.qa_retries,
        on_latency=window.observe_latency,
    )
    state = RunState(
        spool=spool,
        budget=Budget(budget[0], budget[1], shared)
        if budget is not None
        else Budget(None, caps.currency, shared),
        stats=stats,
        rollups=Rollups(o.group_by) if o.group_by else None,
    )
    return Wired(prepared.validation, source, resolver, window, RunContext(services, state))


def _host_pattern(endpoint: str) -> str:
    parts = urlsplit(endpoint)
    return f"{parts.hostname}:{parts.port}" if parts.port else str(parts.hostname)


def pacer_pool(options: RunOptions, table: ModelTable) -> PacerPool:
    """Pacers at each model's limit: the options' ``rates``, else the table's, times ``rate_share``."""
    return PacerPool(model_limits(options.rates, table, options.rate_share))
