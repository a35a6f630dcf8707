"""The exception tree of qwenedit: one class per failure, grouped by family, rooted in ``QwenEditError``.

Families (each a section below):

- **DashScope** (``DashScopeError``): every API failure the client sees becomes one of these, including
  the two a hard stop raises for a call it abandoned (``CallAbandoned``, ``UnsentCallAbandoned``), and
  ``MissingApiKey`` (no key to call with).
- **Inputs** (``InputError``, ``ManifestError``, ``TemplateError``, ``BadOptions``, ``TooLarge``): a
  manifest, a prompt template, an option value, an image reference or an image's pixels that cannot be used.
- **Catalog** (``PricingError``, ``UnknownModel``, ``UnknownLimit``): a model, price or rate limit the
  model table does not know, a price file it cannot read, money in two currencies.
- **Storage** (``StorageError``, ``CopyError``): a destination that cannot be used, a copy that failed.
- **Run** (``RunError``): a run that cannot start (bad manifest, unusable destination) or whose shards
  did not all finish.

Two class attributes of a DashScope error drive the pipeline:

- ``retryable``: the same request may succeed later (throttling, server faults, network).
- ``fatal_for_run``: the account itself is unusable (bad key, arrears, access denied, free tier
  exhausted, unpaid bill); the run breaker stops every new call.

``possibly_billed`` marks failures where the request may have reached the model and been charged
even though we never saw the answer (a read timeout, a dropped connection after sending, a 200 with
a body we could not parse). The report counts these so spend is never silently understated.

:func:`is_transient_storage_error` says which storage failures are outages worth riding out (the one
predicate the storage retry layer uses); :class:`JobCode` names every ``error_code`` a job result can
carry besides the API's own codes.

Exception text carries the API's code and message only: never the request headers (the key), never a
presigned URL's query string. :func:`location_text` and :func:`quote_text` are how every message names a
manifest place and quotes a value; :func:`s3_reason` is a short, secret-free reason for an S3 failure.

This module imports nothing else of the package but :mod:`qwenedit.redact` (which imports nothing of it),
so any module may import it.
"""

from __future__ import annotations

import errno
from collections.abc import Sequence
from typing import Any, ClassVar, Final, Literal, Protocol

from qwenedit.redact import scrub_urls


class QwenEditError(Exception):
    """Base class of every error this package raises on purpose."""


# =========================================================================================================
# DashScope


class DashScopeError(QwenEditError):
    """A failed call to the DashScope generation endpoint."""

    retryable: ClassVar[bool] = False
    fatal_for_run: ClassVar[bool] = False
    possibly_billed: ClassVar[bool] = False

    def __init__(self, code: str, message: str, *, status: int | None = None, request_id: str = "") -> None:
        super().__init__(f"{code}: {message}" if status is None else f"HTTP {status} {code}: {message}")
        self.code = code
        self.message = message
        self.status = status
        self.request_id = request_id

    def __repr__(self) -> str:
        return f"{type(self).__name__}(code={self.code!r}, status={self.status!r}, request_id={self.request_id!r})"


# --- request problems: fix the input, do not retry ------------------------------------------------


class RequestRejected(DashScopeError):
    """The API refused the request as malformed or invalid (400 InvalidParameter, BadRequest.*)."""


class InputDownloadFailed(DashScopeError):
    """The API could not fetch an input image; transient network trouble on its side is common."""

    retryable = True


class ContentRejected(DashScopeError):
    """Content moderation blocked the input or output (DataInspectionFailed, IPInfringementSuspect)."""


class ModelNotFound(DashScopeError):
    """The model does not exist or is not offered at this endpoint."""


class PayloadTooLarge(DashScopeError):
    """The request body is over the API's size limit (413)."""


# --- account problems: stop the whole run ---------------------------------------------------------


class AccountError(DashScopeError):
    """The account cannot make calls at all; every further call would fail the same way."""

    fatal_for_run = True


class InvalidApiKey(AccountError):
    """The API key is missing, unknown, or belongs to another region (401)."""


