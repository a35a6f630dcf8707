"""`qwenedit emulator`: run the DashScope emulator as its own process until Ctrl-C / SIGTERM.

Prints the base URL to point the pipeline at (``DASHSCOPE_BASE_URL`` or ``--base-url``). One uvicorn
worker, no access log by default (at 20 RPS it would drown everything else). While it runs, it can be
driven over HTTP: ``GET /_emulator/{ledger,stats,arrivals,config}``, ``POST /_emulator/{config,reset}``.
"""

from __future__ import annotations

import signal
from typing import Annotated

import typer
import uvicorn

from qwenedit.cli._app import app
from qwenedit.emulator import ACCOUNT_FAILURES, ConfigError, EmulatorConfig, create_app
from qwenedit.emulator.config import RenderMode, check_config
from qwenedit.emulator.server import bind_socket, uvicorn_config


def _exit_quietly(signum: int, frame: object) -> None:
    raise SystemExit(0)


def _key_failures(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        who, sep, code = item.partition("=")
        if not sep or code not in ACCOUNT_FAILURES:
            raise typer.BadParameter(
                f"expected KEY_OR_ACCOUNT=CODE with CODE one of {', '.join(ACCOUNT_FAILURES)}",
                param_hint="--key-failure",
            )
        out[who] = code
    return out


@app.command()
def emulator(
    host: Annotated[str, typer.Option(help="Interface to bind (keep it on loopback).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on (0: any free port).")] = 8765,
    rps: Annotated[
        float, typer.Option(help="Requests per second allowed per account and model (429 above).")
    ] = 2.0,
    burst_max: Annotated[
        int | None, typer.Option(help="Optional burst guard: max requests per 0.2 s.")
    ] = None,
    latency_median: Annotated[float, typer.Option(help="Median model latency in seconds.")] = 0.0,
    latency_p99: Annotated[
        float | None, typer.Option(help="p99 latency (lognormal); omit for a fixed latency.")
    ] = None,
    fail_500: Annotated[float, typer.Option(help="Rate of 500 InternalError.Algo.")] = 0.0,
    fail_503: Annotated[float, typer.Option(help="Rate of 503 ModelUnavailable.")] = 0.0,
    fail_inspection: Annotated[float, typer.Option(help="Rate of 400 DataInspectionFailed.")] = 0.0,
    partial: Annotated[float, typer.Option(help="Rate of partial success (k < n images, k billed).")] = 0.0,
    drop: Annotated[
        float, typer.Option(help="Rate of connections closed without a response (not billed).")
    ] = 0.0,
    drop_billed: Annotated[float, typer.Option(help="Rate of requests billed, then dropped.")] = 0.0,
    hang: Annotated[
        float, typer.Option(help="Rate of requests that take --hang-s (past client timeouts).")
    ] = 0.0,
    hang_s: Annotated[float, typer.Option(help="How long a hanging request takes.")] = 3600.0,
    malformed: Annotated[float, typer.Option(help="Rate of billed 200s with a malformed body.")] = 0.0,
    foreign_host: Annotated[
        float, typer.Option(help="Rate of billed 200s whose URLs point at a foreign host.")
    ] = 0.0,
    blank_output: Annotated[
        float, typer.Option(help="Rate of billed 200s whose last image is blank (one flat colour).")
    ] = 0.0,
    missized_output: Annotated[
        float, typer.Option(help="Rate of billed 200s whose last image is not the size usage reports.")
    ] = 0.0,
    truncated_output: Annotated[
        float, typer.Option(help="Rate of billed 200s whose last image is a truncated PNG.")
    ] = 0.0,
    url_ttl: Annotated[float, typer.Option(help="Lifetime of output URLs in seconds.")] = 86400.0,
    render: Annotated[str, typer.Option(help="Output rendering: full or fast (cheaper).")] = "full",
    seed: Annotated[int | None, typer.Option(help="Seed for reproducible faults and latencies.")] = None,
    output_dir: Annotated[
        str | None, typer.Option(help="Where outputs are written (default: a temp dir).")
    ] = None,
    keep_outputs: Annotated[
        int | None, typer.Option(help="Keep only the newest N requests' outputs on disk (default: all).")
    ] = None,
    public_base_url: Annotated[
        str | None, typer.Option(help="Base of output URLs (default: the request host).")
    ] = None,
    key: Annotated[
        list[str] | None, typer.Option(help="Accept only this key (repeatable; default: any sk- key).")
    ] = None,
    key_failure: Annotated[
        list[str] | None,
        typer.Option(
            help="KEY_OR_ACCOUNT=CODE: that key answers every call with this account error (repeatable)."
        ),
    ] = None,
    lenient_size: Annotated[bool, typer.Option(help="Allow size together with n > 1 (newer docs).")] = False,
    access_log: Annotated[bool, typer.Option(help="Log every request (noisy).")] = False,
    allow_private_urls: Annotated[
        bool,
        typer.Option(
            "--allow-private-urls",
            help="Fetch URL inputs on loopback/private addresses too (e.g. a local S3); the real API cannot.",
        ),
    ] = False,
) -> None:
    """Run a DashScope-compatible emulator of the Qwen image-edit API."""
    if render not in ("full", "fast"):
        raise typer.BadParameter("must be full or fast", param_hint="--render")
    mode: RenderMode = "fast" if render == "fast" else "full"
    config = EmulatorConfig(
        keys=set(key or ()) or None,
        key_failures=_key_failures(key_failure or []),
        strict_size_n=not lenient_size,
        rps=rps,
        burst_max=burst_max,
        url_ttl_s=url_ttl,
        public_base_url=public_base_url,
        output_dir=output_dir,
        keep_outputs=keep_outputs,
        render=mode,
        latency_median_s=latency_median,
        latency_p99_s=latency_p99,
        hang_s=hang_s,
        fail_500=fail_500,
        fail_503=fail_503,
        fail_inspection=fail_inspection,
        partial_rate=partial,
        drop_rate=drop,
        drop_billed_rate=drop_billed,
        hang_rate=hang,
        malformed_rate=malformed,
        foreign_host_rate=foreign_host,
        blank_output_rate=blank_output,
        missized_output_rate=missized_output,
        truncated_output_rate=truncated_output,
        seed=seed,
        allow_private_urls=allow_private_urls,
    )
    try:
        check_config(config)
    except ConfigError as exc:
        raise typer.BadParameter(str(exc)) from None
    sock = bind_socket(host, port)
    bound_host, bound_port = sock.getsockname()[:2]
    asgi = create_app(config)
    # uvicorn catches SIGINT/SIGTERM, shuts down gracefully, then re-raises the signal to the handler
    # that was installed before it: make that one a quiet, successful exit.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _exit_quietly)
    server = uvicorn.Server(
        uvicorn_config(asgi, access_log=access_log, log_config=uvicorn.config.LOGGING_CONFIG)
    )
    typer.echo(f"http://{bound_host}:{bound_port}", color=False)
    typer.echo(
        f"DashScope emulator: rps={rps} render={mode} outputs in {asgi.emulator.output_dir}. Ctrl-C to stop.",
        err=True,
    )
    server.run(sockets=[sock])
