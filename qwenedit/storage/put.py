"""One PutObject without the client's per-call machinery: how an S3 destination stores an object in one request.

Every object :class:`~qwenedit.storage.s3.S3Destination` stores in a single request (charge and done
records, output images under the multipart threshold, the conditional-write probe) goes through
:class:`PutWriter`. ``client.put_object`` costs about 1.3 ms of CPU per call, most of it work that is
the same on every call (endpoint ruleset resolution, parameter validation, ~10 event emissions,
serialisation, response parsing); this path does only what differs between calls, with the client's
own parts:

- **URL**: the bucket's base URL comes once per bucket from the client's own endpoint resolution (a
  presigned URL: endpoint, path or virtual addressing, signing region); the key is appended
  percent-encoded as botocore's serializer encodes it.
- **Headers**: ``Content-Type``, ``x-amz-meta-*`` (as given: :func:`~qwenedit.storage.keys.encode_metadata`
  makes them ASCII), ``If-None-Match: *`` for a create-only write, and a CRC32 checksum when the
  client's ``request_checksum_calculation`` is ``when_supported``: a header over HTTP, over HTTPS an
  ``aws-chunked`` body with a trailing checksum, as botocore sends it. ``Expect: 100-continue`` only
  for bodies of 1 MiB and more (botocore sends it always, a round trip per write).
- **Signature**: the client's signer (its credentials, refreshed when they expire, and its signature
  version) with botocore's S3 signer deciding payload signing exactly as for ``put_object``; a new
  signature per try.
- **Send**: the client's HTTP session (its connection pool, TLS verification and CA bundle, proxies,
  timeouts), which raises botocore's connection exceptions. The request is first announced as
  ``before-send.s3.PutObject`` on the client's events, as botocore announces it: a hook may watch
  the request or answer it instead of the store (tests do).
- **Retries**: botocore's ``standard`` mode classes: the client's ``total_max_attempts`` tries in all,
  the same retryable conditions (connection errors, 5xx, 429, throttling and timeout codes), the
  same jittered backoff and retry quota (one quota per writer, as botocore keeps one per client).
- **Failures**: an answer outside 2xx (or a 200 carrying an ``<Error>``, retried as a 500 like
  botocore does) is parsed by botocore's rest-xml parser and raised as the client's ``ClientError``
  subclass for its code: ``response["Error"]["Code"]`` and the HTTP status read exactly as from
  ``put_object``. The text of the exception is the store's code and message, never a credential.

A writer is thread-safe.
"""

from __future__ import annotations

import io
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

from botocore.auth import SIGNED_HEADERS_BLACKLIST, S3SigV4Auth, _host_from_url  # type: ignore[attr-defined]
from botocore.awsrequest import AWSPreparedRequest, AWSResponse
from botocore.endpoint import convert_to_response_dict
from botocore.hooks import first_non_none_response
from botocore.httpchecksum import AwsChunkedWrapper, Crc32Checksum
from botocore.parsers import create_parser
from botocore.retries import quota, standard
from botocore.utils import percent_encode

from qwenedit.storage.base import MiB

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

_CHECKSUM = "x-amz-checksum-crc32"
_EXPECT_CONTINUE_FROM = 1 * MiB
_PROBE_KEY = "k"


class _Headers(dict[str, str]):
    """Request headers: a plain dict (what urllib3 reads fastest) whose lookups ignore case like
    botocore's ``HeadersDict``, each name once (what ``get_all`` of botocore's signers expects)."""

    def _find(self, name: str) -> str | None:
        if dict.__contains__(self, name):
            return name
        lower = name.lower()
        return next((k for k in self if k.lower() == lower), None)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self._find(name) is not None

    def __getitem__(self, name: str) -> str:
        return dict.__getitem__(self, self._find(name) or name)

    def __setitem__(self, name: str, value: str) -> None:
        found = self._find(name)
        if found is not None and found != name:
            dict.__delitem__(self, found)
        dict.__setitem__(self, name, value)

    def __delitem__(self, name: str) -> None:
        dict.__delitem__(self, self._find(name) or name)

    def get(self, name: str, default: Any = None) -> Any:  # type: ignore[override]
        found = self._find(name)
        return default if found is None else dict.__getitem__(self, found)

    def get_all(self, name: str) -> list[str]:
        found = self._find(name)
        return [] if found is None else [dict.__getitem__(self, found)]