class AccessDenied(AccountError):
    """The account may not use this API or model (403 AccessDenied*, Model/Workspace.AccessDenied)."""


class Arrearage(AccountError):
    """The account is in arrears (400 Arrearage)."""


class FreeTierExhausted(AccountError):
    """'Use free tier only' is on and the free quota is spent (403 AllocationQuota.FreeTierOnly)."""


class BillOverdue(AccountError):
    """The account has an unpaid bill or no purchased commodity (429 *BillOverdue, CommodityNotPurchased)."""


# --- transient problems: back off and retry ----------------------------------------------------------


class Throttled(DashScopeError):
    """Too many requests (429 Throttling, Throttling.RateQuota, Throttling.BurstRate, ...)."""

    retryable = True


class ServerError(DashScopeError):
    """The service failed while handling the request (500 InternalError*, SystemError, ...)."""

    retryable = True


class ServiceUnavailable(DashScopeError):
    """The model is temporarily unavailable (503 ModelUnavailable, ModelServingError)."""

    retryable = True


class TransportError(DashScopeError):
    """The request never produced an HTTP response we could read."""

    retryable = True


class ConnectFailed(TransportError):
    """The connection could not be opened; the request was never sent, so it was not billed."""


class CallTimedOut(TransportError):
    """No answer within the client timeout after the request was sent; it may have been billed."""

    possibly_billed = True


class ConnectionDropped(TransportError):
    """The connection broke after the request was sent; it may have been billed."""

    possibly_billed = True


class CallAbandoned(TransportError):
    """A hard stop stopped waiting for a call that was sent: the API may have billed it. Never retried."""

    retryable = False
    possibly_billed = True


class UnsentCallAbandoned(TransportError):
    """A hard stop ended a call before its request went out: nothing was billed. Never retried."""

    retryable = False


class MalformedResponse(DashScopeError):
    """A 200 answer whose body is not the documented shape. The call may have been billed, so it is
    not retried automatically (a retry could pay twice)."""

    possibly_billed = True


class UnexpectedResponse(DashScopeError):
    """A non-2xx answer with a code or status this taxonomy does not know."""


class MissingApiKey(QwenEditError):
    """No API key was given and DASHSCOPE_API_KEY is not set."""


_BY_CODE: dict[str, type[DashScopeError]] = {
    "InvalidParameter.DataInspection": InputDownloadFailed,
    "BadRequest.InputDownloadFailed": InputDownloadFailed,
    "DataInspectionFailed": ContentRejected,
    "IPInfringementSuspect": ContentRejected,
    "ModelNotFound": ModelNotFound,
    "BadRequest.TooLarge": PayloadTooLarge,
    "InvalidApiKey": InvalidApiKey,
    "NOT AUTHORIZED": InvalidApiKey,
    "Arrearage": Arrearage,
    "AllocationQuota.FreeTierOnly": FreeTierExhausted,
    "PrepaidBillOverdue": BillOverdue,
    "PostpaidBillOverdue": BillOverdue,
    "CommodityNotPurchased": BillOverdue,
    "ModelUnavailable": ServiceUnavailable,
    "ModelServingError": ServiceUnavailable,
    "RequestTimeOut": ServerError,
}

_DOWNLOAD_MESSAGES = ("download image failed", "failed to download", "download the media resource")


def classify(status: int, code: str, message: str, request_id: str = "") -> DashScopeError:
    """Map an HTTP status and the API's ``code``/``message`` to the error family it belongs to."""
    cls = _family(status, code, message)
    return cls(code or f"HTTP{status}", message, status=status, request_id=request_id)


