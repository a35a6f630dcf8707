"""``qwenedit run``'s and ``validate``'s flags and ``RunOptions`` agree: one flag per field with the
field's help and default, what each flag turns into, and the messages for bad values (exit 2, naming the
flag). The run itself is replaced by a stub that records the options."""

from __future__ import annotations

from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from qwenedit.cli import app
from qwenedit.cli.options import flag_name, option_flags
from qwenedit.cli.validate import SHARED_WITH_RUN
from qwenedit.options import RunOptions


def command(name: str) -> Any:
    return typer.main.get_command(app).commands[name]  # type: ignore[attr-defined]


def field_params(name: str) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {}
    for param in command(name).params:
        if param.name in RunOptions.model_fields:
            out.setdefault(param.name, []).append(param)
    return out


def expected_default(field: str) -> Any:
    info = RunOptions.model_fields[field]
    return None if info.is_required() or info.default == () else info.default


def help_of(param: Any) -> str:
    return str(getattr(param, "help", None) or "")


@pytest.mark.parametrize(
    ("name", "fields"), [("run", tuple(RunOptions.model_fields)), ("validate", SHARED_WITH_RUN)]
)
def test_every_option_field_has_exactly_one_flag_with_its_help_and_default(
    name: str, fields: tuple[str, ...]
) -> None:
    params = field_params(name)
    assert set(params) == set(fields)
    for field in fields:
        [param] = params[field]
        info = RunOptions.model_fields[field]
        assert param.default == expected_default(field), field
        assert param.required == info.is_required(), field
        assert help_of(param).startswith(str(info.description)), field
        if param.param_type_name == "option":
            assert flag_name(field) in param.opts, field
        assert param.multiple == (expected_default(field) is None and info.default == ()), field


def test_run_and_validate_declare_their_shared_flags_identically() -> None:
    run, validate = field_params("run"), field_params("validate")
    for field in SHARED_WITH_RUN:
        [a], [b] = run[field], validate[field]
        assert (a.opts, a.default, help_of(a), a.multiple) == (b.opts, b.default, help_of(b), b.multiple)


def test_max_attempts_counts_tries_of_one_api_call_everywhere() -> None:
    [param] = field_params("run")["max_attempts"]
    assert "per API call" in help_of(param)
    assert "per API call" in str(RunOptions.model_fields["max_attempts"].description)


def test_a_command_declaring_an_option_field_itself_is_refused() -> None:
    def clash(fields: dict[str, Any], region: str = "x") -> None: ...

    with pytest.raises(TypeError, match="region"):
        option_flags("region")(clash)
    with pytest.raises(ValueError, match="not RunOptions fields"):
        option_flags("nope")


@pytest.fixture
def captured(monkeypatch: pytest.MonkeyPatch) -> list[RunOptions]:
    seen: list[RunOptions] = []

    async def no_run(options: RunOptions, progress: bool, yes: bool = False) -> dict[str, Any]:
        seen.append(options)
        raise typer.Exit(0)

    monkeypatch.setattr("qwenedit.cli.run._run", no_run)
    return seen


def invoke(*args: str) -> Any:
    return CliRunner().invoke(app, ["run", "m.csv", "--dest", "out", *args])


def test_rps_takes_a_rate_per_minute_and_per_model_rates(captured: list[RunOptions]) -> None:
    result = invoke("--rps", "2/min", "--rps", "plus=1.5/s")
    assert result.exit_code == 0, result.output
    assert captured[0].rates == ("2/min", "plus=1.5/s")


def test_without_rps_each_model_keeps_its_own_limit(captured: list[RunOptions]) -> None:
    assert invoke().exit_code == 0
    assert captured[0].rates == ()


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("2/fortnight", "'2/fortnight': expected a rate like 2/s"),
        ("0", "'0': a rate limit needs a positive count"),
        ("=2", "the model is empty"),
    ],
)
def test_a_bad_rps_exits_2_naming_the_flag_and_the_value(
    captured: list[RunOptions], value: str, message: str
) -> None:
    result = invoke("--rps", value)
    assert result.exit_code == 2
    assert "--rps" in result.output and message in " ".join(result.output.split())
    assert captured == []


def test_flags_with_their_own_names_set_their_fields(captured: list[RunOptions]) -> None:
    result = invoke(
        "--timeout", "5", "--stop-grace", "2", "--allow-output-host", "a.example", "--allow-output-host",
        "b.example", "--no-qa", "--group-by", "sku", "--max-attempts", "3", "--run-id", "R1",
        "--api-key-env", "KEY_B", "--rate-share", "0.5",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    o = captured[0]
    assert (o.timeout_s, o.stop_grace_s, o.allowed_output_hosts, o.qa, o.group_by) == (
        5.0, 2.0, ("a.example", "b.example"), False, ("sku",),
    )  # fmt: skip
    assert (o.max_attempts, o.run_id, o.api_key_env, o.rate_share) == (3, "R1", "KEY_B", 0.5)


def test_without_flags_the_options_are_the_fields_defaults_and_a_new_run_id(
    captured: list[RunOptions],
) -> None:
    assert invoke().exit_code == 0
    made = captured[0]
    assert made.run_id
    assert made == RunOptions(manifest="m.csv", dest="out", run_id=made.run_id)


def test_a_bad_value_of_any_flag_exits_2_naming_that_flag(captured: list[RunOptions]) -> None:
    result = invoke("--max-attempts", "0", "--timeout", "-1")
    assert result.exit_code == 2
    text = " ".join(result.output.split())
    assert "--max-attempts: Input should be greater than or equal to 1" in text
    assert "--timeout: Input should be greater than 0" in text
    assert captured == []


@pytest.mark.parametrize("run_id", ["../elsewhere", "a/b", ".hidden", " ", "x" * 101])
def test_a_run_id_that_is_not_one_plain_name_is_refused(captured: list[RunOptions], run_id: str) -> None:
    result = invoke("--run-id", run_id)
    assert result.exit_code == 2
    assert "--run-id: String should match pattern" in " ".join(result.output.split())
    assert captured == []
