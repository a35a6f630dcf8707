"""Malformed manifests and rows, through `qwenedit validate --json`: the exact message and exit code.

Each case writes a manifest (plus any image files it needs) into its own folder, runs the CLI
in-process, and checks the exit code and that each expected message is reported word for word.
"""

from __future__ import annotations

import gzip
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.manifest.conftest import HEADER, bomb_png, image_bytes, run_validate

OK_ROW = "ok,ok.png,,,make it blue"
PLUS = "job_id,image_1,prompt,n,size,seed,prompt_extend,watermark,model,region"


@dataclass
class Case:
    id: str
    manifest: str | bytes
    exit: int
    expect: list[str] = field(default_factory=list)  # problem messages that must all be reported
    error: str | None = None  # for exit 2: the one error message
    name: str = "m.csv"
    args: tuple[str, ...] = ()
    files: dict[str, bytes | Callable[[Path], None]] = field(default_factory=dict)
    errors: int | None = None  # exact error count, when it matters


def _symlink_out(folder: Path) -> None:
    outside = folder.parent / f"{folder.name}-outside.png"
    outside.write_bytes(image_bytes())
    (folder / "link.png").symlink_to(outside)


def _mkdir(name: str) -> Callable[[Path], None]:
    return lambda folder: (folder / name).mkdir()


