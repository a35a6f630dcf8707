"""No fetch of non-public addresses from a manifest (issue 19, row 1).

``validate --check-images`` resolves a URL's host first and refuses loopback, private, link-local,
multicast, reserved and metadata addresses unless ``--allow-private-urls``; every redirect hop is
checked again; a refusal says why, not what the network answered. A local server on 127.0.0.1 stands
in for "private"; no test sends traffic anywhere else.
"""

from __future__ import annotations

import csv
import ipaddress
import json
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from qwenedit import netguard
from qwenedit.cli import app
from qwenedit.inputs import InputResolver
from tests.hostile.conftest import Hit, HttpServer, Reply
from tests.manifest.conftest import image_bytes

PNG = image_bytes()


def _image(hit: Hit) -> Reply:
    return Reply(200, {"content-type": "image/png"}, PNG if hit.method == "GET" else b"")


def _manifest(path: Path, urls: list[str]) -> Path:
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["job_id", "image_1", "prompt"])
        for i, url in enumerate(urls, start=1):
            writer.writerow([f"job-{i}", url, "p"])
    return path


def test_validate_makes_no_request_to_a_loopback_url_and_reports_the_row(
    tmp_path: Path, http_server: Callable[..., HttpServer]
) -> None:
    local = http_server(_image)
    manifest = _manifest(
        tmp_path / "m.csv",
        [f"{local.base_url}/a.png", f"http://localhost:{local.base_url.rsplit(':', 1)[1]}/b.png"],
    )

    out = CliRunner().invoke(app, ["validate", "--check-images", "--json", str(manifest)])

    assert local.hits == []  # not one request, not even a HEAD
    assert out.exit_code == 1, out.output
    problems = json.loads(out.output)["problems"]
    assert [(p["row"], p["column"]) for p in problems] == [(1, "image_1"), (2, "image_1")]
    for p in problems:
        assert "loopback address" in p["reason"] and "--allow-private-urls" in p["reason"]
        assert "answered" not in p["reason"] and "Error" not in p["reason"]  # why, not what the network said


def test_with_allow_private_urls_validate_fetches_it(
    tmp_path: Path, http_server: Callable[..., HttpServer]
) -> None:
    local = http_server(_image)
    manifest = _manifest(tmp_path / "m.csv", [f"{local.base_url}/a.png"])

    out = CliRunner().invoke(app, ["validate", "--check-images", "--allow-private-urls", str(manifest)])

    assert out.exit_code == 0, out.output
    assert [(h.method, h.path) for h in local.hits] == [("HEAD", "/a.png")]


def test_every_redirect_hop_is_checked_again(
    http_server: Callable[..., HttpServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    inner = http_server(_image)
    port = inner.base_url.rsplit(":", 1)[1]
    outer = http_server(lambda hit: Reply(302, {"location": f"http://localhost:{port}/secret.png"}))
    real = netguard.pinned

    def outer_is_public(url: str, *, allow_private: bool = False) -> tuple[str | None, object]:
        # Stand-in for a public host: the first hop is let through, the redirect target is judged for real.
        if url.startswith(outer.base_url):
            return None, ipaddress.ip_address("127.0.0.1")
        return real(url, allow_private=allow_private)

    monkeypatch.setattr("qwenedit.inputs.resolver.pinned", outer_is_public)
    with InputResolver() as resolver:
        check = resolver.check(f"{outer.base_url}/a.png")

    assert [h.path for h in outer.hits] == ["/a.png"]
    assert inner.hits == []  # the redirect into loopback was not followed
    [reason] = check.errors
    assert "redirects to" in reason and "loopback address" in reason


def test_redirects_between_allowed_hosts_are_followed_hop_by_hop(
    http_server: Callable[..., HttpServer],
) -> None:
    inner = http_server(_image)
    outer = http_server(lambda hit: Reply(301, {"location": f"{inner.base_url}/final.png"}))

    with InputResolver(allow_private_urls=True) as resolver:
        check = resolver.check(f"{outer.base_url}/a.png")

    assert check.errors == []
    assert [h.path for h in inner.hits] == ["/final.png"]


@pytest.mark.parametrize(
    ("address", "kind"),
    [
        ("127.0.0.1", "loopback"),
        ("::1", "loopback"),
        ("::ffff:127.0.0.1", "loopback"),  # IPv4-mapped IPv6
        ("10.1.2.3", "private"),
        ("172.16.0.1", "private"),
        ("192.168.1.1", "private"),
        ("fd00::1", "private"),
        ("169.254.169.254", "cloud metadata"),
        ("100.100.100.200", "cloud metadata"),  # Alibaba Cloud's metadata service
        ("fd00:ec2::254", "cloud metadata"),
        ("169.254.1.1", "link-local"),
        ("fe80::1", "link-local"),
        ("224.0.0.1", "multicast"),
        ("240.0.0.1", "reserved"),
        ("0.0.0.0", "unspecified"),
        ("100.64.0.1", "non-public (shared or special-purpose)"),  # carrier-grade NAT
        ("8.8.8.8", None),
        ("2001:4860:4860::8888", None),
    ],
)
def test_address_kinds(address: str, kind: str | None) -> None:
    assert netguard.address_kind(ipaddress.ip_address(address)) == kind


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:9/x.png",
        "http://2130706433/x.png",  # 127.0.0.1 as one integer
        "http://0x7f.1/x.png",  # and in hex shorthand
        "http://[::1]/x.png",
        "http://169.254.169.254/latest/meta-data/",
        "ftp://example.com/x.png",
        "file:///etc/passwd",
    ],
)
def test_tricky_spellings_of_non_public_urls_are_refused(url: str) -> None:
    assert netguard.refusal(url) is not None
