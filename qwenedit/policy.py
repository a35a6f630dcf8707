"""The run's policy: what a manifest may ask for, whoever wrote it.

In the scheduled setup other people drop the manifests, so each row's model, ``n``, region and input
images are untrusted. The policy is set by whoever starts the run (the operator's flags, the
watcher's deployment parameters) and a manifest cannot change it. ``Policy.check_job`` looks at one
validated row and returns every way it breaks the policy as a located ``Breach`` (row, field, reason);
``Policy.check_rows`` looks at the row count. Validation turns breaches into row errors, so a
manifest that breaks the policy is refused before any call (``qwenedit run`` exits 2, with each
offending row and the reason) and ``qwenedit validate`` reports the same rows.

What is checked (an unset limit allows anything):

- ``models``: the models rows may use (exact names after case folding: a snapshot such as
  ``qwen-image-edit-plus-2025-12-15`` is a model of its own);
- ``max_n``: images per row; ``max_rows``: data rows in the manifest;
- ``input_prefixes``: ``s3://`` and ``http(s)://`` inputs must lie under one of these folders. A
  prefix is a folder, not a string prefix: ``s3://b/public`` allows ``s3://b/public/x.png`` but not
  ``s3://b/public-2/x.png`` nor ``s3://b/publicity.png``. Schemes, hosts and ports must match exactly
  (host case and default ports folded). An input URL with user info, a backslash, or a ``.`` / ``..``
  path segment (also percent-encoded, or an encoded ``/``) is refused outright while prefixes are set:
  whoever fetches it could resolve it outside the folder. ``data:`` URIs (the bytes are the manifest's
  own) and local files (bounded by the input root) are not limited here.
- ``regions``: the regions rows may be served in — the run's region and every region given its own
  endpoint (``qwenedit.regions``). A row in any other region would be sent to an endpoint of another
  region and billed at that region's price, so it is refused (DESIGN.md §3, invariant 10).

The module is pure: no I/O, the caller locates image references (relative paths anchored) first.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit

from qwenedit.catalog import normalize_model, normalize_region

if TYPE_CHECKING:
    from qwenedit.jobs import Job
    from qwenedit.options import RunOptions

_URL_SCHEMES = ("http", "https")
_DEFAULT_PORTS = {"http": 80, "https": 443}


@dataclass(frozen=True)
class Breach:
    """One way one row (or the whole manifest, ``row`` None) breaks the policy."""

    row: int | None
    job_id: str | None
    field: str | None  # the manifest column (model, n, region, image_2…); None for the manifest
    reason: str


@dataclass(frozen=True)
class _Folder:
    """An allowed input prefix, parsed once: scheme, host (or bucket) and path segments."""

    text: str
    scheme: str
    host: str
    segments: tuple[str, ...]


@dataclass(frozen=True)
class Policy:
    """Limits on what a manifest may ask for (see the module docstring); the defaults allow anything."""

    models: frozenset[str] = frozenset()  # empty: any model
    max_n: int | None = None
    max_rows: int | None = None
    input_prefixes: tuple[str, ...] = ()  # empty: any s3:// or http(s):// input
    regions: frozenset[str] | None = None  # None: any region
    run_region: str | None = None  # named in the region breach's reason
    _folders: tuple[_Folder, ...] = field(default=(), init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_folders", tuple(parse_prefix(p) for p in self.input_prefixes))

    @property
    def limits_inputs(self) -> bool:
        return bool(self._folders)

    def check_job(self, job: Job, locations: Sequence[str | None]) -> list[Breach]:
        """Every breach of one validated row. ``locations[i]`` is ``job.images[i]`` located (relative
        references anchored; None if it could not be located, which validation reports itself)."""
        found: list[Breach] = []

        def breach(column: str, reason: str) -> None:
            found.append(Breach(job.row, job.job_id, column, reason))

        if self.models and job.model not in self.models:
            breach("model", f"{job.model} is not an allowed model (--allow-model {_listed(self.models)})")
        if self.max_n is not None and job.n > self.max_n:
            breach("n", f"asks for {job.n} images; the policy allows at most {self.max_n} (--max-n)")
        if self.regions is not None and job.region not in self.regions:
            served = f"the run is served in {self.run_region}" if self.run_region else "no endpoint serves it"
            breach(
                "region",
                f"is {job.region}, but {served}: a call there would be sent to another region's endpoint "
                f"and billed at its price; give the region its own endpoint "
                f"(--region-endpoint {job.region}=URL,KEY_ENV) or change the row's region",
            )
        for i, location in enumerate(locations, start=1):
            reason = None if location is None else self.input_breach(location)
            if reason is not None:
                breach(f"image_{i}", reason)
        return found

    def check_rows(self, rows: int) -> Breach | None:
        """The breach of a manifest with ``rows`` data rows, located at the first row over the limit."""
        if self.max_rows is None or rows <= self.max_rows:
            return None
        return Breach(
            self.max_rows + 1,
            None,
            None,
            f"the manifest has {rows:,} rows; the policy allows at most {self.max_rows:,} (--max-rows)",
        )

    def input_breach(self, location: str) -> str | None:
        """Why the located input ``location`` is not allowed, or None if it is."""
        if not self._folders:
            return None
        scheme = location.split(":", 1)[0].lower() if ":" in location else ""
        if scheme not in ("s3", *_URL_SCHEMES):
            return None  # data: URIs and local files are not fetched from anywhere
        shown = _shown(location)
        try:
            parsed = _parse_location(location)
        except ValueError as err:
            return f"{shown} {err}; inputs may come only from {_listed(self.input_prefixes)} (--allow-input-prefix)"
        if any(_inside(parsed, folder) for folder in self._folders):
            return None
        return f"{shown} is outside the allowed input prefixes {_listed(self.input_prefixes)} (--allow-input-prefix)"


def parse_prefix(text: str) -> _Folder:
    """An allowed input prefix (``s3://bucket[/folder]`` or ``http(s)://host[:port][/folder]``);
    ``ValueError`` naming what is wrong with it."""
    value = text.strip()
    scheme = value.split(":", 1)[0].lower() if "://" in value else ""
    if scheme not in ("s3", *_URL_SCHEMES):
        raise ValueError(f"{value!r}: an input prefix is s3://bucket[/folder] or https://host[/folder]")
    parts = urlsplit(value)
    if parts.query or parts.fragment:
        raise ValueError(f"{value!r}: an input prefix has no query or fragment")
    try:
        folder = _parse_location(value)
    except ValueError as err:
        raise ValueError(f"{value!r} {err}") from None
    return _Folder(value, folder.scheme, folder.host, folder.segments)


def _parse_location(location: str) -> _Folder:
    """(scheme, host, path segments) of an ``s3://`` or ``http(s)://`` location; ``ValueError`` for
    one that a fetcher could read differently than this check does."""
    if "\\" in location:
        raise ValueError("contains a backslash")
    scheme, _, rest = location.partition("://")
    scheme = scheme.lower()
    if scheme == "s3":
        bucket, _, key = rest.partition("/")
        if not bucket:
            raise ValueError("names no bucket")
        segments = tuple(s for s in key.split("/") if s)
        raw = key.split("/")
    else:
        parts = urlsplit(location)
        if parts.username is not None or parts.password is not None or "@" in parts.netloc:
            raise ValueError("carries user info (user@host)")
        try:
            port = parts.port or _DEFAULT_PORTS.get(scheme)
        except ValueError:
            raise ValueError("has an invalid port") from None
        if not parts.hostname:
            raise ValueError("has no host")
        bucket = f"{parts.hostname.lower().rstrip('.')}:{port}"
        raw = [unquote(s) for s in parts.path.split("/")]
        if any("/" in s for s in raw):
            raise ValueError("has an encoded '/' in its path")
        segments = tuple(s for s in raw if s)
    if any(s in (".", "..") for s in raw):
        raise ValueError("has a '.' or '..' path segment")
    return _Folder(location, scheme, bucket, segments)


def _inside(location: _Folder, folder: _Folder) -> bool:
    return (
        location.scheme == folder.scheme
        and location.host == folder.host
        and location.segments[: len(folder.segments)] == folder.segments
        and len(location.segments) > len(folder.segments)  # an object inside, not the folder itself
    )


def _listed(values: Iterable[str]) -> str:
    return ", ".join(sorted(values))


def _shown(location: str, limit: int = 120) -> str:
    text = location if len(location) <= limit else location[: limit - 1] + "…"
    text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    return f'"{text}"'


def make_policy(
    *,
    region: str,
    allow_model: Iterable[str] = (),
    max_n: int | None = None,
    max_rows: int | None = None,
    allow_input_prefix: Iterable[str] = (),
    region_endpoint: Iterable[str] = (),
) -> Policy:
    """The policy the given settings make (the names are ``RunOptions`` fields and CLI flags); every
    region with an endpoint is allowed. ``ValueError`` for a malformed prefix or region endpoint."""
    from qwenedit.regions import parse_routes

    return Policy(
        models=frozenset(normalize_model(m) for m in allow_model),
        max_n=max_n,
        max_rows=max_rows,
        input_prefixes=tuple(allow_input_prefix),
        regions=frozenset({normalize_region(region), *parse_routes(region_endpoint, region)}),
        run_region=normalize_region(region),
    )


def policy_for(options: RunOptions) -> Policy:
    """The policy a run's options set."""
    return make_policy(
        region=options.region,
        allow_model=options.allow_model,
        max_n=options.max_n,
        max_rows=options.max_rows,
        allow_input_prefix=options.allow_input_prefix,
        region_endpoint=options.region_endpoint,
    )


__all__ = ["Breach", "Policy", "make_policy", "parse_prefix", "policy_for"]
