"""S3 ETags by prefix listing: once many references share a "folder", list it instead of HEADing each.

S3 ETags come from one HEAD per object only while few references share a "folder": once
``list_after_heads`` (8) objects of one prefix have been HEADed, the prefix is listed (``Delimiter="/"``,
1,000 keys per LIST) and the rest of its ETags are served from ``PrefixListings``, a bounded cache
(``etag_cache_keys`` keys; a listing is trusted for ``listing_ttl_s``). A key absent from the listing is
HEADed, so an object created after the listing, or a missing one, is judged exactly as before. A
million rows over one folder of images cost a thousand LISTs, not a million HEADs.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

DEFAULT_LIST_AFTER_HEADS = 8
DEFAULT_ETAG_CACHE_KEYS = 200_000
DEFAULT_LISTING_TTL_S = 900.0
_MAX_COUNTED_PREFIXES = 10_000


def s3_prefix(key: str) -> str:
    """The "folder" of an S3 key: everything up to and including its last ``/`` (``""`` at the root)."""
    head, sep, _ = key.rpartition("/")
    return head + sep


@dataclass
class _Listing:
    objects: dict[str, tuple[str, int]]  # key → (ETag without quotes, size in bytes)
    listed_at: float


# One page of ``list_objects_v2``: (bucket, prefix, continuation token or None) → the response dict.
ListPage = Callable[[str, str, "str | None"], dict[str, Any]]


class PrefixListings:
    """ETags and sizes of S3 objects, learned by listing their prefix once many of them are asked for.

    ``lookup(bucket, key)`` answers ``(etag, size)`` from a listing of the key's prefix, or ``None``
    when the caller should HEAD the object itself: the prefix has been asked about fewer than
    ``after_heads`` times (a listing would cost more than it saves), or the key is not in the listing
    (created since, missing, or past the cache bound). The ``after_heads``-th lookup of a prefix lists
    it, page by page (``Delimiter="/"``: its direct objects only). At most ``max_keys`` keys are kept
    across prefixes (least recently used prefixes are dropped first; a prefix larger than the bound
    keeps its first ``max_keys`` keys). A listing older than ``ttl_s`` is listed again.

    Thread-safe. While one thread lists a prefix, other lookups of that prefix wait for the listing
    instead of HEADing or listing it again; lookups of other prefixes are not held up.
    """

    def __init__(
        self,
        list_page: ListPage,
        *,
        after_heads: int = DEFAULT_LIST_AFTER_HEADS,
        max_keys: int = DEFAULT_ETAG_CACHE_KEYS,
        ttl_s: float = DEFAULT_LISTING_TTL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if after_heads < 0 or max_keys < 1 or ttl_s <= 0:
            raise ValueError("after_heads must be ≥ 0, max_keys ≥ 1 and ttl_s > 0")
        self._list_page = list_page
        self._after_heads = after_heads
        self._max_keys = max_keys
        self._ttl_s = ttl_s
        self._clock = clock
        self._lock = threading.Lock()
        self._listings: OrderedDict[tuple[str, str], _Listing] = OrderedDict()
        self._cached_keys = 0
        self._asked: OrderedDict[tuple[str, str], int] = OrderedDict()
        self._listing_now: dict[tuple[str, str], threading.Event] = {}
        self.lists = 0  # LIST requests made (pages)

    def lookup(self, bucket: str, key: str) -> tuple[str, int] | None:
        """``(etag, size)`` of ``s3://bucket/key`` from a listing, or None: HEAD it yourself."""
        pk = (bucket, s3_prefix(key))
        while True:
            with self._lock:
                listing = self._fresh(pk)
                if listing is not None:
                    self._listings.move_to_end(pk)
                    return listing.objects.get(key)
                busy = self._listing_now.get(pk)
                if busy is None:
                    asked = self._asked.pop(pk, 0) + 1
                    self._asked[pk] = asked
                    if len(self._asked) > _MAX_COUNTED_PREFIXES:
                        self._asked.popitem(last=False)
                    if asked <= self._after_heads:
                        return None
                    done = threading.Event()
                    self._listing_now[pk] = done
            if busy is not None:
                busy.wait()
                continue  # the listing is in (or failed): look again
            try:
                objects = self._list(*pk)
            except Exception:
                objects = None  # a failed listing is not an error: every key falls back to HEAD
            with self._lock:
                del self._listing_now[pk]
                self._asked.pop(pk, None)
                if objects is not None:
                    self._store(pk, _Listing(objects, self._clock()))
            done.set()
            return objects.get(key) if objects is not None else None

    def _fresh(self, pk: tuple[str, str]) -> _Listing | None:
        listing = self._listings.get(pk)
        if listing is None:
            return None
        if self._clock() - listing.listed_at >= self._ttl_s:
            self._drop(pk)
            return None
        return listing

    def _drop(self, pk: tuple[str, str]) -> None:
        listing = self._listings.pop(pk, None)
        if listing is not None:
            self._cached_keys -= len(listing.objects)

    def _store(self, pk: tuple[str, str], listing: _Listing) -> None:
        self._drop(pk)
        self._listings[pk] = listing
        self._cached_keys += len(listing.objects)
        while self._cached_keys > self._max_keys and len(self._listings) > 1:
            oldest = next(iter(self._listings))
            self._drop(oldest)

    def _list(self, bucket: str, prefix: str) -> dict[str, tuple[str, int]]:
        objects: dict[str, tuple[str, int]] = {}
        token: str | None = None
        while True:
            page = self._list_page(bucket, prefix, token)
            with self._lock:
                self.lists += 1
            for obj in page.get("Contents", []) or []:
                if len(objects) >= self._max_keys:
                    return objects
                objects[str(obj["Key"])] = (str(obj.get("ETag", "")).strip('"'), int(obj.get("Size") or 0))
            token = page.get("NextContinuationToken") if page.get("IsTruncated") else None
            if not token:
                return objects

    def clear(self) -> None:
        """Forget every listing and count (the next lookups HEAD again)."""
        with self._lock:
            self._listings.clear()
            self._asked.clear()
            self._cached_keys = 0
