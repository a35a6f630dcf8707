"""Redaction: credentials never reach a log line or an error message, whoever writes it.

Two tools, one concern:

- **URL scrubbing** (:func:`redact_url`, :func:`scrub_urls`, :func:`redact_userinfo`): a presigned URL's
  query string *is* a credential, and an endpoint may be written ``https://user:pass@host``. Error
  messages and reprs pass URLs through these before they are shown.
- **Log redaction** (:func:`install_log_redaction`): botocore logs every signed request at DEBUG,
  Authorization header included (``Credential=<access key id>/...``), and the canonical query of every
  presigned URL (``X-Amz-Credential=<access key id>%2F...``). A user who turns logging up to debug a
  run must not get credentials in their terminal, their log files or Prefect's log store. It wraps the
  process's LogRecord factory, so every record, from any logger, is scrubbed once, when it is created,
  before any handler sees it: its message, its traceback (``exc_info`` is formatted, scrubbed and
  kept as ``exc_text``; the exception object is dropped, so no handler can format it unscrubbed) and
  its ``stack_info``. Signed-URL query parameters are scrubbed wherever they appear: OSS
  (``Signature``, ``OSSAccessKeyId``, ``security-token``, every ``x-oss-*``), AWS SigV2/SigV4
  (``AWSAccessKeyId``, ``X-Amz-Signature``/``Credential``/``Security-Token``), GCS (every
  ``X-Goog-*``) and Azure SAS (``sig``).
"""

from __future__ import annotations

import logging
import re
import threading
from typing import Any
from urllib.parse import urlsplit

# ---------------------------------------------------------------------------------------------------------
# URLs and credentials in text

_URL_WITH_QUERY = re.compile(r"((?:https?|s3)://[^\s?#'\"<>]*)[?#][^\s'\"<>]*", re.IGNORECASE)


def redact_url(url: str) -> str:
    """``url`` without query string, fragment or userinfo: a presigned URL's query *is* a credential."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable URL>"
    netloc = parts.netloc.rsplit("@", 1)[-1]
    tail = "?…" if parts.query else ""
    return f"{parts.scheme}://{netloc}{parts.path}{tail}" if parts.scheme else f"{parts.path}{tail}"


def scrub_urls(text: str) -> str:
    """Remove the query string and fragment of every URL in ``text``."""
    return _URL_WITH_QUERY.sub(lambda m: m.group(1) + "?…", text)


def redact_userinfo(url: str | None) -> str | None:
    """``url`` without its ``user:password@`` part (an endpoint URL may carry credentials there)."""
    if url is None or "@" not in url:
        return url
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return parts._replace(netloc=host).geturl()


# ---------------------------------------------------------------------------------------------------------
# Log records

# A query parameter (or header field) whose value is a credential or a signature.
_SIGNED_PARAMS = (
    r"Signature|OSSAccessKeyId|AWSAccessKeyId|security-token|sig|x-oss-[a-z0-9-]+"
    r"|X-Amz-(?:Signature|Credential|Security-Token)|X-Goog-[a-z0-9-]+"
)
_PATTERNS = (
    (re.compile(rf"(?<![A-Za-z0-9_-])((?:{_SIGNED_PARAMS})=)[^&\s'\",;]+", re.IGNORECASE), r"\1***"),
    (re.compile(r"((?:X-Amz-)?Credential=)[^/&\s'\",]+"), r"\1***"),
    (re.compile(r"\b((?:AKIA|ASIA)[A-Z0-9]{4})[A-Z0-9]{8,}"), r"\1***"),
    (re.compile(r"\bsk-[A-Za-z0-9_-]{6,}"), "sk-***"),
)
_secrets: set[str] = set()
_lock = threading.Lock()
_installed = False


def redact(text: str) -> str:
    """``text`` with credential-looking tokens and every registered secret replaced by ``***``."""
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    for secret in _secrets:
        text = text.replace(secret, "***")
    return text


def install_log_redaction(*secrets: str) -> None:
    """Scrub every log record created from now on (idempotent; ``secrets`` are added to the list)."""
    global _installed
    with _lock:
        _secrets.update(s for s in secrets if s and len(s) >= 8)
        if _installed:
            return
        _installed = True
        make_record = logging.getLogRecordFactory()

        def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
            record = make_record(*args, **kwargs)
            _scrub_record(record)
            return record

        logging.setLogRecordFactory(factory)


_FORMATTER = logging.Formatter()


def _scrub_record(record: logging.LogRecord) -> None:
    """Redact a record's message, traceback and stack in place."""
    try:
        message = record.getMessage()
    except Exception:  # a broken format string: leave it to the handler to report
        message = None
    if message is not None:
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, None
    if record.exc_info and record.exc_info[0] is not None:
        # Handlers format ``exc_info`` only when ``exc_text`` is empty: format it now, scrubbed, and
        # drop the exception so nothing can render it (or its ``repr``s) unscrubbed later.
        try:
            text = _FORMATTER.formatException(record.exc_info)
        except Exception:
            text = f"{record.exc_info[0].__name__} (traceback could not be formatted)"
        record.exc_text = redact(text)
        record.exc_info = None
    elif record.exc_text:
        record.exc_text = redact(record.exc_text)
    if record.stack_info:
        record.stack_info = redact(record.stack_info)
