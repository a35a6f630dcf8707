"""Reading manifests into Jobs: both formats, the row-number contract, defaults, pass-through columns,
the example manifest, remote manifests, and bounded memory on a million rows."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from qwenedit.catalog import ModelSpec, ModelTable, Price, RateLimit, builtin_models
from qwenedit.errors import ManifestError
from qwenedit.jobs import Job
from qwenedit.manifest import Problem, iter_jobs, manifest_base, validate_manifest
from tests.manifest.conftest import HEADER, FakeWeb, Route, image_bytes

REPO = Path(__file__).resolve().parents[2]
FULL = (
    "job_id,image_1,image_2,image_3,prompt,negative_prompt,n,size,seed,"
    "prompt_extend,watermark,model,region,sku"
)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    for name in ("a.png", "b.png", "c.png"):
        (tmp_path / name).write_bytes(image_bytes())
    return tmp_path


def test_csv_row_becomes_a_job_with_every_field_parsed(folder: Path) -> None:
    (folder / "m.csv").write_text(
        f"{FULL}\n"
        'shirt-1,a.png,b.png,c.png,"Make it ""red""",blurry,1, 1024 * 1536 '
        ",42,YES,n,Qwen-Image-Edit-Plus,Beijing,SKU-9\n"
    )
    [job] = iter_jobs(folder / "m.csv")
    assert job == Job(
        row=1,
        job_id="shirt-1",
        images=("a.png", "b.png", "c.png"),
        prompt='Make it "red"',
        model="qwen-image-edit-plus",
        region="beijing",
        n=1,
        negative_prompt="blurry",
        size="1024*1536",
        seed=42,
        prompt_extend=True,
        watermark=False,
        extra={"sku": "SKU-9"},
    )


def test_jsonl_and_csv_of_the_same_jobs_parse_identically(folder: Path) -> None:
    (folder / "m.csv").write_text(
        f"{FULL}\nj1,a.png,b.png,,p one,,2,,7,false,,,,x\nj2,c.png,,,p two,,,,,,true,,,y\n"
    )
    (folder / "m.jsonl").write_text(
        '{"job_id": "j1", "images": ["a.png", "b.png"], "prompt": "p one", "n": 2, "seed": 7, '
        '"prompt_extend": false, "sku": "x"}\n'
        '{"job_id": "j2", "image_1": "c.png", "prompt": "p two", "watermark": true, "sku": "y"}\n'
    )
    assert list(iter_jobs(folder / "m.csv")) == list(iter_jobs(folder / "m.jsonl"))


def test_failed_jsonl_rows_are_a_manifest_that_reads_back_to_the_same_jobs(folder: Path) -> None:
    (folder / "m.csv").write_text(f"{FULL}\nj1,a.png,b.png,,p,neg,1,1024*1024,7,true,false,,beijing,x\n")
    jobs = list(iter_jobs(folder / "m.csv"))
    (folder / "failed.jsonl").write_text("".join(json.dumps(j.to_manifest_row()) + "\n" for j in jobs))
    assert list(iter_jobs(folder / "failed.jsonl")) == jobs


def test_defaults_apply_to_empty_cells_and_row_values_win(folder: Path) -> None:
    (folder / "m.csv").write_text(
        "job_id,image_1,prompt,model,region\na,a.png,p,,\nb,a.png,p,qwen-image-edit,singapore\n"
    )
    a, b = iter_jobs(folder / "m.csv", region="beijing", model="qwen-image-edit-plus-2025-12-15")
    assert (a.region, a.model) == ("beijing", "qwen-image-edit-plus-2025-12-15")
    assert (b.region, b.model) == ("singapore", "qwen-image-edit")


@pytest.mark.parametrize(
    ("text", "value"),
    [("true", True), ("TRUE", True), ("Yes", True), ("y", True), ("1", True),
     ("false", False), ("No", False), ("N", False), ("0", False), ("", None)],
)  # fmt: skip
def test_booleans_accept_the_usual_spellings(folder: Path, text: str, value: bool | None) -> None:
    (folder / "m.csv").write_text(f"job_id,image_1,prompt,watermark\na,a.png,p,{text}\n")
    [job] = iter_jobs(folder / "m.csv")
    assert job.watermark is value


def test_header_names_are_trimmed_and_case_insensitive(folder: Path) -> None:
    (folder / "m.csv").write_text(" Job_ID ,IMAGE_1, Prompt ,N\na,a.png,p,3\n")
    [job] = iter_jobs(folder / "m.csv")
    assert (job.job_id, job.images, job.prompt, job.n) == ("a", ("a.png",), "p", 3)