def _family(status: int, code: str, message: str) -> type[DashScopeError]:
    if code in _BY_CODE:
        return _BY_CODE[code]
    lowered = message.lower()
    if code.startswith("AccessDenied") or code.endswith(".AccessDenied"):
        return AccessDenied
    if code == "Throttling.AllocationQuota" and "free allocated quota" in lowered:
        return FreeTierExhausted
    if code.startswith("Throttling") or code == "LimitRequests" or status == 429:
        return Throttled
    if code == "InvalidParameter" and any(m in lowered for m in _DOWNLOAD_MESSAGES):
        return InputDownloadFailed
    if code == "InvalidParameter" and "model not exist" in lowered:
        return ModelNotFound
    if status == 400 and code.startswith("InternalError"):
        return RequestRejected  # the 400 variant is a deterministic input problem
    if status == 503:
        return ServiceUnavailable
    if code.startswith(("InternalError", "SystemError", "ModelServiceFailed")) or status >= 500:
        return ServerError
    if status == 401:
        return InvalidApiKey
    if status == 403:
        return AccessDenied
    if status == 404:
        return ModelNotFound
    if status == 413:
        return PayloadTooLarge
    if status == 408:
        return ServerError
    if 400 <= status < 500:
        return RequestRejected
    return UnexpectedResponse


# =========================================================================================================
# Inputs: manifests, prompt templates, image references


def quote_text(value: str, limit: int = 60) -> str:
    """A value as it appears in messages: double-quoted, control characters escaped, long ones cut."""
    text = value if len(value) <= limit else value[: limit - 1] + "…"
    text = text.replace("\\", "\\\\").replace('"', '\\"')
    text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    return f'"{text}"'


def location_text(row: int | None, job_id: str | None, column: str | None) -> str:
    """``row 4 (job_id "shirt-red"), column n``: the one way every message names a place."""
    parts = []
    if row is not None:
        parts.append(f"row {row}" + (f" (job_id {quote_text(job_id)})" if job_id else ""))
    elif job_id:
        parts.append(f"job_id {quote_text(job_id)}")
    if column:
        parts.append(f"column {column}")
    return ", ".join(parts)


class InputError(QwenEditError):
    """An input image reference that cannot be used; the message names the row when it is known."""

    def __init__(
        self,
        reason: str,
        *,
        ref: str | None = None,
        row: int | None = None,
        job_id: str | None = None,
        column: str | None = None,
    ) -> None:
        self.reason = reason
        self.ref = ref
        self.row = row
        self.job_id = job_id
        self.column = column
        where = location_text(row, job_id, column)
        super().__init__(f"{where}: {reason}" if where else reason)

    def located(self, row: int | None, job_id: str | None, column: str | None) -> InputError:
        """The same error with the manifest location attached."""
        return InputError(self.reason, ref=self.ref, row=row, job_id=job_id, column=column)


class ManifestError(QwenEditError):
    """The manifest cannot be read at all (missing, not UTF-8, not CSV/JSONL); ``validate`` exits 2."""


class TemplateError(QwenEditError, ValueError):
    """The prompt template itself is malformed (bad field syntax, or empty)."""


class BadOptions(QwenEditError, ValueError):
    """Option values ``RunOptions`` refused; each line names the flag and the reason."""

    def __init__(self, lines: list[str]) -> None:
        super().__init__("\n".join(lines))
        self.lines = lines


class TooLarge(QwenEditError, ValueError):
    """The image would decode to more pixels than allowed (``decode.decoding``)."""


# =========================================================================================================
# Catalog: models, prices, rate limits


class PricingError(QwenEditError):
    """Base class of pricing failures."""


class UnknownPrice(PricingError):
    """No unit price is known for this (region, model): refused rather than guessed."""


class PriceFileError(PricingError):
    """The user price (model) file cannot be read or has an invalid entry."""


class MixedCurrencies(PricingError):
    """Amounts in different currencies were about to be added or compared."""


class UnknownModel(QwenEditError):
    """The model table does not know this model."""


class UnknownLimit(QwenEditError):
    """No rate limit is known for this model: refused rather than guessed."""


# =========================================================================================================
# Storage


class StorageError(QwenEditError):
    """A destination could not be used (bad URI, unsupported store feature, I/O failure)."""


class InvalidKey(StorageError, ValueError):
    """An object key that could escape the destination or is not a plain relative path."""


