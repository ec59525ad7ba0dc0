"""`headwater cesql`: a filter author's quick check."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from headwater import cesql
from headwater.cli import main


def test_prints_value_errors_and_match(tmp_path: Path) -> None:
    event = tmp_path / "e.json"
    event.write_text('{"specversion":"1.0","id":"1","source":"/s","type":"x","temperature":31}')
    result = CliRunner().invoke(
        main, ["cesql", "type = 'x' AND temperature > 30", "--event", str(event)]
    )
    assert result.exit_code == 0
    assert result.stdout == "true\n"
    assert "matches: yes" in result.stderr


def test_errors_go_to_stderr() -> None:
    result = CliRunner().invoke(main, ["cesql", "missing + 1"])
    assert result.exit_code == 0
    assert result.stdout == "0\n"
    assert "MissingAttributeError: the event has no attribute 'missing'" in result.stderr


def test_parse_error_exits_1_with_the_caret() -> None:
    result = CliRunner().invoke(main, ["cesql", "type = = 1"])
    assert result.exit_code == 1
    assert result.stderr.startswith("error: invalid CESQL: line 1, column 8")
    assert "         ^" in result.stderr


def test_unreadable_event_exits_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    result = CliRunner().invoke(main, ["cesql", "true", "--event", str(bad)])
    assert result.exit_code == 2
    assert "cannot read the event: specversion: is required" in result.stderr


def test_a_string_value_prints_as_a_cesql_literal() -> None:
    result = CliRunner().invoke(main, ["cesql", "CONCAT('it', \"'s\")"])
    assert result.exit_code == 0
    assert result.stdout == "'it''s'\n"
    assert "matches: no" in result.stderr


def test_the_printed_value_reads_back_as_the_same_value() -> None:
    for text in ("'a''b'", "-2147483648", "TRUE", "''"):
        value = cesql.compile(text).evaluate({}).value
        assert cesql.compile(cesql.format_value(value)).evaluate({}).value == value


def test_usage_errors_exit_2() -> None:
    assert CliRunner().invoke(main, ["cesql"]).exit_code == 2
    assert CliRunner().invoke(main, ["cesql", "true", "--bogus"]).exit_code == 2


def test_compile_time_warnings_are_printed() -> None:
    result = CliRunner().invoke(main, ["cesql", "false AND NOPE()"])
    assert result.exit_code == 0
    assert result.stdout == "false\n"
    assert "warning: MissingFunctionError: no function NOPE taking 0 argument(s)" in result.stderr


def test_an_expression_may_start_with_a_minus() -> None:
    # click would read `-1 + 2` as an unknown option `-1`.
    for argv, value in ((["-1 + 2"], "1\n"), (["-x < 0"], "false\n"), (["--", "-1"], "-1\n")):
        result = CliRunner().invoke(main, ["cesql", *argv])
        assert (result.exit_code, result.stdout) == (0, value), result.output
    result = CliRunner().invoke(main, ["cesql", "- 2147483648"])
    assert result.exit_code == 1
    assert "outside the 32-bit range" in result.stderr


def test_a_huge_integer_literal_is_a_parse_error_not_a_traceback() -> None:
    result = CliRunner().invoke(main, ["cesql", "x = " + "1" * 4301])
    assert result.exit_code == 1
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert result.stderr.startswith("error: invalid CESQL: line 1, column 5: integer literal")


def test_the_value_after_an_error_follows_the_tck_and_the_complete_one_is_shown() -> None:
    result = CliRunner().invoke(main, ["cesql", "true AND (1 != 1 / 0)"])
    assert result.exit_code == 0
    assert result.stdout == "false\n"
    assert "MathError: 1 / 0: division by zero" in result.stderr
    assert "complete evaluation (CESQL 4.1) would give: true" in result.stderr