def test_row_numbers_count_records_and_lines_follow_the_file(folder: Path) -> None:
    (folder / "m.csv").write_text(
        f"{HEADER}\n"
        'a,a.png,,,"two\nlines"\n'  # row 1, lines 2–3
        "\n"  # row 2: blank, skipped but counted
        "b,a.png,,,p\n"  # row 3, line 5
        "b,a.png,,,p\n"  # row 4, line 6: the duplicate
    )
    result = validate_manifest(folder / "m.csv")
    assert result.problems == [
        Problem(4, "b", "job_id", "is a duplicate: row 3 has the same job_id", "error", 6),
    ]
    assert [j.row for j in iter_jobs(folder / "m.csv", on_invalid="skip")] == [1, 3]


def test_jsonl_rows_are_line_numbers(folder: Path) -> None:
    (folder / "m.jsonl").write_text(
        '\n{"job_id": "a", "images": ["a.png"], "prompt": "p"}\n\n{"job_id": "a"}\n'
    )
    result = validate_manifest(folder / "m.jsonl")
    assert [(p.row, p.line, p.column) for p in result.problems] == [
        (4, 4, "job_id"),
        (4, 4, "images"),
        (4, 4, "prompt"),
    ]
    assert result.rows == 2


def test_every_problem_in_the_file_is_reported_in_one_pass(folder: Path) -> None:
    rows = [f"r{i},a.png,,,p" for i in range(50)]
    rows[3] = "r3,,,,p"
    rows[20] = "r20,a.png,,,"
    rows[44] = "r1,a.png,,,p"
    (folder / "m.csv").write_text(HEADER + "\n" + "\n".join(rows) + "\n")
    result = validate_manifest(folder / "m.csv")
    assert [p.message() for p in result.problems] == [
        'row 4 (job_id "r3"), column image_1: is empty: every job needs 1–3 input images',
        'row 21 (job_id "r20"), column prompt: is empty: every job needs an instruction',
        'row 45 (job_id "r1"), column job_id: is a duplicate: row 2 has the same job_id',
    ]
    assert (result.rows, result.valid_rows, result.errors, result.ok) == (50, 47, 3, False)
    assert result.quote.images == 47  # the quote covers the valid rows only


def test_stored_problems_are_capped_but_all_are_counted(folder: Path) -> None:
    (folder / "m.csv").write_text(
        HEADER + "\n" + "".join(f"r{i},a.png,,,=x\n" for i in range(3000)) + "x,,,,\n"
    )
    result = validate_manifest(folder / "m.csv", max_problems=100)
    assert (result.warnings, result.errors) == (3000, 2)
    assert len(result.problems) == 102  # 100 warnings + both errors: errors are never crowded out
    assert result.problems_omitted == 2900


def test_invalid_rows_stop_iter_jobs_unless_skipped(folder: Path) -> None:
    (folder / "m.csv").write_text(f"{HEADER}\na,a.png,,,p\nb,a.png,,,\nc,a.png,,,p\n")
    with pytest.raises(ManifestError, match=r'row 2 \(job_id "b"\), column prompt: is empty'):
        list(iter_jobs(folder / "m.csv"))
    assert [j.job_id for j in iter_jobs(folder / "m.csv", on_invalid="skip")] == ["a", "c"]


NEW_SNAPSHOT = "qwen-image-edit-plus-2026-06-01"
NEW_SPEC = {NEW_SNAPSHOT: ModelSpec(NEW_SNAPSHOT, rate_limit=RateLimit(2, 1.0))}


def test_user_priced_models_become_known(folder: Path) -> None:
    (folder / "m.csv").write_text(
        f"job_id,image_1,prompt,model,n,size\na,a.png,p,{NEW_SNAPSHOT},1,1024*1024\n"
    )
    assert validate_manifest(folder / "m.csv").errors == 1
    prices = builtin_models().merged(
        ModelTable({("singapore", NEW_SNAPSHOT): Price(Decimal("0.03"), "USD")}, NEW_SPEC)
    )
    result = validate_manifest(folder / "m.csv", prices=prices)
    assert result.ok and result.quote.totals == {"USD": Decimal("0.03")}


