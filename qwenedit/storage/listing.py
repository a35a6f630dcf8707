"""Listing keys of an S3-compatible store cheaply: a lean parse of ListObjectsV2 pages.

A rerun of a million-row catalogue lists a million done markers (1,000 pages of 1,000 keys). botocore
parses each page into a dict per object, with a ``datetime`` for every ``LastModified``: about 75 ms
of CPU per page, so 75 s per million keys, much more than the store takes to answer (about 12 ms a
page from SeaweedFS on loopback). A listing only needs the keys.

:func:`install_lean_listing` registers a ``before-parse`` hook on one client: a successful
ListObjectsV2 answer without ``CommonPrefixes`` is read with a few regular expressions
(the ``Key`` of every ``Contents``, ``IsTruncated``, ``NextContinuationToken``, ``KeyCount``,
``EncodingType`` and the echoed request fields), XML character references decoded exactly as an XML
parser would, and botocore is left an empty document to parse. Everything else (signing, retries,
errors, any other operation, the URL-decoding of keys botocore does after the call when it asked for
``EncodingType=url``) stays botocore's: its own check of 200 answers (an embedded ``<Error>``, a body
cut off mid-way: retried as a 500) runs before this hook. Each ``Contents`` entry carries only
``Key``. An answer the hook does not fully understand (no ``ListBucketResult``, ``CommonPrefixes``,
a ``Contents`` without a ``Key``, no closing tag) is left to botocore untouched.
"""

from __future__ import annotations

import queue
import re
import threading
from bisect import bisect_right
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

_ROOT = re.compile(rb"<ListBucketResult[\s>]")
_CONTENTS_OPEN = re.compile(rb"<Contents>")
_KEY_ANYWHERE = re.compile(rb"<Key>([^<]*)</Key>")
_REF = re.compile(r"&(#x[0-9A-Fa-f]+|#[0-9]+|lt|gt|amp|quot|apos);")
_NAMED = {"lt": "<", "gt": ">", "amp": "&", "quot": '"', "apos": "'"}
# Top-level text elements of a ListObjectsV2 answer that botocore would return (as strings).
_TEXT_FIELDS = (
    *("Name", "Prefix", "Delimiter", "EncodingType"),
    *("ContinuationToken", "NextContinuationToken", "StartAfter"),
)
_INT_FIELDS = ("KeyCount", "MaxKeys")
_EMPTY = b'<?xml version="1.0" encoding="UTF-8"?><ListBucketResult></ListBucketResult>'


def _ref(m: re.Match[str]) -> str:
    name = m.group(1)
    if name.startswith("#x"):
        return chr(int(name[2:], 16))
    if name.startswith("#"):
        return chr(int(name[1:]))
    return _NAMED[name]


def xml_text(raw: bytes) -> str:
    """Character data of an XML element as a parser returns it: UTF-8 decoded, line ends normalised
    (``\\r\\n`` and ``\\r`` → ``\\n``), character and entity references replaced."""
    text = raw.decode("utf-8")
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    if "&" in text:
        text = _REF.sub(_ref, text)
    return text


def _top_level(body: bytes, name: str) -> bytes | None:
    """The text of the top-level element ``name`` (outside ``Contents``), or None."""
    head = body.split(b"<Contents>", 1)[0]
    tail = body.rsplit(b"</Contents>", 1)[-1] if b"</Contents>" in body else b""
    tag = name.encode("ascii")
    for part in (head, tail):
        m = re.search(rb"<" + tag + rb">([^<]*)</" + tag + rb">", part)
        if m is not None:
            return m.group(1)
    return None


