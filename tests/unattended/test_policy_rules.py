"""The policy's rules at their edges (``qwenedit.policy``): models, n, rows, regions, input prefixes."""

from __future__ import annotations

import pytest

from qwenedit.jobs import Job
from qwenedit.options import RunOptions
from qwenedit.policy import Policy, parse_prefix, policy_for


def job(**fields: object) -> Job:
    values: dict[str, object] = {"row": 7, "job_id": "j7", "images": ("a.png",), "prompt": "p", **fields}
    return Job(**values)  # type: ignore[arg-type]


def test_the_default_policy_allows_anything() -> None:
    policy = Policy()
    assert policy.check_job(job(model="qwen-image-edit-max", n=6, region="beijing"), ["s3://any/x.png"]) == []
    assert policy.check_rows(10**9) is None


def test_a_model_outside_the_allowed_ones_is_a_breach_at_its_row_and_column() -> None:
    policy = Policy(models=frozenset({"qwen-image-edit-plus"}))
    assert policy.check_job(job(model="qwen-image-edit-plus"), [None]) == []
    [breach] = policy.check_job(job(model="qwen-image-edit-max"), [None])
    assert (breach.row, breach.job_id, breach.field) == (7, "j7", "model")
    assert "qwen-image-edit-max is not an allowed model" in breach.reason
    assert "--allow-model qwen-image-edit-plus" in breach.reason


def test_a_snapshot_is_a_model_of_its_own() -> None:
    policy = Policy(models=frozenset({"qwen-image-edit-plus"}))
    assert [b.field for b in policy.check_job(job(model="qwen-image-edit-plus-2025-12-15"), [])] == ["model"]


def test_allowed_models_from_options_are_case_folded() -> None:
    options = RunOptions(manifest="m.csv", dest="out", allow_model=("Qwen-Image-Edit-Plus",))
    assert policy_for(options).check_job(job(model="qwen-image-edit-plus"), []) == []


def test_n_at_the_limit_passes_and_one_above_is_a_breach() -> None:
    policy = Policy(max_n=2)
    assert policy.check_job(job(n=2), []) == []
    [breach] = policy.check_job(job(n=3), [])
    assert breach.field == "n" and "asks for 3 images; the policy allows at most 2" in breach.reason


def test_rows_at_the_limit_pass_and_more_are_located_at_the_first_row_over_it() -> None:
    policy = Policy(max_rows=100)
    assert policy.check_rows(100) is None
    breach = policy.check_rows(101)
    assert breach is not None and breach.row == 101 and "has 101 rows" in breach.reason


def test_a_row_of_a_region_the_run_does_not_serve_is_a_breach_naming_the_fix() -> None:
    policy = Policy(regions=frozenset({"singapore"}), run_region="singapore")
    assert policy.check_job(job(region="singapore"), []) == []
    [breach] = policy.check_job(job(region="beijing"), [])
    assert breach.field == "region"
    assert "is beijing, but the run is served in singapore" in breach.reason
    assert "--region-endpoint beijing=" in breach.reason


def test_every_breach_of_a_row_is_reported_not_only_the_first() -> None:
    policy = Policy(models=frozenset({"qwen-image-edit"}), max_n=1, input_prefixes=("s3://pub",))
    found = policy.check_job(
        job(model="qwen-image-edit-plus", n=4, images=("a", "b")), ["s3://pub/a.png", "s3://priv/b.png"]
    )
    assert [b.field for b in found] == ["model", "n", "image_2"]


# --- input prefixes -----------------------------------------------------------------------------

PREFIXES = ("s3://catalogue/public", "https://cdn.example.com/img/")


@pytest.mark.parametrize(
    "location",
    [
        "s3://catalogue/public/x.png",
        "s3://catalogue/public/deep/er/x.png",
        "https://cdn.example.com/img/x.png",
        "https://CDN.example.com:443/img/x.png?v=2",
        "HTTPS://cdn.example.com/img/a%20b.png",
    ],
)
def test_inputs_under_an_allowed_folder_pass(location: str) -> None:
    assert Policy(input_prefixes=PREFIXES).input_breach(location) is None


@pytest.mark.parametrize(
    ("location", "why"),
    [
        ("s3://catalogue/private/x.png", "outside the allowed input prefixes"),
        ("s3://catalogue/public-2/x.png", "outside"),  # a folder, not a string prefix
        ("s3://catalogue/publicity.png", "outside"),
        ("s3://catalogue/public", "outside"),  # the folder itself is not an object in it
        ("s3://catalogue-private/public/x.png", "outside"),
        ("s3://catalogue/public/../private/x.png", "'.' or '..' path segment"),
        ("https://cdn.example.com/img/%2e%2e/secret.png", "'.' or '..' path segment"),
        ("https://cdn.example.com/img/a%2F..%2Fb.png", "encoded '/'"),
        ("https://cdn.example.com@evil.example/img/x.png", "user info"),
        ("https://cdn.example.com/img@evil.example/x.png", "outside"),
        ("https://cdn.example.com:8443/img/x.png", "outside"),
        ("http://cdn.example.com/img/x.png", "outside"),  # another scheme
        ("https://cdn.example.com.evil.example/img/x.png", "outside"),
        ("https://cdn.example.com\\@evil.example/img/x.png", "backslash"),
        ("https://evil.example/img/x.png", "outside"),
    ],
)
def test_inputs_elsewhere_are_breaches_with_the_reason(location: str, why: str) -> None:
    reason = Policy(input_prefixes=PREFIXES).input_breach(location)
    assert reason is not None and why in reason and "--allow-input-prefix" in reason


def test_a_whole_bucket_prefix_allows_every_object_of_that_bucket_only() -> None:
    policy = Policy(input_prefixes=("s3://drops",))
    assert policy.input_breach("s3://drops/a/b.png") is None
    assert policy.input_breach("s3://drops2/a/b.png") is not None
    assert policy.input_breach("https://drops/a/b.png") is not None  # an https input is not in the bucket


def test_data_uris_and_local_files_are_not_limited_by_input_prefixes() -> None:
    policy = Policy(input_prefixes=("s3://drops",))
    assert policy.input_breach("data:image/png;base64,AAAA") is None
    assert policy.input_breach("/srv/images/a.png") is None


def test_without_prefixes_no_input_is_refused() -> None:
    assert Policy().input_breach("s3://anything/at/all.png") is None


@pytest.mark.parametrize(
    "text", ["catalogue/public", "ftp://host/x", "https://user@host/x", "https://host/x?q=1", "s3:///key"]
)
def test_a_malformed_prefix_is_refused_when_the_options_are_built(text: str) -> None:
    with pytest.raises(ValueError):
        parse_prefix(text)
    with pytest.raises(ValueError, match="allow_input_prefix"):
        RunOptions(manifest="m.csv", dest="out", allow_input_prefix=(text,))
