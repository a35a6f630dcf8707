"""Object keys and object metadata (pure).

:func:`validate_key` refuses any key that could escape a destination's prefix or root.

Object metadata travels in HTTP headers, so it must be printable ASCII and, on AWS, at most 2 KiB in
total. :func:`encode_metadata` stores a value that is not plain ASCII (a Chinese prompt, a newline,
surrounding spaces) RFC 8187-style as ``UTF-8''<percent-encoded UTF-8>``, which
:meth:`Destination.head` decodes back (:func:`decode_metadata`); names are lower-cased ASCII tokens.
If the encoded metadata would pass 2 KiB, the longest values are shortened (ending in ``…``) until it
fits: an upload never fails because of a long prompt. Keep long text (the full prompt) in the ledger,
not in metadata.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from urllib.parse import quote, unquote

from qwenedit.errors import InvalidKey

_RFC8187_PREFIX = "UTF-8''"
# RFC 8187 attr-char: ALPHA / DIGIT / "!#$&+-.^_`|~"
_ATTR_SAFE = "!#$&+-.^_`|~"
_META_NAME_RE = re.compile(r"^[A-Za-z0-9!#$&'*+\-.^_`|~]+$")


def validate_key(key: str) -> str:
    """Return ``key`` if it is a plain relative path; raise :class:`InvalidKey` otherwise.

    Refused: empty keys, a leading ``/``, empty segments (``a//b``, ``a/``), ``.`` and ``..`` segments, NUL.
    Job ids are validated upstream; this is defence in depth against writing outside the prefix.
    """
    if not isinstance(key, str) or not key:
        raise InvalidKey("empty object key")
    if "\x00" in key:
        raise InvalidKey(f"object key contains NUL: {key!r}")
    if key.startswith("/"):
        raise InvalidKey(f"object key must be relative: {key!r}")
    for segment in key.split("/"):
        if segment in ("", ".", ".."):
            raise InvalidKey(f"object key has an empty, '.' or '..' segment: {key!r}")
    return key


def _is_plain_header_value(value: str) -> bool:
    return (
        value.isascii()
        and value.isprintable()
        and value == value.strip()
        and not value.startswith(_RFC8187_PREFIX)
    )


METADATA_BUDGET = 2048  # AWS: user metadata (names + values, UTF-8 bytes) is limited to 2 KiB


def _encode_value(text: str) -> str:
    if _is_plain_header_value(text):
        return text
    return _RFC8187_PREFIX + quote(text.encode("utf-8"), safe=_ATTR_SAFE)


def _shorten_to(text: str, max_encoded: int) -> str | None:
    """The longest prefix of ``text`` (plus "…") whose encoding fits ``max_encoded``; None if none does."""
    lo, hi, best = 0, len(text) - 1, None
    while lo <= hi:
        mid = (lo + hi) // 2
        candidate = _encode_value(text[:mid] + "…")
        if len(candidate) <= max_encoded:
            best, lo = candidate, mid + 1
        else:
            hi = mid - 1
    return best


def encode_metadata(metadata: Mapping[str, object] | None, budget: int = METADATA_BUDGET) -> dict[str, str]:
    """Make metadata safe for S3 headers (see the module docstring): ASCII only, within ``budget`` bytes."""
    texts: dict[str, str] = {}
    out: dict[str, str] = {}
    for name, value in (metadata or {}).items():
        if not _META_NAME_RE.match(name):
            raise ValueError(f"metadata name must be an ASCII token: {name!r}")
        texts[name.lower()] = str(value)
        out[name.lower()] = _encode_value(str(value))
    # Over budget: shorten the longest value first, so short fields (ids, hashes) survive intact.
    while sum(len(k) + len(v) for k, v in out.items()) > budget:
        longest = max(out, key=lambda k: len(out[k]))
        excess = sum(len(k) + len(v) for k, v in out.items()) - budget
        shorter = _shorten_to(texts[longest], len(out[longest]) - excess)
        if shorter is None or shorter == out[longest]:
            del out[longest]
        else:
            out[longest] = shorter
    return out


def decode_metadata(metadata: Mapping[str, str] | None) -> dict[str, str]:
    """Inverse of :func:`encode_metadata` (values not in RFC 8187 form are returned as they are)."""
    out: dict[str, str] = {}
    for name, value in (metadata or {}).items():
        if value.startswith(_RFC8187_PREFIX):
            out[name] = unquote(value[len(_RFC8187_PREFIX) :], encoding="utf-8", errors="strict")
        else:
            out[name] = value
    return out