class ConditionalWritesUnsupported(StorageError):
    """The store refused If-None-Match; the destination switched to HEAD-then-PUT, so retry the write."""


class CopyError(QwenEditError):
    """Copying an output URL into the destination failed; says whether retrying can help."""

    def __init__(
        self,
        message: str,
        retryable: bool,
        expired: bool = False,
        *,
        where: Literal["source", "dest"] = "source",
    ) -> None:
        message = scrub_urls(message)
        super().__init__(message)
        self.message = message
        self.retryable = retryable
        self.expired = expired
        self.where = where

    def __repr__(self) -> str:
        return (
            f"CopyError({self.message!r}, retryable={self.retryable}, expired={self.expired}, "
            f"where={self.where!r})"
        )


# S3 error codes that mean "try again later" (besides any 5xx status).
TRANSIENT_S3_CODES: Final = frozenset(
    {
        "SlowDown",
        "RequestTimeout",
        "InternalError",
        "ServiceUnavailable",
        "Throttling",
        "ThrottlingException",
        "RequestTimeTooSkewed",
        "ConditionalRequestConflict",
    }
)
# OS errors of a network path (an NFS mount, a socket) that an outage raises and a later try can clear.
_TRANSIENT_ERRNOS: Final = frozenset(
    {
        errno.ECONNRESET,
        errno.ECONNREFUSED,
        errno.ECONNABORTED,
        errno.ETIMEDOUT,
        errno.EPIPE,
        errno.ENETDOWN,
        errno.ENETUNREACH,
        errno.ENETRESET,
        errno.EHOSTDOWN,
        errno.EHOSTUNREACH,
        errno.EAGAIN,
    }
)


def s3_error_code(exc: BaseException) -> str:
    """The ``Error.Code`` of a botocore ``ClientError`` (``"404"`` for a HEAD), else ``""``."""
    response = getattr(exc, "response", None)
    if not isinstance(response, dict):
        return ""
    return str(response.get("Error", {}).get("Code", ""))


def s3_status(exc: BaseException) -> int:
    """The HTTP status of a botocore ``ClientError``, else 0."""
    response = getattr(exc, "response", None)
    if not isinstance(response, dict):
        return 0
    return int(response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)


def s3_reason(exc: BaseException) -> str:
    """A short, secret-free reason for an S3 failure (``no such object``, ``access denied ...``)."""
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        err = response.get("Error", {}) or {}
        code = str(err.get("Code", ""))
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code in ("404", "NoSuchKey", "NotFound"):
            return "no such object"
        if code == "NoSuchBucket":
            return "no such bucket"
        if code in ("403", "AccessDenied", "Forbidden"):
            return "access denied (check the credentials and the bucket policy)"
        return f"S3 error {code or status}"
    return f"S3 unreachable: {type(exc).__name__}"


def is_transient_storage_error(exc: BaseException) -> bool:
    """Whether a storage failure is an outage a later try can clear (so the retry layer may wait for it).

    True: botocore connection errors and timeouts (``EndpointConnectionError``, ``ConnectTimeoutError``,
    ``ConnectionClosedError``, ``ReadTimeoutError``, ...); an S3 answer with a 5xx/408/429 status or a
    throttling/timeout code (:data:`TRANSIENT_S3_CODES`); OS network errors (``ConnectionError``,
    ``TimeoutError``, ECONNRESET and kin); :class:`ConditionalWritesUnsupported` (the write is retried
    as HEAD-then-PUT); a :class:`CopyError` whose ``retryable`` is true.

    False for everything else: a bug (``TypeError``), refused credentials (403 AccessDenied), a missing
    bucket (NoSuchBucket), a TLS certificate the client rejects (``SSLError``), a full disk, an invalid
    key. Those fail the job at once, with their traceback.
    """
    if isinstance(exc, CopyError):
        return exc.retryable
    if isinstance(exc, ConditionalWritesUnsupported):
        return True
    if isinstance(exc, QwenEditError):
        return False
    import botocore.exceptions as bce  # lazily: errors.py stays importable without touching boto

    if isinstance(exc, bce.ClientError):
        status = s3_status(exc)
        return status >= 500 or status in (408, 429) or s3_error_code(exc) in TRANSIENT_S3_CODES
    if isinstance(exc, bce.SSLError):
        return False  # a certificate the client rejects does not heal; a wrong CA bundle must fail fast
    if isinstance(exc, (bce.ConnectionError, bce.HTTPClientError)):
        return True  # endpoint unreachable, connect/read timeout, connection closed mid-answer
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return True
    if isinstance(exc, OSError):
        return exc.errno in _TRANSIENT_ERRNOS
    return False


