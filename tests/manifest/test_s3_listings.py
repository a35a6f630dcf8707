"""S3 input identities come from listing a shared prefix, not from a HEAD per image.

Requests are counted with a botocore ``before-call`` hook on the resolver's own client, against the
moto S3 server: what is counted is what would go over the wire.
"""

from __future__ import annotations

from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from qwenedit.errors import InputError
from qwenedit.inputs import InputResolver, PrefixListings, s3_prefix
from tests.fixtures.s3 import S3Bucket


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def counting_resolver(bucket: S3Bucket, **kwargs: Any) -> tuple[InputResolver, Counter[str]]:
    """A resolver whose S3 client counts its requests by operation (HeadObject, ListObjectsV2, ...)."""
    calls: Counter[str] = Counter()
    client = bucket.server.client()

    def count(event_name: str, **_: Any) -> None:
        calls[event_name.rsplit(".", 1)[-1]] += 1

    client.meta.events.register("before-call.s3.*", count)
    return InputResolver(s3_client_factory=lambda: client, **kwargs), calls


def put_many(bucket: S3Bucket, prefix: str, n: int) -> list[str]:
    keys = [f"{prefix}img-{i:05d}.png" for i in range(n)]
    for k in keys:
        bucket.client.put_object(Bucket=bucket.bucket, Key=k, Body=k.encode())
    return keys


def head_etag(bucket: S3Bucket, key: str) -> str:
    return str(bucket.client.head_object(Bucket=bucket.bucket, Key=key)["ETag"]).strip('"')


def test_prefix_of_a_key_is_its_folder() -> None:
    assert s3_prefix("a/b/c.png") == "a/b/"
    assert s3_prefix("c.png") == ""


@pytest.mark.slow
def test_two_thousand_refs_under_one_prefix_cost_two_lists_and_no_head_after_the_threshold(
    moto_bucket: S3Bucket,
) -> None:
    keys = put_many(moto_bucket, "catalogue/2026-12/", 2000)
    resolver, calls = counting_resolver(moto_bucket)
    ids = [resolver.identity(f"s3://{moto_bucket.bucket}/{k}") for k in keys]
    assert calls["HeadObject"] == 8  # the threshold, then never again
    assert calls["ListObjectsV2"] <= 3  # 2,000 keys at 1,000 per page
    assert resolver.listings.lists == calls["ListObjectsV2"]
    # Listed ETags are the ETags a HEAD gives: the fingerprints do not change with the method.
    for i in (0, 7, 8, 999, 1000, 1999):
        assert ids[i] == f"s3://{moto_bucket.bucket}/{keys[i]}#{head_etag(moto_bucket, keys[i])}"


@pytest.mark.slow
def test_concurrent_lookups_list_a_prefix_once(moto_bucket: S3Bucket) -> None:
    keys = put_many(moto_bucket, "many/", 1500)
    resolver, calls = counting_resolver(moto_bucket)
    refs = [f"s3://{moto_bucket.bucket}/{k}" for k in keys]
    with ThreadPoolExecutor(16) as pool:
        ids = list(pool.map(resolver.identity, refs))
    assert calls["HeadObject"] == 8
    assert calls["ListObjectsV2"] == 2
    assert len(set(ids)) == 1500


def test_few_refs_under_a_prefix_are_headed_not_listed(moto_bucket: S3Bucket) -> None:
    keys = put_many(moto_bucket, "few/", 5)
    resolver, calls = counting_resolver(moto_bucket)
    for k in keys:
        resolver.identity(f"s3://{moto_bucket.bucket}/{k}")
    assert calls == Counter({"HeadObject": 5})


