"""DashScope error taxonomy: one class per failure family.

Every API failure the client sees becomes one of these. Two class attributes drive the pipeline:

- ``retryable``: the same request may succeed later (throttling, server faults, network).
- ``fatal_for_run``: the account itself is unusable (bad key, arrears, access denied, free tier
  exhausted, unpaid bill); the run breaker stops every new call.

``possibly_billed`` marks failures where the request may have reached the model and been charged
even though we never saw the answer (a read timeout, a dropped connection after sending, a 200 with
a body we could not parse). The report counts these so spend is never silently understated.

Exception text carries the API's code and message only: never the request headers (the key).
"""

from __future__ import annotations

from typing import ClassVar


class QwenEditError(Exception):
    """Base class of every error this package raises on purpose."""


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


class MalformedResponse(DashScopeError):
    """A 200 answer whose body is not the documented shape. The call may have been billed, so it is
    not retried automatically (a retry could pay twice)."""

    possibly_billed = True


class UnexpectedResponse(DashScopeError):
    """A non-2xx answer with a code or status this taxonomy does not know."""


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
