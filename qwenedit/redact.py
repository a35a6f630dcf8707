"""Log redaction: credentials never reach a log line, whoever writes it (our code or a library at DEBUG).

botocore logs every signed request at DEBUG, Authorization header included (``Credential=<access key
id>/...``), and the canonical query of every presigned URL (``X-Amz-Credential=<access key id>%2F...``).
A user who turns logging up to debug a run must not get credentials in their terminal, their log
files or Prefect's log store. ``install_log_redaction`` wraps the process's LogRecord factory, so every
record, from any logger, is scrubbed once, when it is created, before any handler sees it.
"""

from __future__ import annotations

import logging
import re
import threading
from typing import Any

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
