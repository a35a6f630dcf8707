"""Answers a test gives in place of the store: a ``before-send.s3.PutObject`` hook on a client's events.

botocore announces every request as ``before-send`` and uses a hook's answer instead of sending it;
:class:`~qwenedit.storage.put.PutWriter` announces its PutObject the same way. An answer is a real
``AWSResponse`` (status, headers, body), so the writer parses it as it would parse the store's.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from botocore.awsrequest import AWSResponse

# Headers that differ between any two requests, or that only botocore sends (SDK telemetry, and the
# Expect: 100-continue it puts on every PutObject, which PutWriter sends from 1 MiB only).
VOLATILE_HEADERS = frozenset(
    {"authorization", "x-amz-date", "user-agent", "amz-sdk-invocation-id", "amz-sdk-request", "expect"}
)


def stable_headers(headers: Any) -> dict[str, str]:
    """A request's headers without the volatile ones, names in lower case: what two writers must agree on."""
    return {k.lower(): v for k, v in dict(headers).items() if k.lower() not in VOLATILE_HEADERS}


class _Raw:
    def __init__(self, body: bytes) -> None:
        self._body = body

    def stream(self, *_: Any, **__: Any) -> Iterator[bytes]:
        yield self._body


def error_body(code: str, message: str) -> bytes:
    return (
        f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code><Message>{message}</Message>'
        "<RequestId>test</RequestId></Error>"
    ).encode()


def response(status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> AWSResponse:
    return AWSResponse("http://test.invalid/", status, headers or {}, _Raw(body))


def error(status: int, code: str, message: str = "test answer") -> AWSResponse:
    return response(status, error_body(code, message), {"Content-Type": "application/xml"})


class Answers:
    """A ``before-send`` hook: records every PutObject (its headers) and answers those for which
    ``when(request)`` holds with the next of ``answers``, then with ``forever`` (None: the request goes
    on to the store)."""

    def __init__(
        self,
        *answers: AWSResponse | None,
        forever: AWSResponse | None = None,
        when: Callable[[Any], bool] = lambda request: True,
    ) -> None:
        self._answers = list(answers)
        self._forever = forever
        self._when = when
        self.seen: list[dict[str, str]] = []

    def __call__(self, request: Any, **_: Any) -> AWSResponse | None:
        self.seen.append({k: v.decode() if isinstance(v, bytes) else v for k, v in request.headers.items()})
        if not self._when(request):
            return None
        return self._answers.pop(0) if self._answers else self._forever

    def install(self, client: Any) -> Answers:
        client.meta.events.register("before-send.s3.PutObject", self)
        return self


def conditional(request: Any) -> bool:
    """Only create-only writes (``If-None-Match``)."""
    return "If-None-Match" in request.headers