class _Request:
    """What botocore's signers read and write of a request, without ``AWSRequest``'s header container (an
    ``email.message.Message``, a third of the cost of signing)."""

    params = None
    method = "PUT"
    auth_path = None

    def __init__(self, url: str, body: Any, headers: _Headers, context: dict[str, Any]) -> None:
        self.url = url
        self.body = self.data = body
        self.headers = headers
        self.context = context


class _SignedHeaders(dict[str, str]):
    def get_all(self, name: str) -> list[str]:
        return [self[name]]


class _S3SigV4Auth(S3SigV4Auth):
    """botocore's S3 SigV4 signer, the headers to sign held in a dict: a request's headers are unique
    (a ``_Headers``), so the canonical request, and the signature, are the same. One instance signs one
    request; it selects the headers once (botocore selects them twice, unchanged in between)."""

    _selected: _SignedHeaders | None = None

    def headers_to_sign(self, request: Any) -> Any:
        if self._selected is not None:
            return self._selected
        found = _SignedHeaders()
        for name, value in request.headers.items():
            lname = name.lower()
            if lname not in SIGNED_HEADERS_BLACKLIST:
                found[lname] = value
        if "host" not in found:
            found["host"] = _host_from_url(request.url)
        self._selected = found
        return found


def _error_in_200(body: bytes) -> bool:
    """A 200 whose body is an ``<Error>`` document or cut-off XML: S3's way of failing late (a 500)."""
    if not body:
        return False
    try:
        return ET.fromstring(body).tag == "Error"
    except ET.ParseError:
        return True


