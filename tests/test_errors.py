"""The exception tree: one root, the run-level errors, job codes, and which storage failures are outages."""

from __future__ import annotations

import errno
import inspect

import botocore.exceptions as bce
import pytest

import qwenedit.storage
from qwenedit import errors
from qwenedit.errors import (
    ConditionalWritesUnsupported,
    CopyError,
    DestinationUnusable,
    InvalidKey,
    JobCode,
    ManifestInvalid,
    QwenEditError,
    RunError,
    ShardsFailed,
    StorageError,
    is_transient_storage_error,
)
from qwenedit.manifest import Problem, Validation

# ---------------------------------------------------------------------------------------------------------
# One tree


def test_every_error_class_in_errors_derives_from_the_one_base() -> None:
    classes = [c for _, c in inspect.getmembers(errors, inspect.isclass) if issubclass(c, BaseException)]
    assert len(classes) > 20
    assert all(issubclass(c, QwenEditError) for c in classes), [
        c.__name__ for c in classes if not issubclass(c, QwenEditError)
    ]


def test_storage_errors_keep_their_home_in_qwenedit_storage() -> None:
    for name in ("StorageError", "InvalidKey", "ConditionalWritesUnsupported", "CopyError"):
        assert getattr(qwenedit.storage, name) is getattr(errors, name)
    assert issubclass(InvalidKey, ValueError)  # callers catching ValueError still do
    assert not issubclass(CopyError, StorageError)  # a copy can fail on the source side, too


def test_run_errors_share_a_family() -> None:
    assert all(issubclass(c, RunError) for c in (ManifestInvalid, DestinationUnusable, ShardsFailed))


def test_manifest_invalid_counts_error_problems_only_and_keeps_the_validation() -> None:
    validation = Validation(
        source="m.csv",
        format="csv",
        problems=[
            Problem(2, "a", "n", "must be 1-6"),
            Problem(3, "b", "prompt", "empty"),
            Problem(4, "c", "seed", "unusual", severity="warning"),
        ],
    )
    err = ManifestInvalid(validation)
    assert err.validation is validation
    assert str(err) == (
        'manifest has 2 invalid row problem(s); first: row 2 (job_id "a"), column n: must be 1-6; '
        "run `qwenedit validate` to see them all"
    )
    validation.breaches = 1  # a breach of the run's policy is named as one
    assert str(ManifestInvalid(validation)).startswith(
        "manifest has 1 breach(es) of the run's policy; first:"
    )


# ---------------------------------------------------------------------------------------------------------
# Job codes: reports and dashboards depend on these exact strings


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("BAD_INPUT", "BadInput"),
        ("OUTPUTS_EXPIRED", "OutputsExpired"),
        ("BUDGET_EXCEEDED", "BudgetExceeded"),
        ("RUN_STOPPED", "RunStopped"),
        ("OUTPUT_HOST_REFUSED", "OutputHostRefused"),
        ("COPY_FAILED", "CopyFailed"),
        ("STORAGE_UNAVAILABLE", "StorageUnavailable"),
        ("ORCHESTRATION_ERROR", "OrchestrationError"),
        ("SHARD_RUN_FAILED", "ShardRunFailed"),
    ],
)
def test_job_codes_keep_their_report_strings(name: str, value: str) -> None:
    assert getattr(JobCode, name) == value


def test_job_codes_are_distinct() -> None:
    values = [v for k, v in vars(JobCode).items() if k.isupper()]
    assert len(values) == len(set(values)) == 10


# ---------------------------------------------------------------------------------------------------------
# Transient storage errors: what the storage retry layer may wait out


def _client_error(code: str, status: int, op: str = "PutObject") -> bce.ClientError:
    response = {"Error": {"Code": code, "Message": "..."}, "ResponseMetadata": {"HTTPStatusCode": status}}
    return bce.ClientError(response, op)  # type: ignore[arg-type]


TRANSIENT: list[tuple[str, BaseException]] = [
    ("endpoint unreachable", bce.EndpointConnectionError(endpoint_url="http://127.0.0.1:1")),
    ("connect timeout", bce.ConnectTimeoutError(endpoint_url="http://s3")),
    ("read timeout", bce.ReadTimeoutError(endpoint_url="http://s3")),
    ("connection closed", bce.ConnectionClosedError(endpoint_url="http://s3")),
    ("SlowDown 503", _client_error("SlowDown", 503)),
    ("ServiceUnavailable 503", _client_error("ServiceUnavailable", 503)),
    ("InternalError 500", _client_error("InternalError", 500)),
    ("RequestTimeout 400", _client_error("RequestTimeout", 400)),
    ("HEAD 503 (no body)", _client_error("503", 503, "HeadObject")),
    ("bad gateway 502", _client_error("BadGateway", 502)),
    ("429", _client_error("TooManyRequests", 429)),
    ("concurrent write 409", _client_error("ConditionalRequestConflict", 409)),
    ("connection reset", ConnectionResetError(errno.ECONNRESET, "reset")),
    ("connection refused", ConnectionRefusedError(errno.ECONNREFUSED, "refused")),
    ("timeout", TimeoutError("timed out")),
    ("network unreachable", OSError(errno.ENETUNREACH, "unreachable")),
    ("retryable copy", CopyError("HTTP 503 fetching https://x/y.png", retryable=True)),
    ("store refused If-None-Match", ConditionalWritesUnsupported("retry as HEAD-then-PUT")),
]

NOT_TRANSIENT: list[tuple[str, BaseException]] = [
    ("a bug", TypeError("unsupported operand")),
    ("another bug", KeyError("Contents")),
    ("AccessDenied 403", _client_error("AccessDenied", 403)),
    ("bad key id 403", _client_error("InvalidAccessKeyId", 403)),
    ("NoSuchBucket 404", _client_error("NoSuchBucket", 404)),
    ("HEAD 404", _client_error("404", 404, "HeadObject")),
    ("PreconditionFailed 412", _client_error("PreconditionFailed", 412)),
    ("no credentials", bce.NoCredentialsError()),
    (
        "certificate rejected",
        bce.SSLError(endpoint_url="https://s3", error=ValueError("CERTIFICATE_VERIFY_FAILED")),
    ),
    ("disk full", OSError(errno.ENOSPC, "No space left on device")),
    ("permission", PermissionError(errno.EACCES, "denied")),
    ("missing file", FileNotFoundError(errno.ENOENT, "gone")),
    ("expired copy", CopyError("HTTP 403 fetching https://x/y.png", retryable=False, expired=True)),
    ("not an image", CopyError("https://x/y.png is not an image", retryable=False)),
    ("bad destination", StorageError("empty destination")),
    ("escaping key", InvalidKey("object key has an empty, '.' or '..' segment: '../x'")),
    ("API throttling is not a storage outage", errors.Throttled("Throttling", "slow down", status=429)),
    ("interrupt", KeyboardInterrupt()),
]


@pytest.mark.parametrize(("case", "exc"), TRANSIENT, ids=[c for c, _ in TRANSIENT])
def test_outages_are_transient(case: str, exc: BaseException) -> None:
    assert is_transient_storage_error(exc) is True


@pytest.mark.parametrize(("case", "exc"), NOT_TRANSIENT, ids=[c for c, _ in NOT_TRANSIENT])
def test_bugs_refusals_and_permanent_failures_are_not_transient(case: str, exc: BaseException) -> None:
    assert is_transient_storage_error(exc) is False