# =========================================================================================================
# Run


class RunError(QwenEditError):
    """A run could not start, or did not finish all its work; raised by the run layer, never for one job."""


class _Problem(Protocol):
    @property
    def severity(self) -> str: ...


class _Validation(Protocol):
    @property
    def problems(self) -> Sequence[_Problem]: ...


class ManifestInvalid(RunError):
    """The manifest has errors; nothing was called. ``validation`` is the ``manifest.Validation``."""

    def __init__(self, validation: _Validation) -> None:
        self.validation: Any = validation  # a manifest.Validation; errors.py imports nothing above it
        errors = [p for p in validation.problems if p.severity == "error"]
        breaches = getattr(validation, "breaches", 0)  # of the run's policy (qwenedit.policy)
        what = (
            f"{breaches} breach(es) of the run's policy"
            if breaches
            else f"{len(errors)} invalid row problem(s)"
        )
        first = f"; first: {errors[0]}" if errors else ""
        super().__init__(f"manifest has {what}{first}; run `qwenedit validate` to see them all")


class DestinationUnusable(RunError):
    """The destination cannot be listed or written; nothing was called."""


class RunDeclined(RunError):
    """A run whose quote is above ``approve_above`` was not approved before it started; nothing was called."""


class ShardsFailed(RunError):
    """Some shard runs did not complete; the consolidated report lists their rows."""


class SpendLedgerError(RunError):
    """The spend ledger (``qwenedit.spend``) cannot be used: a store without conditional writes, an
    unreadable record, caps in another currency than its records. Runs refuse to spend rather than guess."""


class JobFailed(QwenEditError):
    """Ends one job early with a ``JobCode`` and a message (the pipeline's own control flow: the job's
    result row gets them; the run goes on)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


# =========================================================================================================
# Job error codes


class JobCode:
    """The ``error_code`` of a failed job when the failure is ours, not the API's (reports depend on these
    exact strings; the API's own codes, such as ``InvalidParameter``, pass through unchanged)."""

    BAD_INPUT: Final = "BadInput"
    """An input image could not be resolved or read when the job ran."""
    OUTPUTS_EXPIRED: Final = "OutputsExpired"
    """The output URLs expired before the images were stored."""
    BUDGET_EXCEEDED: Final = "BudgetExceeded"
    """Not started (or a lost answer not retried): the job could take the spend over the budget or a
    daily/monthly spend cap shared by runs."""
    RUN_STOPPED: Final = "RunStopped"
    """Not started: an account error or a graceful stop (a signal, a cancelled run) stopped the run."""
    NOT_APPROVED: Final = "NotApproved"
    """Not started: the canary's outcome was not approved, so the rest of the run was not spent."""
    OUTPUT_HOST_REFUSED: Final = "OutputHostRefused"
    """An output URL is on a host that is not an allowed result host; not fetched."""
    COPY_FAILED: Final = "CopyFailed"
    """An output image could not be copied into the destination."""
    STORAGE_UNAVAILABLE: Final = "StorageUnavailable"
    """The destination (ledger records) stayed unreachable through every retry."""
    ORCHESTRATION_ERROR: Final = "OrchestrationError"
    """The task running the job crashed outside the pipeline (the orchestrator's failure, not the job's)."""
    SHARD_RUN_FAILED: Final = "ShardRunFailed"
    """The shard run holding the job did not complete, so the job has no result of its own."""
