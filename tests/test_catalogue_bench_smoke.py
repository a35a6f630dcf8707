"""The catalogue benchmark, run tiny: its seeding matches the run layer and its three parts hold.

Needs the chunked run layer (done markers at ``_ledger/_done/{job_id}@{hex}.json``, decided from one
listing): on a run layer without it, (a) executes every row instead of skipping it and this test fails.
Takes a couple of minutes (three Prefect warm-ups, SeaweedFS, the emulator): marked slow.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.catalogue import (
    DONE_PREFIX,
    copy_into_seaweed,
    done_marker_key,
    every_hundredth,
    main,
    row_fingerprints,
    seed_done_markers,
    write_catalogue_manifest,
)
from bench.workload import make_images
from devkit.seaweed import SeaweedServer, ensure_bucket
from qwenedit.ledger import Done, Ledger
from qwenedit.storage import S3Destination


def test_seeded_markers_are_done_records_named_by_job_and_fingerprint(tmp_path: Path) -> None:
    images = make_images(tmp_path / "images")
    manifest = tmp_path / "m.csv"
    write_catalogue_manifest(manifest, 30, images)
    assert seed_done_markers(manifest, tmp_path / "dest") == 30
    fps = dict(row_fingerprints(manifest))
    markers = sorted((tmp_path / "dest" / DONE_PREFIX).iterdir())
    assert len(markers) == 30
    for path in markers:
        body = json.loads(path.read_text())
        assert body["fingerprint"] == fps[body["job_id"]]
        assert path.name.startswith(f"{body['job_id']}@{fps[body['job_id']].removeprefix('sha256:')}")
        assert DONE_PREFIX + path.name == done_marker_key(Done(**{**body, "outputs": tuple(body["outputs"])}))


def test_markers_copied_into_seaweedfs_are_listed_and_read_as_the_run_would(
    tmp_path: Path, seaweed: SeaweedServer
) -> None:
    images = make_images(tmp_path / "images")
    manifest = tmp_path / "m.csv"
    write_catalogue_manifest(manifest, 40, images)
    staged = tmp_path / "staged"
    assert seed_done_markers(manifest, staged) == 40
    ensure_bucket(seaweed.client(), "bench-seed")
    copy_into_seaweed(seaweed, staged, "bench-seed", "cat-a")
    dest = S3Destination("bench-seed", "cat-a", settings=seaweed.settings(), session=seaweed.session())
    local = sorted(DONE_PREFIX + p.name for p in (staged / DONE_PREFIX).iterdir())
    assert sorted(dest.list_keys(DONE_PREFIX)) == local
    index = Ledger(dest).done_index()
    fps = dict(row_fingerprints(manifest))
    assert len(index) == 40 and all(index.find(job, fp) is not None for job, fp in fps.items())
    for key in local[:3]:
        assert dest.get_bytes(key) == (staged / key).read_bytes()


def test_a_changed_prompt_changes_exactly_that_rows_fingerprint(tmp_path: Path) -> None:
    images = make_images(tmp_path / "images")
    write_catalogue_manifest(tmp_path / "old.csv", 300, images)
    write_catalogue_manifest(tmp_path / "new.csv", 300, images, changed=every_hundredth)
    old, new = dict(row_fingerprints(tmp_path / "old.csv")), dict(row_fingerprints(tmp_path / "new.csv"))
    assert {j for j in old if old[j] != new[j]} == {"sku-0000037", "sku-0000137", "sku-0000237"}


@pytest.mark.slow
def test_tiny_catalogue_bench_skips_unchanged_rows_and_calls_only_changed_ones(tmp_path: Path) -> None:
    assert main(["--rows", "2000", "--executed", "200", "--results", str(tmp_path)], tmp_path) == 0
    doc = json.loads((tmp_path / "catalogue.json").read_text())
    a = doc["a"]["run"]
    assert a["returncode"] == 0
    assert a["calls"] == 0
    assert a["by_status"].get("skipped") == 2000
    assert a["task_runs_added"] == 0
    b = doc["b"]["runs"][0]
    assert b["returncode"] == 0 and b["succeeded"] == 200
    c = doc["c"]
    assert c["changed"] == 2
    assert c["emulator_billed"] == 2 and c["emulator_requests"] == 2
    assert c["called_not_changed"] == [] and c["changed_not_called"] == []
