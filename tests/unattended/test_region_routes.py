"""Region routes at their edges (``qwenedit.regions``): which endpoint and key serve each region."""

from __future__ import annotations

import pytest

from qwenedit.options import RunOptions
from qwenedit.policy import policy_for
from qwenedit.regions import Route, parse_route, run_routes


def options(**fields: object) -> RunOptions:
    return RunOptions(manifest="m.csv", dest="out", **fields)  # type: ignore[arg-type]


def test_url_and_key_variable_may_come_in_either_order_or_alone() -> None:
    assert parse_route("beijing=http://127.0.0.1:8001,KEY_BJ") == Route(
        "beijing", "http://127.0.0.1:8001", "KEY_BJ"
    )
    assert parse_route("beijing=KEY_BJ,http://127.0.0.1:8001") == Route(
        "beijing", "http://127.0.0.1:8001", "KEY_BJ"
    )
    assert parse_route("cn-beijing=KEY_BJ") == Route("beijing", None, "KEY_BJ")  # an alias of the region
    assert parse_route("beijing=http://127.0.0.1:8001").key_env is None


@pytest.mark.parametrize(
    "text",
    [
        "beijing",
        "beijing=",
        "=http://h",
        "beijing=not a name",
        "beijing=KEY1,KEY2",
        "mars=KEY",
        "beijing=ftp://h",
    ],
)
def test_a_malformed_route_is_refused_naming_it(text: str) -> None:
    with pytest.raises(ValueError):
        parse_route(text)
    with pytest.raises(ValueError, match="region_endpoint"):
        options(region_endpoint=(text,))


def test_the_runs_own_region_and_a_repeated_region_are_refused() -> None:
    with pytest.raises(ValueError, match="the run's own region"):
        options(region_endpoint=("singapore=KEY",))
    with pytest.raises(ValueError, match="more than once"):
        options(region_endpoint=("beijing=KEY", "cn-beijing=KEY2"))


def test_a_run_serves_only_its_own_region_unless_routes_are_given() -> None:
    assert policy_for(options()).regions == {"singapore"}
    assert policy_for(options(region="cn-beijing")).regions == {"beijing"}
    assert policy_for(options(region_endpoint=("beijing=KEY_BJ",))).regions == {"singapore", "beijing"}


def test_routes_resolve_endpoints_and_default_the_key_to_the_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DASHSCOPE_BASE_URL", "http://127.0.0.1:9000")
    routes = run_routes(
        options(api_key_env="KEY_SG", region_endpoint=("beijing=http://127.0.0.1:9001/api/v1",))
    )
    assert routes["singapore"] == Route("singapore", "http://127.0.0.1:9000", "KEY_SG")
    # DASHSCOPE_BASE_URL serves the run's own region only; a route's SDK-style URL is normalised
    assert routes["beijing"] == Route("beijing", "http://127.0.0.1:9001", "KEY_SG")
    routes = run_routes(options(region_endpoint=("beijing=KEY_BJ",)))
    assert routes["beijing"] == Route("beijing", "https://dashscope.aliyuncs.com", "KEY_BJ")


async def test_a_regions_endpoint_never_shows_its_key_in_a_repr() -> None:
    from qwenedit.api import DashScopeClient
    from qwenedit.pipeline import Served

    key = "sk-region-secret-0123456789abcdef"
    client = DashScopeClient(key, "http://127.0.0.1:9")
    try:
        served = Served("beijing", client, "http://127.0.0.1:9", key)
        assert key not in repr(served) and key[3:15] not in repr(served)
    finally:
        await client.aclose()
