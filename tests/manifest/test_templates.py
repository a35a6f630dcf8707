"""Prompt templates: named fields only, filled from each row's columns, a row's own prompt wins,
every row with a missing or empty field named, and nothing ever evaluated."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from qwenedit.errors import TemplateError
from qwenedit.manifest import iter_jobs, validate_manifest
from qwenedit.templates import PromptTemplate, parse_template
from tests.manifest.conftest import image_bytes, run_validate

TEMPLATE = "Put the {product} on a {background} background"


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    (tmp_path / "a.png").write_bytes(image_bytes(64, 64))
    return tmp_path


def _csv(folder: Path, text: str, name: str = "m.csv") -> Path:
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("template", "fields"),
    [
        ("Put the {product} on white", ("product",)),
        ("{product} and {product} again, {colour}", ("product", "colour")),
        ("Use {product name} as is", ("product name",)),
        ("Remove the background", ()),
        ("Literal {{braces}} and {sku}", ("sku",)),
    ],
)
def test_named_fields_are_found_once_each(template: str, fields: tuple[str, ...]) -> None:
    assert PromptTemplate.parse(template).fields == fields


@pytest.mark.parametrize(
    ("template", "says"),
    [
        ("Put the {} here", "unnamed field {}"),
        ("Put the {0} here", "positional"),
        ("Put the {product.__class__} here", "attribute or index"),
        ("Put the {product[0]} here", "attribute or index"),
        ("Put the {product!r} here", "conversion or format spec"),
        ("Put the {product:>99999999} here", "conversion or format spec"),
        ("Put the {product here", "malformed"),
        ("Put the product} here", "malformed"),
        ("   ", "empty"),
    ],
)
def test_bad_field_syntax_is_a_template_error(template: str, says: str) -> None:
    with pytest.raises(TemplateError, match="prompt template") as caught:
        PromptTemplate.parse(template)
    assert says in str(caught.value)
    assert isinstance(caught.value, ValueError)  # so a pydantic validator turns it into an options error


@pytest.mark.parametrize(
    ("columns", "prompt", "problems"),
    [
        ({"product": "red shirt", "background": "white"}, "Put the red shirt on a white background", []),
        ({"product": "  red shirt ", "background": "white"}, "Put the red shirt on a white background", []),
        ({"product": "{background}", "background": "x"}, "Put the {background} on a x background", []),
        ({"product": "", "background": "white"}, "", ["product"]),
        ({"background": "white"}, "", ["product"]),
        ({}, "", ["product", "background"]),
    ],
    ids=["filled", "stripped", "values are never re-parsed", "empty", "missing", "both missing"],
)
def test_fill_uses_the_columns_or_names_each_missing_field(
    columns: dict[str, str], prompt: str, problems: list[str]
) -> None:
    filled, found = PromptTemplate.parse(TEMPLATE).fill(columns)

    assert filled == prompt
    assert [column for column, _ in found] == problems


def test_literal_braces_come_out_single() -> None:
    assert PromptTemplate.parse("{{x}} {sku}").fill({"sku": "A1"}) == ("{x} A1", [])


def test_parse_template_passes_none_and_parsed_templates_through() -> None:
    parsed = PromptTemplate.parse(TEMPLATE)
    assert parse_template(None) is None
    assert parse_template(parsed) is parsed
    assert parse_template(TEMPLATE) == parsed


def test_rows_get_the_template_and_a_row_prompt_wins(folder: Path) -> None:
    manifest = _csv(
        folder,
        "job_id,image_1,prompt,product,background\n"
        "a,a.png,,red shirt,white\n"
        "b,a.png,Make it blue,blue mug,grey\n",
    )

    jobs = list(iter_jobs(manifest, prompt_template=TEMPLATE))

    assert [j.prompt for j in jobs] == ["Put the red shirt on a white background", "Make it blue"]
    assert jobs[0].extra == {"product": "red shirt", "background": "white"}


def test_with_a_template_the_prompt_column_is_optional(folder: Path) -> None:
    manifest = _csv(folder, "job_id,image_1,product,background\na,a.png,red shirt,white\n")

    without = validate_manifest(manifest)
    with_template = validate_manifest(manifest, prompt_template=TEMPLATE)

    assert not without.ok
    assert any(p.column == "prompt" and "required column is missing" in p.reason for p in without.problems)
    assert with_template.ok, [p.message() for p in with_template.problems]
    assert with_template.valid_rows == 1


def test_every_row_with_a_missing_or_empty_field_is_named(folder: Path) -> None:
    manifest = _csv(
        folder,
        "job_id,image_1,prompt,product,background\n"
        "ok,a.png,,red shirt,white\n"
        "no-product,a.png,,,white\n"
        "own-prompt,a.png,Keep as is,,\n"
        "neither,a.png,, ,\n",
    )

    result = validate_manifest(manifest, prompt_template=TEMPLATE)

    assert not result.ok
    assert result.valid_rows == 2
    assert [(p.row, p.job_id, p.column) for p in result.problems if p.severity == "error"] == [
        (2, "no-product", "product"),
        (4, "neither", "product"),
        (4, "neither", "background"),
    ]
    assert all("is empty; the prompt template" in p.reason for p in result.problems)
    assert not any(p.column == "prompt" for p in result.problems)  # no second, vaguer error


def test_a_field_that_is_no_column_of_the_row_is_named(folder: Path) -> None:
    manifest = _csv(folder, "job_id,image_1,prompt,product\na,a.png,,mug\n")

    result = validate_manifest(manifest, prompt_template=TEMPLATE)

    assert [p.message() for p in result.problems] == [
        'row 1 (job_id "a"), column background: is not a column of this row; the prompt template '
        '"Put the {product} on a {background} background" needs it'
    ]


def test_a_filled_prompt_over_800_characters_is_a_warning(folder: Path) -> None:
    manifest = _csv(folder, f"job_id,image_1,product,background\na,a.png,{'x' * 790},white\n")

    result = validate_manifest(manifest, prompt_template=TEMPLATE)

    assert result.ok
    [warning] = result.problems
    assert warning.severity == "warning" and warning.column == "prompt"
    assert "is 820 characters; the API reads the first 800" in warning.reason
    assert "filled from the template" in warning.reason


def test_jsonl_rows_fill_from_their_keys(folder: Path) -> None:
    path = folder / "m.jsonl"
    path.write_text(
        json.dumps({"job_id": "a", "images": ["a.png"], "product": "lamp", "background": "black"})
        + "\n"
        + json.dumps({"job_id": "b", "images": ["a.png"], "product": "lamp"})
        + "\n"
    )

    result = validate_manifest(path, prompt_template=TEMPLATE)
    jobs = list(iter_jobs(path, prompt_template=TEMPLATE, on_invalid="skip"))

    assert [(p.job_id, p.column) for p in result.problems] == [("b", "background")]
    assert [j.prompt for j in jobs] == ["Put the lamp on a black background"]


def test_nothing_in_a_cell_or_the_template_is_evaluated(folder: Path) -> None:
    manifest = _csv(
        folder,
        "job_id,image_1,product,background\na,a.png,{background.__class__},{0}\n",
    )

    [job] = iter_jobs(manifest, prompt_template=TEMPLATE)

    assert job.prompt == "Put the {background.__class__} on a {0} background"


def test_failed_rows_rerun_without_the_template(folder: Path) -> None:
    manifest = _csv(folder, "job_id,image_1,product,background\na,a.png,mug,white\n")

    [job] = iter_jobs(manifest, prompt_template=TEMPLATE)

    assert job.to_manifest_row()["prompt"] == "Put the mug on a white background"


def test_validate_cli_fills_from_the_template(folder: Path) -> None:
    manifest = _csv(folder, "job_id,image_1,product,background\na,a.png,mug,white\nb,a.png,,white\n")

    invalid = run_validate(manifest, "--prompt-template", TEMPLATE, "--json")
    fixed = _csv(folder, "job_id,image_1,product,background\na,a.png,mug,white\n", "ok.csv")
    valid = run_validate(fixed, "--prompt-template", TEMPLATE)

    assert invalid.exit_code == 1
    assert [(p["row"], p["column"]) for p in invalid.json["problems"]] == [(2, "product")]
    assert valid.exit_code == 0, valid.stdout


def test_validate_cli_refuses_a_malformed_template_with_exit_2(folder: Path) -> None:
    manifest = _csv(folder, "job_id,image_1,product\na,a.png,mug\n")

    out = run_validate(manifest, "--prompt-template", "Put the {product.__init__} here")

    assert out.exit_code == 2
    assert "--prompt-template" in out.stderr and "attribute or index access" in out.stderr