CASES = [
    Case(
        "empty-file",
        "",
        2,
        error="manifest 'm.csv' is empty: expected a header line such as "
        "job_id,image_1,image_2,image_3,prompt",
    ),
    Case(
        "blank-lines-only",
        "\n\n  \n",
        2,
        error="manifest 'm.csv' is empty: expected a header line such "
        "as job_id,image_1,image_2,image_3,prompt",
    ),
    Case("header-only", HEADER + "\n", 1, ["manifest: has no rows: nothing to run"], errors=1),
    Case("bom-is-ignored", "\ufeff" + HEADER + "\n" + OK_ROW + "\n", 0, errors=0),
    Case(
        "not-utf8",
        (HEADER + "\n" + "ok,ok.png,,,café au lait\n").encode("cp1252"),
        2,
        error="manifest 'm.csv' is not UTF-8: line 2 has byte 0xe9 at position 16. "
        "Save it as UTF-8 (in Excel: 'CSV UTF-8 (Comma delimited)')",
    ),
    Case(
        "semicolon-delimiter-read-with-warning",
        "job_id;image_1;prompt\nok;ok.png;make it blue, then green\n",
        0,
        ['header: the file uses ";" as the column delimiter, not a comma; read it that way'],
        errors=0,
    ),
    Case(
        "quoted-newlines-parse-and-keep-line-numbers",
        HEADER + '\nok,ok.png,,,"line one\nline two\nline three"\nbad,ok.png,,,x\nbad,ok.png,,,y\n',
        1,
        ['row 3 (job_id "bad"), column job_id: is a duplicate: row 2 has the same job_id'],
        errors=1,
    ),
    Case(
        "missing-required-columns",
        "job_id,image_1\nok,ok.png\n",
        1,
        ["header, column prompt: required column is missing (the header has: job_id, image_1)"],
        errors=1,
    ),
    Case(
        "duplicate-header-column",
        "job_id,image_1,prompt,Prompt\nok,ok.png,a,b\n",
        1,
        ["header, column prompt: appears twice in the header (columns 3 and 4); keep one"],
    ),
    Case(
        "duplicate-job-ids",
        f"{HEADER}\n{OK_ROW}\nother,ok.png,,,x\n{OK_ROW}\n",
        1,
        ['row 3 (job_id "ok"), column job_id: is a duplicate: row 1 has the same job_id'],
        errors=1,
    ),
    Case(
        "traversal-job-id",
        f"{HEADER}\n../x,ok.png,,,p\n",
        1,
        [
            'row 1 (job_id "../x"), column job_id: must not contain / or \\ '
            "(the job_id becomes a folder name at the destination)"
        ],
    ),
    Case(
        "slash-in-job-id",
        f"{HEADER}\na/b,ok.png,,,p\n",
        1,
        [
            'row 1 (job_id "a/b"), column job_id: must not contain / or \\ '
            "(the job_id becomes a folder name at the destination)"
        ],
    ),
    Case(
        "dot-dot-in-job-id",
        f"{HEADER}\na..b,ok.png,,,p\n",
        1,
        [
            'row 1 (job_id "a..b"), column job_id: must not contain ".." '
            "(the job_id becomes a folder name at the destination)"
        ],
    ),
    Case(
        "job-id-bad-character",
        f"{HEADER}\nshirt red,ok.png,,,p\n",
        1,
        [
            'row 1 (job_id "shirt red"), column job_id: '
            'may contain only ASCII letters, digits, ".", "_" and "-"; found " "'
        ],
    ),
    Case(
        "job-id-formula",
        f"{HEADER}\n=cmd,ok.png,,,p\n",
        1,
        ['row 1 (job_id "=cmd"), column job_id: must start with an ASCII letter or digit, got "="'],
    ),
    Case(
        "job-id-missing",
        f"{HEADER}\n,ok.png,,,p\n",
        1,
        ["row 1, column job_id: is empty: every row needs a job_id (it names the output folder)"],
    ),
    Case(
        "n-zero",
        f"{PLUS}\nok,ok.png,p,0,,,,,,\n",
        1,
        ['row 1 (job_id "ok"), column n: must be an integer 1–6, got "0"'],
    ),
    Case(
        "n-seven",
        f"{PLUS}\nok,ok.png,p,7,,,,,,\n",
        1,
        ['row 1 (job_id "ok"), column n: must be an integer 1–6, got "7"'],
    ),
    Case(
        "n-word",
        f"{PLUS}\nok,ok.png,p,two,,,,,,\n",
        1,
        ['row 1 (job_id "ok"), column n: must be an integer 1–6, got "two"'],
    ),
    Case(
        "n-above-one-for-qwen-image-edit",
        f"{PLUS}\nok,ok.png,p,2,,,,,qwen-image-edit,\n",
        1,
        ['row 1 (job_id "ok"), column n: must be 1 for qwen-image-edit (it makes one image per call), got 2'],
    ),
    Case(
        "size-with-x",
        f"{PLUS}\nok,ok.png,p,1,1024x1024,,,,,\n",
        1,
        ['row 1 (job_id "ok"), column size: must be "W*H" with "*", got "1024x1024" (write "1024*1024")'],
    ),
    Case(
        "size-with-n-2",
        f"{PLUS}\nok,ok.png,p,2,1024*1024,,,,,\n",
        1,
        [
            'row 1 (job_id "ok"), column size: can only be set when n is 1 '
            "(the API rejects size with n = 2); drop one of them"
        ],
    ),
    Case(
        "size-out-of-range",
        f"{PLUS}\nok,ok.png,p,1,256*1024,,,,,\n",
        1,
        ['row 1 (job_id "ok"), column size: each side must be 512–2048 px, got 256*1024'],
    ),
    Case(
        "size-for-qwen-image-edit",
        f"{PLUS}\nok,ok.png,p,1,1024*1024,,,,qwen-image-edit,\n",
        1,
        [
            'row 1 (job_id "ok"), column size: is not supported by qwen-image-edit; remove it or use '
            "qwen-image-edit-plus"
        ],
    ),
    Case(
        "seed-negative",
        f"{PLUS}\nok,ok.png,p,1,,-1,,,,\n",
        1,
        ['row 1 (job_id "ok"), column seed: must be an integer 0–2147483647, got "-1"'],
    ),
    Case(
        "seed-too-big",
        f"{PLUS}\nok,ok.png,p,1,,2147483648,,,,\n",
        1,
        ['row 1 (job_id "ok"), column seed: must be an integer 0–2147483647, got "2147483648"'],
    ),
    Case(
        "boolean-maybe",
        f"{PLUS}\nok,ok.png,p,1,,,maybe,,,\n",
        1,
        [
            'row 1 (job_id "ok"), column prompt_extend: must be true or false (or yes/no, y/n, 1/0), got '
            '"maybe"'
        ],
    ),
    Case(
        "image-2-without-image-1",
        f"{HEADER}\nok,,ok.png,,p\n",
        1,
        [
            'row 1 (job_id "ok"), column image_1: is empty but image_2 is set; '
            "fill the image columns in order from image_1"
        ],
        errors=1,
    ),
    Case(
        "no-images",
        f"{HEADER}\nok,,,,p\n",
        1,
        ['row 1 (job_id "ok"), column image_1: is empty: every job needs 1–3 input images'],
    ),
    Case(
        "empty-prompt",
        f"{HEADER}\nok,ok.png,,,\n",
        1,
        ['row 1 (job_id "ok"), column prompt: is empty: every job needs an instruction'],
    ),
    Case(
        "image-outside-root",
        f"{HEADER}\nok,../secret.png,,,p\n",
        1,
        [],  # the message names the tmp folder; checked by prefix below
    ),
    Case(
        "unsupported-scheme",
        f"{HEADER}\nok,oss://bucket/a.png,,,p\n",
        1,
        [
            'row 1 (job_id "ok"), column image_1: "oss://bucket/a.png": oss:// references are not supported; '
            "use https://, s3://, a local path or a data: URI"
        ],
    ),
    Case(
        "data-uri-not-base64",
        f'{HEADER}\nok,"data:image/png,abc",,,p\n',
        1,
        ['row 1 (job_id "ok"), column image_1: data URI must be base64-encoded: data:image/png;base64,...'],
    ),
    Case(
        "unknown-model",
        f"{PLUS}\nok,ok.png,p,1,,,,,qwen-image-edit-pluss,\n",
        1,
        [
            'row 1 (job_id "ok"), column model: unknown model "qwen-image-edit-pluss" (did you mean '
            "qwen-image-edit-plus?)"
        ],
    ),
    Case(
        "unknown-region",
        f"{PLUS}\nok,ok.png,p,1,,,,,,virginia\n",
        1,
        ['row 1 (job_id "ok"), column region: unknown region "virginia"; known: beijing, singapore'],
    ),
    Case(
        "ragged-row",
        f"{HEADER}\nok,ok.png,,,make it red, then blue\n",
        1,
        [
            'row 1 (job_id "ok"): has 6 cells but the header has 5 columns '
            "(an unquoted comma in a prompt? put the cell in double quotes)"
        ],
        errors=1,
    ),
    Case(
        "formula-prompt-and-extra-warn-only",
        f'{HEADER},sku\nok,ok.png,,,=HYPERLINK("http://x"),@SUM(A1)\n',
        0,
        [
            'row 1 (job_id "ok"), column prompt: starts with "=", so a spreadsheet would run it as a formula '
            "(the report escapes it)",
            'row 1 (job_id "ok"), column sku: starts with "@", so a spreadsheet would run it as a formula '
            "(the report escapes it)",
        ],
        errors=0,
    ),
    Case(
        "long-prompt-warns",
        f"{HEADER}\nok,ok.png,,,{'x' * 801}\n",
        0,
        [
            'row 1 (job_id "ok"), column prompt: is 801 characters; the API reads the first 800 and silently '
            "drops the rest"
        ],
    ),
    Case(
        "directory-as-image",
        f"{HEADER}\nok,photos,,,p\n",
        1,
        ['row 1 (job_id "ok"), column image_1: "photos" is a directory, not an image file'],
        args=("--check-images",),
        files={"photos": _mkdir("photos")},
    ),
    Case(
        "missing-image-file",
        f"{HEADER}\nok,nothere.png,,,p\n",
        1,
        [],  # names the absolute path; checked by prefix below
        args=("--check-images",),
    ),
    Case(
        "truncated-png",
        f"{HEADER}\nok,cut.png,,,p\n",
        1,
        ['row 1 (job_id "ok"), column image_1: "cut.png" is a damaged PNG file: Truncated File Read'],
        args=("--check-images",),
        files={"cut.png": image_bytes(600, 600)[:300]},
    ),
    Case(
        "pixel-bomb-png",
        f"{HEADER}\nok,bomb.png,,,p\n",
        1,
        [
            'row 1 (job_id "ok"), column image_1: "bomb.png" is refused as a decompression bomb: '
            "it declares 200,000,000 pixels, over the 89,478,485-pixel safety limit"
        ],
        args=("--check-images",),
        files={"bomb.png": bomb_png(20000, 10000)},
    ),
    Case(
        "text-file-named-png",
        f"{HEADER}\nok,notes.png,,,p\n",
        1,
        [
            'row 1 (job_id "ok"), column image_1: "notes.png" is not an image: the content is not '
            "JPG, PNG, BMP, TIFF, WEBP or GIF (it starts with b'hello wo')"
        ],
        args=("--check-images",),
        files={"notes.png": b"hello world, I am text\n"},
    ),
    Case(
        "twelve-megabyte-file",
        f"{HEADER}\nok,big.png,,,p\n",
        1,
        [
            'row 1 (job_id "ok"), column image_1: "big.png" is 12.0 MiB; sent inline as a data URI it would '
            "be "
            "16.0 MiB, over the API's 10 MiB limit (local images must be at most 7.5 MiB; put larger ones "
            "on S3 or "
            "a URL)"
        ],
        args=("--check-images",),
        files={"big.png": image_bytes(64, 64) + b"\0" * (12 * 1024 * 1024)},
    ),
    Case(
        "small-image-warns",
        f"{HEADER}\nok,small.png,,,p\n",
        0,
        [
            'row 1 (job_id "ok"), column image_1: "small.png" is 200×300 px; the API expects each side '
            "between "
            "384 and 3072 px and may refuse it"
        ],
        args=("--check-images",),
        files={"small.png": image_bytes(200, 300)},
    ),
    Case(
        "symlink-outside-root",
        f"{HEADER}\nok,link.png,,,p\n",
        1,
        [],  # names the tmp folder; checked by prefix below
        args=("--check-images",),
        files={"link.png": _symlink_out},
    ),
    Case(
        "jsonl-bad-json-on-line-3",
        '{"job_id": "a", "images": ["ok.png"], "prompt": "p"}\n\n{"job_id": "b", "images": ["ok.png"] '
        '"prompt": "p"}\n',
        1,
        ["row 3: is not valid JSON: Expecting ',' delimiter (line 3, column 38)"],
        name="m.jsonl",
        errors=1,
    ),
    Case(
        "jsonl-images-not-a-list",
        '{"job_id": "a", "images": "ok.png", "prompt": "p"}\n',
        1,
        [
            'row 1 (job_id "a"), column images: must be a list of 1–3 image references, got a string (write '
            '["ok.png"])'
        ],
        name="m.jsonl",
        errors=1,
    ),
    Case(
        "jsonl-four-images",
        '{"job_id": "a", "images": ["ok.png", "ok.png", "ok.png", "ok.png"], "prompt": "p"}\n',
        1,
        ['row 1 (job_id "a"), column images: has 4 images; the API takes at most 3'],
        name="m.jsonl",
    ),
    Case(
        "jsonl-line-not-an-object",
        '["a", "b"]\n',
        2,
        error="manifest 'm.jsonl' is a JSON array; a JSONL manifest has one JSON object per line",
        name="m.jsonl",
    ),
    Case(
        "jsonl-scalar-line",
        '{"job_id": "a", "images": ["ok.png"], "prompt": "p"}\n42\n',
        1,
        ["row 2: must be a JSON object {...}, got a number"],
        name="m.jsonl",
    ),
    Case(
        "jsonl-n-as-string-or-number",
        '{"job_id": "a", "images": ["ok.png"], "prompt": "p", "n": 2}\n'
        '{"job_id": "b", "images": ["ok.png"], "prompt": "p", "n": "3"}\n'
        '{"job_id": "c", "images": ["ok.png"], "prompt": "p", "n": 2.5}\n',
        1,
        ['row 3 (job_id "c"), column n: must be an integer 1–6, got "2.5"'],
        name="m.jsonl",
        errors=1,
    ),
    Case(
        "gzip-manifest",
        gzip.compress((HEADER + "\n" + OK_ROW + "\n").encode()),
        0,
        name="m.csv.gz",
        errors=0,
    ),
    Case(
        "bad-region-option",
        HEADER + "\n" + OK_ROW + "\n",
        2,
        error="--region 'mars' is not a known region; known: beijing, singapore",
        args=("--region", "mars"),
    ),
    Case(
        "bad-budget-option",
        HEADER + "\n" + OK_ROW + "\n",
        2,
        error="--budget expected an amount like 50 or 50 USD, got 'lots'",
        args=("--budget", "lots"),
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_manifest_is_reported_exactly(case: Case, tmp_path: Path) -> None:
    folder = tmp_path / "work"
    folder.mkdir()
    (folder / "ok.png").write_bytes(image_bytes())
    for name, content in case.files.items():
        if callable(content):
            content(folder)
        else:
            (folder / name).write_bytes(content)
    manifest = folder / case.name
    data = case.manifest.encode("utf-8") if isinstance(case.manifest, str) else case.manifest
    manifest.write_bytes(data)

    cwd = os.getcwd()
    os.chdir(folder)  # the CLI reports the manifest as the user named it
    try:
        out = run_validate(case.name, "--json", *case.args)
    finally:
        os.chdir(cwd)

    assert out.exit_code == case.exit, out.stdout
    payload = out.json
    if case.error is not None:
        assert payload == {"valid": False, "error": case.error, "exit_code": 2}
        return
    messages = [p["message"] for p in payload["problems"]]
    for expected in case.expect:
        assert expected in messages
    if case.errors is not None:
        assert payload["errors"] == case.errors, messages
    assert payload["exit_code"] == case.exit
    assert payload["valid"] is (payload["errors"] == 0)


def test_image_outside_the_root_names_the_root(tmp_path: Path) -> None:
    (tmp_path / "m.csv").write_text(f"{HEADER}\nok,../secret.png,,,p\n")
    out = run_validate(tmp_path / "m.csv", "--json")
    assert out.exit_code == 1
    assert out.messages() == [
        f'row 1 (job_id "ok"), column image_1: "../secret.png" is outside the input root {tmp_path}; '
        "move it under the root or pass --input-root to widen it"
    ]


def test_symlink_leaving_the_root_is_refused_after_realpath(tmp_path: Path) -> None:
    outside = tmp_path / "outside.png"
    outside.write_bytes(image_bytes())
    folder = tmp_path / "work"
    folder.mkdir()
    (folder / "link.png").symlink_to(outside)
    (folder / "m.csv").write_text(f"{HEADER}\nok,link.png,,,p\n")
    out = run_validate(folder / "m.csv", "--json", "--check-images")
    assert out.exit_code == 1
    assert out.messages() == [
        f'row 1 (job_id "ok"), column image_1: "link.png" is outside the input root {folder}; '
        "move it under the root or pass --input-root to widen it (after following symlinks)"
    ]
    # Widening the root to include the target makes the same row valid.
    assert run_validate(folder / "m.csv", "--check-images", "--input-root", tmp_path).exit_code == 0


def test_missing_image_names_where_it_was_looked_for(tmp_path: Path) -> None:
    (tmp_path / "m.csv").write_text(f"{HEADER}\nok,nothere.png,,,p\n")
    out = run_validate(tmp_path / "m.csv", "--json", "--check-images")
    assert out.exit_code == 1
    assert out.messages() == [
        'row 1 (job_id "ok"), column image_1: "nothere.png" does not exist (looked for '
        f"{tmp_path / 'nothere.png'})"
    ]


def test_missing_manifest_and_directory_manifest_exit_2(tmp_path: Path) -> None:
    out = run_validate(tmp_path / "nope.csv", "--json")
    assert out.exit_code == 2
    assert out.json["error"] == f"manifest {str(tmp_path / 'nope.csv')!r} does not exist"
    out = run_validate(tmp_path, "--json")
    assert (out.exit_code, out.json["error"]) == (2, f"manifest {str(tmp_path)!r} is a directory, not a file")


def test_broken_price_file_exits_2(tmp_path: Path) -> None:
    (tmp_path / "m.csv").write_text(f"{HEADER}\n{OK_ROW}\n")
    (tmp_path / "ok.png").write_bytes(image_bytes())
    prices = tmp_path / "prices.csv"
    prices.write_text("region,model,unit_price,currency\nsingapore,qwen-image-edit-plus,cheap,USD\n")
    out = run_validate(tmp_path / "m.csv", "--json", "--prices", prices)
    assert out.exit_code == 2
    assert out.json["error"] == (
        f"price file {str(prices)!r}, line 2: unit_price must be a decimal number, got 'cheap'"
    )


def test_usage_errors_exit_2_without_traceback(tmp_path: Path) -> None:
    out = run_validate()  # no manifest argument
    assert out.exit_code == 2
    assert "Missing argument" in out.stderr
    assert "Traceback" not in out.stdout + out.stderr
