"""The lean ListObjectsV2 parse: the keys botocore's own parser would give, for any key, through any paging."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote
from xml.sax.saxutils import escape

import botocore.session
import pytest
from botocore.parsers import RestXMLParser

from qwenedit.storage.listing import parse_list_objects_v2, xml_text
from tests.fixtures.s3 import S3Bucket

ODD_KEYS = [
    "a&b<c>d\"e'f.json",
    "sku 1@ünïcode-作业.json",
    "plus+equals=tilde~percent%20.json",
    "emoji-🙂.json",
    "amp-&amp;-literal.json",
    "tab\tand-crlf\r\nend.json",
    "!leading-bang.json",
    "~tilde-first.json",
    "\u007fdel.json",
]


def _answer(keys: list[str], *, encode: bool, truncated: bool = False, token: str | None = None) -> bytes:
    """A ListObjectsV2 answer as AWS writes it (XML-escaped text; keys URL-encoded if ``encode``)."""
    entities = {'"': "&quot;", "'": "&apos;", "\r": "&#13;", "\t": "&#9;"}
    parts = [
        '<?xml version="1.0" encoding="UTF-8"?>\n<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
    ]
    parts.append("<Name>bucket</Name><Prefix>p/</Prefix>")
    parts.append(f"<KeyCount>{len(keys)}</KeyCount><MaxKeys>1000</MaxKeys>")
    if encode:
        parts.append("<EncodingType>url</EncodingType>")
    parts.append(f"<IsTruncated>{'true' if truncated else 'false'}</IsTruncated>")
    for key in keys:
        text = quote(key, safe="/") if encode else escape(key, entities)
        parts.append(
            f"<Contents><Key>{text}</Key><LastModified>2026-12-06T14:04:56.000Z</LastModified>"
            "<ETag>&quot;0cc175b9c0f1b6a831c399e269772661&quot;</ETag><Size>1</Size>"
            "<Owner><ID>x&amp;y</ID><DisplayName>me</DisplayName></Owner><StorageClass>STANDARD</StorageClass></Contents>"
        )
    if token is not None:
        parts.append(f"<NextContinuationToken>{escape(token)}</NextContinuationToken>")
    parts.append("</ListBucketResult>")
    return "".join(parts).encode("utf-8")


def _botocore_parse(body: bytes) -> dict[str, Any]:
    model = botocore.session.get_session().get_service_model("s3").operation_model("ListObjectsV2")
    response = {"status_code": 200, "headers": {}, "body": body}
    parsed: dict[str, Any] = RestXMLParser().parse(response, model.output_shape)
    return parsed


@pytest.mark.parametrize("encode", [False, True], ids=["xml-escaped", "url-encoded"])
def test_lean_parse_gives_the_keys_botocore_gives(encode: bool) -> None:
    body = _answer(ODD_KEYS, encode=encode, truncated=True, token="tok&en/1==")
    lean, full = parse_list_objects_v2(body), _botocore_parse(body)
    assert lean is not None
    assert [c["Key"] for c in lean["Contents"]] == [c["Key"] for c in full["Contents"]]
    for field in ("IsTruncated", "NextContinuationToken", "KeyCount", "MaxKeys", "Prefix", "Name"):
        assert lean[field] == full[field], field
    assert lean.get("EncodingType") == full.get("EncodingType")


def test_xml_text_decodes_references_and_line_ends_like_an_xml_parser() -> None:
    assert xml_text(b"a&amp;lt;b&#60;&#x4E2D;&quot;&apos;&gt;") == "a&lt;b<中\"'>"
    assert xml_text(b"one\r\ntwo\rthree&#13;") == "one\ntwo\nthree\r"
    assert xml_text("作业".encode()) == "作业"


def test_an_empty_last_page_says_not_truncated_and_has_no_contents() -> None:
    parsed = parse_list_objects_v2(_answer([], encode=True))
    assert parsed is not None
    assert "Contents" not in parsed and parsed["IsTruncated"] is False and parsed["KeyCount"] == 0


@pytest.mark.parametrize(
    "body",
    [
        b"<ListAllMyBucketsResult><Buckets/></ListAllMyBucketsResult>",
        b"<ListBucketResult><CommonPrefixes><Prefix>a/</Prefix></CommonPrefixes></ListBucketResult>",
        b"<ListBucketResult><Contents><Size>1</Size></Contents></ListBucketResult>",
    ],
    ids=["not-a-listing", "common-prefixes", "contents-without-key"],
)
def test_answers_the_lean_parse_does_not_know_are_left_to_botocore(body: bytes) -> None:
    assert parse_list_objects_v2(body) is None


def test_error_answers_are_botocores(s3_bucket: S3Bucket) -> None:
    import botocore.exceptions

    dest = s3_bucket.destination("x")
    dest.bucket = "no-such-bucket-lean-listing"
    with pytest.raises(botocore.exceptions.ClientError) as info:
        list(dest.list_keys())
    assert info.value.response["Error"]["Code"] == "NoSuchBucket"


@pytest.mark.parametrize("server", ["seaweed", "moto"])
def test_listing_odd_keys_through_small_pages_loses_and_repeats_nothing(
    server: str, s3_bucket: S3Bucket, moto_bucket: S3Bucket
) -> None:
    bucket = s3_bucket if server == "seaweed" else moto_bucket
    dest = bucket.destination("p")
    keys = [k for k in ODD_KEYS if "\r" not in k and "\t" not in k and "\x7f" not in k]
    keys += [f"_ledger/_done/{k}" for k in keys] + [f"n{i:02d}" for i in range(17)]
    for key in keys:
        dest.put_bytes(key, b"{}", "application/json")
    calls: list[int] = []
    dest.listing_client.meta.events.register("before-call.s3.ListObjectsV2", lambda **kw: calls.append(1))
    listed = list(dest.list_keys(page_size=4))
    assert sorted(listed) == sorted(keys) and len(listed) == len(keys)
    assert listed == [o["Key"].removeprefix("p/") for o in _all(bucket, "p/")]  # botocore's own listing
    assert len(calls) == -(-len(keys) // 4)
    assert sorted(dest.list_keys("_ledger/_done/", page_size=3)) == sorted(
        k for k in keys if k.startswith("_ledger")
    )


def _all(bucket: S3Bucket, prefix: str) -> list[dict[str, Any]]:
    pages = bucket.client.get_paginator("list_objects_v2").paginate(Bucket=bucket.bucket, Prefix=prefix)
    return [o for page in pages for o in page.get("Contents", [])]
