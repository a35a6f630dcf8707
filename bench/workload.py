"""The bench's input: a few small local PNGs and an N-row CSV manifest that uses them.

Every contender reads the same manifest. Rows alternate between single-image edits and two-image
fusions (relative paths, resolved next to the manifest), all with ``n = 1``, so images = jobs.
``data_uri`` is the seed document's ``encode_file``: what (b) and (c) send for a local file.
"""

from __future__ import annotations

import base64
import csv
import mimetypes
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw

IMAGE_SIZE = 512
PROMPTS = (
    "Change the background of the image to a plain light grey studio backdrop.",
    "Replace the red object with a blue one and keep the lighting.",
    "Put the object from Image 1 on the table from Image 2.",
    "Remove the text and keep everything else unchanged.",
)


@dataclass(frozen=True)
class Row:
    """One manifest row as the alternatives read it: job id, local image paths, prompt, n."""

    job_id: str
    images: tuple[Path, ...]
    prompt: str
    n: int = 1


def make_images(folder: Path, count: int = 3) -> list[Path]:
    """``count`` 512×512 product-shot-like PNGs (gradient backdrop, a few shapes), a few KB to tens of KB."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        img = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE))
        draw = ImageDraw.Draw(img)
        for y in range(IMAGE_SIZE):  # vertical gradient, a different tint per image
            shade = 200 - y * 120 // IMAGE_SIZE
            draw.line([(0, y), (IMAGE_SIZE, y)], fill=(shade, shade - 10 * i, shade - 20 * (2 - i)))
        draw.ellipse((96 + 20 * i, 140, 400 - 10 * i, 440), fill=(190, 40 + 60 * i, 50), outline=(20, 20, 20))
        draw.rectangle((40, 40, 200, 90), fill=(240, 240, 240))
        draw.text((50, 55), f"SKU-{1000 + i}", fill=(0, 0, 0))
        path = folder / f"input-{i + 1}.png"
        img.save(path, format="PNG")
        paths.append(path)
    return paths


def write_manifest(path: Path, jobs: int, images: list[Path]) -> list[Row]:
    """Write a CSV manifest of ``jobs`` rows (image paths relative to the manifest) and return its rows."""
    rows = list(_rows(jobs, images))
    base = path.parent
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["job_id", "image_1", "image_2", "prompt", "n"])
        for r in rows:
            refs = [p.relative_to(base).as_posix() for p in r.images]
            w.writerow([r.job_id, refs[0], refs[1] if len(refs) > 1 else "", r.prompt, r.n])
    return rows


def _rows(jobs: int, images: list[Path]) -> Iterator[Row]:
    for i in range(jobs):
        first = images[i % len(images)]
        if i % 2:  # every other row fuses two images
            pair = (first, images[(i + 1) % len(images)])
            yield Row(f"job-{i:06d}", pair, PROMPTS[2])
        else:
            yield Row(f"job-{i:06d}", (first,), PROMPTS[i % 4 if i % 4 != 2 else 0])


def read_manifest(path: Path) -> list[Row]:
    """The manifest back as Rows, the way a hand-written script reads it (csv.DictReader)."""
    base = path.parent
    rows = []
    with path.open(newline="", encoding="utf-8") as f:
        for rec in csv.DictReader(f):
            refs = [rec[c] for c in ("image_1", "image_2", "image_3") if rec.get(c)]
            rows.append(
                Row(rec["job_id"], tuple(base / r for r in refs), rec["prompt"], int(rec.get("n") or 1))
            )
    return rows


def data_uri(path: Path) -> str:
    """The seed document's ``encode_file``: ``data:{mime};base64,{...}`` of a local image."""
    mime, _ = mimetypes.guess_type(str(path))
    if not mime or not mime.startswith("image/"):
        raise ValueError("Unsupported or unrecognized image format")
    return f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode('utf-8')}"
