"""Pipeline test helpers: small input images, manifests written on the fly, one-call flow runs."""

from __future__ import annotations

import csv
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

API_KEY = "sk-pipeline-test-0123456789"


@pytest.fixture(scope="session")
def images_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("inputs")
    for name, size, colour in (
        ("square.png", (512, 512), (200, 40, 40)),
        ("wide.png", (768, 512), (40, 160, 60)),
        ("tall.png", (512, 768), (40, 60, 200)),
    ):
        Image.new("RGB", size, colour).save(d / name)
    return d


ManifestRow = dict[str, Any]


@pytest.fixture
def write_manifest(images_dir: Path, tmp_path: Path) -> Callable[[Iterable[ManifestRow]], Path]:
    """Write rows to a CSV next to copies of the input images; returns the manifest path."""
    counter = {"n": 0}

    def write(rows: Iterable[ManifestRow]) -> Path:
        counter["n"] += 1
        folder = tmp_path / f"manifest{counter['n']}"
        folder.mkdir()
        for img in images_dir.iterdir():
            (folder / img.name).write_bytes(img.read_bytes())
        rows = list(rows)
        columns: list[str] = ["job_id", "image_1", "image_2", "image_3", "prompt"]
        for row in rows:
            columns.extend(k for k in row if k not in columns)
        path = folder / "jobs.csv"
        with path.open("w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=columns)
            writer.writeheader()
            for row in rows:
                writer.writerow({k: row.get(k, "") for k in columns})
        return path

    return write


def simple_rows(count: int, **overrides: Any) -> list[ManifestRow]:
    shapes = ("square.png", "wide.png", "tall.png")
    return [
        {"job_id": f"job-{i:04d}", "image_1": shapes[i % 3], "prompt": f"make it blue #{i}", **overrides}
        for i in range(count)
    ]


@pytest.fixture
def pipeline_env(monkeypatch: pytest.MonkeyPatch, s3_bucket: Any) -> Any:
    """API key and S3 credentials in the environment, as a user would have them."""
    monkeypatch.setenv("DASHSCOPE_API_KEY", API_KEY)
    for key, value in s3_bucket.env.items():
        monkeypatch.setenv(key, value)
    return s3_bucket
