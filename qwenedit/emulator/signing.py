"""Signed, expiring output URLs in the style of OSS presigned links.

``/_emulator/outputs/{request_id}/{k}.png?Expires=<unix>&OSSAccessKeyId=...&Signature=<hmac>``: the
signature is an HMAC-SHA256 over request id, image index and expiry with a secret that exists only in
the running server, so a URL cannot be forged, edited or extended, and stops working after its TTL.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from urllib.parse import urlencode

ACCESS_KEY_ID = "LTAI-emulator"


def signature(secret: bytes, request_id: str, index: int, expires: int) -> str:
    """The URL-safe signature of one output link."""
    mac = hmac.new(secret, f"{request_id}/{index}\n{expires}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac[:18]).decode()


def output_path(request_id: str, index: int) -> str:
    """The path part of an output URL."""
    return f"/_emulator/outputs/{request_id}/{index}.png"


def signed_url(base_url: str, secret: bytes, request_id: str, index: int, expires: int) -> str:
    """A full signed link to output ``index`` of ``request_id`` valid until ``expires`` (unix seconds)."""
    query = urlencode(
        {
            "Expires": expires,
            "OSSAccessKeyId": ACCESS_KEY_ID,
            "Signature": signature(secret, request_id, index, expires),
        }
    )
    return f"{base_url.rstrip('/')}{output_path(request_id, index)}?{query}"


def check_signature(
    secret: bytes, request_id: str, index: int, expires: str | None, sig: str | None, now: float
) -> str | None:
    """None if the link is valid now, else the OSS error code (``AccessDenied``/``SignatureDoesNotMatch``)."""
    if not expires or not sig or not expires.isdigit():
        return "AccessDenied"
    if not hmac.compare_digest(signature(secret, request_id, index, int(expires)), sig):
        return "SignatureDoesNotMatch"
    if int(expires) < now:
        return "AccessDenied"  # OSS answers an expired link with AccessDenied "Request has expired."
    return None


def oss_error_xml(code: str, message: str, request_id: str) -> str:
    """An OSS-like XML error body."""
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n<Error>\n'
        f"  <Code>{code}</Code>\n  <Message>{message}</Message>\n"
        f"  <RequestId>{request_id}</RequestId>\n  <HostId>emulator</HostId>\n</Error>\n"
    )
