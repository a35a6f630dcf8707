"""The policy through the CLI: every breach is refused before any call (exit 2, the offending row and
the reason named, 0 requests by the emulator's books), by ``qwenedit run`` and ``qwenedit validate``
alike; a manifest within the policy runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from qwenedit.cli import app
from tests.gates.helpers import billed_calls, run_here
from tests.pipeline.conftest import images_dir, pipeline_env, simple_rows, write_manifest

__all__ = ["images_dir", "pipeline_env", "write_manifest"]  # fixtures used here

RUNNER = CliRunner()


def run_cli(manifest: Path, bucket: Any, emulator: Any, tmp_path: Path, *flags: str) -> tuple[int, str]:
    """``qwenedit run`` in this process (a refused run never reaches Prefect)."""
    args = ["run", str(manifest), "--dest", bucket.uri("out"), "--base-url", emulator.base_url]
    args += ["--report-dir", str(tmp_path / "runs"), "--no-progress", *flags]
    done = RUNNER.invoke(app, args, env={"COLUMNS": "250"})
    return done.exit_code, done.output


def validate_cli(manifest: Path, *flags: str) -> tuple[int, str]:
    done = RUNNER.invoke(app, ["validate", str(manifest), *flags], env={"COLUMNS": "250"})
    return done.exit_code, done.output


def nothing_called(emulator: Any) -> bool:
    return emulator.stats()["requests"] == 0 and billed_calls(emulator) == 0


def private_object(bucket: Any, images_dir: Path) -> str:
    """An object the worker's credentials can read, in a bucket no manifest was meant to read from."""
    name = bucket.bucket + "-private"
    bucket.client.create_bucket(Bucket=name)
    bucket.client.put_object(Bucket=name, Key="secret.png", Body=(images_dir / "square.png").read_bytes())
    return f"s3://{name}/secret.png"


CASES = {
    # name: (row overrides for row 3 of 4, flags, column named, words of the reason)
    "model": (
        {"model": "qwen-image-edit-max"},
        ["--allow-model", "qwen-image-edit-plus"],
        "model",
        "not an allowed model",
    ),
    "n": ({"n": "4"}, ["--max-n", "2"], "n", "asks for 4 images; the policy allows at most 2"),
    "https input": (
        {"image_1": "https://elsewhere.example/x.png"},
        ["--allow-input-prefix", "https://cdn.example.com/img"],
        "image_1",
        "outside the allowed input prefixes",
    ),
    "region": ({"region": "beijing"}, [], "region", "is beijing, but the run is served in singapore"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_row_that_breaks_the_policy_is_refused_before_any_call_naming_it(
    case: str, pipeline_env: Any, emulator: Any, write_manifest: Any, tmp_path: Path
) -> None:
    overrides, flags, column, reason = CASES[case]
    rows = simple_rows(4)
    rows[2].update(overrides)
    manifest = write_manifest(rows)

    code, output = run_cli(manifest, pipeline_env, emulator, tmp_path, *flags)
    assert code == 2, output
    line = next(line for line in output.splitlines() if reason in line)
    assert "job-0002" in line and f" {column} " in line and line.split("│")[1].strip() == "3"
    assert "breach(es) of the run's policy: nothing was run" in output
    assert nothing_called(emulator)
    assert not pipeline_env.keys()  # nothing written at the destination either

    code, output = validate_cli(manifest, *flags)
    assert code == 2, output
    assert reason in output and "job-0002" in output and "1 breach of the policy" in output


def test_an_s3_input_outside_the_allowed_prefixes_is_never_presigned_or_sent(
    pipeline_env: Any, emulator: Any, write_manifest: Any, images_dir: Path, tmp_path: Path
) -> None:
    secret = private_object(pipeline_env, images_dir)
    rows = simple_rows(3)
    rows[1]["image_2"] = secret  # "unchanged" plus a private object the worker may read
    manifest = write_manifest(rows)
    allowed = ["--allow-input-prefix", pipeline_env.uri("public")]

    code, output = run_cli(manifest, pipeline_env, emulator, tmp_path, *allowed)
    assert code == 2, output
    assert "job-0001" in output and "image_2" in output and "outside the allowed input prefixes" in output
    assert nothing_called(emulator)
    assert not pipeline_env.keys()


def test_too_many_rows_are_refused_at_the_first_row_over_the_limit(
    pipeline_env: Any, emulator: Any, write_manifest: Any, tmp_path: Path
) -> None:
    manifest = write_manifest(simple_rows(5))
    code, output = run_cli(manifest, pipeline_env, emulator, tmp_path, "--max-rows", "4")
    assert code == 2, output
    assert "the manifest has 5 rows; the policy allows at most 4 (--max-rows)" in output
    assert nothing_called(emulator)
    code, output = validate_cli(manifest, "--max-rows", "4")
    assert code == 2 and "has 5 rows" in output
    assert validate_cli(manifest, "--max-rows", "5")[0] == 0


def test_every_breach_is_listed_not_only_the_first(
    pipeline_env: Any, emulator: Any, write_manifest: Any, tmp_path: Path
) -> None:
    rows = simple_rows(6)
    rows[1]["n"] = "3"
    rows[4]["model"] = "qwen-image-edit"
    code, output = run_cli(
        write_manifest(rows),
        pipeline_env,
        emulator,
        tmp_path,
        "--max-n",
        "1",
        "--allow-model",
        "qwen-image-edit-plus",
    )
    assert code == 2, output
    assert "job-0001" in output and "job-0004" in output and "2 breach(es)" in output
    assert nothing_called(emulator)


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (["--allow-input-prefix", "bucket/public"], "--allow-input-prefix"),
        (["--max-n", "0"], "--max-n"),
        (["--region-endpoint", "beijing"], "--region-endpoint"),
        (["--approve-above", "a lot"], "--approve-above"),
    ],
)
def test_a_malformed_policy_option_is_refused_naming_it(
    flags: list[str], named: str, pipeline_env: Any, emulator: Any, write_manifest: Any, tmp_path: Path
) -> None:
    code, output = run_cli(write_manifest(simple_rows(2)), pipeline_env, emulator, tmp_path, *flags)
    assert code == 2 and named in output, output
    assert nothing_called(emulator)


async def test_a_manifest_within_the_policy_runs(
    pipeline_env: Any, emulator: Any, write_manifest: Any, tmp_path: Path
) -> None:
    rows = simple_rows(4, n="2")
    summary = await run_here(
        write_manifest(rows),
        pipeline_env,
        emulator,
        tmp_path,
        allow_model=("qwen-image-edit-plus",),
        max_n=2,
        max_rows=4,
        allow_input_prefix=("https://cdn.example.com",),  # local inputs are bounded by the input root
    )
    assert summary["by_status"]["succeeded"] == 4 and billed_calls(emulator) == 4