def test_a_changed_object_gets_a_new_identity(moto_bucket: S3Bucket) -> None:
    keys = put_many(moto_bucket, "shop/", 20)
    clock = Clock()
    resolver, calls = counting_resolver(moto_bucket, list_after_heads=0, listing_ttl_s=60, clock=clock)
    ref = f"s3://{moto_bucket.bucket}/{keys[3]}"
    before = resolver.identity(ref)
    assert calls == Counter({"ListObjectsV2": 1})
    moto_bucket.client.put_object(Bucket=moto_bucket.bucket, Key=keys[3], Body=b"new content")
    new_etag = head_etag(moto_bucket, keys[3])
    # A new run (a new resolver) sees the new ETag; so does this one once its listing is stale.
    fresh, _ = counting_resolver(moto_bucket, list_after_heads=0)
    assert fresh.identity(ref) == f"{ref}#{new_etag}" != before
    clock.now += 61
    assert resolver.identity(ref) == f"{ref}#{new_etag}"
    assert calls == Counter({"ListObjectsV2": 2})


def test_a_key_missing_from_the_listing_falls_back_to_head(moto_bucket: S3Bucket) -> None:
    put_many(moto_bucket, "drop/", 3)
    resolver, calls = counting_resolver(moto_bucket, list_after_heads=0)
    resolver.identity(f"s3://{moto_bucket.bucket}/drop/img-00000.png")
    moto_bucket.client.put_object(Bucket=moto_bucket.bucket, Key="drop/late.png", Body=b"late")
    late = resolver.identity(f"s3://{moto_bucket.bucket}/drop/late.png")
    assert late.endswith("#" + head_etag(moto_bucket, "drop/late.png"))
    with pytest.raises(InputError, match="no such object"):
        resolver.identity(f"s3://{moto_bucket.bucket}/drop/nope.png")
    assert calls == Counter({"ListObjectsV2": 1, "HeadObject": 2})


def test_listed_size_over_the_limit_is_refused_like_a_head(moto_bucket: S3Bucket) -> None:
    moto_bucket.client.put_object(Bucket=moto_bucket.bucket, Key="big/a.png", Body=b"x" * 2048)
    resolver, _ = counting_resolver(moto_bucket, list_after_heads=0, s3_mode="data_uri")
    import qwenedit.inputs.resolver as resolver_module

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(resolver_module, "max_inline_raw", lambda: 1024)
        with pytest.raises(InputError, match="the API takes at most"):
            resolver.identity(f"s3://{moto_bucket.bucket}/big/a.png")
    assert resolver.listings.lists == 1


def test_cache_keeps_at_most_max_keys_and_drops_the_oldest_prefix() -> None:
    pages = {
        "a/": [{"Key": f"a/{i}", "ETag": f'"a{i}"', "Size": 1} for i in range(3)],
        "b/": [{"Key": f"b/{i}", "ETag": f'"b{i}"', "Size": 1} for i in range(3)],
    }
    listed: list[str] = []

    def list_page(bucket: str, prefix: str, token: str | None) -> dict[str, Any]:
        listed.append(prefix)
        return {"Contents": pages[prefix], "IsTruncated": False}

    cache = PrefixListings(list_page, after_heads=0, max_keys=4)
    assert cache.lookup("bk", "a/1") == ("a1", 1)
    assert cache.lookup("bk", "b/2") == ("b2", 1)  # 6 keys > 4: prefix a/ is dropped
    assert cache.lookup("bk", "b/0") == ("b0", 1)
    assert cache.lookup("bk", "a/0") == ("a0", 1)  # listed again
    assert listed == ["a/", "b/", "a/"]


def test_a_failed_listing_falls_back_to_head_and_is_retried_after_the_threshold() -> None:
    attempts: list[str] = []

    def list_page(bucket: str, prefix: str, token: str | None) -> dict[str, Any]:
        attempts.append(prefix)
        raise ConnectionError("S3 down")

    cache = PrefixListings(list_page, after_heads=2)
    outcomes = [cache.lookup("bk", f"p/{i}") for i in range(6)]
    assert outcomes == [None] * 6
    assert attempts == ["p/", "p/"]  # lookups 3 and 6: two HEADs between attempts
