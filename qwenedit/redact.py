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
  before any handler sees it.
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

_PATTERNS = (
    (re.compile(r"((?:X-Amz-)?Credential=)[^/&\s'\",]+"), r"\1***"),
    (re.compile(r"(X-Amz-Security-Token=)[^&\s'\"]+"), r"\1***"),
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
            try:
                message = record.getMessage()
            except Exception:  # a broken format string: leave it to the handler to report
                return record
            clean = redact(message)
            if clean != message:
                record.msg, record.args = clean, None
            return record

        logging.setLogRecordFactory(factory)
