"""`qwenedit validate`: the human tables, --json, the budget, exit codes, and no tracebacks ever."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.manifest.conftest import HEADER, image_bytes, run_validate

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "jobs.example.csv"


def test_example_manifest_prints_the_quote_and_a_verdict() -> None:
    out = run_validate(EXAMPLE, "--check-images")
    assert out.exit_code == 0, out.stdout
    assert "qwen-image-edit-plus-2025-12-15" in out.stdout
    assert "$0.045" in out.stdout and "$0.375" in out.stdout
    assert out.stdout.rstrip().endswith("✓ Valid: 8 jobs, 12 images, at most $0.375.")
    assert "Problems" not in out.stdout


def test_problems_table_names_row_line_job_and_column(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(image_bytes())
    (tmp_path / "m.csv").write_text(f"{HEADER},n\nshirt-red,a.png,,,p,two\nok,a.png,,,=1+1,1\n")
    out = run_validate(tmp_path / "m.csv")
    assert out.exit_code == 1
    assert "Problems: 1 error, 1 warning" in out.stdout
    row = next(line for line in out.stdout.splitlines() if "shirt-red" in line)
    assert [cell.strip() for cell in row.strip("│ ").split("│")] == [
        "1",
        "2",
        "shirt-red",
        "n",
        "error",
        'must be an integer 1–6, got "two"',
    ]
    assert "row N is the Nth record after the header" in out.stdout
    assert "✗ Invalid: 1 error, 1 warning in 2 rows. Fix the errors and validate again." in out.stdout


def test_json_output_is_one_object_with_messages_and_the_quote(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(image_bytes())
    (tmp_path / "m.csv").write_text(f"{HEADER},n\na,a.png,,,p,3\nb,a.png,,,p,x\n")
    out = run_validate(tmp_path / "m.csv", "--json")
    assert out.exit_code == 1
    payload = out.json
    assert payload["valid"] is False and payload["exit_code"] == 1
    assert (payload["rows"], payload["valid_rows"], payload["errors"], payload["warnings"]) == (2, 1, 1, 0)
    assert payload["problems"] == [
        {
            "row": 2,
            "line": 3,
            "job_id": "b",
            "column": "n",
            "severity": "error",
            "reason": 'must be an integer 1–6, got "x"',
            "message": 'row 2 (job_id "b"), column n: must be an integer 1–6, got "x"',
        }
    ]
    assert payload["quote"] == {
        "jobs": 1,
        "images": 3,
        "lines": [
            {
                "region": "singapore",
                "model": "qwen-image-edit-plus",
                "jobs": 1,
                "images": 3,
                "unit_price": "0.03",
                "currency": "USD",
                "cost": "0.09",
            }
        ],
        "totals": {"USD": "0.09"},
    }
    assert payload["budget"] is None


@pytest.mark.parametrize(
    ("budget", "code", "fits", "message"),
    [
        ("0.375", 0, True, "budget $0.375: fits (worst case $0.375)"),
        ("$1", 0, True, "budget $1.00: fits (worst case $0.375)"),
        ("0.30", 1, False, "budget $0.30: OVER by $0.075 (worst case $0.375)"),
    ],
)
def test_budget_decides_the_exit_code(budget: str, code: int, fits: bool, message: str) -> None:
    out = run_validate(EXAMPLE, "--json", "--budget", budget)
    assert (out.exit_code, out.json["budget"]["fits"], out.json["budget"]["message"]) == (code, fits, message)
    human = run_validate(EXAMPLE, "--budget", budget)
    assert human.exit_code == code
    assert message[0].upper() + message[1:] in human.stdout
    if not fits:
        assert human.stdout.rstrip().endswith("✗ Over budget.")


def test_budget_in_another_currency_than_the_quote_is_refused(tmp_path: Path) -> None:
    out = run_validate(EXAMPLE, "--json", "--budget", "3 CNY")
    assert out.exit_code == 2
    assert out.json["error"] == (
        "cannot check a CNY budget: the quote has costs in USD, which cannot be added to CNY; "
        "use a budget in that currency"
    )


def test_price_file_in_cny_quotes_and_budgets_in_cny(tmp_path: Path) -> None:
    prices = tmp_path / "prices.csv"
    prices.write_text(
        "region,model,unit_price,currency\nbeijing,qwen-image-edit-plus,0.2,CNY\n"
        "beijing,qwen-image-edit-plus-2025-12-15,0.2,CNY\nbeijing,qwen-image-edit,0.3,CNY\n"
    )
    out = run_validate(EXAMPLE, "--json", "--region", "beijing", "--prices", prices, "--budget", "2.5 CNY")
    assert out.exit_code == 0
    assert out.json["quote"]["totals"] == {"CNY": "2.5"}
    human = run_validate(EXAMPLE, "--region", "Beijing", "--prices", prices)
    assert "at most 2.50 CNY." in human.stdout


def test_unknown_model_option_exits_2_with_the_known_ones() -> None:
    out = run_validate(EXAMPLE, "--model", "qwen-image-edit-ultra")
    assert out.exit_code == 2
    expected = (
        "qwenedit validate: --model 'qwen-image-edit-ultra' is not a known model; known: qwen-image-2.0,"
    )
    assert expected in out.stderr
    assert out.stdout == ""


def test_input_root_must_be_a_folder(tmp_path: Path) -> None:
    out = run_validate(EXAMPLE, "--json", "--input-root", tmp_path / "nope")
    assert (out.exit_code, out.json["error"]) == (
        2,
        f"--input-root {str(tmp_path / 'nope')!r} is not a folder",
    )


def test_max_problems_limits_the_listing_but_not_the_count(tmp_path: Path) -> None:
    (tmp_path / "m.csv").write_text(HEADER + "\n" + "".join(f"r{i},,,,p\n" for i in range(30)))
    out = run_validate(tmp_path / "m.csv", "--max-problems", "5")
    assert out.exit_code == 1
    assert "Problems: 30 errors, 0 warnings" in out.stdout
    assert "… and 25 more not listed (raise --max-problems to see them)" in out.stdout
    assert len(run_validate(tmp_path / "m.csv", "--json", "--max-problems", "5").json["problems"]) == 5


def test_s3_manifest_validates_through_the_cli(s3_env: Any) -> None:
    s3_env.client.put_object(
        Bucket=s3_env.bucket, Key="m.csv", Body=f"{HEADER}\na,https://x.test/a.png,,,p\n".encode()
    )
    out = run_validate(f"s3://{s3_env.bucket}/m.csv", "--json")
    assert (out.exit_code, out.json["valid"], out.json["manifest"]) == (
        0,
        True,
        f"s3://{s3_env.bucket}/m.csv",
    )


def test_an_unexpected_failure_is_a_sentence_not_a_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    import qwenedit.cli.validate as cli

    def boom(*args: object, **kwargs: object) -> None:
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(cli, "validate_manifest", boom)
    out = run_validate(EXAMPLE)
    assert out.exit_code == 2
    assert out.stderr.strip() == (
        "qwenedit validate: unexpected error (RuntimeError: disk on fire); please report it"
    )


@pytest.mark.slow
def test_installed_command_exit_codes_and_no_traceback(tmp_path: Path) -> None:
    """The real entry point in a subprocess: 0 valid, 1 invalid, 2 unreadable; never a traceback."""
    (tmp_path / "a.png").write_bytes(image_bytes())
    (tmp_path / "good.csv").write_text(f"{HEADER}\na,a.png,,,p\n")
    (tmp_path / "bad.csv").write_text(f"{HEADER}\na,a.png,,,\n")
    (tmp_path / "latin1.csv").write_bytes(f"{HEADER}\na,a.png,,,café\n".encode("latin-1"))
    env = {**os.environ, "COLUMNS": "200"}
    codes = {}
    for name in ("good.csv", "bad.csv", "latin1.csv", "missing.csv"):
        proc = subprocess.run(
            [sys.executable, "-m", "qwenedit", "validate", name],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )
        assert "Traceback" not in proc.stdout + proc.stderr
        codes[name] = proc.returncode
    assert codes == {"good.csv": 0, "bad.csv": 1, "latin1.csv": 2, "missing.csv": 2}
    proc = subprocess.run(
        [sys.executable, "-m", "qwenedit", "validate", "latin1.csv", "--json"],
        cwd=tmp_path, capture_output=True, text=True, env=env, timeout=60,
    )  # fmt: skip
    assert json.loads(proc.stdout)["error"].startswith(
        "manifest 'latin1.csv' is not UTF-8: line 2 has byte 0xe9"
    )
