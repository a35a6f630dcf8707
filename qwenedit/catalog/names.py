"""How the catalog spells a region and a model: the canonical names every table key and manifest cell is
folded to before it is looked up (aliases and case), so "Intl" and "singapore" are one region."""

from __future__ import annotations

# The regions the API serves these models from (docs/dashscope-api.md §0), and the names people also write for
# them. Matching is case-insensitive.
REGION_ALIASES: dict[str, str] = {
    "singapore": "singapore",
    "intl": "singapore",
    "international": "singapore",
    "ap-southeast-1": "singapore",
    "beijing": "beijing",
    "cn": "beijing",
    "china": "beijing",
    "cn-beijing": "beijing",
}


def normalize_region(name: str) -> str:
    """The canonical region name for ``name`` (aliases and case folded); unknown names are returned
    lower-cased so the caller's error message can name them."""
    key = name.strip().lower()
    return REGION_ALIASES.get(key, key)


def normalize_model(name: str) -> str:
    """Model ids are lower-case on the API; accept any case in a manifest."""
    return name.strip().lower()
