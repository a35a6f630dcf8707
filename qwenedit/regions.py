"""Which endpoint and API key serve each region of a run: one price per call (DESIGN.md §3, inv. 10).

A call is billed at the price of the region whose endpoint served it, so a row is sent to its own
region's endpoint and priced there, or not sent at all. A run serves its own region (``region``,
default singapore) at ``base_url`` (default: ``DASHSCOPE_BASE_URL``, else the region's public endpoint)
with the key in ``api_key_env``. Every other region a manifest's rows name needs a route of its own:

    --region-endpoint REGION=URL,KEY_ENV     e.g. beijing=https://dashscope.aliyuncs.com,DASHSCOPE_API_KEY_BJ

Either part may be left out: ``beijing=DASHSCOPE_API_KEY_BJ`` uses the region's public endpoint,
``beijing=http://127.0.0.1:8001`` uses the run's ``api_key_env`` (Model Studio keys belong to one
region, so a real endpoint needs its own key). A row of a region without a route is refused before
the first call (``qwenedit.policy``). Routes never borrow ``DASHSCOPE_BASE_URL``: it serves the run's
region only.

Pure: parsing and the table only; the run reads the keys and opens one client per route.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from qwenedit.api import REGIONS, resolve_base_url
from qwenedit.catalog import normalize_region

if TYPE_CHECKING:
    from qwenedit.options import RunOptions

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass(frozen=True)
class Route:
    """Where the calls of one region go, and which environment variable holds that endpoint's key."""

    region: str
    endpoint: str | None  # None: the region's public endpoint
    key_env: str | None  # None: the run's api_key_env

    def base_url(self) -> str:
        """The endpoint root of this route."""
        if self.endpoint is not None:
            return resolve_base_url(self.region, self.endpoint)
        try:
            return REGIONS[self.region]
        except KeyError:
            raise ValueError(f"region {self.region} has no public endpoint: give its URL") from None


def parse_route(text: str) -> Route:
    """``REGION=URL,KEY_ENV`` (either part optional) as a ``Route``; ``ValueError`` naming the problem."""
    region_text, sep, spec = str(text).partition("=")
    region = normalize_region(region_text)
    if not sep or not region or not spec.strip():
        raise ValueError(
            f"{text!r}: give REGION=URL,KEY_ENV (e.g. beijing=https://dashscope.aliyuncs.com,KEY)"
        )
    endpoint: str | None = None
    key_env: str | None = None
    for part in (p.strip() for p in spec.split(",")):
        if "://" in part and endpoint is None:
            resolve_base_url(region, part)  # ValueError for a malformed URL
            endpoint = part
        elif _ENV_NAME.fullmatch(part) and key_env is None:
            key_env = part
        else:
            raise ValueError(
                f"{text!r}: {part!r} is neither an endpoint URL nor an environment variable name "
                "(give REGION=URL,KEY_ENV)"
            )
    if endpoint is None and region not in REGIONS:
        raise ValueError(f"{text!r}: region {region} has no public endpoint; give its URL")
    return Route(region, endpoint, key_env)


def parse_routes(texts: Iterable[str], run_region: str) -> dict[str, Route]:
    """The extra routes of a run, by region; ``ValueError`` for a repeated region or the run's own."""
    routes: dict[str, Route] = {}
    own = normalize_region(run_region)
    for text in texts:
        route = parse_route(text)
        if route.region == own:
            raise ValueError(
                f"{text!r}: {own} is the run's own region; its endpoint is --base-url and its key --api-key-env"
            )
        if route.region in routes:
            raise ValueError(f"{text!r}: region {route.region} is given more than once")
        routes[route.region] = route
    return routes


def run_routes(options: RunOptions) -> dict[str, Route]:
    """Every route of a run, endpoint and key variable resolved: its own region first, then each
    ``region_endpoint``. ``ValueError`` for a malformed one."""
    own = normalize_region(options.region)
    routes = {own: Route(own, resolve_base_url(own, options.base_url), options.api_key_env)}
    for region, route in parse_routes(options.region_endpoint, options.region).items():
        routes[region] = Route(region, route.base_url(), route.key_env or options.api_key_env)
    return routes


__all__ = ["Route", "parse_route", "parse_routes", "run_routes"]
