"""What a person sees of a run in Prefect: the ``qwenedit`` log lines on the run's page, and events.

- :func:`forward_run_logs`: while a flow runs, the records of the stdlib ``qwenedit`` logger (INFO and
  up) are also sent to the Prefect API as the flow run's logs, so its page shows them. ``qwenedit``
  itself never imports Prefect: it logs, and the flows attach this forwarding. What reached a terminal
  before (WARNING and up, through the root logger's handlers) still does, and nothing more.
- :func:`narrate`: the hook of the edit flow: the run's start and quote when it opens, and when it ends
  its summary, its stop and reason (a cap reached among them), each as one log line; and the
  :data:`EVENTS` that alerts are built on (``flows/alerts.py``) as Prefect events.
- :func:`emit`: one Prefect event about a run or a manifest (a no-op without a Prefect API).

Events name their resource ``qwenedit.run.<run id>`` or ``qwenedit.manifest.<uri>`` with the manifest's
URI as ``qwenedit.manifest``; inside a flow run, Prefect relates them to the flow run and its flow and
deployment, so an automation can match on either.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import threading
from collections.abc import Iterator
from typing import Any
from uuid import UUID

from prefect.logging.handlers import APILogHandler

log = logging.getLogger("qwenedit.flow")

LOGGER = "qwenedit"
# The events the alerts listen to (flows/alerts.py); failures use Prefect's own flow-run events.
APPROVAL_REQUESTED = "qwenedit.run.approval-requested"
APPROVAL_ANSWERED = "qwenedit.run.approval-answered"
CAP_REACHED = "qwenedit.run.cap-reached"
STOPPED = "qwenedit.run.stopped"
FLAGGED = "qwenedit.run.flagged"
FINISHED = "qwenedit.run.finished"
MANIFEST_REFUSED = "qwenedit.watch.refused"
TICK_PROBLEMS = "qwenedit.watch.tick-problems"
EVENTS = (APPROVAL_REQUESTED, CAP_REACHED, STOPPED, FLAGGED, MANIFEST_REFUSED, TICK_PROBLEMS)
# Stop causes that are a money cap: the run's --budget and the spend ledger's daily / monthly caps.
CAP_CAUSES = frozenset({"budget", "spend_cap", "daily_budget", "monthly_budget", "daily_cap", "monthly_cap"})


class _ToFlowRunLogs(APILogHandler):
    """Prefect's API log handler for a non-Prefect logger: a record made outside a run context (a worker
    thread of the run) is attributed to the one flow run that attached the forwarding."""

    def __init__(self) -> None:
        super().__init__(level=logging.INFO)
        self.flow_runs: list[UUID] = []

    def prepare(self, record: logging.LogRecord) -> dict[str, Any]:
        if getattr(record, "flow_run_id", None) is None and not _in_run_context():
            if len(self.flow_runs) != 1:  # several flows in one process and no context: whose is it?
                raise _NoRun()
            record = copy.copy(record)
            record.flow_run_id = self.flow_runs[0]
        return super().prepare(record)

    def handleError(self, record: logging.LogRecord) -> None:
        # A line that cannot reach the UI is not worth a traceback on stderr: the terminal and the
        # reports have it. (Prefect's own handler warns or raises; this one stays quiet.)
        return None


class _ToRootBelowThreshold(logging.Handler):
    """While ``qwenedit`` does not propagate, pass on to the root logger's handlers what it would have
    passed before the forwarding lowered the logger's level (the terminal sees no new INFO lines)."""

    def __init__(self, threshold: int) -> None:
        super().__init__()
        self.threshold = threshold

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= self.threshold:
            logging.getLogger().handle(record)


class _NoRun(Exception):
    pass


def _in_run_context() -> bool:
    from prefect.context import FlowRunContext, TaskRunContext

    return FlowRunContext.get() is not None or TaskRunContext.get() is not None


class _Forwarding:
    """The one forwarding installed on the ``qwenedit`` logger, shared by the flows of this process."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.users = 0
        self.api = _ToFlowRunLogs()
        self.saved: tuple[int, bool] = (logging.NOTSET, True)
        self.to_root: _ToRootBelowThreshold | None = None

    def attach(self, flow_run_id: UUID | None) -> None:
        logger = logging.getLogger(LOGGER)
        with self.lock:
            if flow_run_id is not None:
                self.api.flow_runs.append(flow_run_id)
            self.users += 1
            if self.users > 1:
                return
            self.saved = (logger.level, logger.propagate)
            self.to_root = _ToRootBelowThreshold(logger.getEffectiveLevel())
            logger.addHandler(self.api)
            if logger.propagate:
                logger.addHandler(self.to_root)
                logger.propagate = False
            if logger.getEffectiveLevel() > logging.INFO:
                logger.setLevel(logging.INFO)

    def detach(self, flow_run_id: UUID | None) -> None:
        logger = logging.getLogger(LOGGER)
        with self.lock:
            if flow_run_id is not None and flow_run_id in self.api.flow_runs:
                self.api.flow_runs.remove(flow_run_id)
            self.users -= 1
            if self.users > 0:
                return
            logger.removeHandler(self.api)
            if self.to_root is not None:
                logger.removeHandler(self.to_root)
            logger.setLevel(self.saved[0])
            logger.propagate = self.saved[1]


_FORWARDING = _Forwarding()


@contextlib.contextmanager
def forward_run_logs() -> Iterator[None]:
    """Send the ``qwenedit`` logger's INFO+ records to the current flow run's logs while inside."""
    flow_run_id = _current_flow_run_id()
    _FORWARDING.attach(flow_run_id)
    try:
        yield
    finally:
        _FORWARDING.detach(flow_run_id)


def _current_flow_run_id() -> UUID | None:
    from prefect.context import FlowRunContext

    context = FlowRunContext.get()
    return context.flow_run.id if context is not None and context.flow_run is not None else None


def emit(event: str, subject: str, *, run_id: str | None = None, **payload: Any) -> None:
    """One Prefect event about a run (``run_id``) or a manifest (``subject``, its URI); never raises."""
    resource = {
        "prefect.resource.id": f"qwenedit.run.{run_id}" if run_id else f"qwenedit.manifest.{subject}",
        "prefect.resource.name": subject,
        "qwenedit.manifest": subject,
    }
    if run_id:
        resource["qwenedit.run-id"] = run_id
    try:
        from prefect.events import emit_event

        emit_event(event, resource=resource, payload={k: _plain(v) for k, v in payload.items()})
    except Exception as err:  # an alert that cannot be sent must not fail the run it is about
        log.info("event %s not emitted: %s", event, type(err).__name__)


def _plain(value: Any) -> Any:
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return str(value)


# --- the edit flow's story -----------------------------------------------------------------------------


def _money(costs: Any) -> str:
    if isinstance(costs, dict) and costs:
        return ", ".join(f"{amount} {currency}" for currency, amount in costs.items())
    return "0"


def started(options: Any, jobs: int | None = None, quote: str | None = None) -> None:
    """The run's first lines: what it runs, where, and what it is quoted at."""
    log.info(
        "run %s started: manifest %s → %s%s",
        options.run_id,
        options.manifest,
        options.dest,
        f" ({jobs} jobs)" if jobs is not None else "",
    )
    if quote:
        log.info("run %s quote: %s", options.run_id, quote)


