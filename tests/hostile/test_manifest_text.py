"""Nothing a manifest carries reaches a spreadsheet or a terminal as code (issue 19, rows 4 and 5).

- results.csv: a column *name* like ``=HYPERLINK(...)`` is escaped like a cell value.
- The terminal: ESC/OSC sequences, bidi overrides and rich markup in manifest values are shown as
  inert text in the ``--group-by`` table, in validate's problem table and in its JSON.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from rich.console import Console
from typer.testing import CliRunner

from qwenedit.cli import app
from qwenedit.cli.run import print_summary
from qwenedit.cli.validate import print_problems
from qwenedit.manifest import Problem
from qwenedit.report import JobResult, csv_header, csv_row, results_frame
from qwenedit.summary import RunSummary

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
TITLE = "\x1b]0;pwned\x07"  # OSC: sets the terminal's window title
RED = "\x1b[31m"
CLEAR = "\x1b[2J"
C1_CSI = "\x9b2J"  # the 8-bit form of ESC [
LINK = "[link=https://evil.example]click me[/link]"  # rich markup: an OSC 8 hyperlink if parsed


def test_results_csv_header_names_from_the_manifest_are_escaped_like_cells() -> None:
    names = ['=HYPERLINK("https://evil.example","x")', "+1+1", "@SUM(A1)", "-2", "sku"]
    header = csv_header(names)
    row = csv_row({"job_id": "j1", "status": "succeeded", "extra": dict.fromkeys(names, "=1")}, names)

    text = io.StringIO()
    csv.writer(text).writerows([header, row])
    parsed = list(csv.reader(io.StringIO(text.getvalue())))
    assert all(not cell.startswith(FORMULA_STARTS) for line in parsed for cell in line)
    assert '\'=HYPERLINK("https://evil.example","x")' in parsed[0]
    assert "sku" in parsed[0]

    frame = results_frame(
        [
            JobResult(
                row=1,
                job_id="j1",
                status="succeeded",
                model="m",
                region="r",
                images_requested=1,
                extra=dict.fromkeys(names, "v"),
            )
        ]
    )
    assert all(not str(c).startswith(FORMULA_STARTS) for c in frame.columns)


def _summary(rollups: list[dict[str, object]]) -> dict[str, object]:
    return {
        "run_id": "r1",
        "by_status": {"succeeded": 2},
        "cost_by_region_model": [],
        "total_cost": {},
        "images_stored": 2,
        "images_requested": 2,
        "wall_time_s": 1.0,
        "requests_sent": 2,
        "request_rate": 1.0,
        "throttled_429": 0,
        "report_dir": "runs/r1",
        "rollups": rollups,
    }


def test_the_group_by_table_shows_escape_sequences_inert() -> None:
    column = f"sku{RED}"
    rollup = {
        "group_by": [column],
        "max_groups": 10_000,
        "groups": [
            {
                "key": {column: f"{TITLE}boots"},
                "jobs": 1,
                "succeeded": 1,
                "failed": 0,
                "images": 1,
                "cost": {},
            },
            {
                "key": {column: f"{CLEAR}\u202eshoes{C1_CSI}"},
                "jobs": 1,
                "succeeded": 1,
                "failed": 0,
                "images": 1,
                "cost": {},
            },
        ],
    }
    buf = io.StringIO()
    print_summary(
        RunSummary.from_json(_summary([rollup])), Console(file=buf, force_terminal=False, width=200)
    )
    shown = buf.getvalue()

    assert "\x1b" not in shown and "\x07" not in shown and "\x9b" not in shown and "\u202e" not in shown
    assert "\\x1b]0;pwned\\x07boots" in shown  # visible, so the operator sees what the manifest holds


def test_the_problem_table_neither_obeys_control_characters_nor_parses_markup() -> None:
    problems = [
        Problem(
            row=1,
            line=2,
            job_id=f"{TITLE}{CLEAR}",
            column=f"img{RED}",
            severity="error",
            reason=f"bad {LINK}",
        ),
    ]
    buf = io.StringIO()
    # A real terminal: rich emits its own style codes, but none of the manifest's.
    print_problems(problems, Console(file=buf, force_terminal=True, width=300, color_system="standard"))
    shown = buf.getvalue()

    assert TITLE not in shown and CLEAR not in shown and "\x1b]" not in shown  # no OSC (title, link)
    assert "[link=https://evil.example]" in shown  # the markup is shown as text


def test_validate_prints_no_raw_escape_sequence_from_the_manifest(tmp_path: Path) -> None:
    manifest = tmp_path / "m.csv"
    with manifest.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["job_id", "prompt", "image_1", "n"])
        writer.writerow([f"a{TITLE}", "p", "https://example.com/a.png", f"7{CLEAR}"])
        writer.writerow([f"b{C1_CSI}", "p", f"https://example.com/{RED}b.png", "x\u202e"])
    runner = CliRunner()

    human = runner.invoke(app, ["validate", str(manifest)])
    as_json = runner.invoke(app, ["validate", "--json", str(manifest)])

    assert human.exit_code == 1, human.output
    for out in (human.output, as_json.output):
        assert "\x1b" not in out and "\x07" not in out and "\x9b" not in out and "\u202e" not in out
    assert json.loads(as_json.output)["valid"] is False
