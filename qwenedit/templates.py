"""Prompt templates: ``"Put the {product} on a white background"`` filled from each row's columns.

Only named fields: ``{product}``, ``{product name}``; ``{{`` and ``}}`` are literal braces. Refused as a
``TemplateError`` (an options error, before any row is read): positional fields (``{}``, ``{0}``),
attribute or index access (``{a.b}``, ``{a[0]}``), conversions (``{a!r}``), format specs
(``{a:>10}``), unbalanced braces, and an empty template. Nothing is ever evaluated: the template is
split once with ``string.Formatter().parse`` and filled by concatenating its literal parts with the
row's cell values (stripped), never by ``str.format``.

A row's own non-empty ``prompt`` wins over the template (``manifest/rules.py`` applies that rule); a row the
template is used for needs every field to be a non-empty column of that row, else ``fill`` names
each missing or empty one.
"""

from __future__ import annotations

import string
from collections.abc import Mapping
from dataclasses import dataclass

from qwenedit.errors import TemplateError


@dataclass(frozen=True)
class PromptTemplate:
    """A parsed template: literal text and named fields, alternating."""

    text: str
    parts: tuple[tuple[str, str | None], ...]  # (literal, field name or None)

    @classmethod
    def parse(cls, text: str) -> PromptTemplate:
        """Parse and check ``text``; raises ``TemplateError`` naming the offending field."""
        if not text.strip():
            raise TemplateError("the prompt template is empty")
        try:
            pieces = list(string.Formatter().parse(text))
        except ValueError as exc:  # "Single '}' encountered", "expected '}' before end of string"
            raise TemplateError(
                f"the prompt template {text!r} is malformed: {exc} (write {{{{ or }}}} for a literal brace)"
            ) from None
        parts: list[tuple[str, str | None]] = []
        for literal, name, spec, conversion in pieces:
            if name is None:
                parts.append((literal, None))
                continue
            shown = "{" + name + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "") + "}"
            if not name.strip():
                raise TemplateError(
                    f"the prompt template has an unnamed field {shown}: name a column, such as {{product}}"
                )
            if name.strip().isdigit():
                raise TemplateError(
                    f"the prompt template field {shown} is positional: name a column, such as {{product}}"
                )
            if any(c in name for c in ".[]"):
                raise TemplateError(
                    f"the prompt template field {shown} uses attribute or index access: only plain column names are allowed"
                )
            if conversion or spec:
                raise TemplateError(
                    f"the prompt template field {shown} has a conversion or format spec: only {{column}} is allowed"
                )
            parts.append((literal, name.strip()))
        return cls(text, tuple(parts))

    @property
    def fields(self) -> tuple[str, ...]:
        """The column names the template reads, each once, in order of first use."""
        return tuple(dict.fromkeys(name for _, name in self.parts if name is not None))

    def fill(self, columns: Mapping[str, str]) -> tuple[str, list[tuple[str, str]]]:
        """The prompt for a row with these ``columns``, and the problems as (column, reason).

        When a field is missing or empty the prompt is ``""`` and each such field has a problem."""
        problems: list[tuple[str, str]] = []
        for name in self.fields:
            value = columns.get(name)
            if value is None:
                problems.append(
                    (name, f"is not a column of this row; the prompt template {self.shown} needs it")
                )
            elif not str(value).strip():
                problems.append(
                    (
                        name,
                        f"is empty; the prompt template {self.shown} needs it (or give the row its own prompt)",
                    )
                )
        if problems:
            return "", problems
        return "".join(
            literal + (str(columns[name]).strip() if name else "") for literal, name in self.parts
        ), []

    @property
    def shown(self) -> str:
        """The template as quoted in messages (shortened past 60 characters)."""
        text = self.text if len(self.text) <= 60 else self.text[:57] + "..."
        return '"' + text.replace('"', '\\"') + '"'


def parse_template(template: str | PromptTemplate | None) -> PromptTemplate | None:
    """``None`` stays None, a string is parsed (``TemplateError`` if malformed), a template passes through."""
    if template is None or isinstance(template, PromptTemplate):
        return template
    return PromptTemplate.parse(template)
