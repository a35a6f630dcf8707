"""Text from a manifest (or any other outsider) on the operator's terminal: shown, never obeyed.

A manifest value can carry ESC/OSC sequences (a window title, colours, a hyperlink, a cleared screen),
bidi overrides that reorder what is shown, or rich markup (``[link=...]``). Every CLI line or table
cell that shows such text goes through one of these:

- ``safe(value)``: ``str(value)`` with control characters (C0, DEL, C1), line and paragraph separators
  and bidi controls replaced by visible escapes (``\\x1b``, ``\\n``, ``\\u202e``): one value, one line.
- ``plain(value)``: ``safe(value)`` as a rich ``Text``, so it is never parsed as markup either.
- ``safe_rollups(rollups)``: ``summary["rollups"]`` with every column name and value made ``safe``
  (the text table aligns the escaped values).
- ``safe_json(text)``: JSON text with C1 controls escaped too (``json.dumps(ensure_ascii=False)``
  escapes C0 controls but writes C1 ones raw).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from rich.text import Text

_BIDI = "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
_ESCAPES = {
    **{c: f"\\x{c:02x}" for c in [*range(0x20), 0x7F, *range(0x80, 0xA0)]},
    **{ord(c): f"\\u{ord(c):04x}" for c in "\u2028\u2029" + _BIDI},
    ord("\n"): "\\n",
    ord("\r"): "\\r",
    ord("\t"): "\\t",
}


def safe(value: object) -> str:
    """``value`` as one line of inert text (see the module doc)."""
    return str(value).translate(_ESCAPES)


def plain(value: object, style: str = "") -> Text:
    """``safe(value)`` as a rich ``Text``: no markup, no control characters."""
    return Text(safe(value), style=style)


def safe_rollups(rollups: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Roll-ups (``Rollups.to_dict()``) with every column name and group value escaped."""
    out = []
    for rollup in rollups:
        copy = dict(rollup)
        copy["group_by"] = [safe(c) for c in rollup.get("group_by", ())]
        if "missing_columns" in rollup:
            copy["missing_columns"] = [safe(c) for c in rollup.get("missing_columns") or ()]
        copy["groups"] = [
            {**g, "key": {safe(k): safe(v) if isinstance(v, str) else v for k, v in g["key"].items()}}
            for g in rollup.get("groups", ())
        ]
        out.append(copy)
    return out


def safe_json(text: str) -> str:
    """JSON text with C1 control characters escaped as ``\\u0080``…``\\u009f`` (still valid JSON)."""
    return text.translate({c: f"\\u{c:04x}" for c in range(0x80, 0xA0)})