def approval_asked(options: Any, timeout_s: float) -> None:
    log.warning(
        "run %s waits for approval in the Prefect UI (declined after %.0f s without an answer)",
        options.run_id,
        timeout_s,
    )
    emit(APPROVAL_REQUESTED, options.manifest, run_id=options.run_id, timeout_s=timeout_s)


def approval_answered(options: Any, approved: bool, why: str = "") -> None:
    log.info("run %s: approval %s%s", options.run_id, "given" if approved else "declined", why)
    emit(APPROVAL_ANSWERED, options.manifest, run_id=options.run_id, approved=approved)


def ended(summary: dict[str, Any]) -> None:
    """The run's last lines (stop and reason, summary) and the events alerts are built on."""
    run_id, manifest = str(summary.get("run_id")), str(summary.get("manifest"))
    by_status = summary.get("by_status") or {}
    stopped = summary.get("stopped_by")
    counts = ", ".join(f"{n} {s}" for s, n in by_status.items() if n) or "no jobs"
    spend = _money(summary.get("total_cost"))
    flagged = {
        "qa_flagged_jobs": int(summary.get("qa_flagged_jobs") or 0),
        "possibly_billed_jobs": int(summary.get("possibly_billed_jobs") or 0),
        "billed_not_stored_images": int(summary.get("billed_not_stored_images") or 0),
    }
    if stopped:
        cause = str(stopped.get("cause", "stop")) if isinstance(stopped, dict) else "stop"
        detail = _stop_detail(stopped)
        is_cap = cause in CAP_CAUSES
        log.info(
            "run %s stopped (%s%s): no new call was started%s",
            run_id,
            cause,
            f": {detail}" if detail else "",
            "; cap reached" if is_cap else "",
        )
        emit(
            CAP_REACHED if is_cap else STOPPED,
            manifest,
            run_id=run_id,
            cause=cause,
            detail=detail,
            spend=spend,
        )
    log.info("run %s summary: %s; spend %s; %s", run_id, counts, spend, _flag_text(flagged))
    if any(flagged.values()):
        emit(FLAGGED, manifest, run_id=run_id, spend=spend, **flagged)
    emit(FINISHED, manifest, run_id=run_id, spend=spend, stopped=bool(stopped), **by_status)


def outcome_text(summary: dict[str, Any]) -> str:
    """One line for the flow run's final state: the counts, and the stop with its cause and reason."""
    by_status = summary.get("by_status") or {}
    counts = ", ".join(f"{n} {s}" for s, n in by_status.items() if n) or "no jobs"
    stopped = summary.get("stopped_by")
    if not stopped:
        return counts
    cause = str(stopped.get("cause", "stop")) if isinstance(stopped, dict) else "stop"
    detail = _stop_detail(stopped)
    return f"stopped by {cause}{': ' + detail if detail else ''} (no new call was started); {counts}"


def _stop_detail(stopped: Any) -> str:
    if not isinstance(stopped, dict):
        return ""
    detail = stopped.get("reason") or stopped.get("message") or stopped.get("limit") or ""
    return str(detail)


def _flag_text(flagged: dict[str, int]) -> str:
    return (
        f"{flagged['qa_flagged_jobs']} QA-flagged, {flagged['possibly_billed_jobs']} possibly billed, "
        f"{flagged['billed_not_stored_images']} billed not stored"
    )


@contextlib.contextmanager
def narrate(run: Any) -> Iterator[None]:
    """The edit flow's hook around an open run: forwarding on, start and quote logged; at the end (the
    flow calls :func:`ended` with the summary) the stop, the summary and the alert events."""
    with forward_run_logs():
        validation = getattr(run, "validation", None)
        quote = getattr(validation, "quote", None)
        started(run.options, getattr(validation, "job_count", None), _quote_text(quote))
        yield


def _quote_text(quote: Any) -> str | None:
    """The manifest's worst case: every row, every requested image (rows already done included)."""
    totals = getattr(quote, "totals", None)
    if not isinstance(totals, dict):
        return None
    money = {c: str(a) for c, a in totals.items()}
    return f"{quote.jobs} jobs, {quote.images} images, at most {_money(money)} if every image is generated"