def parse_list_objects_v2(body: bytes) -> dict[str, Any] | None:
    """The fields of a ListObjectsV2 answer a listing needs, or None if the answer is not a plain one."""
    if _ROOT.search(body) is None or b"<CommonPrefixes>" in body:
        return None
    if not body.rstrip().endswith(b"</ListBucketResult>"):
        return None  # a cut-off answer: botocore's parser raises, and the call is retried
    keys = _KEY_ANYWHERE.findall(body)
    if len(keys) != len(_CONTENTS_OPEN.findall(body)):
        return None  # a Contents without exactly one Key: not a shape this parse knows
    parsed: dict[str, Any] = {"Contents": [{"Key": xml_text(k)} for k in keys]} if keys else {}
    truncated = _top_level(body, "IsTruncated")
    parsed["IsTruncated"] = truncated is not None and truncated.strip() == b"true"
    for name in _TEXT_FIELDS:
        value = _top_level(body, name)
        if value is not None:
            parsed[name] = xml_text(value)
    for name in _INT_FIELDS:
        value = _top_level(body, name)
        if value is not None and value.strip().isdigit():
            parsed[name] = int(value)
    return parsed


def _lean_parse(response_dict: dict[str, Any], customized_response_dict: dict[str, Any], **_: Any) -> None:
    if response_dict.get("status_code") != 200:
        return
    body = response_dict.get("body")
    if not isinstance(body, bytes):
        return
    parsed = parse_list_objects_v2(body)
    if parsed is None:
        return
    customized_response_dict.update(parsed)
    response_dict["body"] = _EMPTY


def install_lean_listing(client: S3Client) -> S3Client:
    """Make ``client``'s ListObjectsV2 answers carry only keys (see the module docstring); returns it."""
    client.meta.events.register("before-parse.s3.ListObjectsV2", _lean_parse)
    return client


# --- range-partitioned parallel listing ---------------------------------------------------------

PageLister = Callable[[str | None, int], tuple[list[str], bool]]
"""``(start_after, max_keys)`` → (the next keys after ``start_after`` in ascending order, truncated?)."""

LIST_WORKERS = 4  # concurrent LIST requests of one partitioned listing
_DIGITS = 8  # resolution of a split point beyond the common prefix of its range's ends
_MAX_DIGITS = 40


@dataclass(eq=False)
class _Range:
    """Keys ``> cur`` and ``<= hi`` (``hi`` None: no upper end) are still to be listed by this range."""

    cur: str
    hi: str | None
    listed: int = 0
    done: bool = False


