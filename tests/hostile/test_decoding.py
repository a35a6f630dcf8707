"""Bounded decoding (issue 19, row 3): a small file that declares a huge canvas costs report.html's
thumbnails little memory, whether it is refused from its header or decoded.

Peak RSS is measured in a child process as its ``VmHWM`` (the high-water mark of its own address
space; ``ru_maxrss`` would not do: Linux carries the parent's figure over the fork and exec, so a
big pytest process would inflate it). The PNGs are written row by row, never held decoded here.
"""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

from qwenedit.decode import MAX_INPUT_PIXELS, DecodeBudget

RSS_LIMIT_MB = 400

_CHILD = """
import json, sys
from pathlib import Path
data = Path(sys.argv[1]).read_bytes()
from qwenedit.htmlreport import render_html_report
from qwenedit.report import JobResult
r = JobResult(row=1, job_id="j1", status="succeeded", model="m", region="r", images_requested=1, outputs=["o.png"])
html = render_html_report(
    {"run_id": "x"}, [r], read_input=lambda ref: data, read_output=lambda ref: data,
    inputs_of=lambda res: ["in.png"],
)
status = Path("/proc/self/status").read_text()
peak_mb = int(next(l for l in status.splitlines() if l.startswith("VmHWM:")).split()[1]) / 1024
print(json.dumps({"peak_mb": peak_mb, "thumbnails": html.count("data:image/jpeg")}))
"""


def flat_png(path: Path, width: int, height: int, color_type: int, pixel: bytes) -> Path:
    """A one-colour PNG (8-bit; colour type 2 = RGB, 6 = RGBA), written without decoding it in memory."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return (
            struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))
        )

    row = b"\x00" + pixel * width
    packer = zlib.compressobj(9)
    with path.open("wb") as fh:
        fh.write(b"\x89PNG\r\n\x1a\n")
        fh.write(chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, color_type, 0, 0, 0)))
        data = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
        fh.write(chunk(b"IDAT", data))
        fh.write(chunk(b"IEND", b""))
    return path


def _report_peak(png: Path) -> dict[str, float]:
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, str(png)], capture_output=True, text=True, check=True, timeout=600
    )
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


needs_proc = pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")


@needs_proc
def test_an_8000px_one_colour_png_costs_the_report_little_memory(tmp_path: Path) -> None:
    png = flat_png(tmp_path / "huge.png", 8000, 8000, 2, b"\xc8\x1e\x1e")
    assert png.stat().st_size < 1_000_000  # small on disk: the canvas is the attack

    found = _report_peak(png)

    assert found["peak_mb"] < RSS_LIMIT_MB, found
    assert found["thumbnails"] == 0  # over the input pixel cap: a placeholder, refused from the header


@needs_proc
def test_an_image_just_under_the_cap_is_previewed_within_the_memory_bound(tmp_path: Path) -> None:
    side = 6000  # RGBA, 36 M pixels: under the cap (4 × 3072²), decoded for real
    assert side * side <= MAX_INPUT_PIXELS
    png = flat_png(tmp_path / "big.png", side, side, 6, b"\x10\x80\xf0\xff")

    found = _report_peak(png)

    assert found["peak_mb"] < RSS_LIMIT_MB, found
    assert found["thumbnails"] == 2  # the input and the output were both previewed


_VALIDATE_CHILD = """
import json, sys
from pathlib import Path
from qwenedit.cli import app
sys.argv = ["qwenedit", "validate", "--check-images", "--json", sys.argv[1]]
try:
    app()
except SystemExit as done:
    code = done.code
status = Path("/proc/self/status").read_text()
peak_mb = int(next(l for l in status.splitlines() if l.startswith("VmHWM:")).split()[1]) / 1024
print(json.dumps({"peak_mb": peak_mb, "exit": code}))
"""


def _validate_peak(manifest: Path) -> tuple[dict[str, float], dict[str, object]]:
    done = subprocess.run(
        [sys.executable, "-c", _VALIDATE_CHILD, str(manifest)],
        capture_output=True,
        text=True,
        check=True,
        timeout=900,
        cwd=manifest.parent,
    )
    *report, last = done.stdout.strip().splitlines()
    return json.loads(last), json.loads("\n".join(report))  # type: ignore[no-any-return]


@needs_proc
def test_validating_8000px_inputs_stays_under_the_memory_bound(tmp_path: Path) -> None:
    rows = []
    for i in range(4):  # four different images: a 16-thread check would decode them all at once
        flat_png(tmp_path / f"huge{i}.png", 8000, 8000, 2, bytes([40 * i, 30, 30]))
        rows.append(f"job-{i},huge{i}.png,p")
    for i in range(4):  # and four under the cap, decoded for real, one budget at a time
        flat_png(tmp_path / f"big{i}.png", 6000, 6000, 6, bytes([40 * i, 128, 240, 255]))
        rows.append(f"big-{i},big{i}.png,p")
    manifest = tmp_path / "m.csv"
    manifest.write_text("job_id,image_1,prompt\n" + "\n".join(rows) + "\n")

    found, result = _validate_peak(manifest)

    assert found["peak_mb"] < RSS_LIMIT_MB, found
    errors = [p for p in result["problems"] if p["severity"] == "error"]  # type: ignore[attr-defined]
    assert sorted(p["job_id"] for p in errors) == [f"job-{i}" for i in range(4)]
    assert all("8000×8000 px" in p["reason"] and "not decoded" in p["reason"] for p in errors)


def test_the_decode_budget_never_holds_more_than_its_limit_at_once() -> None:
    import threading

    budget = DecodeBudget(100)
    inside: list[int] = []
    start = threading.Barrier(6)

    def work(n: int) -> None:
        start.wait()
        with budget.hold(n):
            inside.append(budget.held)

    threads = [threading.Thread(target=work, args=(n,)) for n in (60, 60, 30, 30, 10, 250)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert len(inside) == 6  # everything ran: one request over the whole budget runs alone
    assert budget.peak <= 250 and all(h <= 100 or h == 250 for h in inside)
    assert budget.held == 0


@pytest.mark.parametrize("mode", ["P", "I;16", "1", "CMYK", "LA"])
def test_every_mode_is_reduced_to_one_a_thumbnail_can_use(mode: str) -> None:
    from PIL import Image

    from qwenedit.decode import downscale

    img = Image.new(mode, (1000, 700))
    small = downscale(img, 100)
    assert max(small.size) <= 100 and small.mode in ("RGB", "RGBA", "L", "LA")
