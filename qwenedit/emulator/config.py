"""Every knob of the DashScope emulator, in one dataclass, plus the tables of real models and errors.

``EmulatorConfig`` is plain data: the app reads it on every request, so changing a field at runtime
(``EmulatorServer.configure`` / ``POST /_emulator/config``) takes effect on the next request.
Fields that shape the server itself (``output_dir``) are fixed once the app starts.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from qwenedit.catalog import builtin_models
from qwenedit.catalog.limits import MAX_DATA_URI_BYTES, MAX_IMAGE_BYTES, MAX_N
from qwenedit.emulator.clock import Clock
from qwenedit.emulator.ratelimit import rule_for_rps

RenderMode = Literal["full", "fast"]

GENERATION_PATH = "/api/v1/services/aigc/multimodal-generation/generation"


@dataclass(frozen=True)
class ModelSpec:
    """What one model accepts: its maximum n, whether it honours ``size``, its rate limit."""

    max_n: int = MAX_N
    accepts_size: bool = True
    # Requests allowed per window. ``None``, or a per-second limit (window 1 s), means "the
    # server-wide ``rps``" (2.0 by default, the table's figure; tests raise it to run fast).
    rate_limit: tuple[int, float] | None = None
    size_only_with_n1: bool = True  # with ``strict_size_n``: size is refused when n > 1
    # The qwen-image-2.0 generation: the output area (W×H) in [min_pixels, max_pixels] instead of
    # each side in [MIN_SIDE, MAX_SIDE].
    min_pixels: int | None = None
    max_pixels: int | None = None
    prompt_chars: int | None = None  # the model's own prompt length (None: the server-wide one)


def default_models() -> dict[str, ModelSpec]:
    """The image-edit models the real endpoint serves, from the one model table (qwenedit/catalog/models.py)."""
    out = {}
    for name, spec in builtin_models().specs().items():
        limit = spec.rate_limit
        out[name] = ModelSpec(
            max_n=spec.max_n,
            accepts_size=spec.size is not None,
            rate_limit=None if limit is None else (max(1, round(limit.count)), limit.period_s),
            size_only_with_n1=spec.size.only_with_n1 if spec.size is not None else True,
            min_pixels=spec.size.min_pixels if spec.size is not None else None,
            max_pixels=spec.size.max_pixels if spec.size is not None else None,
            prompt_chars=spec.prompt_limit,
        )
    return out


def model_limit(spec: ModelSpec | None, rps: float) -> tuple[int, float]:
    """``(limit, window_s)`` a model is held to: its own per-period limit, or ``rps`` per second."""
    if spec is not None and spec.rate_limit is not None and spec.rate_limit[1] != 1.0:
        return spec.rate_limit
    return rule_for_rps(rps)


def burst_rule(spec: ModelSpec | None, rps: float) -> tuple[int, float]:
    """The per-model burst guard (``Throttling.BurstRate``): no two arrivals closer than half the
    even spacing of the model's limit (2/s: 0.25 s; 2/min: 15 s). An invention [I]: the real guard's
    rule is not documented, only that it fires on rates that "increase too quickly"."""
    limit, window = model_limit(spec, rps)
    return 1, window / limit / 2


# Account-level failures a key can be configured to answer with: code -> (status, message).
ACCOUNT_FAILURES: dict[str, tuple[int, str]] = {
    "Arrearage": (400, "Access denied, please make sure your account is in good standing."),
    "AllocationQuota.FreeTierOnly": (
        403,
        "The free tier of the model has been exhausted. If you wish to continue access the model on a "
        'paid basis, please disable the "use free tier only" mode in the management console.',
    ),
    "AccessDenied": (403, "Access denied."),
    "AccessDenied.Unpurchased": (
        403,
        "Access to model denied. Please make sure you are eligible for using the model.",
    ),
    "PrepaidBillOverdue": (429, "The prepaid bill is overdue."),
    "PostpaidBillOverdue": (429, "The postpaid bill is overdue."),
    "CommodityNotPurchased": (429, "Commodity has not purchased yet."),
    "InvalidApiKey": (401, "Invalid API-key provided."),
}

# Fault names accepted by ``next_faults`` (forced, in order) — the random rates map onto the same names.
FAULTS = (
    "500",  # 500 InternalError.Algo
    "503",  # 503 ModelUnavailable
    "inspection",  # 400 DataInspectionFailed
    "partial",  # 200 with k < n images, billed k
    "drop",  # connection closed without a response, not billed
    "drop_billed",  # billed, then the connection is closed without a response
    "hang",  # billed, answers only after ``hang_s`` (longer than any sane client timeout)
    "malformed_json",  # billed 200 whose body is not JSON
    "malformed_fields",  # billed 200 JSON missing ``output``
    "foreign_host",  # billed 200 whose image URLs point at ``foreign_base_url``
    "blank_output",  # billed 200 whose last image is one flat colour (output QA: blank)
    "missized_output",  # billed 200 whose last image is half the size ``usage`` says (size_mismatch)
    "truncated_output",  # billed 200 whose last image is a PNG cut in half (undecodable)
    "ok",  # explicitly no fault (useful inside a ``next_faults`` script)
)


@dataclass
class EmulatorConfig:
    """All emulator knobs. Rates are probabilities in [0, 1] drawn once per valid request."""

    # --- auth and accounts ---
    keys: Collection[str] | None = None  # None: any key starting with "sk-" is valid
    accounts: Mapping[str, str] = field(default_factory=dict)  # key -> account name (default: one per key)
    # Raw key *or* account name -> a code of ACCOUNT_FAILURES the key answers every call with.
    key_failures: Mapping[str, str] = field(default_factory=dict)

    # --- models and validation ---
    models: Mapping[str, ModelSpec] = field(default_factory=default_models)
    strict_size_n: bool = True  # the seed doc: "size is supported only when n is 1"
    unknown_model_404: bool = False  # False: 400 InvalidParameter "Model not exist."; True: 404 ModelNotFound
    max_prompt_chars: int = 800
    max_negative_prompt_chars: int = 500
    max_data_uri_bytes: int = MAX_DATA_URI_BYTES
    max_image_bytes: int = MAX_IMAGE_BYTES
    max_body_bytes: int = 40 * 1024 * 1024
    download_timeout_s: float = 10.0
    # URL inputs are fetched as the real API would: public addresses only, no redirects followed.
    # True lets the emulator fetch loopback/private servers (the project's own tests: local S3).
    allow_private_urls: bool = False

    # --- rate limiting (per account and model, counted on arrival) ---
    rps: float = 2.0
    burst_max: int | None = None  # optional burst guard: more than this in ``burst_window_s`` -> 429
    burst_window_s: float = 0.2
    burst_guard: bool = False  # per-model burst guard (``burst_rule``): 429 Throttling.BurstRate
    # Each request waits a uniform 0..arrival_jitter_s before it is counted (network jitter between
    # the client's send and the API's counter).
    arrival_jitter_s: float = 0.0

    # --- connections ---
    # The server's idle timeout for keep-alive connections, as a fault: a request that comes in on a
    # connection idle for at least this long meets a connection the server has just closed — it is
    # not read, not counted, not billed, and the client sees the connection close with no answer.
    idle_close_s: float | None = None

    # --- outputs ---
    url_ttl_s: float = 86_400.0
    public_base_url: str | None = None  # None: the scheme://host the request came in on
    foreign_base_url: str = "https://dashscope-result-foreign.example.invalid"
    output_dir: str | None = None  # None: a temporary directory, removed when the app stops
    render: RenderMode = "full"
    # Keep at most this many requests' outputs on disk (oldest deleted first; their links then answer
    # 404). None: keep until the links expire. Long benchmarks set it so the disk does not fill up.
    keep_outputs: int | None = None

    # --- latency ---
    latency_median_s: float = 0.0
    latency_p99_s: float | None = None  # None or == median: fixed latency
    latency: Callable[[Any], float] | None = None  # overrides both: f(random.Random) -> seconds
    hang_s: float = 3600.0

    # --- fault rates ---
    fail_500: float = 0.0
    fail_503: float = 0.0
    fail_inspection: float = 0.0
    partial_rate: float = 0.0
    drop_rate: float = 0.0
    drop_billed_rate: float = 0.0
    hang_rate: float = 0.0
    malformed_rate: float = 0.0  # split evenly between malformed_json and malformed_fields
    foreign_host_rate: float = 0.0
    blank_output_rate: float = 0.0
    missized_output_rate: float = 0.0
    truncated_output_rate: float = 0.0
    next_faults: list[str] = field(default_factory=list)  # forced faults for the next valid requests
    seed: int | None = None  # makes faults and latencies reproducible

    # --- bookkeeping ---
    max_arrivals: int = 200_000  # the arrival log is a ring buffer of this size

    # --- time ---
    clock: Clock | None = None  # None: the system clock; tests inject a fake one (qwenedit/emulator/clock.py)


# Fields that only make sense at start-up.
STARTUP_ONLY = frozenset({"output_dir"})
RATE_FIELDS = {
    "500": "fail_500",
    "503": "fail_503",
    "inspection": "fail_inspection",
    "partial": "partial_rate",
    "drop": "drop_rate",
    "drop_billed": "drop_billed_rate",
    "hang": "hang_rate",
    "malformed": "malformed_rate",
    "foreign_host": "foreign_host_rate",
    "blank_output": "blank_output_rate",
    "missized_output": "missized_output_rate",
    "truncated_output": "truncated_output_rate",
}


class ConfigError(ValueError):
    """A configuration change names an unknown field or carries an invalid value."""


def check_config(config: EmulatorConfig) -> None:
    """Raise ConfigError if any knob is out of range."""
    for name in RATE_FIELDS.values():
        rate = getattr(config, name)
        if not 0.0 <= rate <= 1.0:
            raise ConfigError(f"{name} must be in [0, 1], got {rate!r}")
    if sum(getattr(config, name) for name in RATE_FIELDS.values()) > 1.0 + 1e-9:
        raise ConfigError("fault rates add up to more than 1")
    if config.rps <= 0 or not math.isfinite(config.rps):
        raise ConfigError(f"rps must be positive, got {config.rps!r}")
    if not 0 <= config.arrival_jitter_s <= 10 or not math.isfinite(config.arrival_jitter_s):
        raise ConfigError(f"arrival_jitter_s must be in [0, 10], got {config.arrival_jitter_s!r}")
    if config.idle_close_s is not None and not config.idle_close_s > 0:
        raise ConfigError(f"idle_close_s must be positive (or None), got {config.idle_close_s!r}")
    if config.latency_median_s < 0:
        raise ConfigError("latency_median_s must be >= 0")
    if config.latency_p99_s is not None and config.latency_p99_s < config.latency_median_s:
        raise ConfigError("latency_p99_s must be >= latency_median_s")
    if config.render not in ("full", "fast"):
        raise ConfigError(f"render must be 'full' or 'fast', got {config.render!r}")
    if config.keep_outputs is not None and config.keep_outputs < 1:
        raise ConfigError("keep_outputs must be >= 1 (or None)")
    if config.url_ttl_s <= 0:
        raise ConfigError("url_ttl_s must be positive")
    for fault in config.next_faults:
        if fault not in FAULTS:
            raise ConfigError(f"unknown fault {fault!r}; known: {', '.join(FAULTS)}")
    for code in config.key_failures.values():
        if code not in ACCOUNT_FAILURES:
            raise ConfigError(f"unknown account failure {code!r}; known: {', '.join(ACCOUNT_FAILURES)}")


def apply_changes(config: EmulatorConfig, changes: Mapping[str, Any]) -> EmulatorConfig:
    """Return a copy of ``config`` with ``changes`` applied and checked (the original is untouched)."""
    known = {f.name for f in dataclasses.fields(EmulatorConfig)}
    unknown = set(changes) - known
    if unknown:
        raise ConfigError(f"unknown emulator setting(s): {', '.join(sorted(unknown))}")
    fixed = set(changes) & STARTUP_ONLY
    if fixed:
        raise ConfigError(f"cannot change at runtime: {', '.join(sorted(fixed))}")
    patched = dataclasses.replace(config, **changes)
    if "next_faults" in changes:
        patched.next_faults = list(changes["next_faults"])
    check_config(patched)
    return patched


def public_view(config: EmulatorConfig) -> dict[str, Any]:
    """The config as JSON-able data, without secrets (keys are counted, never listed)."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(EmulatorConfig):
        value = getattr(config, f.name)
        if f.name == "keys":
            out["keys"] = None if value is None else len(value)
        elif f.name in ("accounts", "key_failures"):
            out[f.name] = len(value)
        elif f.name == "models":
            out["models"] = sorted(value)
        elif f.name in ("latency", "clock"):
            out[f.name] = None if value is None else "custom"
        else:
            out[f.name] = list(value) if isinstance(value, list) else value
    return out