def test_a_priced_model_without_a_known_rate_limit_is_refused(folder: Path) -> None:
    prices = builtin_models().merged(ModelTable({("singapore", NEW_SNAPSHOT): Price(Decimal("0.03"), "USD")}))
    (folder / "m.csv").write_text(f"job_id,image_1,prompt,model\na,a.png,p,{NEW_SNAPSHOT}\n")
    [problem] = validate_manifest(folder / "m.csv", prices=prices).problems
    assert problem.message() == (
        'row 1 (job_id "a"), column model: has no known rate limit; refusing to guess: add a '
        "rate_limit (e.g. 2/s or 2/min) to its row in the --prices file"
    )


def test_a_model_priced_in_one_region_only_is_refused_in_the_other(folder: Path) -> None:
    prices = builtin_models().merged(
        ModelTable({("singapore", NEW_SNAPSHOT): Price(Decimal("0.03"), "USD")}, NEW_SPEC)
    )
    (folder / "m.csv").write_text(f"job_id,image_1,prompt,model,region\na,a.png,p,{NEW_SNAPSHOT},beijing\n")
    [problem] = validate_manifest(folder / "m.csv", prices=prices).problems
    assert problem.message() == (
        'row 1 (job_id "a"), column model: has no known price in region beijing; '
        "refusing to guess: add it with a --prices file"
    )


def test_size_off_the_16_px_grid_warns_with_what_the_api_will_make(folder: Path) -> None:
    (folder / "m.csv").write_text("job_id,image_1,prompt,size\na,a.png,p,1033*1032\n")
    result = validate_manifest(folder / "m.csv")
    assert result.ok
    assert [p.reason for p in result.problems] == [
        "the API rounds each side to a multiple of 16: 1033*1032 becomes 1040*1024"
    ]


def test_tsv_is_read_with_tabs(folder: Path) -> None:
    (folder / "m.tsv").write_text("job_id\timage_1\tprompt\na\ta.png\tmake it red, then blue\n")
    [job] = iter_jobs(folder / "m.tsv")
    assert job.prompt == "make it red, then blue"
    assert validate_manifest(folder / "m.tsv").problems == []


def test_manifest_base_is_where_relative_references_point(tmp_path: Path) -> None:
    assert manifest_base(tmp_path / "m.csv") == str(tmp_path)
    assert manifest_base("s3://bucket/drops/m.csv") == "s3://bucket/drops/"
    assert manifest_base("https://example.com/a/m.jsonl") == "https://example.com/a/"


# --- the example manifest --------------------------------------------------------------------------


def test_example_manifest_is_valid_offline_with_image_checks_and_no_warnings() -> None:
    result = validate_manifest(REPO / "jobs.example.csv", check_images=True)
    assert result.problems == []
    assert (result.rows, result.quote.jobs, result.quote.images) == (8, 8, 12)
    assert result.quote.totals == {"USD": Decimal("0.375")}
    jobs = list(iter_jobs(REPO / "jobs.example.csv"))
    assert {j.extra["sku"] for j in jobs} >= {"SKU-1001", "SKU-5001"}
    assert any(len(j.images) == 3 for j in jobs) and any(j.n > 1 for j in jobs)
    assert any("明天会更好" in j.prompt for j in jobs)


def test_example_images_are_small_and_inside_the_api_pixel_range() -> None:
    images = sorted((REPO / "examples" / "images").iterdir())
    assert len(images) >= 5
    for path in images:
        assert path.stat().st_size <= 60_000, path
        with Image.open(path) as im:
            assert all(384 <= side <= 3072 for side in im.size), (path, im.size)


# --- remote manifests ------------------------------------------------------------------------------


def test_s3_manifest_is_read_and_its_relative_images_point_into_the_bucket(s3_env: Any) -> None:
    body = f"{HEADER}\na,img/a.png,,,p\n".encode()
    s3_env.client.put_object(Bucket=s3_env.bucket, Key="drops/m.csv", Body=body)
    s3_env.client.put_object(Bucket=s3_env.bucket, Key="drops/img/a.png", Body=image_bytes())
    source = f"s3://{s3_env.bucket}/drops/m.csv"
    result = validate_manifest(source, check_images=True)
    assert (result.ok, result.problems, result.source) == (True, [], source)
    [job] = iter_jobs(source)
    assert job.images == ("img/a.png",)
    s3_env.client.delete_object(Bucket=s3_env.bucket, Key="drops/img/a.png")
    [problem] = validate_manifest(source, check_images=True).problems
    assert problem.reason == '"img/a.png": no such object'
    with pytest.raises(
        ManifestError, match=f"manifest 's3://{s3_env.bucket}/nope.csv' could not be fetched: no such"
    ):
        validate_manifest(f"s3://{s3_env.bucket}/nope.csv")


