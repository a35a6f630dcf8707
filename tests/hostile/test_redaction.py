"""Credentials never reach a log, whatever part of the record carries them (issue 19, row 8).

A presigned URL's query *is* a credential: OSS (``Signature``, ``OSSAccessKeyId``, ``x-oss-*``), AWS
(``X-Amz-Signature``/``Credential``/``Security-Token``), GCS (``X-Goog-*``). They must be scrubbed from
the message, from the formatted traceback (``exc_info``) and from ``stack_info``; report.html must
not show ``user:pass@`` of an input URL.
"""

from __future__ import annotations

import io
import logging

import pytest

from qwenedit.htmlreport import render_html_report
from qwenedit.redact import install_log_redaction, redact
from qwenedit.report import JobResult

OSS_URL = (
    "https://dashscope-result-sh.oss-cn-shanghai.aliyuncs.com/a/1.png?Expires=1999999999"
    "&OSSAccessKeyId=LTAI5tSECRETKEYID&Signature=c2VjcmV0LXNpZ25hdHVyZQ%3D%3D"
)
SECRETS = {
    "oss signature": ("Signature=c2VjcmV0LXNpZ25hdHVyZQ%3D%3D", "c2VjcmV0LXNpZ25hdHVyZQ"),
    "oss key id": ("OSSAccessKeyId=LTAI5tSECRETKEYID", "LTAI5tSECRETKEYID"),
    "oss v4 signature": ("x-oss-signature=7a5e1f0c9b", "7a5e1f0c9b"),
    "oss v4 credential": ("x-oss-credential=LTAI5tOTHERKEY%2F20250101", "LTAI5tOTHERKEY"),
    "oss sts token": ("security-token=CAISstsTOKENvalue", "CAISstsTOKENvalue"),
    "aws signature": ("X-Amz-Signature=0badc0ffee0badc0ffee", "0badc0ffee0badc0ffee"),
    "aws token": ("X-Amz-Security-Token=IQoJb3JpZ2luX2VjEXAMPLE", "IQoJb3JpZ2luX2VjEXAMPLE"),
    "gcs signature": ("X-Goog-Signature=5eed5eed5eed", "5eed5eed5eed"),
    "gcs credential": ("X-Goog-Credential=svc%40proj.iam.gserviceaccount.com", "svc%40proj"),
}


@pytest.mark.parametrize("kind", sorted(SECRETS))
def test_signed_url_parameters_are_redacted(kind: str) -> None:
    param, secret = SECRETS[kind]
    text = f"GET https://bucket.example.com/k.png?Expires=1&{param}&x=1 failed"
    assert secret not in redact(text)
    assert "bucket.example.com/k.png" in redact(text)  # the rest stays readable


def _captured() -> tuple[logging.Logger, io.StringIO, logging.Handler]:
    install_log_redaction()
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    log = logging.getLogger("tests.hostile.redaction")
    log.addHandler(handler)
    log.setLevel(logging.DEBUG)
    log.propagate = False
    return log, out, handler


def test_a_logged_traceback_is_scrubbed() -> None:
    log, out, handler = _captured()
    try:
        try:
            raise RuntimeError(f"Client error '403 Forbidden' for url '{OSS_URL}'")
        except RuntimeError:
            log.exception("copy failed")
    finally:
        log.removeHandler(handler)
    text = out.getvalue()

    assert "Traceback" in text and "RuntimeError" in text and "copy failed" in text
    for secret in ("LTAI5tSECRETKEYID", "c2VjcmV0LXNpZ25hdHVyZQ"):
        assert secret not in text


def test_stack_info_is_scrubbed() -> None:
    install_log_redaction()
    factory = logging.getLogRecordFactory()  # what every logger uses to make its records

    record = factory("n", logging.INFO, __file__, 1, "m", None, None, None, f"Stack:\n  at {OSS_URL}")

    assert record.stack_info is not None and "dashscope-result-sh" in record.stack_info
    assert "LTAI5tSECRETKEYID" not in record.stack_info
    assert "c2VjcmV0LXNpZ25hdHVyZQ" not in record.stack_info


def test_report_html_never_shows_userinfo_of_an_input_url() -> None:
    result = JobResult(row=1, job_id="j1", status="failed", model="m", region="r", images_requested=1)
    html = render_html_report(
        {"run_id": "r"},
        [result],
        inputs_of=lambda r: ["https://alice:hunter2@images.example/a/b/c.png?X-Amz-Signature=abc"],
    )
    assert "input 1" in html
    assert "hunter2" not in html and "alice" not in html and "X-Amz-Signature" not in html
    assert "images.example/a/b/c.png" in html
