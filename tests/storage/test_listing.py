"""S3 listings: the lean ListObjectsV2 parse gives the keys botocore's own parser would, and the range-partitioned
listing gives every key exactly once, whatever its characters, through any paging."""

from __future__ import annotations

import bisect
import random
import threading
from typing import Any
from urllib.parse import quote
from xml.sax.saxutils import escape

import botocore.session
import pytest
from botocore.parsers import RestXMLParser

from qwenedit.storage.listing import parse_list_objects_v2, partitioned_pages, xml_text
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


# --- range-partitioned listing ------------------------------------------------------------------


class PagedStore:
    """An in-memory ordered key set that answers like ListObjectsV2 with ``StartAfter``: at most
    ``max_keys`` keys after ``start_after``, ascending, and whether more follow. Records every call."""

    def __init__(self, keys: list[str], fail_on_call: int | None = None) -> None:
        self.keys = sorted(keys)
        self.calls: list[tuple[str, str | None, int]] = []
        self.fail_on_call = fail_on_call
        self._lock = threading.Lock()

    def __call__(self, start_after: str | None, max_keys: int) -> tuple[list[str], bool]:
        with self._lock:
            n = len(self.calls)
            if self.fail_on_call is not None and n >= self.fail_on_call:
                raise OSError(f"LIST {n} failed")
            i = 0 if start_after is None else bisect.bisect_right(self.keys, start_after)
            page = self.keys[i : i + max_keys]
            self.calls.append((threading.current_thread().name, start_after, len(page)))
            return page, i + max_keys < len(self.keys)


def _odd_keyset(rng: random.Random, n: int, prefix: str) -> list[str]:
    """Keys after ``prefix`` starting with any character: control characters, punctuation, every plane,
    keys that are prefixes of others, long shared stems."""
    alphabet = [
        "\x01",
        "\x1f",
        " ",
        "!",
        "%",
        "+",
        "-",
        ".",
        "/",
        "0",
        "9",
        "@",
        "A",
        "Z",
        "_",
        "a",
        "z",
        "~",
    ]
    alphabet += ["\x7f", "é", "ß", "中", "\uffff", "🙂", "\U0010fffd"]
    keys: set[str] = set()
    stems = ["", "sku-0000", "sku-0000" * 4, "🙂🙂", "\x01"]
    while len(keys) < n:
        stem = rng.choice(stems)
        tail = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 6)))
        keys.add(prefix + stem + tail)
    keys.update({prefix + "a", prefix + "a\x01", prefix + "a\x01\x01", prefix + "\U0010fffd" * 3})
    return sorted(keys)


@pytest.mark.parametrize("seed", range(6))
def test_partitioned_listing_yields_every_key_exactly_once_whatever_its_characters(seed: int) -> None:
    rng = random.Random(seed)
    prefix = "_ledger/_done/"
    keys = _odd_keyset(rng, rng.choice([7, 300, 2500]), prefix)
    store = PagedStore(keys)
    pages = list(
        partitioned_pages(store, prefix, workers=rng.choice([2, 4, 8]), page_size=rng.choice([1, 3, 50]))
    )
    listed = [k for page in pages for k in page]
    assert len(listed) == len(keys)  # nothing listed twice…
    assert sorted(listed) == keys  # …and nothing lost
    assert all(page == sorted(page) for page in pages)


def test_partitioned_listing_shares_the_work_between_concurrent_lists() -> None:
    prefix = "_ledger/_done/"
    keys = [f"{prefix}sku-{i:07d}@{i * 7919 % 10**6:064x}@1@req-{i}.json" for i in range(20_000)]
    both_listing = threading.Event()
    inner = PagedStore(keys)
    busy: set[str] = set()
    lock = threading.Lock()

    def store(start_after: str | None, max_keys: int) -> tuple[list[str], bool]:
        name = threading.current_thread().name
        with lock:
            busy.add(name)
            if len(busy) >= 2:
                both_listing.set()
        try:
            if start_after is not None and not both_listing.is_set():
                both_listing.wait(30)  # hold this LIST until another one is under way: proves they overlap
            return inner(start_after, max_keys)
        finally:
            with lock:
                busy.discard(name)

    listed = [k for page in partitioned_pages(store, prefix, workers=4, page_size=500) for k in page]
    assert sorted(listed) == keys and len(listed) == len(keys)
    assert both_listing.is_set()
    workers = {name for name, _, n in inner.calls if n}
    assert len(workers) >= 2
    pages_needed = -(-len(keys) // 500)
    assert len(inner.calls) <= 2 * pages_needed + 64  # split probes are bounded


def test_a_failed_list_fails_the_listing_and_stops_its_workers() -> None:
    prefix = "p/"
    store = PagedStore([f"{prefix}{i:05d}" for i in range(5000)], fail_on_call=7)
    with pytest.raises(OSError, match="LIST 7 failed"):
        for _ in partitioned_pages(store, prefix, workers=4, page_size=100):
            pass
    _assert_list_threads_end()


def test_closing_the_listing_early_stops_its_workers() -> None:
    prefix = "p/"
    store = PagedStore([f"{prefix}{i:05d}" for i in range(50_000)])
    pages = partitioned_pages(store, prefix, workers=4, page_size=10)
    next(pages)
    next(pages)
    pages.close()
    _assert_list_threads_end()
    assert len(store.calls) < 5000


def _assert_list_threads_end() -> None:
    for t in threading.enumerate():
        if t.name.startswith("qwenedit-list"):
            t.join(timeout=60)
            assert not t.is_alive(), t.name


def test_a_listing_of_one_page_makes_one_call() -> None:
    store = PagedStore([f"p/{i}" for i in range(10)])
    assert [k for page in partitioned_pages(store, "p/", page_size=1000) for k in page] == sorted(store.keys)
    assert len(store.calls) == 1
    empty = PagedStore([])
    assert list(partitioned_pages(empty, "p/")) == [] and len(empty.calls) == 1


@pytest.mark.parametrize("server", ["seaweed", "moto"])
def test_s3_unordered_listing_lists_what_the_ordered_one_does(
    server: str, s3_bucket: S3Bucket, moto_bucket: S3Bucket
) -> None:
    bucket = s3_bucket if server == "seaweed" else moto_bucket
    dest = bucket.destination("run")
    keys = [k for k in ODD_KEYS if "\r" not in k and "\t" not in k and "\x7f" not in k]
    keys = [f"_ledger/_done/{k}" for k in keys] + [f"_ledger/_done/sku-{i:03d}@x.json" for i in range(40)]
    for key in [*keys, "_ledger/other.json", "sku-1/1.png"]:
        dest.put_bytes(key, b"{}", "application/json")
    listed = list(dest.list_keys_unordered("_ledger/_done/", page_size=3, workers=4))
    assert len(listed) == len(keys) and sorted(listed) == sorted(dest.list_keys("_ledger/_done/")) == sorted(
        keys
    )
