"""Manifest limits (issue 19, rows 6 and 7): a deep or oversized JSONL line is one located row error
and the other rows are still checked; the file, what it decompresses to and its rows are bounded
(defaults fit a million-row catalogue; options raise them); a manifest download stops at its byte
limit and follows no redirect.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable
from pathlib import Path

from typer.testing import CliRunner

from qwenedit.cli import app
from qwenedit.manifest import DEFAULT_LIMITS
from tests.hostile.conftest import HttpServer, Reply
from tests.manifest.conftest import image_bytes


def _validate(*args: str) -> tuple[int, dict[str, object]]:
    out = CliRunner().invoke(app, ["validate", "--json", *args])
    assert "Traceback" not in out.output
    return out.exit_code, json.loads(out.output)


def _row(job_id: str, **extra: object) -> str:
    return json.dumps({"job_id": job_id, "images": ["a.png"], "prompt": "p", **extra})


def test_a_deeply_nested_line_is_a_located_row_error_and_the_rest_is_checked(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(image_bytes())
    deep = (
        '{"job_id": "deep", "images": ["a.png"], "prompt": "p", "x": ' + "[" * 200_000 + "]" * 200_000 + "}"
    )
    lines = [_row("first"), deep, _row("bad-n", n=99), _row("last")]
    (tmp_path / "m.jsonl").write_text("\n".join(lines) + "\n")

    code, result = _validate(str(tmp_path / "m.jsonl"))

    assert code == 1
    problems = {(p["line"], p["column"]): p["reason"] for p in result["problems"]}  # type: ignore[attr-defined]
    assert "nested too deeply" in problems[(2, None)]
    assert (3, "n") in problems  # the row after it was still checked
    assert result["rows"] == 4 and result["valid_rows"] == 2


def test_an_oversized_jsonl_line_is_a_row_error_not_the_end_of_the_file(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(image_bytes())
    manifest = tmp_path / "m.jsonl.gz"
    with gzip.open(manifest, "wt") as fh:  # 49 MiB of one line, ~50 KB on disk
        fh.write(_row("first") + "\n")
        fh.write('{"job_id": "huge", "prompt": "' + "a" * (49 << 20) + '"}\n')
        fh.write(_row("bad-n", n=99) + "\n")

    code, result = _validate(str(manifest))

    assert code == 1
    problems = {p["line"]: p["reason"] for p in result["problems"]}  # type: ignore[attr-defined]
    assert "over the 48 MiB a row can need" in problems[2]
    assert "must be an integer" in problems[3]  # the line after it was read and checked


def test_rows_over_the_limit_refuse_the_manifest_with_the_option_to_raise_it(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(image_bytes())
    (tmp_path / "m.jsonl").write_text("".join(_row(f"r{i}") + "\n" for i in range(11)))

    code, result = _validate("--max-manifest-rows", "10", str(tmp_path / "m.jsonl"))
    assert (
        code == 2
        and "more than 10 rows" in str(result["error"])
        and "--max-manifest-rows" in str(result["error"])
    )
    assert _validate("--max-manifest-rows", "11", str(tmp_path / "m.jsonl"))[0] == 0
    assert DEFAULT_LIMITS.max_rows >= 1_000_000  # a million-row catalogue fits by default


def test_a_small_gzip_that_inflates_past_the_limit_is_refused(tmp_path: Path) -> None:
    manifest = tmp_path / "m.csv"  # gzip is recognised by content, whatever the suffix
    with gzip.open(manifest, "wt") as fh:
        fh.write("job_id,image_1,prompt\n")
        fh.write(("a,b.png," + "x" * 1000 + "\n") * 3000)  # ~3 MiB from ~20 KB
    assert manifest.stat().st_size < 100_000

    code, result = _validate("--max-manifest-decompressed-mib", "1", str(manifest))

    assert code == 2 and "decompresses to more than 1 MiB" in str(result["error"])


def test_a_manifest_file_over_the_byte_limit_is_refused(tmp_path: Path) -> None:
    manifest = tmp_path / "m.csv"
    manifest.write_text("job_id,image_1,prompt\n" + ("a,b.png,p\n" * 120_000))  # ~1.2 MB
    code, result = _validate("--max-manifest-mib", "1", str(manifest))
    assert code == 2 and "larger than 1 MiB" in str(result["error"])


def test_a_manifest_download_stops_at_the_limit_and_follows_no_redirect(
    http_server: Callable[..., HttpServer],
) -> None:
    def endless() -> object:
        yield b"job_id,image_1,prompt\n"
        for _ in range(64):  # 64 MiB on offer
            yield b"a,b.png," + b"p" * (1 << 20) + b"\n"

    big = http_server(lambda hit: Reply(200, {"content-type": "text/csv"}, endless))  # type: ignore[arg-type]
    code, result = _validate("--max-manifest-mib", "2", f"{big.base_url}/m.csv")
    assert code == 2 and "larger than 2 MiB" in str(result["error"])
    assert big.bytes_sent < 16 << 20  # the client hung up near the limit

    target = http_server(lambda hit: Reply(200, {"content-type": "text/csv"}, b"job_id,image_1,prompt\n"))
    hop = http_server(lambda hit: Reply(302, {"location": f"{target.base_url}/m.csv"}))
    code, result = _validate(f"{hop.base_url}/m.csv")
    assert code == 2 and "redirects are not followed" in str(result["error"])
    assert target.hits == []