class PutWriter:
    """Single-request PutObject through ``client``'s signer, connection pool and settings."""

    def __init__(self, client: S3Client) -> None:
        self._client = client
        meta = client.meta
        # The client's own parts (botocore keeps no public name for the first two).
        self._signer: Any = client._request_signer  # type: ignore[attr-defined]
        self._http: Any = client._endpoint.http_session  # type: ignore[attr-defined]
        self._events = meta.events
        self._config = meta.config
        self._operation = meta.service_model.operation_model("PutObject")
        self._output_shape: Any = self._operation.output_shape
        self._parser = create_parser("rest-xml")
        self._checksums = getattr(self._config, "request_checksum_calculation", None) != "when_required"
        self._signature_version: str = self._signer.signature_version
        retries = getattr(self._config, "retries", None) or {}
        max_attempts = retries.get("total_max_attempts") or retries.get("max_attempts", 2) + 1
        detector = standard.ThrottlingErrorDetector(standard.RetryEventAdapter())
        self._quota = standard.RetryQuotaChecker(quota.RetryQuota(), detector)
        self._retry = standard.RetryHandler(
            retry_policy=standard.RetryPolicy(
                retry_checker=standard.StandardRetryConditions(max_attempts=max_attempts),
                retry_backoff=standard.ExponentialBackoff(service_name="s3", throttling_detector=detector),
            ),
            retry_event_adapter=standard.RetryEventAdapter(),
            retry_quota=self._quota,  # type: ignore[arg-type]  # the stubs name the wrong class
            service_name="s3",
        )
        self._buckets: dict[str, tuple[str, str, str]] = {}
        self._lock = threading.Lock()

    def _bucket(self, bucket: str) -> tuple[str, str, str]:
        """``(base URL, signing region, signing name)`` of ``bucket``, from the client's endpoint resolution."""
        found = self._buckets.get(bucket)
        if found is not None:
            return found
        url = self._client.generate_presigned_url(
            "put_object", Params={"Bucket": bucket, "Key": _PROBE_KEY}, ExpiresIn=60
        )
        parts = urlsplit(url)
        if not parts.path.endswith("/" + _PROBE_KEY):
            raise ValueError(f"unexpected PutObject URL shape for bucket {bucket!r}: path {parts.path!r}")
        base = f"{parts.scheme}://{parts.netloc}{parts.path[: -len(_PROBE_KEY)]}"
        region, name = self._signer.region_name, self._signer.signing_name
        scope = parse_qs(parts.query).get("X-Amz-Credential")
        if scope:  # access-key/date/region/service/aws4_request
            _, _, region, name, _ = scope[0].rsplit("/", 4)
        found = (base, region, name)
        with self._lock:
            self._buckets[bucket] = found
        return found

    def put(
        self,
        bucket: str,
        key: str,
        data: bytes,
        content_type: str,
        metadata: Mapping[str, str] | None = None,
        *,
        create_only: bool = False,
    ) -> None:
        """Store ``data`` at ``bucket/key`` (``create_only``: unless the key exists, ``If-None-Match: *``).

        Raises ``botocore.exceptions.ClientError`` (a 412 ``PreconditionFailed`` when a create-only
        write finds the key) or botocore's connection exceptions, after the client's retries.
        """
        base, region, signing_name = self._bucket(bucket)
        url = base + percent_encode(key, safe="/~")
        headers = {"Content-Type": content_type}
        if metadata:
            for name, value in metadata.items():
                headers["x-amz-meta-" + name] = value
        if create_only:
            headers["If-None-Match"] = "*"
        if len(data) >= _EXPECT_CONTINUE_FROM:
            headers["Expect"] = "100-continue"
        trailer = self._checksums and url.startswith("https:") and self._signature_version != "s3"
        context: dict[str, Any] = {"client_config": self._config, "has_streaming_input": True}
        if trailer:
            headers.update(
                {
                    "Transfer-Encoding": "chunked",
                    "Content-Encoding": "aws-chunked",
                    "X-Amz-Trailer": _CHECKSUM,
                    "X-Amz-Decoded-Content-Length": str(len(data)),
                }
            )
        elif self._checksums:
            headers[_CHECKSUM] = Crc32Checksum().handle(data)  # type: ignore[no-untyped-call]
        if self._checksums:
            headers["x-amz-sdk-checksum-algorithm"] = "CRC32"
            where = "trailer" if trailer else "header"
            context["checksum"] = {
                "request_algorithm": {"in": where, "name": _CHECKSUM, "algorithm": "crc32"}
            }
        request_context: dict[str, Any] = {}
        attempt = 1
        while True:
            body: Any = data
            if trailer:
                body = AwsChunkedWrapper(
                    io.BytesIO(data), checksum_cls=Crc32Checksum, checksum_name=_CHECKSUM
                )
            request = _Request(url, body, _Headers(headers), dict(context))
            auth = self._signer.get_auth_instance(signing_name, region, self._signature_version)
            if type(auth) is S3SigV4Auth:
                auth = _S3SigV4Auth(auth.credentials, signing_name, region)
            auth.add_auth(request)
            if not trailer:
                request.headers["Content-Length"] = str(len(data))
            prepared = AWSPreparedRequest("PUT", url, request.headers, body, False)  # type: ignore[arg-type]
            http_response, parsed, exception = self._send(prepared)
            if http_response is not None and parsed is None:
                self._quota.release_retry_quota(request_context, http_response)  # type: ignore[arg-type]
                return
            delay = self._retry.needs_retry(
                response=None if http_response is None else (http_response, parsed),
                attempts=attempt,
                operation=self._operation,
                caught_exception=exception,
                request_dict={"context": request_context},
            )
            if delay is None:
                if exception is not None:
                    raise exception
                assert parsed is not None
                error = parsed.get("Error", {})
                error_class: Any = self._client.exceptions.from_code(error.get("Code"))
                raise error_class(parsed, "PutObject")
            time.sleep(delay)  # botocore's backoff, as its endpoint sleeps it
            attempt += 1

    def _send(
        self, request: AWSPreparedRequest
    ) -> tuple[AWSResponse | None, dict[str, Any] | None, Exception | None]:
        """``(response, parsed error or None, None)`` or ``(None, None, exception)``."""
        try:
            answered = first_non_none_response(self._events.emit("before-send.s3.PutObject", request=request))
            response: AWSResponse = answered if answered is not None else self._http.send(request)
        except Exception as exc:  # what botocore's endpoint catches, to retry or raise
            return None, None, exc
        status = response.status_code
        if 200 <= status < 300 and not (status == 200 and _error_in_200(response.content)):
            return response, None, None
        response_dict = convert_to_response_dict(response, self._operation)
        if status < 300:
            response_dict["status_code"] = 500
            response.status_code = 500
        parsed: dict[str, Any] = self._parser.parse(response_dict, self._output_shape)
        return response, parsed, None