def test_https_manifest_is_fetched_and_images_are_checked_with_head(fake_web: FakeWeb) -> None:
    fake_web.routes["/drop/m.jsonl"] = Route(
        body=b'{"job_id": "a", "images": ["a.png"], "prompt": "p"}\n{"job_id": "b", "images": ["a.png"], '
        b'"prompt": "q"}\n'
    )
    fake_web.routes["/drop/a.png"] = Route(headers={"Content-Type": "image/png"}, body=image_bytes())
    result = validate_manifest(fake_web.url("/drop/m.jsonl"), check_images=True, allow_private_urls=True)
    assert result.ok and result.problems == []
    # The same image on two rows is asked for once.
    assert fake_web.requests == [("GET", "/drop/m.jsonl"), ("HEAD", "/drop/a.png")]
    with pytest.raises(ManifestError, match="could not be fetched: HTTP 404"):
        validate_manifest(fake_web.url("/drop/missing.csv"))


def test_an_image_shared_by_many_rows_is_checked_once_across_batches(folder: Path, fake_web: FakeWeb) -> None:
    fake_web.routes["/logo.png"] = Route(headers={"Content-Type": "image/png"}, body=image_bytes())
    url = fake_web.url("/logo.png")
    (folder / "m.csv").write_text(HEADER + "\n" + "".join(f"r{i},{url},a.png,,p\n" for i in range(1500)))
    result = validate_manifest(folder / "m.csv", check_images=True, allow_private_urls=True)
    assert result.ok and result.rows == 1500
    assert fake_web.requests == [("HEAD", "/logo.png")]


# --- a million rows ---------------------------------------------------------------------------------

# Runs in a fresh interpreter so the numbers are the validator's alone. RSS is sampled while it runs
# (a high-water mark like ru_maxrss would hide growth under whatever import spiked first).
_MEASURE = textwrap.dedent(
    """
    import json, sys, threading, time
    import psutil
    from qwenedit.manifest import validate_manifest
    proc = psutil.Process()
    base = peak = proc.memory_info().rss
    done = threading.Event()
    def sample():
        global peak
        while not done.wait(0.02):
            peak = max(peak, proc.memory_info().rss)
    threading.Thread(target=sample, daemon=True).start()
    wall, cpu = time.perf_counter(), time.process_time()
    r = validate_manifest(sys.argv[1])
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    done.set()
    peak = max(peak, proc.memory_info().rss)
    print(json.dumps({"wall_s": wall, "cpu_s": cpu, "base_mib": base / 2**20, "peak_mib": peak / 2**20,
                      "rows": r.rows, "images": r.quote.images, "total": str(r.quote.total()),
                      "problems": [p.message() for p in r.problems]}))
    """
)


@pytest.mark.slow
@pytest.mark.timeout(900)  # ~25 s of CPU; the wall time depends on how busy the machine is
def test_a_million_row_manifest_validates_in_bounded_memory(tmp_path: Path) -> None:
    path = tmp_path / "big.csv"
    rows = 1_000_000
    with path.open("w") as fh:
        fh.write("job_id,image_1,image_2,prompt,n,sku\n")
        fh.writelines(
            f"job-{i:07d},https://cdn.example.com/in/{i}.png,s3://bucket/in/{i}.png,Make shirt {i} light "
            f"blue,2,SKU-{i}\n"
            for i in range(rows)
        )
        fh.write("job-0000007,https://cdn.example.com/x.png,,dup,1,SKU-x\n")
    size_mb = path.stat().st_size / 1e6
    out = subprocess.run(
        [sys.executable, "-c", _MEASURE, str(path)], capture_output=True, text=True, timeout=850, check=True
    )
    m = json.loads(out.stdout)
    growth = m["peak_mib"] - m["base_mib"]
    print(
        f"\n1,000,001 rows ({size_mb:.0f} MB): {m['wall_s']:.1f} s wall, {m['cpu_s']:.1f} s CPU, "
        f"RSS {m['base_mib']:.0f} → {m['peak_mib']:.0f} MiB (+{growth:.0f})"
    )
    assert m["rows"] == rows + 1
    assert m["problems"] == [
        'row 1000001 (job_id "job-0000007"), column job_id: is a duplicate: row 8 has the same job_id'
    ]
    assert (m["images"], m["total"]) == (2 * rows, "60000.00")
    # What grows is the job_id index (needed for uniqueness, ~120 bytes an id), not the rows: loading
    # the file as Jobs would take well over a gigabyte.
    assert growth < 300, growth
