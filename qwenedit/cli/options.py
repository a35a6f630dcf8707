"""The command-line flags that set ``RunOptions`` fields, generated from the fields themselves.

Contract
--------
``@option_flags(*fields)`` gives a Typer command one flag per named ``RunOptions`` field (every field
when none is named), in the fields' order, before the command's own parameters. Each flag's help is the
field's ``description`` and its default the field's default, so ``qwenedit run --help``, ``qwenedit
validate --help`` and the options object cannot disagree; a field added to ``RunOptions`` is a flag of
``qwenedit run`` without a line here. The command receives the flags' values as one ``dict`` argument,
``fields`` (field name → value as typed; a repeatable flag's values as a tuple, ``()`` if not given), and
``to_options(fields)`` turns them into a ``RunOptions``, or raises ``BadOptions`` whose lines name each
bad flag (``--rps '2/fortnight': ...``), never a field name the user did not type.

Flag names: ``--`` + the field name with dashes (``max_in_flight`` → ``--max-in-flight``), except the
few in ``FLAG_NAMES`` that keep their historical names (``rates`` → ``--rps``, ``timeout_s`` →
``--timeout``); ``manifest`` is the positional argument. A ``bool`` field is a switch (``--qa/--no-qa``
when it defaults to on). A ``tuple[str, ...]`` field is a repeatable flag. Only ``str``, ``int``,
``float``, ``bool`` (each optionally ``| None``) and ``tuple[str, ...]`` fields can be flags; any other
type is refused when the command is defined.
"""

from __future__ import annotations

import functools
import inspect
import types
import typing
from collections.abc import Callable, Mapping
from typing import Annotated, Any, TypeVar

import typer
from pydantic import ValidationError

from qwenedit.options import RunOptions

F = TypeVar("F", bound=Callable[..., Any])

ARGUMENTS = frozenset({"manifest"})
FLAG_NAMES = {
    "rates": "--rps",
    "timeout_s": "--timeout",
    "stop_grace_s": "--stop-grace",
    "approval_timeout_s": "--approval-timeout",
    "allowed_output_hosts": "--allow-output-host",
}
ENVVARS = {"base_url": "DASHSCOPE_BASE_URL"}
_SCALARS = (str, int, float, bool)


class BadOptions(ValueError):
    """Option values ``RunOptions`` refused; each line names the flag and the reason."""

    def __init__(self, lines: list[str]) -> None:
        super().__init__("\n".join(lines))
        self.lines = lines


def flag_name(field: str) -> str:
    """The flag that sets ``field`` (``rates`` → ``--rps``); ``MANIFEST`` for the argument."""
    if field in ARGUMENTS:
        return field.upper()
    return FLAG_NAMES.get(field, "--" + field.replace("_", "-"))


def cli_type(field: str) -> Any:
    """The Python type Typer parses ``field``'s flag as: the field's own, a list for a tuple."""
    annotation = RunOptions.model_fields[field].annotation
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) is tuple and args == (str, ...):
        return list[str] | None
    if annotation in _SCALARS:
        return annotation
    optional = isinstance(annotation, types.UnionType) and len(args) == 2 and args[1] is type(None)
    if optional and args[0] in _SCALARS:
        return annotation
    raise TypeError(f"RunOptions.{field}: a {annotation} cannot be a command-line flag")


def cli_default(field: str) -> Any:
    """The flag's default: the field's (``...`` if required; ``None`` for an empty tuple)."""
    info = RunOptions.model_fields[field]
    if info.is_required():
        return ...
    return None if info.default == () else info.default


def _parameter(field: str) -> inspect.Parameter:
    info = RunOptions.model_fields[field]
    help_text = info.description or ""
    if _is_repeatable(field):
        help_text += " (repeatable)"
    declared: Any
    if field in ARGUMENTS:
        declared = typer.Argument(help=help_text)
    else:
        name = flag_name(field)
        if info.annotation is bool and info.default is True:
            name = f"{name}/--no-{name[2:]}"
        declared = typer.Option(name, help=help_text, envvar=ENVVARS.get(field))
    return inspect.Parameter(
        field,
        inspect.Parameter.KEYWORD_ONLY,
        default=cli_default(field),
        annotation=Annotated[cli_type(field), declared],
    )


def option_flags(*fields: str) -> Callable[[F], F]:
    """Decorate a Typer command whose ``fields`` parameter receives the values of these fields' flags
    (all of ``RunOptions`` if none is named). See the module contract."""
    chosen = list(fields or RunOptions.model_fields)
    unknown = [f for f in chosen if f not in RunOptions.model_fields]
    if unknown:
        raise ValueError(f"not RunOptions fields: {unknown}")

    def decorate(command: F) -> F:
        own = inspect.signature(command)
        hints = typing.get_type_hints(command, include_extras=True)
        if "fields" not in own.parameters:
            raise TypeError(f"{command.__name__} needs a `fields` parameter for the option values")
        kept = [
            p.replace(annotation=hints.get(p.name, p.annotation), kind=inspect.Parameter.KEYWORD_ONLY)
            for p in own.parameters.values()
            if p.name != "fields"
        ]
        clash = {p.name for p in kept} & set(chosen)
        if clash:
            raise TypeError(f"{command.__name__} declares {sorted(clash)} itself: they are RunOptions flags")
        generated = [_parameter(f) for f in chosen]

        @functools.wraps(command)
        def wrapper(**kwargs: Any) -> Any:
            values = {f: _value(f, kwargs.pop(f)) for f in chosen}
            return command(fields=values, **kwargs)

        parameters = [*generated, *kept]
        wrapper.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
        wrapper.__annotations__ = {p.name: p.annotation for p in parameters}
        del wrapper.__wrapped__  # Typer must see the generated signature, not the command's
        return typing.cast(F, wrapper)

    return decorate


def _is_repeatable(field: str) -> bool:
    return typing.get_origin(RunOptions.model_fields[field].annotation) is tuple


def _value(field: str, value: Any) -> Any:
    """A repeatable flag's values as the field's tuple (``()`` when not given); others as typed."""
    return tuple(value or ()) if _is_repeatable(field) else value


def to_options(fields: Mapping[str, Any], **changes: Any) -> RunOptions:
    """``RunOptions`` from the flags' values (plus ``changes``); ``BadOptions`` naming each bad flag."""
    given = {f: v for f, v in {**fields, **changes}.items() if v is not None}
    try:
        return RunOptions(**given)
    except ValidationError as err:
        lines = []
        for problem in err.errors():
            field = str(problem["loc"][0]) if problem["loc"] else ""
            where = flag_name(field) if field in RunOptions.model_fields else field or "options"
            message = str(problem["msg"]).removeprefix("Value error, ")
            lines.append(f"{where}: {message}")
        raise BadOptions(lines) from None
