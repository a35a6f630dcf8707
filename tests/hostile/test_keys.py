"""Unusual but legal names: every job_id character the manifest allows, and destination prefixes with
spaces, unicode and URL-special characters, on S3 and on a local folder. Outputs land at exactly the
expected keys, the report is uploaded next to them, and a rerun finds the ledger again (all skipped)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from flows.edit_manifest import edit_manifest
from qwenedit.options import RunOptions
from tests.chaos.conftest import check_invariants, read_results, timed_run

pytestmark = pytest.mark.usefixtures("prefect_server")

ODD_JOB_IDS = [
    "a.b_c-d",
    "0",
    "A",
    "a",
    "x.png",
    "v1.2.3",
    "Z" * 128,
    "9-",
    "a.",
    "a_",
    "e1e5",
    "NaN",
    "null",
]
ODD_PREFIX = "my run/ünïcødé 文件/100% + a&b=c;~'"


def odd_rows() -> list[dict[str, Any]]:
    shapes = ("square.png", "wide.png", "tall.png")
    return [
        {"job_id": job_id, "image_1": shapes[i % 3], "prompt": f"make {job_id} blue"}
        for i, job_id in enumerate(ODD_JOB_IDS)
    ]


@pytest.mark.slow
async def test_odd_job_ids_and_a_unicode_prefix_with_spaces_store_at_the_exact_keys_and_rerun_skips(
    pipeline_env: Any, emulator_factory: Any, spy_on: Any, write_manifest: Any, tmp_path: Path
) -> None:
    emulator = emulator_factory()
    spy = spy_on(emulator)
    rows = odd_rows()
    manifest = write_manifest(rows)
    params = {
        "manifest": str(manifest),
        "dest": pipeline_env.uri(ODD_PREFIX),
        "base_url": emulator.base_url,
        "report_dir": str(tmp_path / "reports"),
        "rates": ("20",),
    }
    first = await timed_run(edit_manifest(RunOptions(**params)))
    table = read_results(first.summary or {})
    # pandas must not turn "NaN"/"null"/"0"/"e1e5" into something else: the report keeps ids as text.
    assert list(table["job_id"]) == ODD_JOB_IDS
    assert set(table["status"]) == {"succeeded"}
    keys = set(pipeline_env.keys())
    for job_id in ODD_JOB_IDS:
        assert f"{ODD_PREFIX}/{job_id}/1.png" in keys
    for _, row in table.iterrows():
        assert row["outputs"] == f"s3://{pipeline_env.bucket}/{ODD_PREFIX}/{row['job_id']}/1.png"
    assert {k.rsplit("/", 1)[1] for k in keys if k.startswith(f"{ODD_PREFIX}/_runs/")} == {
        "results.csv",
        "summary.json",
        "failed.jsonl",
        "report.html",
    }
    assert all(k.startswith(f"{ODD_PREFIX}/") for k in keys)  # nothing outside the prefix

    second = await timed_run(edit_manifest(RunOptions(**params)))
    assert second.summary is not None and second.summary["by_status"]["skipped"] == len(ODD_JOB_IDS)
    check_invariants(spy=spy, bucket=pipeline_env, prefix=ODD_PREFIX, rows=rows, runs=[first, second])


async def test_a_local_destination_with_spaces_unicode_and_percent_signs_works_and_reruns_skip(
    pipeline_env: Any, emulator_factory: Any, write_manifest: Any, tmp_path: Path
) -> None:
    emulator = emulator_factory()
    rows = odd_rows()[:4]
    dest = tmp_path / "out dir" / "ünï 文件 100%"
    params = {
        "manifest": str(write_manifest(rows)),
        "dest": str(dest),
        "base_url": emulator.base_url,
        "report_dir": str(tmp_path / "reports"),
        "rates": ("20",),
    }
    first = await edit_manifest(RunOptions(**params))
    assert first["by_status"]["succeeded"] == 4
    for row in rows:
        assert (dest / row["job_id"] / "1.png").read_bytes().startswith(b"\x89PNG")
    second = await edit_manifest(RunOptions(**params))
    assert second["by_status"]["skipped"] == 4
    assert emulator.stats()["requests"] == 4