class _Alphabet:
    """The characters seen in listed keys (after the listing prefix): the digits split points are made of.

    Only the balance of a split depends on it, never its correctness: a split point is any string
    strictly between the ends of a range, checked as such.
    """

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.chars: list[str] = []
        self._seen: set[str] = set()

    def learn(self, keys: Sequence[str]) -> None:
        new = {c for k in keys[:: max(1, len(keys) // 16)] for c in k[len(self.prefix) :]} - self._seen
        if new:
            self._seen |= new
            self.chars = sorted(self._seen)

    def _digit(self, c: str) -> int:
        # 0 is "the string has ended"; a character the alphabet lacks counts as the one below it.
        return bisect_right(self.chars, c)

    def digits(self, s: str, start: int, n: int) -> int:
        base, value = len(self.chars) + 1, 0
        for i in range(start, start + n):
            value = value * base + (self._digit(s[i]) if i < len(s) else 0)
        return value

    def text(self, value: int, n: int) -> str:
        base, out = len(self.chars) + 1, []
        for _ in range(n):
            value, d = divmod(value, base)
            out.append(d)
        chars = []
        for d in reversed(out):
            if d == 0:
                break
            chars.append(self.chars[d - 1])
        return "".join(chars)

    def position(self, s: str) -> float:
        """``s`` (after the prefix) as a fraction of the key space, for comparing the size of ranges."""
        if len(self.chars) < 1:
            return 0.0
        base, value, scale = len(self.chars) + 1, 0.0, 1.0
        for c in s[len(self.prefix) : len(self.prefix) + 12]:
            scale /= base
            value += self._digit(c) * scale
        return value

    def split_point(self, lo: str, hi: str | None) -> str | None:
        """A key strictly between ``lo`` and ``hi`` (None: above ``lo``), near the middle; None if none."""
        if not self.chars:
            return None
        p = len(self.prefix)
        if hi is None:
            common = p
        else:
            common = p
            while common < min(len(lo), len(hi)) and lo[common] == hi[common]:
                common += 1
        n = _DIGITS
        while n <= _MAX_DIGITS:
            low = self.digits(lo, common, n)
            high = (len(self.chars) + 1) ** n - 1 if hi is None else self.digits(hi, common, n)
            if high - low >= 2:
                m = lo[:common] + self.text((low + high) // 2, n)
                if lo < m and (hi is None or m < hi):
                    return m
            n += _DIGITS
        return None


def partitioned_pages(
    list_page: PageLister,
    prefix: str,
    *,
    workers: int = LIST_WORKERS,
    page_size: int = 1000,
    max_splits: int | None = None,
) -> Iterator[list[str]]:
    """Every key under ``prefix``, exactly once, in pages (each ascending; pages in no set order),
    listed by up to ``workers`` concurrent ``list_page`` calls over disjoint key ranges.

    The key space is a set of ranges ``(cur, hi]`` that always cover every key not yet yielded, each
    owned by one worker that lists it page by page from ``cur`` (``StartAfter``). A worker without a
    range splits the largest one at a key ``m`` strictly inside it: the owner keeps ``(cur, m]`` and
    drops any key of its page beyond ``m`` (a split and a page are applied under one lock, so no key
    is both kept and handed over), the thief lists ``(m, hi]``. Any key, of any characters, is in
    exactly one range; split points only decide how evenly the work is shared (they are drawn from
    the characters of keys seen so far, so a split may land in an empty stretch and cost one LIST).
    Splits are capped (``max_splits``, default 16 per worker). The first page is listed before any
    split. Yields pages as they arrive; closing the iterator stops the workers.
    """
    first, truncated = list_page(None, page_size)
    if first:
        yield first
    if not truncated or not first:
        return
    alphabet = _Alphabet(prefix)
    alphabet.learn(first)
    lock = threading.Lock()
    ranges: list[_Range] = [_Range(first[-1], None, listed=len(first))]
    unowned: list[_Range] = [ranges[0]]
    splits_left = max_splits if max_splits is not None else 16 * workers
    out: queue.Queue[list[str] | BaseException | None] = queue.Queue(maxsize=2 * workers)
    stop = threading.Event()

    def put(item: list[str] | BaseException | None) -> bool:
        while not stop.is_set():
            try:
                out.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def take() -> _Range | None:
        nonlocal splits_left
        with lock:
            if unowned:
                return unowned.pop()
            if splits_left <= 0:
                return None
            live = [r for r in ranges if not r.done and r.listed]  # a range still on its first LIST waits
            live.sort(
                key=lambda r: 2.0 if r.hi is None else alphabet.position(r.hi) - alphabet.position(r.cur)
            )
            for victim in reversed(live):
                m = alphabet.split_point(victim.cur, victim.hi)
                if m is not None:
                    splits_left -= 1
                    part = _Range(m, victim.hi)
                    victim.hi = m
                    ranges.append(part)
                    return part
            return None

    def work() -> None:
        try:
            while not stop.is_set():
                r = take()
                if r is None:
                    return
                while not stop.is_set():
                    keys, more = list_page(r.cur, page_size)
                    with lock:
                        hi = r.hi
                        cut = len(keys) if hi is None else bisect_right(keys, hi)
                        page = keys[:cut]
                        if page:
                            r.cur = page[-1]
                            r.listed += len(page)
                        if cut < len(keys) or not more or not keys:
                            r.done = True
                    alphabet_learn(page)
                    if page and not put(page):
                        return
                    if r.done:
                        break
        except BaseException as err:  # the consumer raises it
            put(err)

    def alphabet_learn(page: list[str]) -> None:
        with lock:
            alphabet.learn(page)

    threads = [threading.Thread(target=work, name=f"qwenedit-list-{i}", daemon=True) for i in range(workers)]
    for t in threads:
        t.start()

    def finish() -> None:
        for t in threads:
            t.join()
        put(None)

    threading.Thread(target=finish, name="qwenedit-list-end", daemon=True).start()
    try:
        while (item := out.get()) is not None:  # None: every range is listed
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
