"""URL and credential scrubbing (``qwenedit.redact``): what error messages and reprs may show of a URL."""

from __future__ import annotations

from qwenedit.redact import redact_url, redact_userinfo, scrub_urls

SECRET_QUERY = "Expires=1999999999&OSSAccessKeyId=LTAIsecretkeyid&Signature=c2VjcmV0LXNpZ25hdHVyZQ%3D%3D"


def test_redaction_helpers_strip_query_strings() -> None:
    url = f"https://user:pw@dashscope-result.oss.aliyuncs.com/a/b.png?{SECRET_QUERY}#frag"
    assert redact_url(url) == "https://dashscope-result.oss.aliyuncs.com/a/b.png?…"
    text = f"failed: {url} then s3://bucket/key?x=1 and http://h/p?q=2."
    scrubbed = scrub_urls(text)
    assert "Signature" not in scrubbed and "x=1" not in scrubbed and "q=2" not in scrubbed
    assert "dashscope-result.oss.aliyuncs.com/a/b.png" in scrubbed


def test_userinfo_is_removed_and_the_rest_of_the_endpoint_kept() -> None:
    assert (
        redact_userinfo("https://AKIAXXXX:supersecret@s3.example.com:9000/x")
        == "https://s3.example.com:9000/x"
    )
    assert redact_userinfo("http://127.0.0.1:8333") == "http://127.0.0.1:8333"
    assert redact_userinfo(None) is None
